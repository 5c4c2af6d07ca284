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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pandas import isna as pd_isna

from recsvc.config import Programme
from recsvc.core import elementwise as ew
from recsvc.core import index as idx
from recsvc.data import views
from recsvc.data.views import feature_name, is_feature
from recsvc.errors import DataMissing

if TYPE_CHECKING:
    import pandas as pd

F64 = npt.NDArray[np.float64]
Columns = Mapping[str, Any]

# the views' feature columns, in their order (`recsvc.data.views` defines them once)
MEMBER_ACTIVITY = views.MEMBER_ACTIVITY.features
MEMBER_POINTS = views.MEMBER_POINTS.features
ITEM_CATALOGUE = views.ITEM_CATALOGUE.features
ITEM_STATS = views.ITEM_STATS.features

REQUEST_TIME = ("surface",)
SURFACES = ("product_page", "points_centre", "cart")

INDEX_DERIVED = (
    "value_coefficient", "demand_match", "behaviour_weight", "discount_coefficient_eff",
    "recommendation_index", "vacuum_zone", "affordable", "expiring_share", "category_affinity",
    "member_redemption_rate_90d", "member_redemption_rate_365d", "points_centre_share_90d",
    "points_centre_share_365d",
)  # fmt: skip
BTYD_FAMILIES = ("bgnbd", "pareto_nbd")
"""The BTYD models whose answers at the horizon are churn inputs (runtime.FAMILIES names)."""
BTYD_HORIZON = tuple(f"{family}_{answer}" for family in BTYD_FAMILIES
                     for answer in ("p_purchase", "expected_purchases"))
"""Each BTYD model's P(a purchase within the horizon) and expected purchases within it."""
CHURN_DERIVED = ("bgnbd_p_alive", *BTYD_HORIZON, "recency_ratio", "days_since_first_order",
                 "orders_trend_90d", "spend_trend_90d", "interpurchase_cv")
# read by the churn model only: the propensity model's inputs are as they were trained
CHURN_ONLY = ("interpurchase_days_std",)

CATEGORICAL = ("tier", "age_band", "category", "points_class", "surface")
# The favourite categories are inputs only through category_affinity: as codes they would
# need the item's category beside them to mean anything.
NOT_INPUTS = ("top_category_1", "top_category_2", "top_category_3")

# every feature a propensity row is built from, before derivation
RAW_PROPENSITY = tuple(n for n in MEMBER_ACTIVITY + MEMBER_POINTS + ITEM_CATALOGUE + ITEM_STATS
                       + REQUEST_TIME if n not in CHURN_ONLY)

PROPENSITY_INPUTS = tuple(n for n in RAW_PROPENSITY + INDEX_DERIVED if n not in NOT_INPUTS)
CHURN_INPUTS = tuple(n for n in MEMBER_ACTIVITY + MEMBER_POINTS + CHURN_DERIVED
                     if n not in NOT_INPUTS)
# recency, frequency and monetary value, and tenure: the classic logistic regression's inputs
RFM_INPUTS = ("days_since_last_order", "orders_total", "orders_365d", "spend_365d_minor",
              "tenure_days")
NEVER_ORDERED_DAYS = 1e6  # the recency of a member with no order, for the RFM inputs


def float_column(cols: Columns, name: str) -> F64:
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


_NUMBERS = frozenset({int, float, bool, type(None)})


def column(values: Sequence[Any]) -> npt.NDArray[Any]:
    """Feature values as a column: numbers as float64 with NaN for missing, anything else
    (strings) as an object array with None for missing."""
    if _NUMBERS.issuperset(map(type, values)):  # the common case, at C speed
        return np.array(values, dtype=np.float64)  # None reads as NaN
    if all(v is None or isinstance(v, int | float) for v in values):  # numpy's numbers, say
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray(values, dtype=object)


def feature_columns(raw: Mapping[str, Sequence[Any]]) -> dict[str, npt.NDArray[Any]]:
    """An online read ({"<view>__<feature>": values}) as columns by feature name; join keys
    (names without a view) are left out."""
    return {feature_name(name): column(values) for name, values in raw.items()
            if is_feature(name)}


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


