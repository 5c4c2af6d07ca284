"""What the BTYD models (BG/NBD in `btyd`, Pareto/NBD in `pareto_nbd`) share: purchase
histories (x, t_x, T) from an order log and checked, a fit's inputs with identical histories
collapsed, the optimiser over log parameters, and the parameters' base class with its JSON form.

A history follows Fader, Hardie & Lee (2005): per customer, ``x`` = number of *repeat* purchases
in the calibration period, ``t_x`` = time of the last repeat purchase and ``T`` = time since the
first purchase, all from the first purchase in one time unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from scipy import optimize

FloatArray = npt.NDArray[np.float64]
ArrayLike = Any  # float | sequence | ndarray: numpy's own union is not worth spelling out


def floats(v: ArrayLike) -> FloatArray:
    """`v` as an array of float64."""
    return np.asarray(v, dtype=np.float64)


def unwrap(v: FloatArray) -> Any:
    """A 0-d array as a float, any other as itself."""
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
    arrays = tuple(np.broadcast_arrays(floats(x), floats(t_x), floats(T),
                                       *(floats(m) for m in more)))
    _check_history(*arrays[:3])
    return arrays


def fit_inputs(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None
               ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """A fit's (x, t_x, T, weights, customers): checked, flattened, and identical histories
    collapsed into one weighted row (the likelihood is a product over customers, so a weight
    is an exponent)."""
    xa, ta, Ta = (np.ravel(v) for v in histories(x, t_x, T))
    w = np.ones_like(xa) if weights is None else np.ravel(floats(weights))
    if w.shape != xa.shape or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be >= 0, finite, one per customer and not all zero")
    xa, ta, Ta, w = collapse(xa, ta, Ta, w)
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


def collapse(
    x: FloatArray, t_x: FloatArray, T: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Merge identical (x, t_x, T) rows, adding their weights: fewer rows, same likelihood."""
    rows = np.stack([x, t_x, T], axis=1)
    uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
    weights = np.bincount(np.ravel(inverse), weights=w, minlength=len(uniq)).astype(np.float64)
    keep = weights > 0
    return uniq[keep, 0], uniq[keep, 1], uniq[keep, 2], weights[keep]


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
    day = np.ravel(floats(order_day))
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
