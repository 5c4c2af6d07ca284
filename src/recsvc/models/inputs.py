"""Model inputs from feature columns: the one place training and serving build their matrices.

A model's manifest names its feature service and its ordered input list. Inputs are either
features read from the store (by name, never by position), request-time values (the surface a
hint is shown on), or *derived* values computed here from those: the recommendation-index
factors (via `recsvc.core.index`, the same functions the service ranks with) and, for churn,
the BG/NBD expectations. Categorical strings become integer codes from vocabularies saved in the
manifest, so an unseen category is a missing value rather than a new meaning.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pandas import isna as pd_isna

from recsvc.config import IndexRules
from recsvc.core import index as idx

F64 = npt.NDArray[np.float64]
Columns = Mapping[str, Any]

MEMBER_ACTIVITY = (
    "days_since_last_order", "orders_30d", "orders_90d", "orders_365d",
    "spend_30d_minor", "spend_90d_minor", "spend_365d_minor", "orders_total",
    "spend_total_minor", "tenure_days", "avg_order_value_365d_minor", "mean_interpurchase_days",
    "tier", "age_band", "top_category_1", "top_category_1_share", "top_category_2",
    "top_category_2_share", "top_category_3", "top_category_3_share",
)  # fmt: skip
MEMBER_POINTS = (
    "points_balance", "points_expiring_30d", "points_earned_90d", "points_redeemed_90d",
    "redemptions_90d", "days_since_last_redemption", "member_views_90d", "redemptions_365d",
    "member_views_365d", "points_centre_views_90d", "points_centre_views_365d",
)  # fmt: skip
ITEM_CATALOGUE = (
    "market_price_minor", "points_price", "perceived_discount", "discount_coefficient",
    "category", "points_class", "stock",
)  # fmt: skip
ITEM_STATS = (
    "item_views_30d", "item_views_90d", "item_redemptions_30d", "item_redemptions_90d",
    "item_redemption_rate_30d", "item_redemption_rate_90d", "stock_turnover_days",
)  # fmt: skip

REQUEST_TIME = ("surface",)
SURFACES = ("product_page", "points_centre", "cart")

INDEX_DERIVED = (
    "value_coefficient", "demand_match", "behaviour_weight", "discount_coefficient_eff",
    "recommendation_index", "vacuum_zone", "affordable", "expiring_share", "category_affinity",
    "member_redemption_rate_90d", "member_redemption_rate_365d", "points_centre_share_90d",
    "points_centre_share_365d",
)  # fmt: skip
CHURN_DERIVED = ("bgnbd_p_alive", "bgnbd_expected_purchases", "recency_ratio")

CATEGORICAL = ("tier", "age_band", "category", "points_class", "surface")
# The favourite categories are inputs only through category_affinity: as codes they would
# need the item's category beside them to mean anything.
NOT_INPUTS = ("top_category_1", "top_category_2", "top_category_3")

# every feature a propensity row is built from, before derivation
RAW_PROPENSITY = MEMBER_ACTIVITY + MEMBER_POINTS + ITEM_CATALOGUE + ITEM_STATS + REQUEST_TIME

PROPENSITY_INPUTS = tuple(
    n for n in MEMBER_ACTIVITY + MEMBER_POINTS + ITEM_CATALOGUE + ITEM_STATS + REQUEST_TIME
    + INDEX_DERIVED if n not in NOT_INPUTS
)
CHURN_INPUTS = tuple(n for n in MEMBER_ACTIVITY + MEMBER_POINTS + CHURN_DERIVED
                     if n not in NOT_INPUTS)


def _f(cols: Columns, name: str) -> F64:
    """A numeric column as float64 with NaN for missing values (None, pandas NA)."""
    values = cols[name]
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values  # already numeric (read only here: every caller makes new arrays)
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype == object:
        return np.array([np.nan if v is None or pd_isna(v) else float(v) for v in arr])
    return arr.astype(np.float64)


def _fill(values: F64, value: float) -> F64:
    """NaN replaced by `value` (numpy's nan_to_num also rewrites infinities, and is slower)."""
    return np.where(np.isnan(values), value, values)


def column(values: Sequence[Any]) -> npt.NDArray[Any]:
    """Feature values as a column: numbers as float64 with NaN for missing, anything else
    (strings) as an object array with None for missing."""
    if all(v is None or isinstance(v, int | float) for v in values):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray(values, dtype=object)


def feature_columns(raw: Mapping[str, Sequence[Any]]) -> dict[str, npt.NDArray[Any]]:
    """An online read ({"<view>__<feature>": values}) as columns by feature name; join keys
    (names without a view) are left out."""
    return {name.split("__", 1)[1]: column(values) for name, values in raw.items()
            if "__" in name}


def frame_columns(df: Any) -> dict[str, npt.NDArray[Any]]:
    """A pandas frame of features (offline reads) as the same columns, vectorised."""
    import pandas as pd

    out: dict[str, npt.NDArray[Any]] = {}
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            out[c] = s.astype("float64").to_numpy(na_value=np.nan)
        else:
            out[c] = s.astype(object).where(s.notna(), None).to_numpy()
    return out


def index_inputs(cols: Columns, rules: IndexRules) -> dict[str, F64]:
    """The index factors of SPEC §2 for (member, item) rows, from the raw feature columns."""
    balance = _fill(_f(cols, "points_balance"), 0.0)
    points_price = _f(cols, "points_price")
    bands = frozenset(rules.young_age_bands)  # np.isin sorts object arrays: slow per call
    young = np.fromiter((v in bands for v in cols["age_band"]), dtype=bool,
                        count=len(cols["age_band"]))
    aov = _f(cols, "avg_order_value_365d_minor")
    high = _fill(aov, 0.0) >= rules.high_spender_min_aov_units * 100
    factors = idx.index_factors(
        rules,
        market_price=_f(cols, "market_price_minor") / 100.0,
        perceived_discount=_f(cols, "perceived_discount"),
        points_price=points_price,
        item_discount=_fill(_f(cols, "discount_coefficient"), 1.0),
        balance=balance,
        orders_90d=_fill(_f(cols, "orders_90d"), 0.0),
        days_since_last_order=_f(cols, "days_since_last_order"),
        young=young,
        high_spender=high,
    )
    expiring = _fill(_f(cols, "points_expiring_30d"), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expiring_share = np.where(points_price > 0, expiring / points_price, 0.0)
    item_category = np.asarray(cols["category"], dtype=object)
    affinity = np.zeros(len(balance))
    for j in (1, 2, 3):
        same = np.asarray(cols[f"top_category_{j}"], dtype=object) == item_category
        affinity = np.where(same, _fill(_f(cols, f"top_category_{j}_share"), 0.0), affinity)
    rates = {}
    for days in (90, 365):
        views = _f(cols, f"member_views_{days}d")
        with np.errstate(divide="ignore", invalid="ignore"):
            rates[f"member_redemption_rate_{days}d"] = np.where(
                views > 0, _f(cols, f"redemptions_{days}d") / views, np.nan)
            rates[f"points_centre_share_{days}d"] = np.where(
                views > 0, _f(cols, f"points_centre_views_{days}d") / views, np.nan)
    return {
        "category_affinity": affinity,
        **rates,
        "value_coefficient": np.asarray(factors.value_coefficient, dtype=np.float64),
        "demand_match": np.asarray(factors.demand_match, dtype=np.float64),
        "behaviour_weight": np.asarray(factors.behaviour_weight, dtype=np.float64),
        "discount_coefficient_eff": np.asarray(factors.discount_coefficient, dtype=np.float64),
        "recommendation_index": np.asarray(factors.recommendation_index, dtype=np.float64),
        "vacuum_zone": np.asarray(factors.vacuum, dtype=np.float64),
        "affordable": (balance >= _fill(points_price, np.inf)).astype(np.float64),
        "expiring_share": expiring_share,
    }


def purchase_history(cols: Columns) -> tuple[F64, F64, F64]:
    """BG/NBD's (x, t_x, T) in days from the activity features; NaN for members with no order.

    x = repeat orders; t_x = first to last order = mean gap × repeats; T = t_x + days since last.
    """
    orders = _f(cols, "orders_total")
    since = _f(cols, "days_since_last_order")
    gap = _fill(_f(cols, "mean_interpurchase_days"), 0.0)
    bought = _fill(orders, 0.0) > 0
    x = np.where(bought, orders - 1, np.nan)
    t_x = np.where(bought, gap * x, np.nan)
    return x, t_x, t_x + since


def churn_inputs(cols: Columns, bgnbd: Any, horizon_days: float) -> dict[str, F64]:
    """BG/NBD expectations (params fitted on the training window) and a recency ratio."""
    x, t_x, T = purchase_history(cols)
    known = np.isfinite(x) & np.isfinite(T)
    p_alive = np.full(len(x), np.nan)
    expected = np.full(len(x), np.nan)
    if bgnbd is not None and known.any():
        p_alive[known] = bgnbd.p_alive(x[known], t_x[known], T[known])
        expected[known] = bgnbd.expected_purchases(horizon_days, x[known], t_x[known], T[known])
    since = _f(cols, "days_since_last_order")
    gap = _f(cols, "mean_interpurchase_days")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gap > 0, since / gap, np.nan)
    return {"bgnbd_p_alive": p_alive, "bgnbd_expected_purchases": expected, "recency_ratio": ratio}


def churn_prior_margin(derived: Mapping[str, F64], fallback: float) -> F64:
    """The churn model's starting point: BG/NBD's log-odds of no purchase in the horizon.

    LightGBM boosts from this margin (its init_score) instead of from a constant, so the trees
    learn corrections to BG/NBD; P(no purchase) is approximated by exp(-expected purchases).
    Members BG/NBD cannot describe (no order yet) start from `fallback`, the training log-odds.
    """
    expected = np.asarray(derived["bgnbd_expected_purchases"], dtype=np.float64)
    p0 = np.clip(np.exp(-_fill(expected, 0.0)), 1e-4, 1 - 1e-4)
    return np.where(np.isfinite(expected), np.log(p0 / (1.0 - p0)), fallback)


def vocabularies(cols: Columns, names: Sequence[str] = CATEGORICAL) -> dict[str, list[str]]:
    """Sorted distinct non-null values of each categorical column present (for the manifest)."""
    vocab: dict[str, list[str]] = {}
    for name in names:
        if name in cols:
            values = {v for v in np.asarray(cols[name], dtype=object) if isinstance(v, str)}
            vocab[name] = sorted(values)
    return vocab


def encode(values: Any, vocabulary: Sequence[str]) -> F64:
    """Integer codes of a categorical column; NaN for null or unseen values."""
    lookup = _lookup(tuple(vocabulary))
    return np.array([lookup.get(v, np.nan) for v in np.asarray(values, dtype=object)])


@functools.lru_cache(maxsize=64)
def _lookup(vocabulary: tuple[str, ...]) -> dict[str, float]:
    return {v: float(i) for i, v in enumerate(vocabulary)}


def matrix(
    cols: Columns, names: Sequence[str], vocab: Mapping[str, Sequence[str]]
) -> npt.NDArray[np.float64]:
    """The model matrix: one float64 column per input, in the manifest's order."""
    if not names:
        return np.empty((0, 0))
    out = np.empty((len(cols[names[0]]), len(names)))
    for j, name in enumerate(names):
        out[:, j] = encode(cols[name], vocab[name]) if name in vocab else _f(cols, name)
    return out