def index_inputs(cols: Columns, programme: Programme) -> dict[str, F64]:
    """The index factors of SPEC §2 for (member, item) rows, from the raw feature columns
    (training's way; the service computes the factors once per request and calls
    `pair_inputs` and `member_rates` with them)."""
    rules = programme.index
    minor = programme.currency.minor_per_unit
    balance = _fill(float_column(cols, "points_balance"), 0.0)
    points_price = float_column(cols, "points_price")
    bands = frozenset(rules.young_age_bands)  # np.isin sorts object arrays: slow per call
    young = np.fromiter((v in bands for v in cols["age_band"]), dtype=bool,
                        count=len(cols["age_band"]))
    high = idx.high_spender(rules, float_column(cols, "avg_order_value_365d_minor"), minor)
    factors = idx.index_factors(
        rules,
        market_price=float_column(cols, "market_price_minor") / minor,
        perceived_discount=float_column(cols, "perceived_discount"),
        points_price=points_price,
        item_discount=_fill(float_column(cols, "discount_coefficient"), 1.0),
        balance=balance,
        orders_90d=_fill(float_column(cols, "orders_90d"), 0.0),
        days_since_last_order=float_column(cols, "days_since_last_order"),
        young=young,
        high_spender=high,
    )
    tops = [(np.asarray(cols[f"top_category_{j}"], dtype=object),
             _fill(float_column(cols, f"top_category_{j}_share"), 0.0)) for j in (1, 2, 3)]
    return {
        **member_rates(cols),
        **pair_inputs(factors, balance=balance, points_price=points_price,
                      expiring=_fill(float_column(cols, "points_expiring_30d"), 0.0),
                      item_category=np.asarray(cols["category"], dtype=object), tops=tops),
    }


MEMBER_RATES = {f"{rate}_{days}d": (f"{numerator}_{days}d", f"member_views_{days}d")
                for days in (90, 365)
                for rate, numerator in (("member_redemption_rate", "redemptions"),
                                        ("points_centre_share", "points_centre_views"))}
"""The derived inputs that depend on the member alone: redemptions per view and the points
centre's share of views, over 90 and 365 days (name -> numerator, views)."""


def member_rates(cols: Columns) -> dict[str, F64]:
    """`MEMBER_RATES` of the members' feature columns."""
    return {name: ew.ratio(float_column(cols, numerator), float_column(cols, views), math.nan)
            for name, (numerator, views) in MEMBER_RATES.items()}


def pair_inputs(factors: idx.IndexFactors, *, balance: Any, points_price: Any, expiring: Any,
                item_category: npt.NDArray[np.object_],
                tops: Sequence[tuple[Any, Any]]) -> dict[str, F64]:
    """The derived inputs of (member, item) rows from their index factors: the factors
    themselves, affordability, the share of the price the lapsing points cover, and the
    member's share of orders in the item's category (`tops`: (category, share) of the
    member's top three, NaN shares as 0). Member values may be scalars."""
    n = len(item_category)
    pair = pair_values(factors, balance=balance, points_price=np.asarray(
        points_price, dtype=np.float64), expiring=expiring, item_category=item_category,
        tops=tops)
    return {name: idx.per_item(value, n) for name, value in pair.items()}


