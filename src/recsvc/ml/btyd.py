"""BG/NBD "buy till you die" model (Fader, Hardie & Lee 2005): fit, P(alive), expected purchases.

Inputs follow the paper: per customer, ``x`` = number of *repeat* purchases in the calibration
period, ``t_x`` = time of the last repeat purchase and ``T`` = time since the first purchase, all
measured from the first purchase in one time unit (weeks in the paper; any unit works as long as
``t`` in the predictions uses the same one). A customer with no repeat purchase has x = t_x = 0.

The model: while alive a customer buys at Poisson rate λ ~ Gamma(r, α) (α a rate); after each
repeat purchase they drop out with probability p ~ Beta(a, b). Per customer the log-likelihood is

    ln Γ(r+x) − ln Γ(r) + r ln α + ln B(a, b+x) − ln B(a, b)
        + ln[ (α+T)^−(r+x) + 1{x>0} · a/(b+x−1) · (α+t_x)^−(r+x) ]

computed with ``gammaln``/``betaln`` and a log-sum-exp so that large x and T do not overflow.
Parameters are fitted on the log scale (all four must be positive). With the published CDNOW
parameters (r, α, a, b) = (0.243, 4.414, 0.793, 2.426) a customer with x=2, t_x=30.43, T=38.86
weeks is expected to make 1.226 purchases in the next 39 weeks (the paper's Excel sheet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

FloatArray = npt.NDArray[np.float64]
ArrayLike = Any  # float | sequence | ndarray: numpy's own union is not worth spelling out

_A_SINGULAR_EPS = 1e-4


def _arr(v: ArrayLike) -> FloatArray:
    return np.asarray(v, dtype=np.float64)


def _out(v: FloatArray) -> Any:
    return v if v.ndim else float(v)


def _check_history(x: FloatArray, t_x: FloatArray, T: FloatArray) -> None:
    if np.any(~np.isfinite(x)) or np.any(x < 0):
        raise ValueError("x (repeat purchases) must be finite and >= 0")
    if np.any(~np.isfinite(t_x)) or np.any(t_x < 0):
        raise ValueError("t_x (recency) must be finite and >= 0")
    if np.any(~np.isfinite(T)) or np.any(t_x > T + 1e-9):
        raise ValueError("T (age) must be finite and >= t_x")


def histories(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, *more: ArrayLike
              ) -> tuple[FloatArray, ...]:
    """x, t_x, T (and `more`: a horizon) as arrays broadcast together, the purchase histories
    checked (`_check_history`)."""
    arrays = tuple(np.broadcast_arrays(_arr(x), _arr(t_x), _arr(T), *(_arr(m) for m in more)))
    _check_history(*arrays[:3])
    return arrays


def fit_inputs(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None
               ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """A fit's (x, t_x, T, weights, customers): checked, flattened, and identical histories
    collapsed into one weighted row (the likelihood is a product over customers, so a weight
    is an exponent)."""
    xa, ta, Ta = (np.ravel(v) for v in histories(x, t_x, T))
    w = np.ones_like(xa) if weights is None else np.ravel(_arr(weights))
    if w.shape != xa.shape or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be >= 0, finite, one per customer and not all zero")
    xa, ta, Ta, w = _collapse(xa, ta, Ta, w)
    return xa, ta, Ta, w, float(w.sum())


def minimize(objective: Callable[[FloatArray], tuple[float, FloatArray]],
             initial: tuple[float, ...], gtol: float) -> Any:
    """L-BFGS-B over the log parameters from `initial`; `objective` gives the mean negative
    log-likelihood and its gradient."""
    return optimize.minimize(objective, np.log(np.asarray(initial, dtype=np.float64)),
                             jac=True, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * len(initial),
                             options={"maxiter": 2000, "ftol": 1e-13, "gtol": gtol})


@dataclass(frozen=True, slots=True)
class FitInfo:
    """How a fit went: total log-likelihood, customers used, optimiser outcome."""

    log_likelihood: float
    n_customers: float
    converged: bool
    message: str


class Parameters:
    """What the BTYD models share: positive, finite parameters named by `PARAMS` (the
    dataclass fields before `fit_info`), checked on construction, and their JSON form."""

    __slots__ = ()
    PARAMS: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        for name in self.PARAMS:
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (parameters and, when fitted, the fit summary)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self.PARAMS}
        info = getattr(self, "fit_info", None)
        if info is not None:
            out["fit_info"] = asdict(info)
        return out

    @classmethod
    def fitted(cls, best: Any, n: float) -> Self:
        """The model at `best`, a scipy.optimize result over the log parameters (in `PARAMS`
        order) whose value is the mean negative log-likelihood of `n` customers."""
        params = np.exp(best.x)
        if not np.all(np.isfinite(params)) or not best.fun < 1e300:
            raise ValueError(f"{cls.__name__} fit failed: {best.message}")
        info = FitInfo(log_likelihood=-float(best.fun) * n, n_customers=n,
                       converged=bool(best.success), message=str(best.message))
        return cls(*(float(p) for p in params), fit_info=info)  # type: ignore[call-arg]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        info = data.get("fit_info")
        return cls(*(float(data[name]) for name in cls.PARAMS),  # type: ignore[call-arg]
                   fit_info=FitInfo(**info) if info else None)


@dataclass(frozen=True, slots=True)
class BgNbd(Parameters):
    """A BG/NBD model with parameters r, alpha (purchase process) and a, b (dropout process)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("r", "alpha", "a", "b")
    r: float
    alpha: float
    a: float
    b: float
    fit_info: FitInfo | None = None

    # -- likelihood and fitting --------------------------------------------------------------

    def log_likelihood(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Any:
        """Per-customer log-likelihood of (x, t_x, T) under these parameters."""
        xa, ta, Ta = histories(x, t_x, T)
        return _out(_log_likelihood(np.log([self.r, self.alpha, self.a, self.b]), xa, ta, Ta))

    @classmethod
    def fit(
        cls,
        x: ArrayLike,
        t_x: ArrayLike,
        T: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        initial: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    ) -> Self:
        """Maximum-likelihood fit on customers' (x, t_x, T), optionally weighted (counts of rows).

        Identical histories can be collapsed into one row with a weight: the likelihood is a
        product over customers, so a weight is an exponent. Raises ValueError when the optimiser
        fails to produce finite parameters.
        """
        xa, ta, Ta, w, n = fit_inputs(x, t_x, T, weights)

        def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
            # the mean keeps the objective's scale independent of the sample size
            ll, grad = _log_likelihood_and_gradient(log_params, xa, ta, Ta)
            value = -float(np.dot(w, ll)) / n
            if not np.isfinite(value):
                return 1e300, np.zeros(4)
            return value, -(w @ grad) / n

        return cls.fitted(minimize(objective, initial, gtol=1e-9), n)

    # -- predictions -------------------------------------------------------------------------

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Any:
        """P(customer still alive at T | x, t_x, T); exactly 1 for customers with x = 0.

        The model only lets customers drop out right after a repeat purchase, so a customer who
        never came back is "alive" by construction. That makes P(alive) a poor churn ranking
        on its own where most customers buy once; `expected_purchases` ranks far better.
        """
        xa, ta, Ta = histories(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore"):
            log_odds_dead = (
                np.log(a)
                - np.log(b + np.maximum(xa, 1.0) - 1.0)
                + (r + xa) * (np.log(alpha + Ta) - np.log(alpha + ta))
            )
        # 1 / (1 + e^z) = expit(−z): stable for any z
        alive = np.where(xa > 0, special.expit(-log_odds_dead), 1.0)
        return _out(alive)

    def expected_purchases(self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Any:
        """E[purchases in (T, T+t] | x, t_x, T], the paper's equation (10)."""
        xa, txa, Ta, ta_ = histories(x, t_x, T, t)
        if np.any(ta_ < 0):
            raise ValueError("t must be >= 0")
        return _out(
            _around_a_singularity(
                lambda a: _conditional_expectation(self.r, self.alpha, a, self.b, ta_, xa, txa, Ta),
                self.a,
            )
        )

    def p_purchase_within(self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Any:
        """P(at least one purchase in (T, T+t] | x, t_x, T).

        Dropout happens only right after a purchase, so a customer alive at T stays alive until
        their next purchase, which comes after an Exp(λ) wait: P(none in (T, T+t] | alive, λ)
        = e^−λt. Given alive at T the likelihood of λ is λ^x e^−λT, so λ | data, alive ~
        Gamma(r+x, α+T) and E[e^−λt] = ((α+T)/(α+T+t))^(r+x). Hence

            P(at least one) = P(alive) · [1 − ((α+T)/(α+T+t))^(r+x)],

        the bracket computed as −expm1(−(r+x)·ln(1 + t/(α+T))): exact for small t and large x.
        """
        xa, txa, Ta, ta_ = histories(x, t_x, T, t)
        if np.any(ta_ < 0):
            raise ValueError("t must be >= 0")
        within_if_alive = -np.expm1(-(self.r + xa) * np.log1p(ta_ / (self.alpha + Ta)))
        alive = np.asarray(self.p_alive(xa, txa, Ta), dtype=np.float64)
        return _out(np.asarray(alive * within_if_alive, dtype=np.float64))

    def horizon_answers(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                        ) -> tuple[FloatArray, FloatArray]:
        """(p_purchase_within, expected_purchases) over the same horizon (each is cheap here;
        Pareto/NBD shares the costly part)."""
        return (np.asarray(self.p_purchase_within(t, x, t_x, T), dtype=np.float64),
                np.asarray(self.expected_purchases(t, x, t_x, T), dtype=np.float64))

    def expected_purchases_unconditional(self, t: ArrayLike) -> Any:
        """E[X(t)]: repeat purchases in (0, t] by a customer drawn at random from the population."""
        ta_ = _arr(t)
        if np.any(ta_ < 0):
            raise ValueError("t must be >= 0")
        return _out(
            _around_a_singularity(
                lambda a: _unconditional_expectation(self.r, self.alpha, a, self.b, ta_), self.a
            )
        )


def _around_a_singularity(f: Callable[[float], FloatArray], a: float) -> FloatArray:
    """f(a), or the mean of f(1 ± ε) when a is within ε of 1.

    The expectations divide by (a − 1); at a = 1 the limit is finite but the formula is 0/0,
    and the symmetric mean is off by O(ε²) only.
    """
    if abs(a - 1.0) < _A_SINGULAR_EPS:
        return (f(1.0 - _A_SINGULAR_EPS) + f(1.0 + _A_SINGULAR_EPS)) / 2.0
    return f(a)


def _log_likelihood(
    log_params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    r, alpha, a, b = np.exp(log_params)
    base = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.betaln(a, b + x)
        - special.betaln(a, b)
    )
    still_alive = -(r + x) * np.log(alpha + T)
    # x = 0 has no "dropped after the last purchase" term; b + max(x,1) − 1 keeps the log finite
    dropped = np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) - (r + x) * np.log(alpha + t_x)
    dropped = np.where(x > 0, dropped, -np.inf)
    return base + np.logaddexp(still_alive, dropped)


def _log_likelihood_and_gradient(
    log_params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per-customer log-likelihood and its gradient in (ln r, ln α, ln a, ln b), shape (n, 4).

    An analytic gradient makes the fit an order of magnitude faster and more precise than finite
    differences: LL = A + log(e^S + e^D) with A, S, D as in the module docstring, so
    ∂LL = ∂A + w·∂S + (1−w)·∂D where w = e^S / (e^S + e^D).
    """
    r, alpha, a, b = np.exp(log_params)
    ll = _log_likelihood(log_params, x, t_x, T)
    repeat = x > 0
    b_x1 = b + np.maximum(x, 1.0) - 1.0
    s = -(r + x) * np.log(alpha + T)
    d = np.log(a) - np.log(b_x1) - (r + x) * np.log(alpha + t_x)
    w_s = np.where(repeat, special.expit(s - d), 1.0)
    w_d = 1.0 - w_s
    psi = special.digamma
    d_r = psi(r + x) - psi(r) + np.log(alpha) - w_s * np.log(alpha + T) - w_d * np.log(alpha + t_x)
    d_alpha = r / alpha - w_s * (r + x) / (alpha + T) - w_d * (r + x) / (alpha + t_x)
    d_a = psi(a + b) - psi(a + b + x) + w_d / a
    d_b = psi(b + x) - psi(b) + psi(a + b) - psi(a + b + x) - w_d / b_x1
    grad = np.stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b], axis=1)
    return ll, grad


def _collapse(
    x: FloatArray, t_x: FloatArray, T: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Merge identical (x, t_x, T) rows, adding their weights: fewer rows, same likelihood."""
    rows = np.stack([x, t_x, T], axis=1)
    uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
    weights = np.bincount(np.ravel(inverse), weights=w, minlength=len(uniq)).astype(np.float64)
    keep = weights > 0
    return uniq[keep, 0], uniq[keep, 1], uniq[keep, 2], weights[keep]


def _conditional_expectation(
    r: float,
    alpha: float,
    a: float,
    b: float,
    t: FloatArray,
    x: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
) -> FloatArray:
    z = t / (alpha + T + t)
    c = a + b + x - 1.0
    # Euler's transformation turns (1−z)^(r+x) · 2F1(r+x, b+x; c; z) into
    # (1−z)^(a−1) · 2F1(a−1, a+b−1−r; c; z): the same value without the huge first arguments
    # that make the textbook form overflow for frequent buyers (Fader & Hardie's "#NUM!" note).
    # A fit with huge a and b (a fixed drop-out chance; seen on a few weeks of history) makes
    # the transformed form overflow instead: those rows take the textbook form, finite there.
    with np.errstate(over="ignore", invalid="ignore"):
        tail = np.exp((a - 1.0) * np.log1p(-z)) * special.hyp2f1(a - 1.0, a + b - 1.0 - r, c, z)
    bad = ~np.isfinite(tail)
    if bad.any():
        tail, z, c, x = (np.array(v, dtype=np.float64) for v in np.broadcast_arrays(tail, z, c, x))
        bad = ~np.isfinite(tail)
        tail[bad] = (np.exp((r + x[bad]) * np.log1p(-z[bad]))
                     * special.hyp2f1(r + x[bad], b + x[bad], c[bad], z[bad]))
    numerator = c / (a - 1.0) * (1.0 - tail)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (
            np.log(a)
            - np.log(b + np.maximum(x, 1.0) - 1.0)
            + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
    denominator = 1.0 + np.where(x > 0, np.exp(np.minimum(log_ratio, 700.0)), 0.0)
    return np.asarray(numerator / denominator, dtype=np.float64)


def _unconditional_expectation(
    r: float, alpha: float, a: float, b: float, t: FloatArray
) -> FloatArray:
    z = t / (alpha + t)
    # same Euler transformation as above, with x = 0 and T = 0
    tail = np.exp((a - 1.0) * np.log1p(-z)) * special.hyp2f1(
        a - 1.0, a + b - 1.0 - r, a + b - 1.0, z
    )
    return np.asarray((a + b - 1.0) / (a - 1.0) * (1.0 - tail), dtype=np.float64)


def simulate(model: BgNbd, T: ArrayLike, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Draw (x, t_x) for customers observed for ages `T` under the model's generative story.

    Used to test the fit (parameter recovery) and to sanity-check predictions by Monte Carlo.
    """
    Ta = np.ravel(_arr(T))
    n = len(Ta)
    lam = rng.gamma(shape=model.r, scale=1.0 / model.alpha, size=n)
    p = rng.beta(model.a, model.b, size=n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    now = np.zeros(n)
    active = np.arange(n)
    while active.size:
        with np.errstate(divide="ignore"):  # λ can underflow to 0: never buys again
            now[active] += rng.exponential(size=active.size) / lam[active]
        bought = now[active] <= Ta[active]
        active = active[bought]
        x[active] += 1
        t_x[active] = now[active]
        # a customer may drop out right after each repeat purchase
        active = active[rng.random(active.size) >= p[active]]
    return x, t_x


def summarise_orders(
    customer: ArrayLike,
    order_day: ArrayLike,
    cutoff_day: float,
    *,
    n_customers: int | None = None,
    period_days: float = 7.0,
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Per-customer (x, t_x, T) from an order log, as the model defines them.

    `customer` holds customer indices 0..n−1; `order_day` is each order's time in days on any
    fixed origin (fractions allowed). Only orders strictly before `cutoff_day` count. Several
    orders on one calendar day count as one purchase (the model's purchases are events in
    continuous time; same-day baskets would otherwise look like a very high rate). Times are
    returned in units of `period_days` (weeks by default, as in the paper): x = purchase days
    after the first, t_x = last − first, T = cutoff − first. Customers without an order before
    the cut-off get zeros and False in the last array: the model does not cover them.
    """
    cust = np.ravel(np.asarray(customer, dtype=np.int64))
    day = np.ravel(_arr(order_day))
    if cust.shape != day.shape:
        raise ValueError("customer and order_day differ in length")
    if cust.size and cust.min() < 0:
        raise ValueError("customer indices must be >= 0")
    n = int(n_customers if n_customers is not None else (cust.max() + 1 if cust.size else 0))
    before = day < cutoff_day
    pairs = np.unique(np.stack([cust[before], np.floor(day[before])], axis=1), axis=0)
    c, d = pairs[:, 0].astype(np.int64), pairs[:, 1]
    if c.size and c.max() >= n:
        raise ValueError("customer index beyond n_customers")
    days = np.bincount(c, minlength=n)
    seen = days > 0
    first = np.zeros(n)
    last = np.zeros(n)
    # rows are sorted by (customer, day): a customer's first row is its first day, and so on
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.array([], int)
    ends = np.r_[starts[1:] - 1, c.size - 1] if c.size else np.array([], int)
    first[c[starts]] = d[starts]
    last[c[ends]] = d[ends]
    x = np.where(seen, days - 1, 0).astype(np.float64)
    t_x = np.where(seen, (last - first) / period_days, 0.0)
    T = np.where(seen, (np.floor(cutoff_day) - first) / period_days, 0.0)
    # an order on the cut-off's own calendar day (but before it) keeps T >= t_x
    T = np.maximum(T, t_x)
    return x, t_x, T, seen
