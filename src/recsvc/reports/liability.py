"""`recsvc liability-report`: the points-liability forecast from the ledger and the churn model,
with a backtest against the months the tables hold beyond the as-of instant.

This module owns the forecast's I/O: it reads the book (`liability_book`: the forecast uses
only rows before the as-of instant), scores churn with a model that saw nothing later, and
writes liability.md, liability.json and PNG plots (`liability_render`). The arithmetic is
`recsvc.core.liability`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.cliargs import end_of_day
from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.core import liability as li
from recsvc.core import liability_backtest as lb
from recsvc.core.ledger import (
    DAY_US,
    epoch_us,
    instant,
)
from recsvc.data import schema
from recsvc.errors import DataMissing, RecsvcError
from recsvc.reports.liability_book import (
    Book,
    History,
    actuals,
    flows,
    history,
    lapse_months,
    lots_at,
    read_book,
)
from recsvc.settings import Settings

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
SEED = 20240601  # the bootstrap's seed: the same data gives the same interval
REPORT = "liability"


# --------------------------------------------------------------------------------------------
# Churn.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Churn:
    """Who is still a customer: the churn probabilities now and one horizon earlier (members
    who had joined by then)."""

    probability: F64  # P(no order within horizon_days) at the as-of instant
    probability_before: F64  # the same one horizon earlier, for the `earlier` members
    earlier: npt.NDArray[np.bool_]  # members who had joined one horizon before the as-of
    horizon_days: float
    source: str  # "model" | "history"
    model_version: str | None
    note: str


def churn_from_history(book: Book, as_of: dt.datetime, horizon_days: float, why: str) -> Churn:
    """The fallback: the recency table (`core.liability.recency_churn`) fitted on the horizon
    just before the as-of instant."""
    t = epoch_us(as_of)
    cut = t - int(horizon_days * DAY_US)
    earlier = book.joined_before(cut)
    if cut <= book.first_event or not earlier.any():
        raise DataMissing(f"less than {horizon_days:.0f} days of history before the as-of "
                          "instant: cannot estimate who is still a customer")
    at_cut = book.recency_days(cut)[earlier]
    after = book.ordered_within(cut, t)[earlier]
    span = int(horizon_days * DAY_US)
    freq_cut = book.orders_within(cut - span, cut)[earlier]
    freq_now = book.orders_within(t - span, t)
    now = li.recency_churn(at_cut, after, book.recency_days(t), frequency_at_cut=freq_cut,
                           frequency=freq_now)
    before = li.recency_churn(at_cut, after, at_cut, frequency_at_cut=freq_cut,
                              frequency=freq_cut)
    return Churn(now, before, earlier, horizon_days, "history", None,
                 f"no churn model used ({why}): P(no order in {horizon_days:.0f} days) by "
                 "recency bucket (days since the last order: "
                 f"{', '.join(f'{e:g}' for e in li.RECENCY_EDGES_DAYS)}, never) split by the "
                 f"orders in the {horizon_days:.0f} days before (fewer than "
                 f"{li.FREQUENCY_EDGES[0]:g}, up to {li.FREQUENCY_EDGES[1] - 1:g}, more; a cell "
                 f"shrunk to its recency bucket with a prior of {li.CELL_PRIOR:g} members), "
                 "the share of "
                 f"the bucket's members {horizon_days:.0f} days before the as-of instant who "
                 "then placed no order")


def churn_from_model(settings: Settings, book: Book, as_of: dt.datetime,
                     say: Callable[[str], None]) -> Churn:
    """Churn probabilities of the book's members as of `as_of` and one horizon earlier: a
    model that saw nothing after `as_of` (production, else the newest that qualifies, else one
    trained now, as score-batch picks) on the features known at each instant."""
    import pandas as pd

    from recsvc.adapters.context import open_context
    from recsvc.ml import inputs
    from recsvc.ml.scoring import ChurnScorer
    from recsvc.offline.batch_scoring import features_as_of, model_as_of

    built = features_as_of(Path(settings.data_dir))
    if built < as_of:
        raise DataMissing(f"the features end at {built:%Y-%m-%d}, before the as-of instant: "
                          "run `recsvc features`")
    ctx = open_context(settings)
    version = model_as_of(ctx, as_of, ctx.programme.churn.horizon_days, say)
    scorer = ChurnScorer(ctx.registry.load("churn", version, known_features=ctx.known_features))
    cut = as_of - dt.timedelta(days=scorer.horizon)
    earlier = book.joined_before(epoch_us(cut))
    entity = pd.DataFrame({
        "member_id": np.concatenate([book.ids, book.ids[earlier]]),
        "event_timestamp": [pd.Timestamp(as_of)] * len(book.ids)
                           + [pd.Timestamp(cut)] * int(earlier.sum())})
    feats = inputs.with_features(ctx.history, "churn_v1", entity)
    prob = np.asarray(scorer.score(inputs.frame_columns(feats), num_threads=0).probability,
                      dtype=np.float64)
    n = len(book.ids)
    return Churn(prob[:n], prob[n:], earlier, scorer.horizon, "model", scorer.model_version,
                 f"churn model {scorer.version}: P(no order in {scorer.horizon:.0f} days) on "
                 "the features known at the as-of instant (and one horizon earlier)")


@dataclass(frozen=True)
class Activity:
    alive: F64  # P(a customer at the as-of instant)
    hazard: float  # share of customers lost per churn horizon


def activity(book: Book, churn: Churn, hist: History, as_of: dt.datetime,
             history_months: int) -> Activity:
    """P(alive now) per member and the rate customers are lost at, from the churn
    probabilities now and one horizon earlier (`core.liability.alive_now`, `customer_hazard`),
    each with the order rate known at its instant."""
    alive = li.alive_now(churn.probability, hist.orders_per_day, churn.horizon_days)
    cut = as_of - dt.timedelta(days=churn.horizon_days)
    if not churn.earlier.any() or epoch_us(cut) <= book.first_event:
        return Activity(alive, 0.0)
    before = history(book, cut, history_months)
    alive_then = li.alive_now(churn.probability_before, before.orders_per_day[churn.earlier],
                              churn.horizon_days)
    return Activity(alive, li.customer_hazard(alive[churn.earlier], alive_then))


@dataclass(frozen=True)
class Start:
    """What the projection starts from at an instant: rates, activity, lots, lapse months."""

    hist: History
    active: Activity
    lots: F64
    no_expiry: F64
    lapsing: I64
    lapse: I64

    def project(self, bounds: list[dt.datetime], horizon_days: float, earn_factor: float = 1.0,
                burn_factor: float = 1.0) -> li.Projection:
        """The projection over `bounds` with the earn and burn rates scaled by the factors."""
        active = li.active_probability(self.active.alive, self.active.hazard, horizon_days,
                                       li.mid_days(bounds))
        rates = self.hist.rates
        return li.project(self.lots, self.no_expiry, active, rates.earn_per_month * earn_factor,
                          np.clip(rates.burn_share * burn_factor, 0.0, 1.0), self.lapse,
                          li.month_fractions(bounds))


def start_at(book: Book, programme: Programme, churn: Churn, as_of: dt.datetime,
             history_months: int) -> Start:
    hist = history(book, as_of, history_months)
    act = activity(book, churn, hist, as_of, history_months)
    lots, no_expiry, lapsing = lots_at(book, as_of)
    return Start(hist, act, lots, no_expiry, lapsing, lapse_months(book, programme, as_of))


BACKFIT_MONTHS = (3, 4, 5, 6)  # origins this many months before the as-of month


def backfit(book: Book, programme: Programme, as_of: dt.datetime, history_months: int,
            say: Callable[[str], None]) -> lb.Calibration:
    """Calibration factors from re-running the projection at earlier origins (the month start
    k months before the as-of month, k in BACKFIT_MONTHS) on the members who had joined by then,
    with only the rows before each origin, over the months up to the as-of instant, against
    what those members' ledger did in them. All of it lies before the as-of instant. The
    activity is the history-based one (a churn model can seldom be trained that far back);
    an origin with too little history before it for that is skipped."""
    runs: list[tuple[Start, list[dt.datetime], float]] = []
    actual = {"earned": 0.0, "redeemed": 0.0}
    origins = []
    for k in BACKFIT_MONTHS:
        origin = ledger.month_start(ledger.month_index(as_of) - k)
        sub = book.subset(book.joined_before(epoch_us(origin)))
        if len(sub.ids) == 0:
            continue
        try:
            churn = churn_from_history(sub, origin, programme.churn.horizon_days, "back-fit")
        except DataMissing:
            continue
        bounds = li.month_bounds(origin, as_of)
        runs.append((start_at(sub, programme, churn, origin, history_months), bounds,
                     churn.horizon_days))
        done = flows(sub, np.array([epoch_us(b) for b in bounds], dtype=np.int64))
        for q in actual:
            actual[q] += float(done[q].sum())
        origins.append(origin.isoformat())

    def run(earn: float, burn: float) -> dict[str, float]:
        total = {"earned": 0.0, "redeemed": 0.0}
        for start, bounds, horizon_days in runs:
            p = start.project(bounds, horizon_days, earn, burn)
            total["earned"] += float(p.earned.sum())
            total["redeemed"] += float(p.redeemed.sum())
        return total

    cal = lb.calibrate(run, actual, origins)
    if not origins:
        say("liability-report: no back-fit origin has enough history; rates uncalibrated")
    else:
        say(f"liability-report: back-fit from {len(origins)} origins: earn factor "
            f"{cal.earn:.3f}, burn factor {cal.burn:.3f}")
    return cal


@dataclass
class Forecast:
    as_of: dt.datetime
    bounds: list[dt.datetime]
    members: int
    churn: Churn
    hist: History
    active: Activity
    calibration: lb.Calibration
    projection: li.Projection
    bands: dict[str, li.Band]
    lapsing_at_as_of: int
    actual: dict[str, F64] = field(default_factory=dict)
    errors: dict[str, lb.BacktestError] = field(default_factory=dict)


def forecast(settings: Settings, programme: Programme, as_of: dt.datetime, horizon: int, *,
             use_model: bool = True, history_months: int = li.HISTORY_MONTHS,
             calibrate: bool = False, backtest: bool = False,
             say: Callable[[str], None] = print) -> Forecast:
    data_dir = Path(settings.data_dir)
    book = read_book(data_dir, as_of)
    say(f"liability-report: {len(book.ids):,} members joined before {as_of:%Y-%m-%d %H:%M} UTC")
    if use_model:
        try:
            churn = churn_from_model(settings, book, as_of, say)
        except RecsvcError as exc:
            say(f"liability-report: churn model unavailable ({exc}); using the history-based "
                "fallback")
            churn = churn_from_history(book, as_of, programme.churn.horizon_days, str(exc))
    else:
        churn = churn_from_history(book, as_of, programme.churn.horizon_days, "--no-model")
    start = start_at(book, programme, churn, as_of, history_months)
    cal = (backfit(book, programme, as_of, history_months, say) if calibrate
           else lb.NO_CALIBRATION)
    bounds = li.forecast_bounds(as_of, horizon)
    projection = start.project(bounds, churn.horizon_days, cal.earn, cal.burn)
    lc = programme.liability
    bands = li.bootstrap(projection, samples=lc.bootstrap_samples, level=lc.interval, seed=SEED)
    out = Forecast(as_of, bounds, len(book.ids), churn, start.hist, start.active, cal,
                   projection, bands, int(start.lapsing.sum()))
    if backtest:
        out.actual = actuals(book, bounds)
        if out.actual:
            out.errors = lb.backtest(bands, out.actual)
        else:
            say("liability-report: --backtest: the tables hold no whole month after the as-of "
                "instant; nothing to compare")
    return out


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def default_as_of(data_dir: Path, horizon: int, backtest: bool) -> dt.datetime:
    """Without --backtest: the end of the data. With it: the month start `horizon` whole months
    before the end of the last whole month in the tables, so every forecast month is known."""
    ts = schema.read_table(data_dir, "ledger", ["ts"])["ts"]
    if len(ts) == ts.null_count:
        raise DataMissing("the ledger is empty: nothing to forecast")
    mm = pc.min_max(ts.cast(pa.int64()))
    first, last = int(mm["min"].as_py()), int(mm["max"].as_py())
    end = (last // DAY_US + 1) * DAY_US
    if not backtest:
        return instant(end)
    end_dt = instant(end)
    # the last whole month ends at the start of the month holding `end` (or at `end` itself)
    as_of = ledger.month_start(ledger.month_index(end_dt) - horizon)
    if epoch_us(as_of) <= first:
        raise DataMissing(f"the tables span {instant(first):%Y-%m-%d} .. {end_dt:%Y-%m-%d}: too "
                          f"short for a {horizon}-month backtest; give --as-of or fewer "
                          "--horizon-months")
    return as_of


def run(settings: Settings, programme: Programme, *, as_of: dt.date | None,
        horizon: int | None, out_dir: Path | None, backtest: bool, use_model: bool = True,
        calibrate: bool = False,
        say: Callable[[str], None] = print) -> tuple[Forecast, dict[str, Any], Path]:
    from recsvc.reports import liability_render as render

    data_dir = Path(settings.data_dir)
    horizon = horizon or programme.liability.horizon_months
    instant = (end_of_day(as_of) if as_of is not None
               else default_as_of(data_dir, horizon, backtest))
    fc = forecast(settings, programme, instant, horizon, use_model=use_model,
                  calibrate=calibrate, backtest=backtest, say=say)
    target = out_dir or data_dir / "reports" / REPORT
    doc = render.write_report(fc, programme, target)
    t = doc["totals"]
    say(f"liability-report: as of {instant:%Y-%m-%d %H:%M} UTC, {horizon} months: redeemed "
        f"{t['redeemed']['points']:,}, expired {t['expired']['points']:,}, outstanding at the end "
        f"{t['outstanding']['points']:,} points (churn: {fc.churn.source})")
    for q, e in fc.errors.items():
        say(f"liability-report: backtest {q}: total {render.pct_text(e.total_error)}, monthly MAPE "
            f"{render.mape_text(e.mape)} over {e.months} months, "
            f"{e.inside} inside the interval")
    say(f"liability-report: wrote {target}/liability.md, liability.json and plots")
    return fc, doc, target
