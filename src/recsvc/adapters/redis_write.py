"""Materialisation into Redis in Feast's own layout, built with numpy instead of per value.

Feast's `RedisOnlineStore.online_write_batch` turns every value into a ValueProto object, every
row into a dict and an HSET through redis-py: most of its time is Python per value (about
14,000 rows a second on the development machine). Here a chunk of rows becomes one buffer of
RESP commands in a few numpy operations per column (`resp_columns`: a ValueProto is a tag byte
and a varint, 8 or 4 little-endian bytes, a length and UTF-8, or a packed list), written
straight to the socket of a redis-py connection, its replies parsed by hiredis; one chunk's
commands are in flight on a second thread while the next chunk is built. The keys, hash fields
and values are byte for byte those Feast writes (tests/test_redis_write.py compares every
hash), and so is the rule that a row never replaces one stored with a later or equal event
time: the stored `_ts:<view>` of every key is read first (one pipelined HGET each), only newer
rows written; after the caller cleared the view (a first fill, a rewrite) nothing is stored and
the reads are skipped.

`write_view` returns None for what it does not encode (a key other than one INT64, a value type
`resp_columns.value_protos` does not build, a key TTL, several rows of one entity), and the
caller goes Feast's way. On a Redis Cluster the rows are grouped by the node owning each key's
slot (CRC16 of every key at once); a MOVED or ASK reply (slots being moved) raises, and the
caller writes the rows again through Feast, which follows redirections (rows already written
are kept by the time rule).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.adapters.feast_codec import VALUE_TAGS, EntityKeyCodec
from recsvc.adapters.resp_columns import (
    SLOTS,
    Ragged,
    commands,
    key_slots,
    parse_timestamp,
    timestamp_protos,
    value_protos,
)

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


class SlotsMoving(Exception):
    """A cluster slot without a known owner: the caller writes the batch through Feast."""


def _exchange(client: Any, packed: Ragged, chunk_rows: int = 5_000) -> list[Any]:
    """Send the commands (one per row) on one connection of `client` (a redis-py Redis) and
    read their replies, `chunk_rows` commands in flight at a time. The connection (its
    handshake: password, database, TLS) is redis-py's; the bytes go straight to its socket
    and the replies through hiredis' parser, which is what costs per reply here (redis-py's
    `read_response` is a few Python calls each). An error reply raises ResponseError."""
    import hiredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    pool = client.connection_pool
    conn = pool.get_connection()
    replies: list[Any] = []
    try:
        conn.connect()  # a no-op when connected
        sock = conn._sock
        reader = hiredis.Reader()
        ends = np.cumsum(packed.lengths)
        raw = packed.data
        for start in range(0, len(ends), chunk_rows):
            stop = min(start + chunk_rows, len(ends))
            lo = int(ends[start - 1]) if start else 0
            sock.sendall(raw[lo:int(ends[stop - 1])].data)
            wanted = len(replies) + (stop - start)
            while len(replies) < wanted:
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise RedisConnectionError("Redis closed the connection mid-write")
                    reader.feed(data)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(str(reply))
                replies.append(reply)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return replies


def _targets(client: Any, keys: U8) -> list[tuple[Any, I64]]:
    """(a redis-py Redis, the rows whose keys it owns) per node: one for a single Redis; on a
    cluster, the primary of each key's slot."""
    if not hasattr(client, "nodes_manager"):
        return [(client, np.arange(len(keys), dtype=np.int64))]
    slots = key_slots(keys)
    cache = client.nodes_manager.slots_cache
    owners = np.array([cache[s][0].name if s in cache else "" for s in range(SLOTS)],
                      dtype=object)[slots]
    out = []
    for name in sorted(set(owners.tolist())):
        node = client.get_node(node_name=name) if name else None
        if node is None:
            raise SlotsMoving(name)
        if node.redis_connection is None:
            client.nodes_manager.initialize()
            node = client.get_node(node_name=name)
        out.append((node.redis_connection, np.flatnonzero(owners == name)))
    return out


CHUNK_ROWS = 10_000


