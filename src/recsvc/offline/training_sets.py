"""Point-in-time training sets: where the data ends, the cut-offs a split is made at, and each
model's frame of rows (members at month starts for churn, exposures for propensity) with the
BTYD models refitted on what was known at the cut-off."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsvc.core.ledger import US, instant
from recsvc.data import schema
from recsvc.engine import LOCAL, Engine
from recsvc.errors import DataMissing
from recsvc.ml.runtime import BTYD, FAMILIES
from recsvc.offline.compute import month_start_instants, week_start_instants

F64 = npt.NDArray[np.float64]
PROPENSITY = "propensity"
CHURN = "churn"
REDEEM_WINDOW = dt.timedelta(days=7)


@dataclass(frozen=True)
class TrainOptions:
    as_of: dt.datetime | None = None
    """Only events before this instant are used (labels included). Default: end of the data."""
    horizon_days: int = 90
    """Churn label: no order in the next `horizon_days` after a cut-off."""
    min_history_days: int = 60
    """The first churn cut-off is this long after the first event, so features have history."""
    max_train_rows: int = 1_500_000
    """Propensity: older training exposures beyond this many are left out (memory, time)."""
    seed: int = 7
    num_threads: int = 0
    """LightGBM threads while training; 0 means all cores."""
    engine: Engine = LOCAL
    """Where LightGBM trains: here, or data-parallel over the partitions of a Dask cluster."""


@dataclass
class Split:
    """One training set split by time, with labels, model inputs and what the report needs."""

    frame: pd.DataFrame
    part: npt.NDArray[np.str_]  # "train" | "valid" | "test" per row
    label: npt.NDArray[np.int64]
    window: tuple[dt.datetime, dt.datetime]
    bounds: dict[str, str] = field(default_factory=dict)

    def rows(self, name: str) -> npt.NDArray[np.bool_]:
        return self.part == name


# --------------------------------------------------------------------------------------------
# Labels and entity frames.
# --------------------------------------------------------------------------------------------
def micros(ts: pd.Series) -> npt.NDArray[np.int64]:
    return np.asarray(ts.astype("datetime64[us, UTC]").astype("int64"), dtype=np.int64)


def data_limit(data_dir: Path, as_of: dt.datetime | None) -> dt.datetime:
    """The instant nothing at or after which may be used: `as_of`, else the end of the data."""
    if as_of is not None:
        return as_of
    orders = schema.read_table(data_dir, "orders", ["ts"])
    if orders.num_rows == 0:
        raise DataMissing("no orders in the tables: nothing to train on")
    last = orders["ts"].to_pandas().max()
    return (last.floor("D") + pd.Timedelta(days=1)).to_pydatetime()


def split_cutoffs(
    cutoffs: Sequence[dt.datetime], horizon: dt.timedelta
) -> tuple[list[dt.datetime], dt.datetime, dt.datetime]:
    """(train cut-offs, validation cut-off, test cut-off) from those whose label is observable.

    Test is the last cut-off; validation the last one whose label window ends by the test
    cut-off; training those whose windows end by the validation cut-off. When the data is too
    short for such gaps (a log of a few months), the last three cut-offs become test,
    validation and the newest training cut-off, and the windows overlap (the report says so).
    """
    if len(cutoffs) < 3:
        raise DataMissing(
            f"need at least 3 cut-offs with an observable {horizon.days}-day label, "
            f"have {len(cutoffs)}: the data covers too short a period (try --horizon-days)"
        )
    test = cutoffs[-1]
    valid_candidates = [c for c in cutoffs if c + horizon <= test]
    valid = valid_candidates[-1] if valid_candidates else cutoffs[-2]
    train = [c for c in cutoffs if c + horizon <= valid]
    if not train:
        valid = cutoffs[-2]
        train = list(cutoffs[:-2])
    return train, valid, test


def churn_frame(
    data_dir: Path, limit: dt.datetime, opts: TrainOptions
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Members who had ordered before each weekly cut-off (`churn_cutoffs`), labelled 1 when
    they place no order in the label horizon after it; only cut-offs whose whole label
    window lies before `limit`, a member repeated across them. The label horizon is
    `horizon_days` where the history lets training, validation and test cut-offs lie a label
    window apart, else the longest of `fallback_horizons` that does, else the longest with
    three cut-offs at all (`bounds["horizon_days"]` says which, `bounds["note"]` why)."""
    orders = schema.read_table(data_dir, "orders", ["member_id", "ts"]).to_pandas()
    orders = orders[orders.ts < limit]
    if orders.empty:
        raise DataMissing("no orders before the as-of instant")
    first = orders.ts.min().to_pydatetime() + dt.timedelta(days=opts.min_history_days)
    # the horizon asked if its splits can be a label window apart (the test cut-off a month
    # start, else the last week start), else the longest shorter one whose can, else the
    # longest with three cut-offs at all (their windows overlap)
    tried = []
    for days in (opts.horizon_days, *fallback_horizons(opts.horizon_days)):
        horizon = dt.timedelta(days=days)
        span = (int(first.timestamp() * US), int((limit - horizon).timestamp() * US))
        tried += [(horizon, [instant(int(us)) for us in starts])
                  for starts in (churn_cutoffs(*span), week_start_instants(*span))]
        apart = [(h, c) for h, c in tried[-2:] if len(c) >= 3 and _apart(c, h)]
        if apart:
            horizon, cutoffs = apart[0]
            break
    else:
        usable = [(h, c) for h, c in tried if len(c) >= 3]
        if not usable:
            span_days = (limit - orders.ts.min().to_pydatetime()).days
            raise DataMissing(
                f"the orders before {limit:%Y-%m-%d} span {span_days} days: too short to "
                f"label churn at {opts.horizon_days} days or even 7 (a label needs "
                f"{opts.min_history_days} days of history, then three week starts whose "
                "windows end before the as-of date)")
        horizon, cutoffs = usable[0]
    train, valid, test = split_cutoffs(cutoffs, horizon)
    member = orders.member_id.to_numpy()
    ts = micros(orders.ts)
    order = np.lexsort((ts, member))
    member, ts = member[order], ts[order]
    key = (member << 40) | (ts // US)
    ids = np.unique(member)
    first_us = ts[np.searchsorted(member, ids)]
    frames = []
    for part, cuts in (("train", train), ("valid", [valid]), ("test", [test])):
        for c in cuts:
            c_us = int(c.timestamp() * US)
            who = ids[first_us < c_us]
            lo = np.searchsorted(key, (who << 40) | (c_us // US))
            end_s = (c_us // US) + int(horizon.total_seconds())
            hi = np.searchsorted(key, (who << 40) | end_s)
            frames.append(pd.DataFrame({
                "member_id": who,
                "event_timestamp": pd.Timestamp(c),
                "label": (hi == lo).astype(np.int64),
                "part": part,
            }))
    bounds = {"train": f"{train[0]:%Y-%m-%d} .. {train[-1]:%Y-%m-%d} ({len(train)} cut-offs)",
              "valid": f"{valid:%Y-%m-%d}", "test": f"{test:%Y-%m-%d}",
              "horizon_days": str(horizon.days)}
    if horizon.days != opts.horizon_days:
        bounds["note"] = (f"the history before {limit:%Y-%m-%d} is too short for labels at "
                          f"{opts.horizon_days} days: labelled at {horizon.days}")
    elif train[-1] + horizon > valid or valid + horizon > test:
        bounds["note"] = "label windows overlap between splits: the data is short"
    return pd.concat(frames, ignore_index=True), bounds


def whole_history(data_dir: Path, limit: dt.datetime) -> tuple[F64, F64, F64]:
    """Every buyer's BTYD statistics at `limit` from the orders before it, in days: repeat
    orders x, first to last order t_x, first order to `limit` T."""
    orders = schema.read_table(data_dir, "orders", ["member_id", "ts"]).to_pandas()
    orders = orders[orders.ts < limit]
    ts = micros(orders.ts).astype(np.float64) / (US * 86400.0)
    g = pd.DataFrame({"m": orders.member_id.to_numpy(), "t": ts}).groupby("m").t
    first, last, n = g.min().to_numpy(), g.max().to_numpy(), g.size().to_numpy()
    end = limit.timestamp() / 86400.0
    return (n - 1).astype(np.float64), last - first, end - first


def refit_btyd(kinds: Sequence[str], data_dir: Path, limit: dt.datetime) -> dict[str, Any]:
    """Each BTYD scorer's model (runtime.BTYD names) fitted on every purchase history up to
    `limit`, in weeks."""
    x, t_x, T = whole_history(data_dir, limit)
    return {kind: FAMILIES[BTYD[kind][0]].fit(x, t_x / 7.0, T / 7.0) for kind in kinds}


def churn_cutoffs(first_us: int, last_us: int) -> npt.NDArray[np.int64]:
    """The churn cut-offs in [first_us, last_us]: every week start up to the last month start,
    and that month start, which is the test cut-off (where the simulator's oracle is known,
    and a date a report reads as "the end of the month"); a span without a month start: the
    week starts alone."""
    weeks = week_start_instants(first_us, last_us)
    months = month_start_instants(first_us, last_us)
    if not len(months):
        return weeks
    return np.union1d(weeks[weeks <= months[-1]], months[-1:])


def _apart(cutoffs: Sequence[dt.datetime], horizon: dt.timedelta) -> bool:
    """Whether training, validation and test cut-offs can be a label window apart."""
    train, valid, test = split_cutoffs(cutoffs, horizon)
    return train[-1] + horizon <= valid and valid + horizon <= test


def fallback_horizons(days: int) -> list[int]:
    """The shorter label horizons tried, longest first, when the history has too few cut-offs
    for labels at `days`."""
    ladder = (days * 3 // 4, days // 2, days // 3, days // 4, 28, 14, 7)
    return sorted({d for d in ladder if 7 <= d < days}, reverse=True)


def propensity_frame(
    data_dir: Path, limit: dt.datetime, opts: TrainOptions
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Exposures whose 7-day window closed before `limit`, split by time with 7-day gaps."""
    exp = schema.read_table(
        data_dir, "exposures",
        ["exposure_id", "member_id", "item_id", "ts", "surface", "balance", "redeemed"],
    ).to_pandas()
    exp = exp[exp.ts + REDEEM_WINDOW <= limit]
    if len(exp) < 1000 or exp.redeemed.sum() < 50:
        raise DataMissing(
            f"only {len(exp):,} exposures ({int(exp.redeemed.sum()):,} redeemed) before the "
            "as-of instant: too few to train a propensity model (imported logs have none)"
        )
    t = exp.ts
    valid_start = t.quantile(0.70)
    test_start = t.quantile(0.85)
    part = np.where(t >= test_start, "test", np.where(t >= valid_start, "valid", "train"))
    gap = ((part == "train") & (t + REDEEM_WINDOW > valid_start)) | (
        (part == "valid") & (t + REDEEM_WINDOW > test_start))
    exp = exp.assign(part=part)[~gap]
    train = exp[exp.part == "train"]
    if len(train) > opts.max_train_rows:
        keep = train.sort_values("ts").index[-opts.max_train_rows:]
        exp = pd.concat([exp.loc[keep], exp[exp.part != "train"]])
    exp = exp.rename(columns={"ts": "event_timestamp", "redeemed": "label"})
    exp["label"] = exp.label.astype(np.int64)
    bounds = {"train": f"{exp[exp.part == 'train'].event_timestamp.min():%Y-%m-%d} .. "
                       f"{valid_start:%Y-%m-%d}",
              "valid": f"{valid_start:%Y-%m-%d} .. {test_start:%Y-%m-%d}",
              "test": f"{test_start:%Y-%m-%d} .. {limit - REDEEM_WINDOW:%Y-%m-%d}"}
    return exp.reset_index(drop=True), bounds
