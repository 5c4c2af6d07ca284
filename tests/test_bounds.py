"""The request bounds: one table covers every number and string a request can carry."""

from __future__ import annotations

import pytest

from recsvc.errors import InvalidArgument
from recsvc.serving import bounds
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
    (pb.OptimizeCartSplitRequest(lines=[pb.CartLine(quantity=1), pb.CartLine()]),
     "lines[1].quantity"),
    (pb.GetNudgesRequest(channel=5), "channel"),
    (pb.RecommendRedemptionsRequest(context=pb.RequestContext(surface=-1)), "context.surface"),
    (pb.RecommendRedemptionsRequest(limit=-1), "limit"),
])
def test_the_first_field_out_of_bounds_is_named(request_: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        bounds.check(request_)
    assert err.value.field == field


def test_requests_within_bounds_pass() -> None:
    bounds.check(pb.OptimizeCartSplitRequest(member_id=bounds.MAX_ID, lines=[pb.CartLine(
        item_id=0, unit_price_minor=bounds.MAX_UNIT_PRICE_MINOR, quantity=bounds.MAX_QUANTITY)],
        context=pb.RequestContext(points_balance=bounds.MAX_POINTS, surface=pb.SURFACE_CART)))
    bounds.check(pb.BatchGetChurnRiskRequest(member_ids=range(1000)))
    bounds.check(pb.GetChurnRiskRequest())  # unset: the defaults
