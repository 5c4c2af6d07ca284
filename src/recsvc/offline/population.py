"""The simulated programme's population: members with their latent traits (purchase rate,
drop-out, price sensitivity, appetite for redeeming, category tastes), the catalogue of
redeemable items. `recsvc.offline.simulate` runs them day by day; `recsvc.offline.abuse` plants a
few of the members as points abusers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme

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
    replenished: I64 = field(init=False)  # units restocked at the start of the day

    def __post_init__(self) -> None:
        self.stock = self.target_stock.copy()
        self.discount = np.ones(self.n)
        self.promo_left = np.zeros(self.n, dtype=np.int64)
        self.replenished = np.zeros(self.n, dtype=np.int64)

    def new_day(self, rng: np.random.Generator, date: dt.date) -> None:
        """The day's promotions (a week at 70-90 % of the price, started by about one item in
        45 a day) and, on Mondays, stock refilled to its target where the item is replenished."""
        self.promo_left = np.maximum(self.promo_left - 1, 0)
        self.discount = np.where(self.promo_left > 0, self.discount, 1.0)
        start = (self.promo_left == 0) & (rng.random(self.n) < 1 / 45)
        self.promo_left[start] = 7
        self.discount[start] = rng.choice([0.7, 0.8, 0.9], size=int(start.sum()))
        self.replenished = np.zeros(self.n, dtype=np.int64)
        if date.weekday() == 0:
            refill = self.replenish & (self.stock < self.target_stock)
            self.replenished[refill] = self.target_stock[refill] - self.stock[refill]
            self.stock += self.replenished


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
