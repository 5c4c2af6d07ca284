"""The points-liability forecast: per-member monthly projection of points earned, redeemed,
expired and outstanding, its liability in money and a bootstrap interval. How it is checked
against what happened (the back-fit calibration, the backtest errors) is
`recsvc.core.liability_backtest`.

Everything is plain numpy over members (rows) and months (columns); the report job
(`recsvc.reports.liability`) reads the ledger and the churn model and calls in here.

The model, per member i and projection month m (a calendar month; the first one may be partial,
`fraction` < 1, when the as-of instant falls inside a month):

  active_im   = a_i · (1 - h) ** (mid_m / H)  P(still a customer in the middle of month m):
                a_i = P(a customer now) from the churn model's P(no order in H days) and the
                member's order rate (`alive_now`), h = the share of customers lost per H days
                (`customer_hazard`: the same reading one horizon earlier against now)
  earned_im   = active_im · e_i · fraction_m     points earned; they lapse `lapse_months_i`
                months after the month they are earned in (end of that month), as the ledger does
  redeemed_im = active_im · r_i · fraction_m · (open_im + earned_im / 2)
                a share r_i of what the member holds; points earned in the month count half,
                since they arrive through it. Burns take the earliest-expiring lots first (FIFO)
  expired_im  = what is left, at the end of month m, of the lots lapsing then (breakage)

A member who churns neither earns nor redeems. e_i (points per month) and r_i (share of the
held points burnt per month) come from the member's own history before the as-of instant,
shrunk toward the population's rate: rate_i = (x_i + k · R) / (d_i + k), where x is what the
member did, d the exposure (months as a member; points held × months), R = Σx / Σd the
population rate and k the prior strength, worth PRIOR_MONTHS months of an average member. A
member with no history gets the population's rate; one with a long history mostly their own.

The figures are expectations (fractional points). Totals are rounded to whole points (half to
even) and the liability in minor units is whole points × minor_per_unit / points_per_unit,
rounded half up in integer arithmetic, so money stays exact.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.core import ledger

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

QUANTITIES = ("earned", "redeemed", "expired", "outstanding")
FLOWS = ("earned", "redeemed", "expired")  # summed over months; outstanding is a level
PRIOR_MONTHS = 2.0
HISTORY_MONTHS = 12
DAYS_PER_MONTH = 365.25 / 12


# --------------------------------------------------------------------------------------------
# Calendar: month periods from an instant.
# --------------------------------------------------------------------------------------------
def month_bounds(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """`start`, every month start strictly between, and `end`: consecutive calendar-month
    periods, the first and the last possibly partial."""
    if end <= start:
        raise ValueError(f"end {end} must come after start {start}")
    bounds = [start]
    k = ledger.month_index(start) + 1
    while (t := ledger.month_start(k)) < end:
        bounds.append(t)
        k += 1
    bounds.append(end)
    return bounds


def forecast_bounds(as_of: dt.datetime, months: int) -> list[dt.datetime]:
    """`months` periods from `as_of` to the start of the month `months` calendar months after
    the one holding it (a partial first period when `as_of` is not a month start)."""
    if months <= 0:
        raise ValueError("months must be positive")
    end = ledger.month_start(ledger.month_index(as_of) + months)
    return month_bounds(as_of, end)


def history_bounds(as_of: dt.datetime, months: int) -> list[dt.datetime]:
    """Periods of the `months` whole calendar months before `as_of`, plus the partial month
    holding `as_of` when it is not a month start."""
    if months <= 0:
        raise ValueError("months must be positive")
    return month_bounds(ledger.month_start(ledger.month_index(as_of) - months), as_of)


def month_fractions(bounds: Sequence[dt.datetime]) -> F64:
    """The share of its calendar month each period [bounds[k], bounds[k+1]) covers."""
    out = np.empty(len(bounds) - 1)
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        m = ledger.month_index(a)
        whole = (ledger.month_start(m + 1) - ledger.month_start(m)).total_seconds()
        out[k] = (b - a).total_seconds() / whole
    return out


def mid_days(bounds: Sequence[dt.datetime]) -> F64:
    """Days from bounds[0] to the middle of each period."""
    t0 = bounds[0]
    return np.array([((a - t0) + (b - a) / 2).total_seconds() / 86_400
                     for a, b in itertools.pairwise(bounds)])


# --------------------------------------------------------------------------------------------
# Inputs: activity from the churn model, rates from the member's history.
# --------------------------------------------------------------------------------------------
def alive_now(churn_probability: F64, orders_per_day: F64, horizon_days: float) -> F64:
    """P(still a customer at the as-of instant) from the churn model's P(no order within the
    horizon): a customer places no order in it with probability exp(-λ·horizon) (λ: their order
    rate), so P(no order) = (1 - a) + a·exp(-λ·horizon) and a = (1 - p) / (1 - exp(-λ·horizon)),
    clipped to [0, 1]. A customer who rarely orders is not taken for a lost one."""
    if horizon_days <= 0:
        raise ValueError("horizon_days must be positive")
    p = np.clip(np.asarray(churn_probability, dtype=np.float64), 0.0, 1.0)
    orders = np.maximum(np.asarray(orders_per_day, dtype=np.float64), 0.0) * horizon_days
    would_order = -np.expm1(-orders)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(would_order > 1e-12, (1.0 - p) / would_order, 1.0 - p)
    return np.asarray(np.clip(a, 0.0, 1.0))


def customer_hazard(alive: F64, alive_before: F64) -> float:
    """The share of customers lost over one horizon: 1 - Σ P(alive now) / Σ P(alive a horizon
    earlier), over the same members (no one comes back, so the ratio is a survival)."""
    before = float(np.sum(alive_before))
    if before <= 0:
        return 0.0
    return float(np.clip(1.0 - float(np.sum(alive)) / before, 0.0, 0.999))


def active_probability(alive: F64, hazard: float, horizon_days: float, at_days: F64) -> F64:
    """P(still a customer) `at_days` after the as-of instant, (members, times): alive now, then
    lost at the constant rate that loses `hazard` of the customers per horizon."""
    if horizon_days <= 0:
        raise ValueError("horizon_days must be positive")
    if not 0 <= hazard < 1:
        raise ValueError("hazard must lie in [0, 1)")
    t = np.asarray(at_days, dtype=np.float64)
    keep = np.power(1.0 - hazard, t / horizon_days)
    return np.asarray(np.clip(np.asarray(alive, dtype=np.float64), 0.0, 1.0)[:, None]
                      * keep[None, :])


RECENCY_EDGES_DAYS = (30.0, 60.0, 90.0, 180.0, 365.0)


FREQUENCY_EDGES = (2.0, 4.0)  # orders in the horizon before the instant: <2, 2-3, 4+
CELL_PRIOR = 10.0  # a recency-by-frequency cell's share is pulled to its recency bucket's


def recency_churn(recency_at_cut: F64, ordered_after: npt.NDArray[np.bool_],
                  recency: F64, edges: Sequence[float] = RECENCY_EDGES_DAYS, *,
                  frequency_at_cut: F64 | None = None, frequency: F64 | None = None,
                  frequency_edges: Sequence[float] = FREQUENCY_EDGES) -> F64:
    """A churn probability from history alone, for when no churn model is at hand: members are
    put in recency buckets (days since their last order, `edges`; NaN: never ordered), and a
    bucket's P(no order within the horizon) is the share of the members in it at a cut-off one
    horizon back who then placed none (`ordered_after`). Returns it for `recency`; a bucket
    nobody was in at the cut-off gets the overall share.

    With `frequency_at_cut` and `frequency` (orders in the horizon before each instant) the
    buckets are split further by `frequency_edges`, so a frequent buyer is not given the loss
    rate of the occasional ones who last ordered as recently; a cell's share is shrunk toward
    its recency bucket's with a prior worth CELL_PRIOR members."""
    def bucket(days: F64) -> I64:
        d = np.asarray(days, dtype=np.float64)
        return np.where(np.isnan(d), len(edges) + 1,
                        np.searchsorted(np.asarray(edges), np.nan_to_num(d), side="right"))

    at_cut = bucket(recency_at_cut)
    none_after = ~np.asarray(ordered_after, dtype=bool)
    size = len(edges) + 2
    count = np.bincount(at_cut, minlength=size).astype(np.float64)
    lost = np.bincount(at_cut, weights=none_after, minlength=size)
    overall = float(none_after.mean()) if len(none_after) else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(count > 0, lost / np.where(count > 0, count, 1.0), overall)
    now = bucket(recency)
    if frequency_at_cut is None or frequency is None:
        return np.asarray(share[now])
    width = len(frequency_edges) + 1
    fe = np.asarray(frequency_edges, dtype=np.float64)
    cell_cut = at_cut * width + np.searchsorted(fe, frequency_at_cut, side="right")
    cell_now = now * width + np.searchsorted(fe, frequency, side="right")
    c_count = np.bincount(cell_cut, minlength=size * width).astype(np.float64)
    c_lost = np.bincount(cell_cut, weights=none_after, minlength=size * width)
    prior = np.repeat(share, width)
    cell = (c_lost + CELL_PRIOR * prior) / (c_count + CELL_PRIOR)
    return np.asarray(cell[cell_now])


