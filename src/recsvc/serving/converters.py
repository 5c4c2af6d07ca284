"""Protobuf <-> domain conversions for the servicer, all in one place."""

from __future__ import annotations

from recsvc.serving import dataplane
from recsvc.v1 import recsvc_pb2 as pb

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
