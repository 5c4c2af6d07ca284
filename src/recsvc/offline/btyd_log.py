"""Synthetic transaction logs shaped like CDNOW, for testing the real-log path end to end.

CDNOW's master file: 23,570 customers who first bought in the first 12 weeks of 1997, followed
for 78 weeks, about 69,700 purchases, most customers buying once or twice. `btyd_log`'s
purchases follow BG/NBD with the parameters published for CDNOW (r=0.243, α=4.414, a=0.793,
b=2.426 per week), so churn is real and its best possible ranking is known in form. The other
classic processes give logs of the same shape (`LOGS`): Pareto/NBD with its published CDNOW
parameters, BG/NBD with a yearly season, and BG/NBD with a cohort that stops buying at once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
# Pareto/NBD on CDNOW (Fader, Hardie and Lee 2005, "A note on implementing the Pareto/NBD")
CDNOW_PARETO = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
START = dt.datetime(1997, 1, 1)
WEEKS = 78
SEASON_AMPLITUDE = 0.6  # the seasonal log's purchase rate swings ±60 % over the year
STOP_WEEK = 40  # the abrupt-stop log: the first month's cohort buys nothing from this week on
STOP_COHORT_WEEKS = 4


def btyd_log(customers: int, seed: int, params: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows customer_id,timestamp,amount,quantity, unsorted, like an export of a shop's orders."""
    return _bg_log(customers, seed, params or CDNOW)


def _bg_log(customers: int, seed: int, p: dict[str, float], *, season: float = 0.0,
            stop: tuple[float, float] | None = None) -> pd.DataFrame:
    """BG/NBD purchases: Poisson at rate λ while alive, a coin of weight p after each purchase
    decides dropout. `season`: the rate times 1 + season·sin(2π week / 52) (drawn by thinning);
    `stop` (cohort_weeks, week): customers who first bought within the first `cohort_weeks`
    weeks buy nothing from `week` on."""
    rng = np.random.default_rng(seed)
    first = rng.uniform(0, 12, customers)  # weeks after START
    lam = rng.gamma(p["r"], 1.0 / p["alpha"], customers) * (1.0 + season)
    drop = rng.beta(p["a"], p["b"], customers)
    end = np.full(customers, float(WEEKS))
    if stop is not None:
        end[first < stop[0]] = stop[1]
    ids, weeks = [np.arange(customers)], [first]
    now, alive = first.copy(), np.ones(customers, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        with np.errstate(divide="ignore"):
            now[idx] += rng.exponential(size=len(idx)) / lam[idx]
        idx = idx[now[idx] <= end[idx]]
        # thinning: a candidate purchase happens with the season's share of the peak rate
        real = (rng.random(len(idx)) < (1.0 + season * np.sin(2 * np.pi * now[idx] / 52.0))
                / (1.0 + season)) if season else np.ones(len(idx), dtype=bool)
        ids.append(idx[real])
        weeks.append(now[idx[real]].copy())
        alive[:] = False
        keep = np.where(real, rng.random(len(idx)) >= drop[idx], True)
        alive[idx[keep]] = True
    return _as_log(np.concatenate(ids), np.concatenate(weeks), customers, rng, seed)


def pareto_nbd_log(customers: int, seed: int,
                   params: dict[str, float] | None = None) -> pd.DataFrame:
    """Pareto/NBD purchases: Poisson at rate λ ~ Gamma(r, α) over an exponential lifetime of
    rate μ ~ Gamma(s, β), from the first purchase."""
    p = params or CDNOW_PARETO
    rng = np.random.default_rng(seed)
    first = rng.uniform(0, 12, customers)
    lam = rng.gamma(p["r"], 1.0 / p["alpha"], customers)
    mu = rng.gamma(p["s"], 1.0 / p["beta"], customers)
    end = np.minimum(first + rng.exponential(size=customers) / mu, WEEKS)
    counts = rng.poisson(lam * (end - first))
    cust = np.repeat(np.arange(customers), counts)
    week = first[cust] + rng.random(len(cust)) * (end - first)[cust]
    return _as_log(np.r_[np.arange(customers), cust], np.r_[first, week], customers, rng, seed)


def seasonal_log(customers: int, seed: int) -> pd.DataFrame:
    """BG/NBD with CDNOW's parameters whose purchase rate follows a yearly season."""
    return _bg_log(customers, seed, CDNOW, season=SEASON_AMPLITUDE)


def abrupt_stop_log(customers: int, seed: int) -> pd.DataFrame:
    """BG/NBD with CDNOW's parameters where the first month's cohort stops buying at once in
    week STOP_WEEK (a store closed, a rival's launch), which no classic model foresees."""
    return _bg_log(customers, seed, CDNOW, stop=(STOP_COHORT_WEEKS, STOP_WEEK))


LOGS = {"bg_nbd": btyd_log, "pareto_nbd": pareto_nbd_log, "seasonal_bg": seasonal_log,
        "abrupt_stop": abrupt_stop_log}
"""The real-shaped logs by name: each a function of (customers, seed)."""


def _as_log(cust: npt.NDArray[np.int64], week: npt.NDArray[np.float64], customers: int,
            rng: np.random.Generator, seed: int) -> pd.DataFrame:
    """Purchases (customer index, weeks after START) as a shop's export, with baskets."""
    spend = np.exp(rng.normal(3.2, 0.8, customers))  # a typical basket per customer
    amount = np.round(spend[cust] * np.exp(rng.normal(0, 0.4, len(cust))), 2)
    amount[rng.random(len(cust)) < 0.003] = 0.0  # free items and fully discounted orders
    ts = pd.Timestamp(START) + pd.to_timedelta(np.round(week * 7 * 86400), unit="s")
    frame = pd.DataFrame({
        "customer_id": [f"C{c:06d}" for c in cust],
        "timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"),
        "amount": [f"{a:.2f}" for a in amount],
        "quantity": 1 + rng.poisson(0.8, len(cust)),
    })
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_btyd_log(path: Path, customers: int, seed: int) -> int:
    frame = btyd_log(customers, seed)
    frame.to_csv(path, index=False)
    return len(frame)


