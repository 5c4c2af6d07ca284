"""Materialisation into Redis in Feast's own layout, built with numpy instead of per value.

Feast's `RedisOnlineStore.online_write_batch` turns every value into a ValueProto object, every
row into a dict and an HSET through redis-py: most of its time is Python per value (about
14,000 rows a second on the development machine). Here a chunk of rows becomes one buffer of
RESP commands in a few numpy operations per column (a ValueProto is a tag byte and a varint,
8 or 4 little-endian bytes, a length and UTF-8, or a packed list), written straight to the
socket of a redis-py connection, its replies parsed by hiredis; one chunk's commands are in
flight on a second thread while the next chunk is built. The keys, hash fields and values are
byte for byte those Feast writes (tests/test_redis_write.py compares every hash), and so is
the rule that a row never replaces one stored with a later or equal event time: the stored
`_ts:<view>` of every key is read first (one pipelined HGET each), only newer rows written;
after the caller cleared the view (a first fill, a rewrite) nothing is stored and the reads
are skipped.

`write_view` returns None for what it does not encode (a key other than one INT64, a value
type not below, a key TTL, several rows of one entity), and the caller goes Feast's way. On a
Redis Cluster the rows are grouped by the node owning each key's slot (CRC16 of every key at
once); a MOVED or ASK reply (slots being moved) raises, and the caller writes the rows again
through Feast, which follows redirections (rows already written are kept by the time rule).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.adapters.feast_codec import VALUE_TAGS, EntityKeyCodec
from recsvc.adapters.online_redis import resp_bulk
from recsvc.core.ledger import US

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

_TAG_INT64_LIST = 0x72  # int64_list_val = 14, length-delimited
_LIST_FIELD = 0x0A  # Int64List.val = 1, packed
# google.protobuf.Timestamp: seconds = 1 (varint), nanos = 2 (varint)
_TS_SECONDS, _TS_NANOS = 0x08, 0x10
SLOTS = 16384
_BINARY = pa.large_binary()  # 64-bit offsets: no limit on a chunk's bytes


class SlotsMoving(Exception):
    """A cluster slot without a known owner: the caller writes the batch through Feast."""


@dataclass(frozen=True)
class Ragged:
    """One byte string per row, concatenated: `data` and each row's length."""

    data: U8
    lengths: I64

    @classmethod
    def constant(cls, value: bytes, rows: int, present: B | None = None) -> Ragged:
        """`value` in every row (or in the `present` ones, empty elsewhere)."""
        n = rows if present is None else int(present.sum())
        data = np.tile(np.frombuffer(value, dtype=np.uint8), n)
        lengths = np.full(rows, len(value), dtype=np.int64)
        if present is not None:
            lengths[~present] = 0
        return cls(data, lengths)

    @classmethod
    def fixed(cls, matrix: U8, present: B | None = None) -> Ragged:
        """Row i is matrix[i] (the `present` rows only; empty elsewhere)."""
        rows, width = matrix.shape
        lengths = np.full(rows, width, dtype=np.int64)
        if present is None:
            return cls(np.ascontiguousarray(matrix).reshape(-1), lengths)
        lengths[~present] = 0
        return cls(np.ascontiguousarray(matrix[present]).reshape(-1), lengths)

    def take(self, rows: I64) -> Ragged:
        """The rows at `rows`, in that order."""
        starts = np.cumsum(self.lengths) - self.lengths
        lengths = self.lengths[rows]
        index = _spans(starts[rows], lengths)
        return Ragged(self.data[index], lengths)

    def arrow(self) -> pa.Array:
        """The rows as an Arrow large_binary array, sharing `data`."""
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return pa.Array.from_buffers(_BINARY, len(self.lengths),
                                     [None, pa.py_buffer(offsets), pa.py_buffer(self.data)])

    @classmethod
    def from_arrow(cls, array: pa.Array) -> Ragged:
        """The rows of an Arrow large_binary array without nulls, sharing its data."""
        _, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset:][:len(array) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
        return cls(data, np.diff(offsets))

    def rows(self) -> list[bytes]:
        """Every row as bytes (for replies and tests; slow for many rows)."""
        ends = np.cumsum(self.lengths)
        raw = self.data.tobytes()
        return [raw[e - n:e] for e, n in zip(ends.tolist(), self.lengths.tolist(), strict=True)]


def _spans(starts: I64, lengths: I64) -> I64:
    """The positions starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def concat(pieces: Sequence[Ragged | bytes]) -> Ragged:
    """Row i of the result is row i of every piece, one after another (a bytes piece: the same
    bytes in every row). Arrow's `binary_join_element_wise` does it in one pass over the rows,
    half the time of scattering each piece into place with numpy index arrays."""
    rows = next(len(p.lengths) for p in pieces if isinstance(p, Ragged))
    if rows == 0:
        return Ragged(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64))
    joined = pc.binary_join_element_wise(
        *(pa.scalar(p, _BINARY) if isinstance(p, bytes) else p.arrow() for p in pieces),
        pa.scalar(b"", _BINARY))
    return Ragged.from_arrow(joined)


def _varint_bytes(values: I64) -> tuple[U8, I64]:
    """Per value (as unsigned 64-bit), its varint bytes, least significant group first: a
    (rows, 10) matrix, and how many of each row's leading columns are used."""
    u = values.astype(np.int64).view(np.uint64)
    width = 10
    used = np.ones(len(u), dtype=np.int64)
    for k in range(1, width):
        used += u >= (np.uint64(1) << np.uint64(7 * k))
    shifts = (np.arange(width, dtype=np.uint64) * np.uint64(7))[None, :]
    groups = ((u[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(width)[None, :] < (used[:, None] - 1)
    return np.asarray(groups | (more.astype(np.uint8) << 7), dtype=np.uint8), used


def _leading(matrix: U8, used: I64, present: B | None = None) -> Ragged:
    """The first `used[i]` bytes of each row of `matrix` (empty where not present)."""
    keep = np.arange(matrix.shape[1])[None, :] < used[:, None]
    lengths = used.copy()
    if present is not None:
        keep &= present[:, None]
        lengths[~present] = 0
    return Ragged(matrix[keep], lengths)


def varints(values: I64, present: B | None = None) -> Ragged:
    """Protobuf's canonical varint of each value (negative ones as ten bytes)."""
    matrix, used = _varint_bytes(values)
    return _leading(matrix, used, present)


def bulk_headers(lengths: I64) -> Ragged:
    """The RESP bulk string header of each length: $<length>\r\n."""
    if not len(lengths):
        return Ragged(np.zeros(0, dtype=np.uint8), lengths)
    table = [b"$%d\r\n" % n for n in range(int(lengths.max()) + 1)]
    flat = np.frombuffer(b"".join(table), dtype=np.uint8)
    return Ragged(flat, np.array([len(t) for t in table], dtype=np.int64)).take(lengths)


def value_protos(column: pa.Array | pa.ChunkedArray, type_name: str) -> Ragged | None:
    """Each value serialised as Feast's ValueProto of `type_name` (null, and NaN for floats:
    the empty Value, b""); None for a type not encoded here."""
    if type_name == "INT64_LIST":
        return _int64_lists(column)
    tag = VALUE_TAGS.get(type_name)
    if tag is None:
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    head = Ragged.constant(bytes([tag]), rows, present)
    if type_name == "STRING":
        column = pc.fill_null(column.cast(pa.string()), "")  # a null: no bytes, no head
        utf8 = np.asarray(pc.binary_length(column).to_numpy(zero_copy_only=False),
                          dtype=np.int64)
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset:][:rows + 1]
        data = np.frombuffer(column.buffers()[2] or b"", dtype=np.uint8)
        body = Ragged(data[offsets[0]:offsets[-1]], utf8)
        return concat([head, varints(utf8, present), body])
    if type_name in ("DOUBLE", "FLOAT"):
        dtype = "<f8" if type_name == "DOUBLE" else "<f4"
        values = np.asarray(pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False),
                            dtype=dtype)
        present &= ~np.isnan(values)
        head = Ragged.constant(bytes([tag]), rows, present)
        matrix = values.view(np.uint8).reshape(rows, -1)
        return concat([head, Ragged.fixed(matrix, present)])
    if type_name == "BOOL":
        ints = np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False),
                          dtype=np.int64)
    else:
        ints = np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False),
                          dtype=np.int64)
    return concat([head, varints(ints, present)])


