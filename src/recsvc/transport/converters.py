"""Protobuf <-> domain conversions for the servicer, all in one place."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from recsvc.app import answers
from recsvc.core import cart, fraud, ranking
from recsvc.core.catalogue import Alternate
from recsvc.core.redemption import Reason
from recsvc.errors import InvalidArgument
from recsvc.v1 import recsvc_pb2 as pb

SURFACES = {pb.SURFACE_UNSPECIFIED: "product_page", pb.SURFACE_PRODUCT_PAGE: "product_page",
            pb.SURFACE_POINTS_CENTRE: "points_centre", pb.SURFACE_CART: "cart"}

BANDS = {"low": pb.RISK_BAND_LOW, "medium": pb.RISK_BAND_MEDIUM, "high": pb.RISK_BAND_HIGH}
SEGMENTS = {"loyal": pb.SEGMENT_LOYAL, "potential": pb.SEGMENT_POTENTIAL,
            "dormant": pb.SEGMENT_DORMANT, "ordinary": pb.SEGMENT_ORDINARY}
DEGRADED: dict[str, pb.DegradedReason] = {
    answers.FEATURE_STORE_UNAVAILABLE: pb.DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE,
    answers.NO_MODEL: pb.DEGRADED_REASON_NO_MODEL,
    answers.CAP_STORE_UNAVAILABLE: pb.DEGRADED_REASON_CAP_STORE_UNAVAILABLE,
}


def churn_risk(risk: answers.Risk) -> pb.ChurnRisk:
    msg = pb.ChurnRisk()
    fill_churn_risk(msg, risk)
    return msg


def fill_churn_risk(msg: pb.ChurnRisk, risk: answers.Risk) -> None:
    """Fill `msg` in place (a 1,000-member batch fills `risks.add()`: no message is built
    twice, as it is when a built one is handed to a repeated field)."""
    msg.member_id, msg.probability = risk.member_id, risk.probability
    msg.band, msg.segment = BANDS[risk.band], SEGMENTS[risk.segment]
    for feature, contribution in risk.drivers:
        driver = msg.drivers.add()
        driver.feature, driver.contribution = feature, contribution
    action = msg.action
    action.code, action.description = risk.action.code, risk.action.description
    msg.cold_start = risk.cold_start


def batch_churn_risks(answer: answers.ChurnAnswer) -> pb.BatchGetChurnRiskResponse:
    msg = pb.BatchGetChurnRiskResponse(
        horizon_days=answer.horizon_days,
        **stamp_fields(answer.stamp, pb.BatchGetChurnRiskResponse))
    for risk in answer.risks:
        fill_churn_risk(msg.risks.add(), risk)
    return msg


def degraded_reasons(reasons: tuple[str, ...]) -> list[pb.DegradedReason]:
    return [DEGRADED[r] for r in reasons]


FRAUD_FLAGS = {name: pb.FraudFlag.Value(f"FRAUD_FLAG_{name.upper()}") for name in fraud.FLAG_NAMES}


def verification(flags: tuple[str, ...]) -> pb.Verification | None:
    """Set (required) for a flagged member only; a flag this contract has no number for still
    requires verification."""
    if not flags:
        return None
    return pb.Verification(required=True,
                           flags=[FRAUD_FLAGS.get(f, pb.FRAUD_FLAG_UNSPECIFIED) for f in flags])


@functools.cache
def _fields(message: type) -> frozenset[str]:
    return frozenset(message.DESCRIPTOR.fields_by_name)  # type: ignore[attr-defined]


def stamp_fields(stamp: answers.Stamp, message: type) -> dict[str, Any]:
    """How the answer was made, as the fields of the response class `message` that say it
    (of experiment_arm, model_version, degraded, degraded_reasons and verification, those it
    has): every response fills them from its answer's `Stamp` here."""
    have = _fields(message)
    out: dict[str, Any] = {"degraded": bool(stamp.degraded),
                           "degraded_reasons": degraded_reasons(stamp.degraded)}
    if "experiment_arm" in have:
        out["experiment_arm"] = stamp.arm
    if "model_version" in have:
        out["model_version"] = stamp.model_version
    if "verification" in have:
        out["verification"] = verification(stamp.verification)
    return out


BINDING = {rule: pb.BindingRule.Value(f"BINDING_RULE_{rule.upper()}")
           for rule in cart.BINDING_RULES}


class Context(NamedTuple):
    """The request-time fields every member-facing request shares."""

    points_balance: int | None
    arm: str
    surface: str


