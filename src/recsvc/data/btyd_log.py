"""A synthetic transaction log shaped like CDNOW, for testing the real-log path end to end.

CDNOW's master file: 23,570 customers who first bought in the first 12 weeks of 1997, followed
for 78 weeks, about 69,700 purchases, most customers buying once or twice. Purchases here
follow BG/NBD with the parameters published for CDNOW (r=0.243, α=4.414, a=0.793, b=2.426 per
week), so churn is real and its best possible ranking is known in form.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
START = dt.datetime(1997, 1, 1)
WEEKS = 78


def btyd_log(customers: int, seed: int, params: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows customer_id,timestamp,amount,quantity, unsorted, like an export of a shop's orders."""
    p = params or CDNOW
    rng = np.random.default_rng(seed)
    first = rng.uniform(0, 12, customers)  # weeks after START
    lam = rng.gamma(p["r"], 1.0 / p["alpha"], customers)
    drop = rng.beta(p["a"], p["b"], customers)
    ids, weeks = [np.arange(customers)], [first]
    now, alive = first.copy(), np.ones(customers, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        with np.errstate(divide="ignore"):
            now[idx] += rng.exponential(size=len(idx)) / lam[idx]
        bought = now[idx] <= WEEKS
        idx = idx[bought]
        ids.append(idx)
        weeks.append(now[idx].copy())
        alive[:] = False
        alive[idx[rng.random(len(idx)) >= drop[idx]]] = True
    cust = np.concatenate(ids)
    week = np.concatenate(weeks)
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
