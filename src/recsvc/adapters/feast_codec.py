"""Feast's online layout, read and written without the SDK's per-value work: `ValueProto`
decoding to the SDK's Python values (`value_decoder`) and the entity key serialisation with its
fixed part computed once (`EntityKeyCodec`). The online readers and the Redis writer share it."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from recsvc.errors import InvalidArgument

if TYPE_CHECKING:
    from feast.value_type import ValueType

Decoder = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# ValueProto decoding: the SDK's Python values, without building a message per value.
# --------------------------------------------------------------------------------------------
# Wire tags of Value's scalar oneof fields (field number << 3 | wire type), see Value.proto.
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT32 = 0x18  # int32_val = 3, varint
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, 64-bit
_TAG_FLOAT = 0x35  # float_val = 6, 32-bit
_TAG_BOOL = 0x38  # bool_val = 7, varint
VALUE_TAGS = {"STRING": _TAG_STRING, "INT32": _TAG_INT32, "INT64": _TAG_INT64,
              "DOUBLE": _TAG_DOUBLE, "FLOAT": _TAG_FLOAT, "BOOL": _TAG_BOOL}
"""The tags by value type, for the writer that encodes what these decoders read."""
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


def _generic_decoder(value_type: ValueType) -> Decoder:
    """Feast's own conversion (what `OnlineResponse.to_dict` does): every other type, and any
    blob that is not the canonical encoding a fast decoder expects."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    parse = Value.FromString

    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None  # missing, or an empty Value: Feast's null
        return feast_value_type_to_python_type(parse(blob), value_type)

    return decode


def _varint(blob: bytes, bits: int) -> int | None:
    """The signed integer of a blob holding exactly one tag byte and one varint, else None.

    Protobuf keeps the low `bits` bits of a varint and reads them as two's complement
    (negative numbers are sign-extended to 10 bytes on the wire)."""
    result = shift = 0
    last = len(blob) - 1
    for i in range(1, last + 1):
        byte = blob[i]
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if i != last:
                return None  # more fields follow: not the shape this decoder knows
            result &= (1 << bits) - 1
            return result - (1 << bits) if result >> (bits - 1) else result
    return None


def _int_decoder(tag: int, bits: int, generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if blob[0] == tag:
            n = len(blob)
            # one- and two-byte varints (0..16383) are most counts and prices: inline them
            if n == 2:
                v = blob[1]
                if v < 0x80:
                    return v
            elif n == 3:
                lo, hi = blob[1], blob[2]
                if lo >= 0x80 and hi < 0x80:
                    return (lo & 0x7F) | (hi << 7)
            value = _varint(blob, bits)
            if value is not None:
                return value
        return generic(blob)

    return decode


def _double_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 9 and blob[0] == _TAG_DOUBLE:
            return _unpack_double(blob, 1)[0]
        return generic(blob)

    return decode


def _float_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 5 and blob[0] == _TAG_FLOAT:
            return _unpack_float(blob, 1)[0]
        return generic(blob)

    return decode


def _string_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        # strings shorter than 128 bytes have a one-byte length; longer ones go the slow way
        if blob[0] == _TAG_STRING and len(blob) > 1 and blob[1] == len(blob) - 2:
            return blob[2:].decode("utf-8")
        return generic(blob)

    return decode


def _bool_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 2 and blob[0] == _TAG_BOOL and blob[1] < 2:
            return blob[1] == 1
        return generic(blob)

    return decode


# Value types whose Python values are immutable scalars (list types become lists).
SCALAR_TYPES = frozenset({"INT64", "INT32", "DOUBLE", "FLOAT", "STRING", "BOOL", "BYTES"})


def value_decoder(value_type: ValueType) -> Decoder:
    """bytes of a serialised ValueProto (or None) -> the SDK's Python value for that type.

    The fast decoders read the canonical encoding of their declared type; anything else
    (another oneof field than declared, extra fields, long strings) goes through Feast's
    conversion, so the result is the SDK's whatever was stored."""
    generic = _generic_decoder(value_type)
    fast = _FAST_DECODERS.get(value_type.name)
    return fast(generic) if fast is not None else generic


_FAST_DECODERS: dict[str, Callable[[Decoder], Decoder]] = {
    "INT64": lambda generic: _int_decoder(_TAG_INT64, 64, generic),
    "INT32": lambda generic: _int_decoder(_TAG_INT32, 32, generic),
    "DOUBLE": _double_decoder,
    "FLOAT": _float_decoder,
    "STRING": _string_decoder,
    "BOOL": _bool_decoder,
}


# --------------------------------------------------------------------------------------------
# Entity keys: Feast's serialisation, with the fixed part computed once.
# --------------------------------------------------------------------------------------------
class EntityKeyCodec:
    """ids -> Feast's serialised entity keys of one join key (without the project suffix)."""

    def __init__(self, join_key: str, value_type: ValueType, version: int) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        self.join_key = join_key
        self._args = (join_key, value_type, version)

        def feast_key(value: Any) -> bytes:
            proto = python_values_to_proto_values([value], value_type)[0]
            return serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[proto]),
                                        entity_key_serialization_version=version)

        self._slow = feast_key
        self._prefix: bytes | None = None  # what every key of this join key starts with
        if value_type.name == "INT64" and version >= 3:
            # v3 of one INT64 key is a fixed prefix (key count, name, value type and length)
            # followed by the 8-byte little-endian value; checked against Feast's own here
            probe = (0, 1, -1, 2**63 - 1, -(2**63), 1234567)
            prefix = feast_key(0)[:-8]
            if all(prefix + struct.pack("<q", v) == feast_key(v) for v in probe):
                self._prefix = prefix
        self.keys: Callable[[Sequence[Any]], list[bytes]] = (
            self._fast_keys if self._prefix is not None else self._slow_keys)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its arguments (a batch job's partitions carry it to their workers)."""
        return (EntityKeyCodec, self._args)

    @property
    def prefix(self) -> bytes | None:
        """The bytes every serialised key of this join key starts with (None: not known)."""
        return self._prefix

    def key_matrix(self, ids: Any) -> Any:
        """The serialised keys of int64 `ids` (a numpy array) as the rows of a uint8 matrix:
        the prefix, then the 8-byte little-endian value (only where `prefix` is known)."""
        import numpy as np

        prefix = self._prefix
        assert prefix is not None
        rows = len(ids)
        head = np.frombuffer(prefix, dtype=np.uint8)
        return np.concatenate([np.broadcast_to(head, (rows, len(head))),
                               np.asarray(ids, dtype="<i8").view(np.uint8).reshape(rows, 8)],
                              axis=1)

    def _fast_keys(self, ids: Sequence[Any]) -> list[bytes]:
        prefix = self._prefix
        assert prefix is not None
        pack = struct.pack
        try:
            return [prefix + pack("<q", i) for i in ids]
        except struct.error:
            bad = next(i for i in ids if not isinstance(i, int) or not -(2**63) <= i < 2**63)
            raise InvalidArgument(self.join_key, f"not a 64-bit integer: {bad!r}") from None

    def _slow_keys(self, ids: Sequence[Any]) -> list[bytes]:
        return [self._slow(i) for i in ids]