def shrunk_rate(num: F64, den: F64, strength: float) -> F64:
    """(num_i + k·R) / (den_i + k) with R = Σnum / Σden: each member's rate pulled toward the
    population's by a prior worth `strength` units of exposure (R itself when den_i is 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    total = float(den.sum())
    pop = float(num.sum()) / total if total > 0 else 0.0
    if strength <= 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), pop)
    return (num + strength * pop) / (den + strength)


def burn_base(opening: F64, earned: F64) -> F64:
    """The points a burn rate applies to in a month: those held at its start plus half of
    those earned during it (they arrive through the month)."""
    return np.asarray(opening, dtype=np.float64) + 0.5 * np.asarray(earned, dtype=np.float64)


@dataclass(frozen=True)
class Rates:
    earn_per_month: F64  # points a customer earns per month
    burn_share: F64  # share of the burn base redeemed per month, in [0, 1]
    population_earn: float
    population_burn: float


def estimate_rates(earned: F64, burned: F64, opening: F64, exposure: F64, fractions: F64, *,
                   prior_months: float = PRIOR_MONTHS) -> Rates:
    """Monthly earning and burn share of each member from history periods (members, periods):
    points earned and burnt in each period, held at its start, and the member's exposure in
    months (the part of the period they were a member, times the period's month fraction)."""
    earned = np.asarray(earned, dtype=np.float64)
    exposure = np.asarray(exposure, dtype=np.float64)
    months = exposure.sum(axis=1)
    earn = shrunk_rate(earned.sum(axis=1), months, prior_months)
    # points held × months: a burn share per month is redeemed / (held · months)
    held = (burn_base(opening, earned) * np.asarray(fractions)[None, :]).sum(axis=1)
    members_months = float(months.sum())
    per_month_held = float(held.sum()) / members_months if members_months > 0 else 0.0
    share = shrunk_rate(np.asarray(burned, dtype=np.float64).sum(axis=1), held,
                        prior_months * per_month_held)
    share = np.clip(share, 0.0, 1.0)
    pop_earn = float(earned.sum()) / members_months if members_months > 0 else 0.0
    pop_burn = float(np.asarray(burned).sum()) / float(held.sum()) if held.sum() > 0 else 0.0
    return Rates(earn, share, pop_earn, min(pop_burn, 1.0))


# --------------------------------------------------------------------------------------------
# The projection.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    """Expected points per member (rows) and month (columns); `opening` per member."""

    opening: F64
    earned: F64
    redeemed: F64
    expired: F64
    outstanding: F64

    def quantity(self, name: str) -> F64:
        return np.asarray(getattr(self, name))


def project(lots: F64, no_expiry: F64, active: F64, earn_per_month: F64, burn_share: F64,
            lapse_months: I64, fractions: F64) -> Projection:
    """Project each member's points month by month.

    lots          (members, C): column c holds the points lapsing at the end of month c
    no_expiry     (members,): points that never lapse (burnt last)
    active        (members, months): P(still a customer) in each month
    earn_per_month, burn_share (members,): the member's rates while a customer
    lapse_months  (members,): points earned in month m lapse at the end of month m + this
    fractions     (months,): share of a whole month each period covers
    """
    lots = np.asarray(lots, dtype=np.float64)
    n, horizon = np.shape(active)
    lapse = np.asarray(lapse_months, dtype=np.int64)
    if lots.shape[0] != n or len(no_expiry) != n or len(lapse) != n:
        raise ValueError("lots, no_expiry, active and lapse_months must have a row per member")
    if np.any(lapse < 0) or np.any(lots < 0) or np.any(np.asarray(no_expiry) < 0):
        raise ValueError("lots, no_expiry and lapse_months must be >= 0")
    width = max(lots.shape[1], horizon + (int(lapse.max()) + 1 if n else 1))
    held = np.zeros((n, width + 1))  # the last column never lapses
    held[:, : lots.shape[1]] = lots
    held[:, -1] = no_expiry
    rows = np.arange(n)
    opening = held.sum(axis=1)
    out = {q: np.zeros((n, horizon)) for q in QUANTITIES}
    for m in range(horizon):
        a = np.clip(active[:, m], 0.0, 1.0) * fractions[m]
        start = held.sum(axis=1)
        earned = a * earn_per_month
        np.add.at(held, (rows, m + lapse), earned)
        burn = np.minimum(a * burn_share * burn_base(start, earned), held.sum(axis=1))
        held, _ = ledger.take_earliest(held, burn)
        out["earned"][:, m] = earned
        out["redeemed"][:, m] = burn
        out["expired"][:, m] = held[:, m]
        held[:, m] = 0.0
        out["outstanding"][:, m] = held.sum(axis=1)
    return Projection(opening=opening, **out)


# --------------------------------------------------------------------------------------------
# Totals, bootstrap interval, money.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Band:
    """A monthly total with its interval, and the horizon total (flows: the sum over months;
    outstanding: the last month's level) with its interval."""

    point: F64
    low: F64
    high: F64
    total: float
    total_low: float
    total_high: float


def horizon_total(name: str, monthly: F64) -> F64:
    return monthly[..., -1] if name == "outstanding" else monthly.sum(axis=-1)


def bootstrap(projection: Projection, *, samples: int, level: float, seed: int = 0,
              max_cells: int = 4_000_000) -> dict[str, Band]:
    """Monthly totals of each quantity and intervals from resampling members with
    replacement `samples` times (fixed seed): the (1 - level)/2 and (1 + level)/2 quantiles."""
    if not 0 < level < 1:
        raise ValueError("level must lie in (0, 1)")
    if samples < 1:
        raise ValueError("samples must be positive")
    stacked = np.stack([projection.quantity(q) for q in QUANTITIES])  # (Q, n, H)
    q_count, n, horizon = stacked.shape
    flat = stacked.transpose(1, 0, 2).reshape(n, q_count * horizon)
    rng = np.random.default_rng(seed)
    totals = np.empty((samples, q_count * horizon))
    step = max(1, max_cells // max(n, 1))
    for s in range(0, samples, step):
        k = min(step, samples - s)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=k) if n else np.zeros((k, 0))
        totals[s:s + k] = counts @ flat
    totals = totals.reshape(samples, q_count, horizon)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    out: dict[str, Band] = {}
    for k, name in enumerate(QUANTITIES):
        point = stacked[k].sum(axis=0)
        boot = totals[:, k, :]
        whole = horizon_total(name, boot)
        out[name] = Band(
            point=point,
            low=np.quantile(boot, lo_q, axis=0),
            high=np.quantile(boot, hi_q, axis=0),
            total=float(horizon_total(name, point)),
            total_low=float(np.quantile(whole, lo_q)),
            total_high=float(np.quantile(whole, hi_q)),
        )
    return out


def whole_points(values: F64 | float) -> I64:
    """Expected points as whole points (round half to even)."""
    return np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64)


def liability_minor(points: I64 | int, minor_per_unit: int, points_per_unit: int) -> I64:
    """Whole points in minor units at the burn rate, rounded half up in integer arithmetic
    (100 points = 1 unit = 100 minor: 1 point = 1 minor)."""
    p = np.asarray(points, dtype=np.int64)
    if np.any(p < 0):
        raise ValueError("points must be >= 0")
    return np.asarray((2 * p * minor_per_unit + points_per_unit) // (2 * points_per_unit))
