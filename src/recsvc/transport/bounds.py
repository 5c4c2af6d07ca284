"""What a request may hold: every number's bounds, every enum's known numbers, every string's
and list's length, checked in one place before an answer is worked out.

proto3 lets any caller send any int64, any enum number (enums are open) and strings of any
length; the core's formulas assume ids, prices and balances a programme can have. `check`
walks a request by its descriptor and raises InvalidArgument naming the first field out of
bounds by its path in the request (`lines[2].quantity`, `context.surface`). The bounds are
stated beside each field in protos/recsvc/v1/recsvc.proto; tests/test_bounds.py checks that
every number and string of every request has one here.

Why these bounds: ids start at 1, so an unset id (proto3 cannot tell it from 0) is refused
naming the field instead of being answered as if it named someone; they stay below 2^53 so
every id survives JSON and JavaScript clients exactly;
amounts stay small enough that a 500-line cart's total (lines x quantity x unit price) is exact
in a double as well as an int64, so no rule of a split can break by rounding.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from recsvc.errors import InvalidArgument

MAX_ID = 2**53 - 1
IDS = (1, MAX_ID)  # every id field's bounds: 0 is proto3's "not set"
MAX_POINTS = 10**12
MAX_UNIT_PRICE_MINOR = 10**10
MAX_QUANTITY = 1_000
MAX_TEXT = 64
MAX_CATEGORIES = 100

# field full name -> (least, most): numbers inclusive; for strings and repeated fields, the
# most characters / entries (a repeated field's own count limits, 1 to 100 item ids say, are the
# answer's rules and checked where the answer is worked out)
BOUNDS: dict[str, tuple[int, int]] = {
    "recsvc.v1.RequestContext.points_balance": (0, MAX_POINTS),
    "recsvc.v1.RequestContext.experiment_arm": (0, MAX_TEXT),
    "recsvc.v1.GetRedemptionHintRequest.member_id": IDS,
    "recsvc.v1.GetRedemptionHintRequest.item_id": IDS,
    "recsvc.v1.BatchGetRedemptionHintsRequest.member_id": IDS,
    "recsvc.v1.BatchGetRedemptionHintsRequest.item_ids": IDS,
    "recsvc.v1.RecommendationFilters.categories": (0, MAX_TEXT),
    "recsvc.v1.RecommendationFilters.max_points_price": (0, MAX_POINTS),
    "recsvc.v1.RecommendRedemptionsRequest.member_id": IDS,
    "recsvc.v1.RecommendRedemptionsRequest.limit": (0, 200),
    "recsvc.v1.CartLine.item_id": IDS,
    "recsvc.v1.CartLine.unit_price_minor": (0, MAX_UNIT_PRICE_MINOR),
    "recsvc.v1.CartLine.quantity": (1, MAX_QUANTITY),
    "recsvc.v1.OptimizeCartSplitRequest.member_id": IDS,
    "recsvc.v1.GetChurnRiskRequest.member_id": IDS,
    "recsvc.v1.BatchGetChurnRiskRequest.member_ids": IDS,
    "recsvc.v1.GetNudgesRequest.member_id": IDS,
}
# repeated fields: the most entries a request may carry (over the answer's own limit, which
# names the limit in its message; this only keeps a hostile list from being walked at all)
MOST_ENTRIES: dict[str, int] = {
    "recsvc.v1.BatchGetRedemptionHintsRequest.item_ids": 100,
    "recsvc.v1.BatchGetChurnRiskRequest.member_ids": 1_000,
    "recsvc.v1.OptimizeCartSplitRequest.lines": 500,
    "recsvc.v1.RecommendationFilters.categories": MAX_CATEGORIES,
}
_INTEGERS = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
                       FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                       FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
                       FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64,
                       FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64})
_known_enums: dict[str, frozenset[int]] = {}


_needed: dict[str, tuple[FieldDescriptor, ...]] = {}


def check(message: Any, path: str = "") -> None:
    """Raise InvalidArgument for the first field of `message` (by field number) out of its
    bounds. Set fields are walked; an unset number is 0, which only the fields whose bounds
    exclude 0 refuse (an unset id: "must be set")."""
    unset = next((f for f in _zero_refused(message.DESCRIPTOR)
                  if (not message.HasField(f.name) if f.has_presence
                      else getattr(message, f.name) == 0)), None)
    for field, value in message.ListFields():  # in field-number order
        if unset is not None and unset.number < field.number:
            break
        name = f"{path}{field.name}"
        if field.is_repeated:
            entries = MOST_ENTRIES.get(field.full_name)
            if entries is not None and len(value) > entries:
                raise InvalidArgument(name, f"at most {entries} entries, got {len(value)}")
            if field.type in _INTEGERS and field.full_name in BOUNDS:
                least, most = BOUNDS[field.full_name]
                if value and least <= min(value) and max(value) <= most:
                    continue  # the usual list: two passes at C speed, no walk
            for k, item in enumerate(value):
                _check_value(field, item, f"{name}[{k}]")
        else:
            _check_value(field, value, name)
    if unset is not None:
        raise InvalidArgument(f"{path}{unset.name}", _refusal(unset, 0))


def _check_value(field: FieldDescriptor, value: Any, name: str) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        check(value, f"{name}.")
    elif kind == FieldDescriptor.TYPE_ENUM:
        if value not in _enum_numbers(field):
            raise InvalidArgument(name, f"unknown {field.enum_type.name} number {value}")
    elif kind in _INTEGERS:
        least, most = BOUNDS.get(field.full_name, (None, None))
        if least is not None and not least <= value <= most:
            raise InvalidArgument(name, _refusal(field, value))
    elif kind == FieldDescriptor.TYPE_STRING:
        most = BOUNDS.get(field.full_name, (0, MAX_TEXT))[1]
        if len(value) > most:
            raise InvalidArgument(name, f"at most {most} characters, got {len(value)}")
        if "\x00" in value:
            raise InvalidArgument(name, "must not contain NUL")


def _refusal(field: FieldDescriptor, value: int) -> str:
    """Why `value` is out of `field`'s bounds; an id of 0 is one the caller did not set."""
    least, most = BOUNDS[field.full_name]
    if value == 0 and (least, most) == IDS:
        return "must be set: ids start at 1, got 0"
    return f"must be {least} to {most}, got {value}"


def _zero_refused(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The singular number fields of `descriptor` whose bounds exclude 0 (an unset value),
    by field number."""
    found = _needed.get(descriptor.full_name)
    if found is None:
        found = _needed[descriptor.full_name] = tuple(sorted(
            (f for f in descriptor.fields if not f.is_repeated and f.type in _INTEGERS
             and not _admits_zero(f.full_name)), key=lambda f: f.number))
    return found


def _admits_zero(name: str) -> bool:
    least, most = BOUNDS.get(name, (0, 0))
    return least <= 0 <= most


def _enum_numbers(field: FieldDescriptor) -> frozenset[int]:
    known = _known_enums.get(field.enum_type.full_name)
    if known is None:
        known = _known_enums[field.enum_type.full_name] = frozenset(
            v.number for v in field.enum_type.values)
    return known


def request_fields(descriptor: Descriptor, path: str = "") -> list[str]:
    """The full names of every number, string and repeated field a request can carry (for the
    test that every one of them has a bound)."""
    out = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            out.extend(request_fields(field.message_type, f"{path}{field.name}."))
        elif field.type in _INTEGERS or field.type == FieldDescriptor.TYPE_STRING:
            out.append(field.full_name)
    return out