def pair_values(factors: idx.IndexFactors, *, balance: Any, points_price: Any, expiring: Any,
                item_category: Any, tops: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """`pair_inputs` for one pair in plain numbers, or for arrays of them (member values
    may be scalars; the values come back as they are, not broadcast)."""
    affinity: Any = 0.0
    for category, share in tops:
        affinity = ew.where(category == item_category, share, affinity)
    return {
        "category_affinity": affinity,
        "value_coefficient": factors.value_coefficient,
        "demand_match": factors.demand_match,
        "behaviour_weight": factors.behaviour_weight,
        "discount_coefficient_eff": factors.discount_coefficient,
        "recommendation_index": factors.recommendation_index,
        "vacuum_zone": factors.vacuum,
        "affordable": balance >= ew.where(ew.isnan(points_price), math.inf, points_price),
        "expiring_share": ew.ratio(expiring, points_price),
    }


def purchase_history(cols: Columns) -> tuple[F64, F64, F64]:
    """BG/NBD's (x, t_x, T) in days from the activity features; NaN for members with no order.

    x = repeat orders; t_x = first to last order = mean gap × repeats; T = t_x + days since last.
    """
    orders = float_column(cols, "orders_total")
    since = float_column(cols, "days_since_last_order")
    gap = _fill(float_column(cols, "mean_interpurchase_days"), 0.0)
    bought = _fill(orders, 0.0) > 0
    x = np.where(bought, orders - 1, np.nan)
    t_x = np.where(bought, gap * x, np.nan)
    return x, t_x, t_x + since


def rfm_matrix(cols: Columns) -> F64:
    """The RFM_INPUTS as a matrix; a member with no order is NEVER_ORDERED_DAYS from one."""
    return np.column_stack([_fill(float_column(cols, RFM_INPUTS[0]), NEVER_ORDERED_DAYS),
                            *(float_column(cols, name) for name in RFM_INPUTS[1:])])


def over_history(x: F64, t_x: F64, T: F64, answer: Callable[[F64, F64, F64], Any]) -> F64:
    """`answer(x, t_x, T)` for the members with a purchase history (`purchase_history`), NaN
    for those without an order."""
    return over_histories(x, t_x, T, lambda *h: (answer(*h),))[0]


def over_histories(x: F64, t_x: F64, T: F64,
                   answers: Callable[[F64, F64, F64], Sequence[Any]]) -> list[F64]:
    """Each of `answers(x, t_x, T)` (several arrays from one call) for the members with a
    purchase history, NaN for those without an order."""
    known = np.isfinite(x) & np.isfinite(T)
    if not known.any():
        return [np.full(len(x), np.nan) for _ in range(len(answers(x[:0], t_x[:0], T[:0])))]
    got = answers(x[known], t_x[known], T[known])
    outs = []
    for values in got:
        out = np.full(len(x), np.nan)
        out[known] = values
        outs.append(out)
    return outs


def churn_inputs(cols: Columns, btyd: Mapping[str, Any], horizon_days: float,
                 wanted: Sequence[str] | None = None) -> dict[str, F64]:
    """The churn model's derived inputs (CHURN_DERIVED), those in `wanted` if given: each BTYD
    model's answers at the horizon (`btyd`: runtime.WeeklyBtyd by family, fitted on the
    training window; NaN where one is missing), BG/NBD's P(alive), and the purchase timing
    every log has: the gap since the last order relative to the member's own mean gap, the
    gaps' coefficient of variation (regular buyers against bursty ones), the time since the
    first order (BTYD's T), and the last 90 days' orders and spend against the year's
    quarterly mean (1: steady, 0: stopped, above 1: rising)."""
    want = set(CHURN_DERIVED if wanted is None else wanted)
    x, t_x, T = purchase_history(cols)
    out: dict[str, F64] = {}
    for family in BTYD_FAMILIES:
        names = (f"{family}_p_purchase", f"{family}_expected_purchases")
        model = btyd.get(family)
        if not want.intersection(names):
            continue
        if model is None:
            out.update((n, np.full(len(x), np.nan)) for n in names)
        else:
            out.update(zip(names, over_histories(
                x, t_x, T, lambda *h, m=model: m.horizon_answers(horizon_days, *h)), strict=True))
    if "bgnbd_p_alive" in want:
        bgnbd = btyd.get("bgnbd")
        out["bgnbd_p_alive"] = (np.full(len(x), np.nan) if bgnbd is None
                                else over_history(x, t_x, T, bgnbd.p_alive))
    since = float_column(cols, "days_since_last_order")
    gap = float_column(cols, "mean_interpurchase_days")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["recency_ratio"] = np.where(gap > 0, since / gap, np.nan)
        if "interpurchase_cv" in want:
            std = float_column(cols, "interpurchase_days_std")
            out["interpurchase_cv"] = np.where(gap > 0, std / gap, np.nan)
    out.update({"days_since_first_order": T,
                "orders_trend_90d": _trend(float_column(cols, "orders_90d"),
                                           float_column(cols, "orders_365d")),
                "spend_trend_90d": _trend(float_column(cols, "spend_90d_minor"),
                                          float_column(cols, "spend_365d_minor"))})
    return out


def _trend(last_90d: F64, last_365d: F64) -> F64:
    """The last 90 days against a quarter of the year's (NaN: nothing in the year)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(last_365d > 0, last_90d * (365.0 / 90.0) / last_365d, np.nan)


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
    lookup = codes_of(tuple(vocabulary))
    return np.array([lookup.get(v, np.nan) for v in np.asarray(values, dtype=object)])


@functools.lru_cache(maxsize=64)
def codes_of(vocabulary: tuple[str, ...]) -> dict[str, float]:
    """Each value of a vocabulary and its code (cached: a model's vocabularies are few)."""
    return {v: float(i) for i, v in enumerate(vocabulary)}


def matrix(
    cols: Columns, names: Sequence[str], vocab: Mapping[str, Sequence[str]]
) -> npt.NDArray[np.float64]:
    """The model matrix: one float64 column per input, in the manifest's order."""
    if not names:
        return np.empty((0, 0))
    out = np.empty((len(cols[names[0]]), len(names)))
    for j, name in enumerate(names):
        out[:, j] = encode(cols[name], vocab[name]) if name in vocab else float_column(cols, name)
    return out


def with_features(
    history: Callable[[str, pd.DataFrame], pd.DataFrame], service: str, frame: pd.DataFrame
) -> pd.DataFrame:
    """The frame with its point-in-time features (`history`: the offline store's retrieval of a
    feature service), columns by feature name, rows in order."""
    frame = frame.reset_index(drop=True).assign(_row=lambda f: np.arange(len(f)))
    got = history(service, frame)
    got = got.sort_values("_row").reset_index(drop=True)
    got.columns = [feature_name(c) for c in got.columns]
    clash = got.columns[got.columns.duplicated()].tolist()
    if clash:  # feature names are unique across views by design; refuse to guess
        raise DataMissing(f"{service}: feature names {clash} appear in more than one view")
    if len(got) != len(frame):
        raise DataMissing(f"{service}: {len(frame)} entity rows in, {len(got)} rows out")
    return got.drop(columns="_row")