def churn_truth(frame: pd.DataFrame, cutoff: dt.datetime, weeks: float = 39) -> pd.Series:
    """Per customer who bought before `cutoff`: 1 if no purchase in the `weeks` after it."""
    ts = pd.to_datetime(frame.timestamp)
    before = frame[ts < cutoff].customer_id.unique()
    after = frame[(ts >= cutoff) & (ts < cutoff + dt.timedelta(weeks=weeks))].customer_id.unique()
    truth = pd.Series(1, index=pd.Index(before, name="customer_id"))
    truth[truth.index.isin(after)] = 0
    return truth


def true_churn(frame: pd.DataFrame, cutoff: dt.datetime, weeks: float = 39,
               params: dict[str, float] | None = None) -> pd.Series:
    """Per customer who bought before `cutoff`: P(no purchase in the `weeks` after it) under
    the BG/NBD `btyd_log` draws from (CDNOW's parameters unless `params`), from the purchases
    before `cutoff`: the best ranking any scorer of that log can hope for, in form."""
    from recsvc.ml.btyd import BgNbd

    ts = pd.to_datetime(frame.timestamp)
    g = frame[ts < cutoff].assign(ts=ts[ts < cutoff]).groupby("customer_id").ts
    first, last = g.min(), g.max()
    def in_weeks(spans: pd.Series) -> npt.NDArray[np.float64]:
        return (spans.dt.total_seconds() / (7 * 86400.0)).to_numpy(dtype=np.float64)

    x = (g.size() - 1).to_numpy(dtype=np.float64)
    bought = BgNbd.from_dict(params or CDNOW).p_purchase_within(
        weeks, x, in_weeks(last - first), in_weeks(pd.Timestamp(cutoff) - first))
    return pd.Series(1.0 - bought, index=g.size().index)
