"""Protobuf <-> domain conversions for the servicer, all in one place."""

from __future__ import annotations

from recsvc.serving import dataplane
from recsvc.v1 import recsvc_pb2 as pb

SURFACES = {pb.SURFACE_UNSPECIFIED: "product_page", pb.SURFACE_PRODUCT_PAGE: "product_page",
            pb.SURFACE_POINTS_CENTRE: "points_centre", pb.SURFACE_CART: "cart"}

BANDS = {"low": pb.RISK_BAND_LOW, "medium": pb.RISK_BAND_MEDIUM, "high": pb.RISK_BAND_HIGH}
SEGMENTS = {"loyal": pb.SEGMENT_LOYAL, "potential": pb.SEGMENT_POTENTIAL,
            "dormant": pb.SEGMENT_DORMANT, "ordinary": pb.SEGMENT_ORDINARY}
DEGRADED: dict[str, pb.DegradedReason] = {
    dataplane.FEATURE_STORE_UNAVAILABLE: pb.DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE,
    dataplane.NO_MODEL: pb.DEGRADED_REASON_NO_MODEL,
}


def churn_risk(risk: dataplane.Risk) -> pb.ChurnRisk:
    return pb.ChurnRisk(
        member_id=risk.member_id, probability=risk.probability, band=BANDS[risk.band],
        segment=SEGMENTS[risk.segment],
        drivers=[pb.Driver(feature=f, contribution=c) for f, c in risk.drivers],
        action=pb.Action(code=risk.action.code, description=risk.action.description),
        cold_start=risk.cold_start)


def degraded_reasons(reasons: tuple[str, ...]) -> list[pb.DegradedReason]:
    return [DEGRADED[r] for r in reasons]


def hint_request(member_id: int, item_ids: list[int], context: pb.RequestContext,
                 ) -> dataplane.HintRequest:
    return dataplane.HintRequest(
        member_id=member_id, item_ids=item_ids,
        surface=SURFACES.get(context.surface, "product_page"),
        points_balance=context.points_balance if context.HasField("points_balance") else None,
        arm=context.experiment_arm)


def redemption_hint(item: dataplane.ItemHint) -> pb.RedemptionHint:
    h = item.hint
    f = h.factors
    msg = pb.RedemptionHint(
        item_id=item.item_id, points_better=h.points_better,
        factors=pb.IndexFactors(value_coefficient=float(f.value_coefficient),
                                demand_match=float(f.demand_match),
                                behaviour_weight=float(f.behaviour_weight),
                                discount_coefficient=float(f.discount_coefficient),
                                recommendation_index=float(f.recommendation_index)),
        threshold=h.threshold, value_per_point=float(f.value_coefficient),
        vacuum_zone=h.vacuum, affordable=h.affordable, points_gap=h.points_gap,
        spend_to_close_gap_minor=h.spend_to_close_gap_minor,
        points_cash=pb.PointsCashOption(points=h.points_cash.points,
                                        cash_minor=h.points_cash.cash_minor),
        points_price=item.points_price,
        reasons=[pb.ReasonCode.Value(f"REASON_CODE_{r.name}") for r in h.reasons])
    if item.propensity is not None:
        msg.propensity = item.propensity
    return msg
