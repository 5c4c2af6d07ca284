"""Redis commands and Feast's protobuf values built as byte columns, a whole chunk of rows at a
time: no Python per value.

A column of values becomes a `Ragged` (one byte string per row, held as one buffer and offsets):
a ValueProto is a tag byte and a varint, 8 or 4 little-endian bytes, a length and UTF-8, or a
packed list; a google.protobuf.Timestamp is two varints; a row's RESP command is its bulk
headers and arguments laid side by side. `key_slots` is Redis Cluster's CRC16 of every key at
once. `redis_write` sends what is built here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.adapters.feast_codec import VALUE_TAGS
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
