"""The simulated programme's population: members with their latent traits (purchase rate,
drop-out, price sensitivity, appetite for redeeming, category tastes), the catalogue of
redeemable items, and the planted points abusers with their schedules. `recsvc.offline.simulate`
runs them day by day."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.data.columns import NULL_US

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

CATEGORIES = (
    "apparel",
    "beauty",
    "books",
    "electronics",
    "furniture",
    "grocery",
    "home",
    "kitchenware",
    "sports",
    "toys",
)
CATEGORY_PRICE_UNITS = {  # median market price of redeemable items, currency units
    "apparel": 120,
    "beauty": 90,
    "books": 40,
    "electronics": 400,
    "furniture": 900,
    "grocery": 30,
    "home": 80,
    "kitchenware": 150,
    "sports": 160,
    "toys": 70,
}
AGE_BANDS = ("18-24", "25-34", "35-44", "45+")
AGE_P = (0.2, 0.35, 0.25, 0.2)
ABUSER_KINDS = ("redemption_burst", "balance_drain", "earn_burn_loop")


# --------------------------------------------------------------------------------------------
# Population and catalogue.
# --------------------------------------------------------------------------------------------
@dataclass
class Members:
    n: int
    signup_day: I64  # day offset (negative: joined before the simulation)
    age: I64
    rate: F64  # orders per day while alive
    dropout: F64  # P(drop out after an order)
    aov_minor: F64  # typical order value
    price_sensitivity: F64
    appetite: F64
    engagement: F64
    cat_pref: F64  # (n, categories), rows sum to 1
    alive: npt.NDArray[np.bool_]
    cum_spend: I64 = field(init=False)
    last_order_day: F64 = field(init=False)
    last_redeem_day: F64 = field(init=False)

    def __post_init__(self) -> None:
        self.cum_spend = np.zeros(self.n, dtype=np.int64)
        self.last_order_day = np.full(self.n, np.nan)
        self.last_redeem_day = np.full(self.n, np.nan)


def make_members(rng: np.random.Generator, n: int, days: int) -> Members:
    before = rng.random(n) < 0.4
    signup = np.where(
        before,
        -rng.integers(1, 731, n),
        rng.integers(0, max(1, int(days * 0.8)), n),
    ).astype(np.int64)
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_P)
    young = age == 0
    rate = rng.gamma(0.9, 0.032 / 0.9, n) * np.where(young, 1.15, 1.0)
    dropout = np.clip(rng.beta(1.2, 7.0, n), 0.005, 0.9)
    aov = np.exp(rng.normal(np.log(120 * 100), 0.55, n))
    sens = np.clip(rng.normal(1.0, 0.3, n) + 0.2 * young, 0.2, 2.0)
    appetite = rng.normal(0.0, 0.7, n)
    engagement = rng.beta(2.0, 3.0, n)
    pref = rng.dirichlet(np.full(len(CATEGORIES), 0.6), n)
    # some of those who joined earlier have already lapsed for good
    alive = ~(before & (rng.random(n) < 0.25))
    return Members(n, signup, age, rate, dropout, aov, sens, appetite, engagement, pref, alive)


@dataclass
class Catalogue:
    n: int
    category: I64
    points_class: npt.NDArray[np.str_]
    price_minor: I64
    points_price: I64
    perceived_discount: F64
    target_stock: I64
    replenish: npt.NDArray[np.bool_]
    popularity: F64
    stock: I64 = field(init=False)
    discount: F64 = field(init=False)
    promo_left: I64 = field(init=False)

    def __post_init__(self) -> None:
        self.stock = self.target_stock.copy()
        self.discount = np.ones(self.n)
        self.promo_left = np.zeros(self.n, dtype=np.int64)


def make_catalogue(
    rng: np.random.Generator, n: int, programme: Programme, n_members: int
) -> Catalogue:
    cat = rng.integers(0, len(CATEGORIES), n)
    median = np.array([CATEGORY_PRICE_UNITS[c] for c in CATEGORIES])[cat]
    price_units = np.round(median * np.exp(rng.normal(0, 0.5, n)), 1)
    price_units = np.maximum(price_units, 5.0)
    classes = np.array(list(programme.index.points_class_coefficients))
    coeffs = np.array(list(programme.index.points_class_coefficients.values()))
    cls = rng.choice(
        len(classes), size=n, p=[0.5, 0.35, 0.15][: len(classes)] if len(classes) == 3 else None
    )
    target_vc = coeffs[cls] * np.exp(rng.normal(0, 0.35, n))
    disc = np.round(rng.uniform(0.7, 1.0, n), 2)
    points = np.maximum(np.round(price_units * disc / target_vc / 10) * 10, 10).astype(np.int64)
    popularity = np.exp(rng.normal(0, 1.0, n))
    # stock for about a month of the expected demand; a tenth is never replenished
    target = np.maximum(rng.poisson(5 + popularity * n_members / 2000.0), 1).astype(np.int64)
    replenish = rng.random(n) > 0.1
    return Catalogue(
        n,
        cat,
        classes[cls],
        np.round(price_units * 100).astype(np.int64),
        points,
        disc,
        target,
        replenish,
        popularity,
    )


# --------------------------------------------------------------------------------------------
# Planted points abusers.
# --------------------------------------------------------------------------------------------
@dataclass
class Abusers:
    """The planted abusers and their schedules (day offsets; -1: nothing planned).

    Every kind repeats its episode until the end of the simulation, so an abuser is active in
    any window of a few weeks after its start:
    - redemption_burst: 5-8 redemptions of cheap items within 10-45 minutes, every 14-28 days,
      each burst funded by a large order 2-5 days before;
    - balance_drain: one points + cash redemption of an item priced above the balance, taking
      all of it, every 15-30 days, the balance first brought to 4,000-9,000 points by a large
      order 3-10 days before;
    - earn_burn_loop: an order, then within 5-40 minutes a redemption of an item priced about
      the points it earned, every 3-8 days.
    """

    member: I64
    kind: I64  # index into ABUSER_KINDS
    episode_day: I64
    fund_day: I64
    fund_target: I64  # balance a funding order tops up to, points
    from_us: I64  # the first abusive redemption (NULL_US: none yet)
    to_us: I64  # the last one

    @property
    def n(self) -> int:
        return len(self.member)


def plant_abusers(rng: np.random.Generator, m: Members, days: int, share: float) -> Abusers:
    """Choose about `share` of the members (alive, joined well before their start) as abusers,
    kinds in turn, each starting on a day in [days/2, days - 21); they never drop out."""
    first = days // 2
    candidates = np.flatnonzero(m.alive & (m.signup_day < first))
    n = min(round(share * m.n), len(candidates))
    member = np.sort(rng.choice(candidates, size=n, replace=False)) if n else candidates[:0]
    kind = rng.permutation(np.arange(n) % len(ABUSER_KINDS))
    start = rng.integers(first, max(first + 1, days - 21), n)
    m.dropout[member] = 0.0  # a fraudster keeps the account alive
    abusers = Abusers(member, kind, np.full(n, -1), np.full(n, -1), np.zeros(n, np.int64),
                      np.full(n, NULL_US), np.full(n, NULL_US))
    for i in range(n):
        schedule_abuse(rng, abusers, i, int(start[i]), first=True)
    return abusers


def schedule_abuse(rng: np.random.Generator, a: Abusers, i: int, day: int, first: bool) -> None:
    """Plan abuser i's next episode from `day` (its funding order first, where it needs one)."""
    kind = ABUSER_KINDS[a.kind[i]]
    if kind == "earn_burn_loop":
        a.episode_day[i] = day + (0 if first else int(rng.integers(3, 9)))
        return
    if kind == "redemption_burst":
        gap, lead, target = rng.integers(14, 29), rng.integers(2, 6), rng.integers(5000, 9001)
    else:
        gap, lead, target = rng.integers(15, 31), rng.integers(3, 11), rng.integers(4000, 9001)
    fund = day if first else day + int(gap) - int(lead)
    a.fund_day[i] = fund
    a.episode_day[i] = fund + int(lead)
    a.fund_target[i] = int(target)