def _context(context: pb.RequestContext, default_surface: str) -> Context:
    # an enum number the contract does not define never gets here (bounds.check)
    return Context(
        context.points_balance if context.HasField("points_balance") else None,
        context.experiment_arm,
        SURFACES[context.surface] if context.surface else default_surface)


def hint_request(member_id: int, item_ids: list[int], context: pb.RequestContext, *,
                 item_field: str = "item_ids") -> answers.HintRequest:
    c = _context(context, "product_page")
    return answers.HintRequest(member_id=member_id, item_ids=item_ids, surface=c.surface,
                                 points_balance=c.points_balance, arm=c.arm,
                                 item_field=item_field)


def recommend_request(request: pb.RecommendRedemptionsRequest) -> answers.RecommendRequest:
    f, c = request.filters, _context(request.context, "points_centre")
    return answers.RecommendRequest(
        member_id=request.member_id, limit=request.limit, categories=list(f.categories),
        max_points_price=f.max_points_price, affordable_only=f.affordable_only,
        surface=c.surface, points_balance=c.points_balance, arm=c.arm)


def cart_request(request: pb.OptimizeCartSplitRequest) -> answers.CartRequest:
    c = _context(request.context, "cart")
    return answers.CartRequest(
        member_id=request.member_id,
        lines=[cart.CartLine(line.item_id, line.unit_price_minor, line.quantity,
                             line.points_eligible) for line in request.lines],
        points_balance=c.points_balance, arm=c.arm)


_REASON_CODES: dict[tuple[Reason, ...], list[pb.ReasonCode]] = {}


def _reasons(reasons: tuple[Reason, ...]) -> list[pb.ReasonCode]:
    """The ReasonCode numbers of `reasons` (Reason mirrors them: tests/test_proto.py checks),
    made once per combination: answers share their reasons' tuples."""
    codes = _REASON_CODES.get(reasons)
    if codes is None:
        if len(_REASON_CODES) >= 4096:  # combinations are few; a bound all the same
            _REASON_CODES.clear()
        codes = _REASON_CODES[reasons] = [pb.ReasonCode.ValueType(r.value) for r in reasons]
    return codes


