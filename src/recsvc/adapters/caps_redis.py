"""Frequency caps in Redis: one sorted set per member and cap, one Lua script per call
(`recsvc.adapters.caps` says why a sliding log, and how the keys are named)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from recsvc.adapters.caps import epoch_ms, indexed_keys, window_ms
from recsvc.adapters.online import REDIS_TIMEOUT_S
from recsvc.core.nudges import CapKey, CapOutcome, Reservation
from recsvc.errors import CapStoreUnavailable

# The decision is recsvc.core.nudges.decide, step for step (tests/test_caps.py runs the same
# cases on both stores). KEYS: the call's keys. ARGV: now (ms), a token unique to the call,
# dry run (0|1), then max and window (ms) of each key, then the program: the number of
# reservations; per reservation its cap count and key indexes, its item count, and per item
# its cap count and key indexes. Returns per reservation the index of the full cap (0: granted)
# followed, per item, by the index of its full cap (0: kept).
RESERVE_LUA = """
local now = tonumber(ARGV[1])
local token = ARGV[2]
local dry = ARGV[3] == '1'
local n = #KEYS
local max, window, used = {}, {}, {}
for i = 1, n do
  max[i] = tonumber(ARGV[2 + 2 * i])
  window[i] = tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window[i])
  used[i] = redis.call('ZCARD', KEYS[i])
end
local pos = 4 + 2 * n
local function nxt()
  local v = tonumber(ARGV[pos])
  pos = pos + 1
  return v
end
local seq = 0
local function take(i)
  used[i] = used[i] + 1
  if not dry then
    seq = seq + 1
    redis.call('ZADD', KEYS[i], now, token .. ':' .. seq)
    redis.call('PEXPIRE', KEYS[i], window[i])
  end
end
local function first_full(list)
  for _, i in ipairs(list) do
    if used[i] >= max[i] then return i end
  end
  return 0
end
local out = {}
for _ = 1, nxt() do
  local caps = {}
  for j = 1, nxt() do caps[j] = nxt() end
  local stop = first_full(caps)
  out[#out + 1] = stop
  for _ = 1, nxt() do
    local item = {}
    for j = 1, nxt() do item[j] = nxt() end
    local over = 0
    if stop == 0 then
      over = first_full(item)
      if over == 0 then
        for _, i in ipairs(item) do take(i) end
      end
    end
    out[#out + 1] = over
  end
  if stop == 0 then
    for _, i in ipairs(caps) do take(i) end
  end
end
return out
"""


def key_prefix(project: str) -> str:
    return f"recsvc:{project}:caps:"


class RedisCapStore:
    """Caps in Redis: one Lua script per call (see the module docstring)."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.prefix = key_prefix(project)
        self._script = client.register_script(RESERVE_LUA)

    @classmethod
    def from_url(cls, url: str, project: str, timeout_s: float = REDIS_TIMEOUT_S, *,
                 cluster: bool = False) -> RedisCapStore:
        """A plain Redis (or, with `cluster`, the Redis Cluster a node of which is) at `url`
        with the online reader's timeouts (tests, tools)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        kind: Any = RedisCluster if cluster else redis.Redis
        client = kind.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                               retry=Retry(NoBackoff(), 0))
        return cls(client, project)

    def _key(self, member_id: int, key: CapKey) -> str:
        cap, item = key
        return f"{self.prefix}{{{member_id}}}:{cap}" + ("" if item is None else f":{item}")

    def reserve(self, member_id: int, reservations: Sequence[Reservation], now: dt.datetime,
                *, dry_run: bool = False) -> list[CapOutcome]:
        import redis

        if not reservations:
            return []
        keys = indexed_keys(reservations)
        by_index = {i: key for key, (i, _) in keys.items()}
        args: list[Any] = [epoch_ms(now), uuid.uuid4().hex, int(dry_run)]
        for _, cap in keys.values():
            args += [cap.max, window_ms(cap.window_hours)]
        args.append(len(reservations))
        for r in reservations:
            args.append(len(r.caps))
            args += [keys[(c.name, None)][0] for c in r.caps]
            args.append(len(r.items))
            for item, caps in r.items:
                args.append(len(caps))
                args += [keys[(c.name, item)][0] for c in caps]
        try:
            got = self._script(keys=[self._key(member_id, k) for k in keys], args=args)
        except redis.RedisError as exc:
            raise CapStoreUnavailable(f"Redis cap store: {exc}") from exc
        out, pos = [], 0
        for r in reservations:
            stop = int(got[pos])
            dropped = tuple((item, by_index[int(g)][0]) for (item, _), g in
                            zip(r.items, got[pos + 1:pos + 1 + len(r.items)], strict=True)
                            if int(g))
            pos += 1 + len(r.items)
            out.append(CapOutcome(True, "", dropped) if stop == 0 else
                       CapOutcome(False, by_index[stop][0]))
        return out

    async def reserve_async(self, member_id: int, reservations: Sequence[Reservation],
                            now: dt.datetime, *, dry_run: bool = False) -> list[CapOutcome]:
        """`reserve` on a thread: a Redis that stops answering (stopped, restarting, loading
        its file) costs up to the connect and socket timeouts (50 ms each) a call, which on
        the event loop would hold every other call up with it."""
        if not reservations:
            return []
        return await asyncio.to_thread(self.reserve, member_id, reservations, now,
                                       dry_run=dry_run)

    def delete_all(self) -> int:
        """Delete every cap key of the project (tests and benchmarks on a shared Redis)."""
        gone = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                gone += self.client.delete(*batch)
                batch.clear()
        if batch:
            gone += self.client.delete(*batch)
        return int(gone)

    def close(self) -> None:
        self.client.close()
