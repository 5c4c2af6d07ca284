"""Feast definitions of recsvc's features: entities, sources, views and one service per model.

This file is the single definition. The `feast` CLI imports it from this directory (see
README.md); recsvc loads it with `recsvc.adapters.feast.load_definitions(data_dir)`, which
executes it as a fresh module with `DATA_DIR` already set, so tests and jobs can point the
sources at any data directory without touching the environment.

The offline store is written by `recsvc features` (recsvc.offline.compute): dated snapshots,
one Parquet directory per view. Column names here and there are one contract, checked by
tests/test_features.py.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String

_here = Path(__file__).resolve().parent
DATA_DIR = Path(
    globals().get("DATA_DIR") or os.environ.get("RECSVC_DATA_DIR") or _here.parent / "data"
).resolve()

# A point-in-time join finds a snapshot at most `ttl` old. Members get one at least every 7
# days (14 at most, see recsvc.jobs.features), items every day; twice the period would be
# enough, the margin covers a skipped day of item states.
MEMBER_TTL = timedelta(days=28)
# batch scores are refreshed by a daily job; a week-old score is still worth serving
SCORES_TTL = timedelta(days=7)
PARTS = "*.parquet"
ITEM_TTL = timedelta(days=7)


# ============================================================================================
# Entities
# ============================================================================================
member = Entity(
    name="member",
    join_keys=["member_id"],
    value_type=ValueType.INT64,
    description="A loyalty-programme member (members.member_id).",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="A redeemable catalogue item (items.item_id).",
)


# ============================================================================================
# Sources: Parquet snapshots under <data_dir>/features/<view>/, stamped with `ts`
# ============================================================================================
def _source(view: str, root: str = "features") -> FileSource:
    return FileSource(
        name=f"{view}_snapshots",
        # a glob, because the DuckDB offline store reads files, not directories
        path=str(DATA_DIR / root / view / PARTS),
        file_format=ParquetFormat(),
        timestamp_field="ts",
        description=f"Dated snapshots of {view}: values known at ts (events before ts).",
    )


member_activity_source = _source("member_activity")
member_points_source = _source("member_points")
item_catalogue_source = _source("item_catalogue")
item_stats_source = _source("item_stats")


# ============================================================================================
# Feature views
# ============================================================================================
member_activity = FeatureView(
    name="member_activity",
    entities=[member],
    ttl=MEMBER_TTL,
    source=member_activity_source,
    online=True,
    description="Purchase recency, frequency and spend; tier and age band.",
    schema=[
        Field(name="days_since_last_order", dtype=Float64, description="null: no order yet"),
        Field(name="orders_30d", dtype=Int64),
        Field(name="orders_90d", dtype=Int64),
        Field(name="orders_365d", dtype=Int64),
        Field(name="spend_30d_minor", dtype=Int64),
        Field(name="spend_90d_minor", dtype=Int64),
        Field(name="spend_365d_minor", dtype=Int64),
        Field(name="orders_total", dtype=Int64),
        Field(name="spend_total_minor", dtype=Int64),
        Field(name="tenure_days", dtype=Float64),
        Field(name="avg_order_value_365d_minor", dtype=Float64, description="null: no order"),
        Field(name="mean_interpurchase_days", dtype=Float64, description="null: < 2 orders"),
        Field(name="interpurchase_days_std", dtype=Float64,
              description="sample standard deviation of the gaps; null: < 3 orders"),
        Field(name="tier", dtype=String, description="tier earned by cumulative spend"),
        Field(name="age_band", dtype=String, description="null: unknown"),
        Field(name="top_category_1", dtype=String, description="most ordered, 365 days"),
        Field(name="top_category_1_share", dtype=Float64, description="its share of orders"),
        Field(name="top_category_2", dtype=String),
        Field(name="top_category_2_share", dtype=Float64),
        Field(name="top_category_3", dtype=String),
        Field(name="top_category_3_share", dtype=Float64),
    ],
)

member_points = FeatureView(
    name="member_points",
    entities=[member],
    ttl=MEMBER_TTL,
    source=member_points_source,
    online=True,
    description="Points balance, points about to lapse (FIFO by expiry), earning and redeeming.",
    schema=[
        Field(name="points_balance", dtype=Int64),
        Field(name="points_expiring_30d", dtype=Int64, description="lapsing in [ts, ts+30d)"),
        Field(name="points_earned_90d", dtype=Int64),
        Field(name="points_redeemed_90d", dtype=Int64, description="points burned"),
        Field(name="redemptions_90d", dtype=Int64),
        Field(name="days_since_last_redemption", dtype=Float64, description="null: none yet"),
        Field(name="member_views_90d", dtype=Int64, description="items shown, 90 days"),
        Field(name="redemptions_365d", dtype=Int64),
        Field(name="member_views_365d", dtype=Int64, description="items shown, 365 days"),
        Field(name="points_centre_views_90d", dtype=Int64,
              description="items shown on the points centre, 90 days"),
        Field(name="points_centre_views_365d", dtype=Int64,
              description="items shown on the points centre, 365 days"),
    ],
)

member_expiry = FeatureView(
    name="member_expiry",
    entities=[member],
    ttl=MEMBER_TTL,
    source=_source("member_expiry"),
    online=True,
    description="The member's live points by expiry instant, earliest first: what a cart burns "
                "first (FIFO by expiry). Points that never expire are not listed.",
    schema=[
        Field(name="expiry_at_s", dtype=Array(Int64),
              description="lapse instants, epoch seconds, ascending"),
        Field(name="expiry_points", dtype=Array(Int64), description="points lapsing at each"),
    ],
)

item_catalogue = FeatureView(
    name="item_catalogue",
    entities=[item],
    ttl=ITEM_TTL,
    source=item_catalogue_source,
    online=True,
    description="Prices, current discount and stock of a redeemable item.",
    schema=[
        Field(name="market_price_minor", dtype=Int64),
        Field(name="points_price", dtype=Int64),
        Field(name="perceived_discount", dtype=Float64),
        Field(name="discount_coefficient", dtype=Float64, description="20 % off -> 0.8"),
        Field(name="category", dtype=String),
        Field(name="points_class", dtype=String),
        Field(name="stock", dtype=Int64),
    ],
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=ITEM_TTL,
    source=item_stats_source,
    online=True,
    description="Views, redemptions and turnover of a redeemable item.",
    schema=[
        Field(name="item_views_30d", dtype=Int64),
        Field(name="item_views_90d", dtype=Int64),
        Field(name="item_redemptions_30d", dtype=Int64),
        Field(name="item_redemptions_90d", dtype=Int64),
        Field(name="item_redemption_rate_30d", dtype=Float64, description="null: no views"),
        Field(name="item_redemption_rate_90d", dtype=Float64, description="null: no views"),
        Field(name="stock_turnover_days", dtype=Float64,
              description="stock / mean daily redemptions over 30 days; null: none redeemed"),
    ],
)


member_churn_scores = FeatureView(
    name="member_churn_scores",
    entities=[member],
    ttl=SCORES_TTL,
    # outside features/: the feature job replaces that directory whole, scores are kept
    source=_source("member_churn_scores", root="scores"),
    online=True,
    description="Batch churn scores (recsvc score-batch): what CRM reads for thousands at once.",
    schema=[
        Field(name="churn_probability", dtype=Float64),
        Field(name="churn_band", dtype=String, description="low | medium | high"),
        Field(name="segment", dtype=String, description="loyal | potential | dormant | ordinary"),
        Field(name="action", dtype=String, description="recommended action code"),
        Field(name="model_version", dtype=String),
    ],
)


member_fraud_flags = FeatureView(
    name="member_fraud_flags",
    entities=[member],
    ttl=SCORES_TTL,
    source=_source("member_fraud_flags", root="scores"),
    online=True,
    description="Points-fraud flags of the batch job (recsvc fraud-flags): a flagged member's "
                "redemptions ask for a second verification.",
    schema=[
        Field(name="fraud_flags", dtype=String,
              description="comma-joined, in this order, of redemption_burst, balance_drain, "
                          "earn_burn_loop, anomaly; empty: none"),
        Field(name="anomaly_score", dtype=Float64,
              description="isolation-forest anomaly score in (0, 1]; higher = more anomalous"),
    ],
)


# ============================================================================================
# Feature services: one per model version, named in the model's manifest
# ============================================================================================
propensity_v1 = FeatureService(
    name="propensity_v1",
    features=[member_activity, member_points, item_catalogue, item_stats],
    description="Redemption propensity of a (member, item) pair.",
)

churn_v1 = FeatureService(
    name="churn_v1",
    features=[member_activity, member_points],
    description="Churn risk of a member.",
)

redemption_v1 = FeatureService(
    name="redemption_v1",
    features=[member_activity, member_points, member_expiry, member_fraud_flags],
    description="A member's context for every answer about their points (hints, "
                "recommendations, cart splits, nudges): every member feature propensity_v1 "
                "reads, the expiring lots and the points-fraud flags.",
)

hint_v1 = FeatureService(
    name="hint_v1",
    features=[member_activity, member_points, member_fraud_flags],
    description="A member's context for product-page hints: propensity_v1's member features "
                "and the points-fraud flags, without the expiry lots a hint does not use.",
)

churn_scores_v1 = FeatureService(
    name="churn_scores_v1",
    features=[member_churn_scores],
    description="The latest batch churn scores of a member.",
)

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[member_fraud_flags],
    description="The latest points-fraud flags of a member.",
)
