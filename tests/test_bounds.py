"""The request bounds: one table covers every number and string a request can carry."""

from __future__ import annotations

import pytest

from recsvc.errors import InvalidArgument
from recsvc.transport import bounds
from recsvc.v1 import recsvc_pb2 as pb


def test_every_number_and_string_of_every_request_has_a_bound() -> None:
    service = pb.DESCRIPTOR.services_by_name["RedemptionService"]
    fields = {name for m in service.methods for name in bounds.request_fields(m.input_type)}
    strings = {"recsvc.v1.RequestContext.experiment_arm",
               "recsvc.v1.RecommendationFilters.categories"}
    assert fields - set(bounds.BOUNDS) == set()
    assert set(bounds.BOUNDS) - fields == set()  # nothing stale either
    assert strings <= fields


@pytest.mark.parametrize(("request_", "field"), [
    (pb.GetRedemptionHintRequest(member_id=bounds.MAX_ID + 1), "member_id"),
    (pb.BatchGetChurnRiskRequest(member_ids=[1, 2, -1]), "member_ids[2]"),
    (pb.BatchGetChurnRiskRequest(member_ids=[1] * 1001), "member_ids"),
    (pb.OptimizeCartSplitRequest(member_id=1, lines=[pb.CartLine(item_id=1, quantity=1),
                                                     pb.CartLine(item_id=2)]),
     "lines[1].quantity"),
    (pb.GetNudgesRequest(member_id=1, channel=5), "channel"),
    (pb.RecommendRedemptionsRequest(member_id=1, context=pb.RequestContext(surface=-1)),
     "context.surface"),
    (pb.RecommendRedemptionsRequest(member_id=1, limit=-1), "limit"),
])
def test_the_first_field_out_of_bounds_is_named(request_: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        bounds.check(request_)
    assert err.value.field == field


def test_every_id_of_every_request_starts_at_1() -> None:
    """Every id field (member_id, item_id, item_ids, member_ids, ...) is 1 to 2^53 - 1: 0 is
    what proto3 sends for an id the caller did not set."""
    service = pb.DESCRIPTOR.services_by_name["RedemptionService"]
    fields = {name for m in service.methods for name in bounds.request_fields(m.input_type)}
    ids = {f for f in fields if f.rsplit(".", 1)[1].endswith(("_id", "_ids"))}
    assert len(ids) == 10
    assert {f: bounds.BOUNDS[f] for f in ids} == dict.fromkeys(ids, (1, bounds.MAX_ID))


@pytest.mark.parametrize(("request_", "field"), [
    (pb.GetRedemptionHintRequest(), "member_id"),  # an empty request: not member 0, item 0
    (pb.GetRedemptionHintRequest(member_id=7), "item_id"),
    (pb.GetRedemptionHintRequest(item_id=-1), "member_id"),  # fields in order, set or not
    (pb.BatchGetRedemptionHintsRequest(item_ids=[1]), "member_id"),
    (pb.BatchGetRedemptionHintsRequest(member_id=7, item_ids=[1, 2, 3, 0]), "item_ids[3]"),
    (pb.BatchGetRedemptionHintsRequest(member_id=7, item_ids=[0]), "item_ids[0]"),
    (pb.RecommendRedemptionsRequest(limit=5), "member_id"),
    (pb.OptimizeCartSplitRequest(lines=[pb.CartLine(item_id=1, quantity=1)]), "member_id"),
    (pb.OptimizeCartSplitRequest(member_id=7, lines=[
        pb.CartLine(item_id=1, quantity=1), pb.CartLine(unit_price_minor=100, quantity=1)]),
     "lines[1].item_id"),
    (pb.GetChurnRiskRequest(), "member_id"),
    (pb.BatchGetChurnRiskRequest(member_ids=[5, 0, 6]), "member_ids[1]"),
    (pb.GetNudgesRequest(channel=pb.CHANNEL_PUSH, dry_run=True), "member_id"),
])
def test_an_unset_id_is_refused_naming_the_field(request_: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        bounds.check(request_)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: must be set: ids start at 1"), str(err.value)


def test_requests_within_bounds_pass() -> None:
    bounds.check(pb.OptimizeCartSplitRequest(member_id=bounds.MAX_ID, lines=[pb.CartLine(
        item_id=1, unit_price_minor=bounds.MAX_UNIT_PRICE_MINOR, quantity=bounds.MAX_QUANTITY)],
        context=pb.RequestContext(points_balance=bounds.MAX_POINTS, surface=pb.SURFACE_CART)))
    bounds.check(pb.BatchGetChurnRiskRequest(member_ids=range(1, 1001)))
    bounds.check(pb.GetChurnRiskRequest(member_id=1))  # the other fields unset: the defaults
    bounds.check(pb.RecommendRedemptionsRequest(member_id=1))