def _int64_lists(column: pa.Array | pa.ChunkedArray) -> Ragged:
    """Value(int64_list_val=Int64List(val=...)): tag 14 (length-delimited), the Int64List's
    length, then its packed field 1 (omitted when the list is empty); null: b"" as Feast."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    counts = np.asarray(pc.fill_null(pc.list_value_length(column), 0)
                        .to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False), dtype=np.int64)
    elements = varints(flat)
    ends = np.concatenate([[0], np.cumsum(elements.lengths)])[np.cumsum(counts)]
    packed = Ragged(elements.data, np.diff(ends, prepend=0))
    some = packed.lengths > 0
    inner = concat([Ragged.constant(bytes([_LIST_FIELD]), rows, some),
                    varints(packed.lengths, some), packed])
    return concat([Ragged.constant(bytes([_TAG_INT64_LIST]), rows, present),
                   varints(inner.lengths, present), inner])


def timestamp_protos(stamps: pa.Array | pa.ChunkedArray) -> tuple[Ragged, I64]:
    """google.protobuf.Timestamp bytes of each (UTC) instant, as Feast stores `_ts:<view>`
    (zero fields omitted), and the instants in nanoseconds."""
    us = np.asarray(pc.cast(stamps, pa.timestamp("us", tz="UTC")).cast(pa.int64())
                    .to_numpy(zero_copy_only=False), dtype=np.int64)
    seconds = us // US
    nanos = (us % US) * 1000
    rows = len(us)
    return concat([
        Ragged.constant(bytes([_TS_SECONDS]), rows, seconds != 0), varints(seconds, seconds != 0),
        Ragged.constant(bytes([_TS_NANOS]), rows, nanos != 0), varints(nanos, nanos != 0),
    ]), seconds * 1_000_000_000 + nanos


def parse_timestamp(blob: bytes | None) -> int:
    """A stored Timestamp in nanoseconds (0: none stored)."""
    if not blob:
        return 0
    fields = {1: 0, 2: 0}
    i = 0
    while i < len(blob):
        field, value, shift = blob[i] >> 3, 0, 0
        i += 1
        while True:
            byte = blob[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        fields[field] = value
    return fields[1] * 1_000_000_000 + fields[2]


def commands(name: bytes, key: Ragged, args: Sequence[Ragged | bytes]) -> Ragged:
    """One RESP command per row: `name`, the row's key, then `args` (a constant argument as
    bytes, a per-row one as Ragged)."""
    pieces: list[Ragged | bytes] = []
    run = b"*%d\r\n%b" % (2 + len(args), resp_bulk(name))
    for arg in [key, *args]:
        if isinstance(arg, bytes):
            run += resp_bulk(arg)
            continue
        pieces += [run, bulk_headers(arg.lengths), arg]
        run = b"\r\n"
    pieces.append(run)
    return concat(pieces)


def key_slots(keys: U8) -> I64:
    """Redis Cluster's hash slot of each key (CRC16/XMODEM mod 16384), the keys being the
    rows of `keys` (all of one length). A key holding '{' may carry a hash tag: those are
    computed by redis-py's rule one by one (rare in binary keys)."""
    from redis.crc import key_slot

    table = _crc_table()
    crc = np.zeros(len(keys), dtype=np.int64)
    for j in range(keys.shape[1]):
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ keys[:, j]) & 0xFF]
    slots = crc % SLOTS
    tagged = np.flatnonzero((keys == ord("{")).any(axis=1))
    for i in tagged.tolist():
        slots[i] = key_slot(keys[i].tobytes())
    return slots


@functools.cache
def _crc_table() -> I64:
    """CRC16/XMODEM (polynomial 0x1021) of every byte value."""
    table = np.zeros(256, dtype=np.int64)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


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