def _timestamp(when: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def redemption_hint(item: answers.ItemHint) -> pb.RedemptionHint:
    msg = pb.RedemptionHint()
    fill_redemption_hint(msg, item)
    return msg


def fill_redemption_hint(msg: pb.RedemptionHint, item: answers.ItemHint) -> None:
    """Fill `msg` in place, as `_fill_option` does an option (a batch fills `hints.add()`)."""
    h, g = item.hint, item.hint.factors
    msg.item_id, msg.points_better, msg.threshold = item.item_id, h.points_better, h.threshold
    f = msg.factors
    f.value_coefficient, f.demand_match, f.behaviour_weight = (
        g.value_coefficient, g.demand_match, g.behaviour_weight)
    f.discount_coefficient, f.recommendation_index = (g.discount_coefficient,
                                                      g.recommendation_index)
    msg.value_per_point, msg.vacuum_zone, msg.affordable = (g.value_coefficient, h.vacuum,
                                                            h.affordable)
    msg.points_gap, msg.spend_to_close_gap_minor = h.points_gap, h.spend_to_close_gap_minor
    pay = msg.points_cash
    pay.points, pay.cash_minor = h.points_cash.points, h.points_cash.cash_minor
    msg.points_price, msg.in_stock = item.points_price, h.in_stock
    msg.reasons.extend(_reasons(h.reasons))
    if item.alternates:
        msg.alternates.extend([_alternate(a) for a in item.alternates])
    if item.propensity is not None:
        msg.propensity = item.propensity


def batch_hints(answer: answers.HintAnswer) -> pb.BatchGetRedemptionHintsResponse:
    msg = pb.BatchGetRedemptionHintsResponse(
        **stamp_fields(answer.stamp, pb.BatchGetRedemptionHintsResponse))
    for hint in answer.hints:
        fill_redemption_hint(msg.hints.add(), hint)
    return msg


def _alternate(a: Alternate) -> pb.Alternate:
    msg = pb.Alternate(item_id=a.item_id, points_price=a.points_price, category=a.category,
                       similarity=a.similarity, reasons=_reasons(a.reasons))
    if a.propensity is not None:
        msg.propensity = a.propensity
    return msg


def _fill_option(msg: pb.RedemptionOption, o: ranking.Option) -> None:
    """Fill `msg` in place: for a 200-option answer, about twice as fast as building each
    option (and its factors and points + cash messages) from keyword arguments."""
    msg.item_id, msg.rank, msg.score = o.item_id, o.rank, o.score
    f, g = msg.factors, o.factors
    f.value_coefficient, f.demand_match, f.behaviour_weight = (
        g.value_coefficient, g.demand_match, g.behaviour_weight)
    f.discount_coefficient, f.recommendation_index = (g.discount_coefficient,
                                                      g.recommendation_index)
    if o.propensity is not None:
        msg.propensity = o.propensity
    msg.points_price = o.points_price
    for option in o.points_cash:
        pay = msg.points_cash.add()
        pay.points, pay.cash_minor = option.points, option.cash_minor
    msg.points_gap, msg.spend_to_close_gap_minor = o.points_gap, o.spend_to_close_gap_minor
    msg.expiring_points_used, msg.category = o.expiring_points_used, o.category
    msg.reasons.extend(_reasons(o.reasons))


def recommendations(answer: answers.RecommendAnswer) -> pb.RecommendRedemptionsResponse:
    msg = pb.RecommendRedemptionsResponse(
        unlocks=[_unlock(u) for u in answer.unlocks],
        points_balance=answer.points_balance, expiring_points=answer.expiring_points,
        **stamp_fields(answer.stamp, pb.RecommendRedemptionsResponse))
    for option in answer.options:
        _fill_option(msg.options.add(), option)
    if answer.next_expiry is not None:
        msg.next_expiry.CopyFrom(_timestamp(answer.next_expiry))
    return msg


def cart_split(answer: answers.CartAnswer) -> pb.OptimizeCartSplitResponse:
    s = answer.split
    return pb.OptimizeCartSplitResponse(
        points_used=s.points_used, cash_minor=s.cash_minor, order_total_minor=s.order_total_minor,
        points_value_minor=s.points_value_minor,
        lines=[pb.LineAllocation(item_id=a.item_id, line_total_minor=a.line_total_minor,
                                 points=a.points, points_value_minor=a.points_value_minor,
                                 cash_minor=a.cash_minor) for a in s.lines],
        binding_rule=BINDING[s.binding_rule],
        # points of unknown lapse (earned since the last snapshot) carry no expires_at
        buckets=[pb.ExpiryBucketUse(points=points) if when == cart.NO_EXPIRY else
                 pb.ExpiryBucketUse(expires_at=_timestamp(when), points=points)
                 for when, points in s.buckets_used],
        advice=s.advice or "", keep_points=s.keep_points,
        **stamp_fields(answer.stamp, pb.OptimizeCartSplitResponse))


# -- GetNudges --------------------------------------------------------------------------------
CHANNELS = {pb.CHANNEL_UNSPECIFIED: "in_app", pb.CHANNEL_IN_APP: "in_app",
            pb.CHANNEL_PUSH: "push", pb.CHANNEL_EMAIL: "email", pb.CHANNEL_SMS: "sms"}
NUDGE_KINDS: dict[str, pb.NudgeKind] = {
    "expiry_urgent": pb.NUDGE_KIND_EXPIRY_URGENT, "expiry": pb.NUDGE_KIND_EXPIRY,
    "low_balance": pb.NUDGE_KIND_LOW_BALANCE, "unlock_close": pb.NUDGE_KIND_UNLOCK_CLOSE}


def nudge_request(request: pb.GetNudgesRequest) -> answers.NudgeRequest:
    channel = CHANNELS.get(request.channel)
    if channel is None:
        raise InvalidArgument("channel", f"unknown channel {request.channel}")
    c = _context(request.context, "points_centre")
    return answers.NudgeRequest(member_id=request.member_id, channel=channel,
                                  points_balance=c.points_balance, arm=c.arm,
                                  dry_run=request.dry_run, surface=c.surface)


def _unlock(u: ranking.Unlock) -> pb.CategoryUnlock:
    return pb.CategoryUnlock(category=u.category, unlock_points=u.unlock_points,
                             points_gap=u.points_gap,
                             spend_to_unlock_minor=u.spend_to_unlock_minor)


def nudges(answer: answers.NudgeAnswer) -> pb.GetNudgesResponse:
    msg = pb.GetNudgesResponse(
        capped=[pb.CappedNudge(kind=NUDGE_KINDS[c.kind], cap=c.cap) for c in answer.capped],
        **stamp_fields(answer.stamp, pb.GetNudgesResponse))
    for n in answer.nudges:
        out = msg.nudges.add()
        out.kind, out.points, out.message = NUDGE_KINDS[n.kind], n.points, n.message
        if n.expires_at is not None:
            out.expires_at.CopyFrom(_timestamp(n.expires_at))
        for option in n.options:
            _fill_option(out.options.add(), option)
        if n.unlock is not None:
            out.unlock.CopyFrom(_unlock(n.unlock))
    return msg
