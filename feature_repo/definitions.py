"""Feast definitions of recsvc's features: entities, sources, views and one service per model.

This file is the single definition. The `feast` CLI imports it from this directory (see
README.md); recsvc loads it with `recsvc.adapters.feast.load_definitions(data_dir)`, which
executes it as a fresh module with `DATA_DIR` already set, so tests and jobs can point the
sources at any data directory without touching the environment.

The offline store is written by `recsvc features` (recsvc.offline.compute): dated snapshots,
one Parquet directory per view. The computed views' columns are defined once, in
`recsvc.data.views`, for the snapshots, these definitions and the model inputs alike.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String

from recsvc.data import views

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
# Feature views: the computed ones' columns, types and meanings are recsvc.data.views
# ============================================================================================
_FEAST_TYPE = {pa.int64(): Int64, pa.float64(): Float64, pa.string(): String,
               pa.list_(pa.int64()): Array(Int64)}


def _fields(view: views.View) -> list[Field]:
    return [Field(name=c.name, dtype=_FEAST_TYPE[c.type], description=c.description)
            for c in view.columns]


member_activity = FeatureView(
    name="member_activity",
    entities=[member],
    ttl=MEMBER_TTL,
    source=member_activity_source,
    online=True,
    description=views.MEMBER_ACTIVITY.description,
    schema=_fields(views.MEMBER_ACTIVITY),
)

member_points = FeatureView(
    name="member_points",
    entities=[member],
    ttl=MEMBER_TTL,
    source=member_points_source,
    online=True,
    description=views.MEMBER_POINTS.description,
    schema=_fields(views.MEMBER_POINTS),
)

member_expiry = FeatureView(
    name="member_expiry",
    entities=[member],
    ttl=MEMBER_TTL,
    source=_source("member_expiry"),
    online=True,
    description=views.MEMBER_EXPIRY.description,
    schema=_fields(views.MEMBER_EXPIRY),
)

item_catalogue = FeatureView(
    name="item_catalogue",
    entities=[item],
    ttl=ITEM_TTL,
    source=item_catalogue_source,
    online=True,
    description=views.ITEM_CATALOGUE.description,
    schema=_fields(views.ITEM_CATALOGUE),
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=ITEM_TTL,
    source=item_stats_source,
    online=True,
    description=views.ITEM_STATS.description,
    schema=_fields(views.ITEM_STATS),
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