def write_view(client: Any, project: str, spec: Any, table: pa.Table, ts_field: str,
               ttl_seconds: int | None = None,
               on_rows: Callable[[int], Any] | None = None, *, cleared: bool = False
               ) -> int | None:
    """Write the rows of `table` (join key, `ts_field`, the view's features; one row per
    entity) into the online store as Feast's RedisOnlineStore would; the rows written (those
    newer than what is stored), or None when the view is not one this writer encodes.

    CHUNK_ROWS rows at a time; a chunk's HSETs are written by a second thread while this one
    reads the next chunk's stored event times and builds its commands, so building (numpy,
    this process) and storing (Redis's own core) overlap. `on_rows(n)` after each chunk.
    `cleared`: the caller has just deleted the view's rows (a first fill, a rewrite), so none
    is stored: every row is written without reading stored event times first (half the
    commands, and Redis's CPU is what a fill waits on)."""
    codec = spec.codec
    if codec is None or codec.prefix is None or ttl_seconds or not all(
            vtype.name in VALUE_TAGS or vtype.name == "INT64_LIST" for _, vtype in spec.features):
        return None
    ids = np.asarray(table.column(spec.join_key).to_numpy(zero_copy_only=False),
                     dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        return None  # several rows of one entity: Feast's order-by-time rule applies
    from feast.infra.online_stores.helpers import _mmh3

    layout = _Layout(codec, project.encode(), f"_ts:{spec.stored}".encode(),
                     [(name, vtype.name, _mmh3(f"{spec.stored}:{name}"))
                      for name, vtype in spec.features], ts_field, spec.join_key)
    written = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsvc-redis-write") as sender:
        in_flight: list[Future[int]] = []
        done_rows = 0

        def settle() -> int:
            got = sum(job.result() for job in in_flight)  # an error reply raises here
            in_flight.clear()
            if on_rows is not None and done_rows:
                on_rows(done_rows)
            return got

        for start in range(0, table.num_rows, CHUNK_ROWS):
            part = table.slice(start, CHUNK_ROWS)
            jobs = _chunk_commands(client, layout, part, cleared)
            written += settle()
            in_flight += [sender.submit(_store_newer, *job) for job in jobs]
            done_rows = part.num_rows
        written += settle()
    return written


@dataclass(frozen=True)
class _Layout:
    """Where a view's rows go in Redis: the entity key's codec and the project suffix, the
    event-time field, and (feature, value type, hash field) per feature."""

    codec: EntityKeyCodec  # the key's serialised entity part
    key_tail: bytes
    ts_key: bytes
    features: list[tuple[str, str, bytes]]
    ts_field: str
    join_key: str


def _chunk_commands(client: Any, layout: _Layout, table: pa.Table, cleared: bool = False
                    ) -> list[tuple[Any, Ragged | None, Ragged, I64]]:
    """Per node: the HGETs of the rows' stored event times (None when `cleared`: nothing is
    stored), the HSETs of the rows, and the rows' event times (ns); `_store_newer` sends
    them."""
    rows = table.num_rows
    ids = np.asarray(table.column(layout.join_key).to_numpy(zero_copy_only=False),
                     dtype=np.int64)
    tail = np.frombuffer(layout.key_tail, dtype=np.uint8)
    key_matrix = np.concatenate([layout.codec.key_matrix(ids),
                                 np.broadcast_to(tail, (rows, len(tail)))], axis=1)
    stamps, nanos = timestamp_protos(table.column(layout.ts_field))
    values = [value_protos(table.column(name), type_name)
              for name, type_name, _ in layout.features]
    out = []
    for node, idx in _targets(client, key_matrix):
        def mine(rows: Ragged, idx: I64 = idx) -> Ragged:  # the node's rows (all: as they are)
            return rows if len(idx) == table.num_rows else rows.take(idx)

        keys = Ragged.fixed(key_matrix[idx])
        args: list[Ragged | bytes] = [layout.ts_key, mine(stamps)]
        for (_, _, field), value in zip(layout.features, values, strict=True):
            assert value is not None  # every type was checked by write_view
            args += [field, mine(value)]
        out.append((node, None if cleared else commands(b"HGET", keys, [layout.ts_key]),
                     commands(b"HSET", keys, args), nanos[idx]))
    return out


def _store_newer(node: Any, hgets: Ragged | None, hsets: Ragged, nanos: I64) -> int:
    """Read the stored event times, then write the rows whose time is later (Feast's rule:
    a row never replaces one stored with a later or equal time); how many were written.
    Without `hgets` (nothing stored) every row is written."""
    if hgets is None:
        _exchange(node, hsets)
        return len(nanos)
    stored = _exchange(node, hgets)
    before = np.fromiter((parse_timestamp(b) for b in stored), dtype=np.int64,
                         count=len(nanos))
    pick = np.flatnonzero((before == 0) | (nanos > before))
    if len(pick):
        _exchange(node, hsets if len(pick) == len(nanos) else hsets.take(pick))
    return len(pick)
