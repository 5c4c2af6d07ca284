import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Surface(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SURFACE_UNSPECIFIED: _ClassVar[Surface]
    SURFACE_PRODUCT_PAGE: _ClassVar[Surface]
    SURFACE_POINTS_CENTRE: _ClassVar[Surface]
    SURFACE_CART: _ClassVar[Surface]

class ReasonCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_CODE_UNSPECIFIED: _ClassVar[ReasonCode]
    REASON_CODE_INDEX_ABOVE_THRESHOLD: _ClassVar[ReasonCode]
    REASON_CODE_INDEX_BELOW_THRESHOLD: _ClassVar[ReasonCode]
    REASON_CODE_VACUUM_ZONE: _ClassVar[ReasonCode]
    REASON_CODE_NOT_AFFORDABLE: _ClassVar[ReasonCode]
    REASON_CODE_USES_EXPIRING_POINTS: _ClassVar[ReasonCode]
    REASON_CODE_HIGH_PROPENSITY: _ClassVar[ReasonCode]
    REASON_CODE_ON_PROMOTION: _ClassVar[ReasonCode]
    REASON_CODE_UNLOCK_CLOSE: _ClassVar[ReasonCode]
    REASON_CODE_COLD_START: _ClassVar[ReasonCode]
    REASON_CODE_OUT_OF_STOCK: _ClassVar[ReasonCode]
    REASON_CODE_SAME_CATEGORY: _ClassVar[ReasonCode]
    REASON_CODE_SAME_POINTS_CLASS: _ClassVar[ReasonCode]
    REASON_CODE_SIMILAR_POINTS_PRICE: _ClassVar[ReasonCode]

class DegradedReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADED_REASON_UNSPECIFIED: _ClassVar[DegradedReason]
    DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE: _ClassVar[DegradedReason]
    DEGRADED_REASON_FEATURE_STORE_TIMEOUT: _ClassVar[DegradedReason]
    DEGRADED_REASON_NO_MODEL: _ClassVar[DegradedReason]
    DEGRADED_REASON_CAP_STORE_UNAVAILABLE: _ClassVar[DegradedReason]

class FraudFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAUD_FLAG_UNSPECIFIED: _ClassVar[FraudFlag]
    FRAUD_FLAG_REDEMPTION_BURST: _ClassVar[FraudFlag]
    FRAUD_FLAG_BALANCE_DRAIN: _ClassVar[FraudFlag]
    FRAUD_FLAG_EARN_BURN_LOOP: _ClassVar[FraudFlag]
    FRAUD_FLAG_ANOMALY: _ClassVar[FraudFlag]

class BindingRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BINDING_RULE_UNSPECIFIED: _ClassVar[BindingRule]
    BINDING_RULE_NONE: _ClassVar[BindingRule]
    BINDING_RULE_BALANCE: _ClassVar[BindingRule]
    BINDING_RULE_SHARE_CAP: _ClassVar[BindingRule]
    BINDING_RULE_TIERED_CAP: _ClassVar[BindingRule]
    BINDING_RULE_MIN_STEP: _ClassVar[BindingRule]
    BINDING_RULE_ELIGIBILITY: _ClassVar[BindingRule]

class RiskBand(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RISK_BAND_UNSPECIFIED: _ClassVar[RiskBand]
    RISK_BAND_LOW: _ClassVar[RiskBand]
    RISK_BAND_MEDIUM: _ClassVar[RiskBand]
    RISK_BAND_HIGH: _ClassVar[RiskBand]

class Segment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENT_UNSPECIFIED: _ClassVar[Segment]
    SEGMENT_LOYAL: _ClassVar[Segment]
    SEGMENT_POTENTIAL: _ClassVar[Segment]
    SEGMENT_DORMANT: _ClassVar[Segment]
    SEGMENT_ORDINARY: _ClassVar[Segment]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_IN_APP: _ClassVar[Channel]
    CHANNEL_PUSH: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_SMS: _ClassVar[Channel]

class NudgeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NUDGE_KIND_UNSPECIFIED: _ClassVar[NudgeKind]
    NUDGE_KIND_EXPIRY: _ClassVar[NudgeKind]
    NUDGE_KIND_EXPIRY_URGENT: _ClassVar[NudgeKind]
    NUDGE_KIND_LOW_BALANCE: _ClassVar[NudgeKind]
    NUDGE_KIND_UNLOCK_CLOSE: _ClassVar[NudgeKind]
SURFACE_UNSPECIFIED: Surface
SURFACE_PRODUCT_PAGE: Surface
SURFACE_POINTS_CENTRE: Surface
SURFACE_CART: Surface
REASON_CODE_UNSPECIFIED: ReasonCode
REASON_CODE_INDEX_ABOVE_THRESHOLD: ReasonCode
REASON_CODE_INDEX_BELOW_THRESHOLD: ReasonCode
REASON_CODE_VACUUM_ZONE: ReasonCode
REASON_CODE_NOT_AFFORDABLE: ReasonCode
REASON_CODE_USES_EXPIRING_POINTS: ReasonCode
REASON_CODE_HIGH_PROPENSITY: ReasonCode
REASON_CODE_ON_PROMOTION: ReasonCode
REASON_CODE_UNLOCK_CLOSE: ReasonCode
REASON_CODE_COLD_START: ReasonCode
REASON_CODE_OUT_OF_STOCK: ReasonCode
REASON_CODE_SAME_CATEGORY: ReasonCode
REASON_CODE_SAME_POINTS_CLASS: ReasonCode
REASON_CODE_SIMILAR_POINTS_PRICE: ReasonCode
DEGRADED_REASON_UNSPECIFIED: DegradedReason
DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE: DegradedReason
DEGRADED_REASON_FEATURE_STORE_TIMEOUT: DegradedReason
DEGRADED_REASON_NO_MODEL: DegradedReason
DEGRADED_REASON_CAP_STORE_UNAVAILABLE: DegradedReason
FRAUD_FLAG_UNSPECIFIED: FraudFlag
FRAUD_FLAG_REDEMPTION_BURST: FraudFlag
FRAUD_FLAG_BALANCE_DRAIN: FraudFlag
FRAUD_FLAG_EARN_BURN_LOOP: FraudFlag
FRAUD_FLAG_ANOMALY: FraudFlag
BINDING_RULE_UNSPECIFIED: BindingRule
BINDING_RULE_NONE: BindingRule
BINDING_RULE_BALANCE: BindingRule
BINDING_RULE_SHARE_CAP: BindingRule
BINDING_RULE_TIERED_CAP: BindingRule
BINDING_RULE_MIN_STEP: BindingRule
BINDING_RULE_ELIGIBILITY: BindingRule
RISK_BAND_UNSPECIFIED: RiskBand
RISK_BAND_LOW: RiskBand
RISK_BAND_MEDIUM: RiskBand
RISK_BAND_HIGH: RiskBand
SEGMENT_UNSPECIFIED: Segment
SEGMENT_LOYAL: Segment
SEGMENT_POTENTIAL: Segment
SEGMENT_DORMANT: Segment
SEGMENT_ORDINARY: Segment
CHANNEL_UNSPECIFIED: Channel
CHANNEL_IN_APP: Channel
CHANNEL_PUSH: Channel
CHANNEL_EMAIL: Channel
CHANNEL_SMS: Channel
NUDGE_KIND_UNSPECIFIED: NudgeKind
NUDGE_KIND_EXPIRY: NudgeKind
NUDGE_KIND_EXPIRY_URGENT: NudgeKind
NUDGE_KIND_LOW_BALANCE: NudgeKind
NUDGE_KIND_UNLOCK_CLOSE: NudgeKind

class RequestContext(_message.Message):
    __slots__ = ("surface", "points_balance", "experiment_arm")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    POINTS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    surface: Surface
    points_balance: int
    experiment_arm: str
    def __init__(self, surface: _Optional[_Union[Surface, str]] = ..., points_balance: _Optional[int] = ..., experiment_arm: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("required", "flags")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    required: bool
    flags: _containers.RepeatedScalarFieldContainer[FraudFlag]
    def __init__(self, required: _Optional[bool] = ..., flags: _Optional[_Iterable[_Union[FraudFlag, str]]] = ...) -> None: ...

class Alternate(_message.Message):
    __slots__ = ("item_id", "points_price", "category", "similarity", "propensity", "reasons")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    points_price: int
    category: str
    similarity: float
    propensity: float
    reasons: _containers.RepeatedScalarFieldContainer[ReasonCode]
    def __init__(self, item_id: _Optional[int] = ..., points_price: _Optional[int] = ..., category: _Optional[str] = ..., similarity: _Optional[float] = ..., propensity: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[ReasonCode, str]]] = ...) -> None: ...

class IndexFactors(_message.Message):
    __slots__ = ("value_coefficient", "demand_match", "behaviour_weight", "discount_coefficient", "recommendation_index")
    VALUE_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    DEMAND_MATCH_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_INDEX_FIELD_NUMBER: _ClassVar[int]
    value_coefficient: float
    demand_match: float
    behaviour_weight: float
    discount_coefficient: float
    recommendation_index: float
    def __init__(self, value_coefficient: _Optional[float] = ..., demand_match: _Optional[float] = ..., behaviour_weight: _Optional[float] = ..., discount_coefficient: _Optional[float] = ..., recommendation_index: _Optional[float] = ...) -> None: ...

class PointsCashOption(_message.Message):
    __slots__ = ("points", "cash_minor")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    CASH_MINOR_FIELD_NUMBER: _ClassVar[int]
    points: int
    cash_minor: int
    def __init__(self, points: _Optional[int] = ..., cash_minor: _Optional[int] = ...) -> None: ...

class RedemptionHint(_message.Message):
    __slots__ = ("item_id", "points_better", "factors", "threshold", "value_per_point", "propensity", "vacuum_zone", "affordable", "points_gap", "spend_to_close_gap_minor", "points_cash", "points_price", "reasons", "in_stock", "alternates")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_BETTER_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VALUE_PER_POINT_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VACUUM_ZONE_FIELD_NUMBER: _ClassVar[int]
    AFFORDABLE_FIELD_NUMBER: _ClassVar[int]
    POINTS_GAP_FIELD_NUMBER: _ClassVar[int]
    SPEND_TO_CLOSE_GAP_MINOR_FIELD_NUMBER: _ClassVar[int]
    POINTS_CASH_FIELD_NUMBER: _ClassVar[int]
    POINTS_PRICE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    ALTERNATES_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    points_better: bool
    factors: IndexFactors
    threshold: float
    value_per_point: float
    propensity: float
    vacuum_zone: bool
    affordable: bool
    points_gap: int
    spend_to_close_gap_minor: int
    points_cash: PointsCashOption
    points_price: int
    reasons: _containers.RepeatedScalarFieldContainer[ReasonCode]
    in_stock: bool
    alternates: _containers.RepeatedCompositeFieldContainer[Alternate]
    def __init__(self, item_id: _Optional[int] = ..., points_better: _Optional[bool] = ..., factors: _Optional[_Union[IndexFactors, _Mapping]] = ..., threshold: _Optional[float] = ..., value_per_point: _Optional[float] = ..., propensity: _Optional[float] = ..., vacuum_zone: _Optional[bool] = ..., affordable: _Optional[bool] = ..., points_gap: _Optional[int] = ..., spend_to_close_gap_minor: _Optional[int] = ..., points_cash: _Optional[_Union[PointsCashOption, _Mapping]] = ..., points_price: _Optional[int] = ..., reasons: _Optional[_Iterable[_Union[ReasonCode, str]]] = ..., in_stock: _Optional[bool] = ..., alternates: _Optional[_Iterable[_Union[Alternate, _Mapping]]] = ...) -> None: ...

class GetRedemptionHintRequest(_message.Message):
    __slots__ = ("member_id", "item_id", "context")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    item_id: int
    context: RequestContext
    def __init__(self, member_id: _Optional[int] = ..., item_id: _Optional[int] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ...) -> None: ...

class GetRedemptionHintResponse(_message.Message):
    __slots__ = ("hint", "experiment_arm", "model_version", "degraded", "degraded_reasons", "verification")
    HINT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    hint: RedemptionHint
    experiment_arm: str
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    verification: Verification
    def __init__(self, hint: _Optional[_Union[RedemptionHint, _Mapping]] = ..., experiment_arm: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class BatchGetRedemptionHintsRequest(_message.Message):
    __slots__ = ("member_id", "item_ids", "context")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    context: RequestContext
    def __init__(self, member_id: _Optional[int] = ..., item_ids: _Optional[_Iterable[int]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ...) -> None: ...

class BatchGetRedemptionHintsResponse(_message.Message):
    __slots__ = ("hints", "experiment_arm", "model_version", "degraded", "degraded_reasons", "verification")
    HINTS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    hints: _containers.RepeatedCompositeFieldContainer[RedemptionHint]
    experiment_arm: str
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    verification: Verification
    def __init__(self, hints: _Optional[_Iterable[_Union[RedemptionHint, _Mapping]]] = ..., experiment_arm: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class RecommendationFilters(_message.Message):
    __slots__ = ("categories", "max_points_price", "affordable_only")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_PRICE_FIELD_NUMBER: _ClassVar[int]
    AFFORDABLE_ONLY_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    max_points_price: int
    affordable_only: bool
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., max_points_price: _Optional[int] = ..., affordable_only: _Optional[bool] = ...) -> None: ...

class RedemptionOption(_message.Message):
    __slots__ = ("item_id", "rank", "score", "factors", "propensity", "points_price", "points_cash", "points_gap", "spend_to_close_gap_minor", "expiring_points_used", "category", "reasons")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POINTS_PRICE_FIELD_NUMBER: _ClassVar[int]
    POINTS_CASH_FIELD_NUMBER: _ClassVar[int]
    POINTS_GAP_FIELD_NUMBER: _ClassVar[int]
    SPEND_TO_CLOSE_GAP_MINOR_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_POINTS_USED_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    rank: int
    score: float
    factors: IndexFactors
    propensity: float
    points_price: int
    points_cash: _containers.RepeatedCompositeFieldContainer[PointsCashOption]
    points_gap: int
    spend_to_close_gap_minor: int
    expiring_points_used: int
    category: str
    reasons: _containers.RepeatedScalarFieldContainer[ReasonCode]
    def __init__(self, item_id: _Optional[int] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., factors: _Optional[_Union[IndexFactors, _Mapping]] = ..., propensity: _Optional[float] = ..., points_price: _Optional[int] = ..., points_cash: _Optional[_Iterable[_Union[PointsCashOption, _Mapping]]] = ..., points_gap: _Optional[int] = ..., spend_to_close_gap_minor: _Optional[int] = ..., expiring_points_used: _Optional[int] = ..., category: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[ReasonCode, str]]] = ...) -> None: ...

class CategoryUnlock(_message.Message):
    __slots__ = ("category", "unlock_points", "points_gap", "spend_to_unlock_minor")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_POINTS_FIELD_NUMBER: _ClassVar[int]
    POINTS_GAP_FIELD_NUMBER: _ClassVar[int]
    SPEND_TO_UNLOCK_MINOR_FIELD_NUMBER: _ClassVar[int]
    category: str
    unlock_points: int
    points_gap: int
    spend_to_unlock_minor: int
    def __init__(self, category: _Optional[str] = ..., unlock_points: _Optional[int] = ..., points_gap: _Optional[int] = ..., spend_to_unlock_minor: _Optional[int] = ...) -> None: ...

class RecommendRedemptionsRequest(_message.Message):
    __slots__ = ("member_id", "limit", "filters", "context")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    limit: int
    filters: RecommendationFilters
    context: RequestContext
    def __init__(self, member_id: _Optional[int] = ..., limit: _Optional[int] = ..., filters: _Optional[_Union[RecommendationFilters, _Mapping]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ...) -> None: ...

class RecommendRedemptionsResponse(_message.Message):
    __slots__ = ("options", "unlocks", "points_balance", "expiring_points", "next_expiry", "experiment_arm", "model_version", "degraded", "degraded_reasons", "verification")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    UNLOCKS_FIELD_NUMBER: _ClassVar[int]
    POINTS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    options: _containers.RepeatedCompositeFieldContainer[RedemptionOption]
    unlocks: _containers.RepeatedCompositeFieldContainer[CategoryUnlock]
    points_balance: int
    expiring_points: int
    next_expiry: _timestamp_pb2.Timestamp
    experiment_arm: str
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    verification: Verification
    def __init__(self, options: _Optional[_Iterable[_Union[RedemptionOption, _Mapping]]] = ..., unlocks: _Optional[_Iterable[_Union[CategoryUnlock, _Mapping]]] = ..., points_balance: _Optional[int] = ..., expiring_points: _Optional[int] = ..., next_expiry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., experiment_arm: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class CartLine(_message.Message):
    __slots__ = ("item_id", "unit_price_minor", "quantity", "points_eligible")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_MINOR_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    POINTS_ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    unit_price_minor: int
    quantity: int
    points_eligible: bool
    def __init__(self, item_id: _Optional[int] = ..., unit_price_minor: _Optional[int] = ..., quantity: _Optional[int] = ..., points_eligible: _Optional[bool] = ...) -> None: ...

class LineAllocation(_message.Message):
    __slots__ = ("item_id", "line_total_minor", "points", "points_value_minor", "cash_minor")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_TOTAL_MINOR_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    POINTS_VALUE_MINOR_FIELD_NUMBER: _ClassVar[int]
    CASH_MINOR_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    line_total_minor: int
    points: int
    points_value_minor: int
    cash_minor: int
    def __init__(self, item_id: _Optional[int] = ..., line_total_minor: _Optional[int] = ..., points: _Optional[int] = ..., points_value_minor: _Optional[int] = ..., cash_minor: _Optional[int] = ...) -> None: ...

class ExpiryBucketUse(_message.Message):
    __slots__ = ("expires_at", "points")
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    points: int
    def __init__(self, expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., points: _Optional[int] = ...) -> None: ...

class OptimizeCartSplitRequest(_message.Message):
    __slots__ = ("member_id", "lines", "context")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    lines: _containers.RepeatedCompositeFieldContainer[CartLine]
    context: RequestContext
    def __init__(self, member_id: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[CartLine, _Mapping]]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ...) -> None: ...

class OptimizeCartSplitResponse(_message.Message):
    __slots__ = ("points_used", "cash_minor", "order_total_minor", "points_value_minor", "lines", "binding_rule", "buckets", "advice", "keep_points", "degraded", "degraded_reasons", "verification")
    POINTS_USED_FIELD_NUMBER: _ClassVar[int]
    CASH_MINOR_FIELD_NUMBER: _ClassVar[int]
    ORDER_TOTAL_MINOR_FIELD_NUMBER: _ClassVar[int]
    POINTS_VALUE_MINOR_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    BINDING_RULE_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    ADVICE_FIELD_NUMBER: _ClassVar[int]
    KEEP_POINTS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    points_used: int
    cash_minor: int
    order_total_minor: int
    points_value_minor: int
    lines: _containers.RepeatedCompositeFieldContainer[LineAllocation]
    binding_rule: BindingRule
    buckets: _containers.RepeatedCompositeFieldContainer[ExpiryBucketUse]
    advice: str
    keep_points: bool
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    verification: Verification
    def __init__(self, points_used: _Optional[int] = ..., cash_minor: _Optional[int] = ..., order_total_minor: _Optional[int] = ..., points_value_minor: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[LineAllocation, _Mapping]]] = ..., binding_rule: _Optional[_Union[BindingRule, str]] = ..., buckets: _Optional[_Iterable[_Union[ExpiryBucketUse, _Mapping]]] = ..., advice: _Optional[str] = ..., keep_points: _Optional[bool] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...

class Driver(_message.Message):
    __slots__ = ("feature", "contribution")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    contribution: float
    def __init__(self, feature: _Optional[str] = ..., contribution: _Optional[float] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("code", "description")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    code: str
    description: str
    def __init__(self, code: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ChurnRisk(_message.Message):
    __slots__ = ("member_id", "probability", "band", "segment", "drivers", "action", "cold_start")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    probability: float
    band: RiskBand
    segment: Segment
    drivers: _containers.RepeatedCompositeFieldContainer[Driver]
    action: Action
    cold_start: bool
    def __init__(self, member_id: _Optional[int] = ..., probability: _Optional[float] = ..., band: _Optional[_Union[RiskBand, str]] = ..., segment: _Optional[_Union[Segment, str]] = ..., drivers: _Optional[_Iterable[_Union[Driver, _Mapping]]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., cold_start: _Optional[bool] = ...) -> None: ...

class GetChurnRiskRequest(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    def __init__(self, member_id: _Optional[int] = ...) -> None: ...

class GetChurnRiskResponse(_message.Message):
    __slots__ = ("risk", "model_version", "degraded", "degraded_reasons", "horizon_days")
    RISK_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    risk: ChurnRisk
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    horizon_days: int
    def __init__(self, risk: _Optional[_Union[ChurnRisk, _Mapping]] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., horizon_days: _Optional[int] = ...) -> None: ...

class BatchGetChurnRiskRequest(_message.Message):
    __slots__ = ("member_ids",)
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    member_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, member_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchGetChurnRiskResponse(_message.Message):
    __slots__ = ("risks", "model_version", "degraded", "degraded_reasons", "horizon_days")
    RISKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    risks: _containers.RepeatedCompositeFieldContainer[ChurnRisk]
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    horizon_days: int
    def __init__(self, risks: _Optional[_Iterable[_Union[ChurnRisk, _Mapping]]] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., horizon_days: _Optional[int] = ...) -> None: ...

class Nudge(_message.Message):
    __slots__ = ("kind", "points", "expires_at", "options", "unlock", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: NudgeKind
    points: int
    expires_at: _timestamp_pb2.Timestamp
    options: _containers.RepeatedCompositeFieldContainer[RedemptionOption]
    unlock: CategoryUnlock
    message: str
    def __init__(self, kind: _Optional[_Union[NudgeKind, str]] = ..., points: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., options: _Optional[_Iterable[_Union[RedemptionOption, _Mapping]]] = ..., unlock: _Optional[_Union[CategoryUnlock, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GetNudgesRequest(_message.Message):
    __slots__ = ("member_id", "channel", "context", "dry_run")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    channel: Channel
    context: RequestContext
    dry_run: bool
    def __init__(self, member_id: _Optional[int] = ..., channel: _Optional[_Union[Channel, str]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CappedNudge(_message.Message):
    __slots__ = ("kind", "cap")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    kind: NudgeKind
    cap: str
    def __init__(self, kind: _Optional[_Union[NudgeKind, str]] = ..., cap: _Optional[str] = ...) -> None: ...

class GetNudgesResponse(_message.Message):
    __slots__ = ("nudges", "capped", "experiment_arm", "model_version", "degraded", "degraded_reasons", "verification")
    NUDGES_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    nudges: _containers.RepeatedCompositeFieldContainer[Nudge]
    capped: _containers.RepeatedCompositeFieldContainer[CappedNudge]
    experiment_arm: str
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[DegradedReason]
    verification: Verification
    def __init__(self, nudges: _Optional[_Iterable[_Union[Nudge, _Mapping]]] = ..., capped: _Optional[_Iterable[_Union[CappedNudge, _Mapping]]] = ..., experiment_arm: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[DegradedReason, str]]] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ...) -> None: ...
