"""The frequency-cap store: how many nudges a member got in each cap's window, behind one seam.

`CapStore.reserve` applies `recsvc.core.nudges.decide` atomically: the counts are read, the
decision taken and the granted nudges recorded with nothing in between, so concurrent calls
for the same member (several workers, several replicas) never exceed a cap. Two stores, one
module each (`caps_redis`, `caps_sqlite`); this one holds what they share and picks one:

- `RedisCapStore` (production: `RECSVC_REDIS_URL` set), the online store's own Redis, through
  the client the online reader builds (Redis, Sentinel or Cluster; short socket timeouts and no
  retries). One sorted set per member and cap (and item, for item caps):

      recsvc:<feast project>:caps:{<member id>}:<cap name>[:<item id>]

  holding one entry per nudge counted, scored by its instant in milliseconds. The braces are a
  Redis Cluster hash tag: all of a member's keys live in one slot, so one Lua script can touch
  them all. The script prunes each key's entries older than its window (ZREMRANGEBYSCORE),
  counts them (ZCARD), runs the decision and records (ZADD, then PEXPIRE by the window, so a
  member who gets no nudge for a window leaves nothing behind). It is a sliding window rather
  than fixed buckets because a cap says "at most N in ANY window_hours": with hourly or daily
  buckets two reminders could land either side of a bucket boundary minutes apart, and
  counting the window's buckets only ever approximates it. The log costs nothing here: a cap's
  key never holds more than `max` entries in its window (a few).
- `SqliteCapStore` (the embedded default): the same log in a table of a SQLite file under the
  data directory, each reservation one `BEGIN IMMEDIATE` transaction (SQLite's write lock, taken
  before the counts are read), so worker processes sharing the file are serialised. WAL
  journal: readers never wait, and a commit does not fsync (the cost of a power cut is a
  reminder sent once more, never a call failing). A call prunes the expired rows of the keys
  it counts, as the Lua script does; the rows of members never asked about again go in a
  bounded sweep at most once a minute. The service calls `reserve_async`, which runs the
  transaction on the store's own thread: waiting on the file lock never stalls the event loop.

"now" is the caller's clock (the service's, or a batch job's as-of instant), so a batch for a
past date counts in that date's windows. A store that does not answer within its timeout
raises `CapStoreUnavailable`: the caller withholds the nudges rather than risk a cap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc.adapters.online import REDIS_TIMEOUT_S
from recsvc.core.nudges import CapKey, Reservation
from recsvc.settings import Settings

if TYPE_CHECKING:
    from recsvc.adapters.caps_redis import RedisCapStore
    from recsvc.adapters.caps_sqlite import SqliteCapStore

SQLITE_FILE = Path("caps") / "nudge_caps.sqlite"
"""Where the embedded store keeps its file, under the data directory."""


def epoch_ms(now: dt.datetime) -> int:
    """`now` in milliseconds since the epoch."""
    return int(now.timestamp() * 1000)


def window_ms(hours: float) -> int:
    """A cap's window in milliseconds (at least one)."""
    return max(round(hours * 3_600_000), 1)


def indexed_keys(reservations: Sequence[Reservation]) -> dict[CapKey, tuple[int, Any]]:
    """Each distinct key of the call, numbered from 1 in order of appearance, with its cap."""
    keys: dict[CapKey, tuple[int, Any]] = {}
    for r in reservations:
        for key, cap in r.counted():
            keys.setdefault(key, (len(keys) + 1, cap))
    return keys


def open_cap_store(settings: Settings, feast_store: Any = None) -> RedisCapStore | SqliteCapStore:
    """Redis when `settings.redis_url` is set (the online store's, configured as Feast is:
    `feast_store`'s, else the settings'), else the SQLite file under the data directory."""
    if not settings.redis_url:
        from recsvc.adapters.caps_sqlite import SqliteCapStore

        return SqliteCapStore(Path(settings.data_dir) / SQLITE_FILE)
    from recsvc.adapters import feast as fstore
    from recsvc.adapters.caps_redis import RedisCapStore
    from recsvc.adapters.online_redis import redis_client

    config = feast_store.config if feast_store is not None else fstore.repo_config(settings)
    with fstore.feast_errors("connect to the Redis cap store"):
        client = redis_client(config.online_store, REDIS_TIMEOUT_S)
    return RedisCapStore(client, settings.feast_project)
