"""The feature views recsvc computes, written once: each view's entity key and its columns
(name, Arrow type, meaning). The feature job's Arrow schemas (`recsvc.offline.compute`), the
Feast definitions (`feature_repo/definitions.py`) and the model inputs (`recsvc.ml.inputs`)
are all built from here, so a column added, renamed or retyped changes all three.

Feature columns read back from Feast are named "<view>__<feature>"; a join key keeps its bare
name (`feature_name`, `is_feature`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from recsvc.data.schema import TS

I = pa.int64()  # noqa: E741 - a column-type alias used only in the views below
F = pa.float64()
S = pa.string()
TIMESTAMP_FIELD = "ts"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str = ""


@dataclass(frozen=True)
class View:
    name: str
    entity_key: str
    description: str
    columns: tuple[Column, ...]

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns, in order (neither the key nor the timestamp)."""
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The snapshot files' schema: the entity key, the timestamp, the features."""
        return pa.schema([(self.entity_key, I), (TIMESTAMP_FIELD, TS),
                          *((c.name, c.type) for c in self.columns)])


def _cols(*specs: tuple[str, pa.DataType] | tuple[str, pa.DataType, str]) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


MEMBER_ACTIVITY = View("member_activity", "member_id",
                       "Purchase recency, frequency and spend; tier and age band.", _cols(
    ("days_since_last_order", F, "null: no order yet"),
    ("orders_30d", I), ("orders_90d", I), ("orders_365d", I),
    ("spend_30d_minor", I), ("spend_90d_minor", I), ("spend_365d_minor", I),
    ("orders_total", I), ("spend_total_minor", I),
    ("tenure_days", F),
    ("avg_order_value_365d_minor", F, "null: no order"),
    ("mean_interpurchase_days", F, "null: < 2 orders"),
    ("interpurchase_days_std", F, "sample standard deviation of the gaps; null: < 3 orders"),
    ("tier", S, "tier earned by cumulative spend"),
    ("age_band", S, "null: unknown"),
    ("top_category_1", S, "most ordered, 365 days"),
    ("top_category_1_share", F, "its share of orders"),
    ("top_category_2", S), ("top_category_2_share", F),
    ("top_category_3", S), ("top_category_3_share", F),
))
MEMBER_POINTS = View("member_points", "member_id",
                     "Points balance, points about to lapse (FIFO by expiry), earning and "
                     "redeeming.", _cols(
    ("points_balance", I),
    ("points_expiring_30d", I, "lapsing in [ts, ts+30d)"),
    ("points_earned_90d", I),
    ("points_redeemed_90d", I, "points burned"),
    ("redemptions_90d", I),
    ("days_since_last_redemption", F, "null: none yet"),
    ("member_views_90d", I, "items shown, 90 days"),
    ("redemptions_365d", I),
    ("member_views_365d", I, "items shown, 365 days"),
    ("points_centre_views_90d", I, "items shown on the points centre, 90 days"),
    ("points_centre_views_365d", I, "items shown on the points centre, 365 days"),
))
MEMBER_EXPIRY = View("member_expiry", "member_id",
                     "The member's live points by expiry instant, earliest first: what a cart "
                     "burns first (FIFO by expiry). Points that never expire are not listed.",
                     _cols(
    ("expiry_at_s", pa.list_(I), "lapse instants, epoch seconds, ascending"),
    ("expiry_points", pa.list_(I), "points lapsing at each"),
))
ITEM_CATALOGUE = View("item_catalogue", "item_id",
                      "Prices, current discount and stock of a redeemable item.", _cols(
    ("market_price_minor", I), ("points_price", I), ("perceived_discount", F),
    ("discount_coefficient", F, "20 % off -> 0.8"),
    ("category", S), ("points_class", S), ("stock", I),
))
ITEM_STATS = View("item_stats", "item_id",
                  "Views, redemptions and turnover of a redeemable item.", _cols(
    ("item_views_30d", I), ("item_views_90d", I),
    ("item_redemptions_30d", I), ("item_redemptions_90d", I),
    ("item_redemption_rate_30d", F, "null: no views"),
    ("item_redemption_rate_90d", F, "null: no views"),
    ("stock_turnover_days", F,
     "stock / mean daily redemptions over 30 days; null: none redeemed"),
))

# The views the feature job computes, by name, in the order it writes them.
COMPUTED: dict[str, View] = {v.name: v for v in (MEMBER_ACTIVITY, MEMBER_POINTS, MEMBER_EXPIRY,
                                                 ITEM_CATALOGUE, ITEM_STATS)}


def feature_name(column: str) -> str:
    """A column's feature name: "member_points__points_balance" -> "points_balance"; a join
    key (a column without a view) is its own name."""
    return column.split("__", 1)[-1]


def is_feature(column: str) -> bool:
    """Whether a column is a view's feature ("<view>__<feature>") rather than a join key."""
    return "__" in column
