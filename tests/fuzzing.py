"""Hostile requests for any gRPC service, built from the descriptors its server reflects.

Nothing here imports the project's stubs: `reflected_methods` asks the server's reflection
service for the service's file descriptors, and `Fuzzer.request` fills a message of the input
type field by field from what the descriptor says: every integer type's extremes and its
neighbours, unknown enum numbers, NaN and the infinities in doubles, empty, NUL, non-ASCII and
oversized strings, empty, duplicated and oversized repeated fields, and unknown fields. A caller
sends the bytes with identity serialisers, as any other language's client would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

_SIGNED32 = (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32)
_SIGNED64 = (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64)
_UNSIGNED = {F.TYPE_UINT32: 32, F.TYPE_FIXED32: 32, F.TYPE_UINT64: 64, F.TYPE_FIXED64: 64}


@dataclass(frozen=True)
class Method:
    path: str  # "/package.Service/Method"
    name: str
    input: Any  # the input message class, built from the reflected descriptor


def reflected_methods(channel: Any, service: str) -> list[Method]:
    """The unary methods of `service` as its server reflects them (a sync grpc channel)."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    found = pool.FindServiceByName(service)
    return [Method(f"/{service}/{m.name}", m.name,
                   message_factory.GetMessageClass(m.input_type))
            for m in found.methods if not m.client_streaming and not m.server_streaming]


class Fuzzer:
    """Random hostile requests; `known` ids (members, items) are mixed in so some calls get
    past the checks to the answers."""

    def __init__(self, seed: int, known: list[int], words: list[str]) -> None:
        self.rng = random.Random(seed)
        self.known = known
        self.words = words

    def request(self, cls: Any) -> bytes:
        msg = cls()
        self._fill(msg, 0)
        data = msg.SerializeToString()
        if self.rng.random() < 0.05:  # an unknown field (number 999, varint): parsers skip it
            data += b"\xb8\x3e\x01"
        return data

    def _fill(self, msg: Any, depth: int) -> None:
        rng = self.rng
        for field in msg.DESCRIPTOR.fields:
            if rng.random() < 0.25:
                continue  # unset
            if field.is_repeated:
                count = rng.choice([0, 1, 2, 5, 100, 101, 1000, 1001])
                target = getattr(msg, field.name)
                if field.type == F.TYPE_MESSAGE:
                    for _ in range(min(count, 20) if depth else count):
                        self._fill(target.add(), depth + 1)
                else:
                    values = [self._scalar(field) for _ in range(min(count, 5))]
                    # duplicates: the same few values repeated up to the count
                    target.extend(values[k % len(values)] for k in range(count)) if values \
                        else None
            elif field.type == F.TYPE_MESSAGE:
                if depth < 3:
                    self._fill(getattr(msg, field.name), depth + 1)
            else:
                setattr(msg, field.name, self._scalar(field))

    def _scalar(self, field: Any) -> Any:
        rng, kind = self.rng, field.type
        if kind in _SIGNED64 or kind in _SIGNED32:
            bits = 32 if kind in _SIGNED32 else 64
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            pick = rng.choice([0, 1, -1, lo, hi, lo + 1, hi - 1, 2**31, 2**53, -(2**53),
                               rng.randint(-1000, 1000)])
            if self.known and rng.random() < 0.4:
                pick = rng.choice(self.known)
            return max(lo, min(hi, pick))
        if kind in _UNSIGNED:
            hi = 2 ** _UNSIGNED[kind] - 1
            return rng.choice([0, 1, hi, hi - 1, 2**31, rng.randint(0, 1000)])
        if kind == F.TYPE_ENUM:
            known = [v.number for v in field.enum_type.values]
            return rng.choice([*known, max(known) + 1, 999, -1, 2**31 - 1, -(2**31)])
        choices = {
            F.TYPE_DOUBLE: _DOUBLES, F.TYPE_FLOAT: _DOUBLES, F.TYPE_BOOL: (False, True),
            F.TYPE_STRING: (*_STRINGS, *self.words), F.TYPE_BYTES: _BYTES,
        }.get(kind)
        if choices is None:
            raise ValueError(f"no generator for field type {kind}")
        return rng.choice(choices)


_DOUBLES = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.5)
_STRINGS = ("", "\x00", "a\x00b", "é" * 70, "x" * 10_000, "\U0001F600")
_BYTES = (b"", b"\x00", bytes(range(256)))
