"""`recsvc catalogue-report`: per item, forecast, safety level, turnover and the inventory flags
of SPEC §3, as Markdown, CSV and a plot of the catalogue on value coefficient × redemption rate.

This module only reads the canonical tables as of an instant (nothing after it) into per-month
arrays and writes the files; every figure and flag comes from `recsvc.core.inventory`.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.cliargs import end_of_day
from recsvc.config import Programme
from recsvc.core import inventory as core
from recsvc.core.catalogue import Alternate
from recsvc.core.ledger import DAY_US, instant
from recsvc.data import schema
from recsvc.data.columns import as_i64, as_us

if TYPE_CHECKING:
    from matplotlib.figure import Figure

I64 = npt.NDArray[np.int64]
MONTH_US = core.MONTH_DAYS * DAY_US
REPORT_DIR = Path("reports") / "catalogue"
TOP = 10


def _distinct(cell: I64, member: I64, size: int) -> I64:
    """Distinct members per cell (cells numbered 0..size-1)."""
    if len(cell) == 0:
        return np.zeros(size, dtype=np.int64)
    order = np.lexsort((member, cell))
    c, m = cell[order], member[order]
    first = np.ones(len(c), dtype=bool)
    first[1:] = (c[1:] != c[:-1]) | (m[1:] != m[:-1])
    return np.bincount(c[first], minlength=size).astype(np.int64)


@dataclass(frozen=True)
class Loaded:
    """The listed catalogue at `as_of` and its recent months."""

    as_of: dt.datetime
    months: int  # columns of the per-month arrays (30-day months ending at as_of)
    names: npt.NDArray[np.object_]
    history: core.ItemHistory


def load_history(data_dir: Path, programme: Programme, as_of: dt.datetime | None = None, *,
                 months: int = core.FORECAST_MONTHS) -> Loaded:
    """Read the tables as of `as_of` (a UTC midnight; default: the end of the day of the latest
    event, as `recsvc features` does): items listed before it, their stock at it, and their
    views and redemptions in the 30-day months before it."""
    from recsvc.offline import snapshots  # the as-of rule the feature jobs use, snapshots

    tables = {name: schema.read_table(data_dir, name, ["member_id", "item_id", "ts"])
              for name in ("exposures", "redemptions")}
    tables.update({name: schema.read_table(data_dir, name, ["ts"])
                   for name in snapshots.EVENT_TABLES if name not in tables})
    end = snapshots.snapshot_span(tables, as_of).as_of
    span = max(months, programme.inventory.delist_months)

    items = schema.read_table(data_dir, "items").sort_by("item_id")
    created = as_us(items["created_at"])
    items = items.filter(pa.array(created < end))
    created = created[created < end]
    ids = as_i64(items["item_id"])
    n = len(ids)
    listed = np.maximum(-(-(end - created) // MONTH_US), 1)

    def positions(table: pa.Table) -> tuple[I64, I64]:
        """Catalogue position of each row's item (-1: not listed) and its instant."""
        item = as_i64(table["item_id"])
        if n == 0:
            return np.full(len(item), -1, dtype=np.int64), as_us(table["ts"])
        at = np.minimum(np.searchsorted(ids, item), n - 1)
        return np.where(ids[at] == item, at, -1), as_us(table["ts"])

    def monthly(name: str) -> tuple[I64, I64]:
        """Rows per (item, month), distinct members per (item, month), as (n, span) arrays."""
        pos, ts = positions(tables[name])
        back = (end - ts) // MONTH_US
        ok = (pos >= 0) & (ts < end) & (back < span)
        cell = pos[ok] * span + (span - 1 - back[ok])
        member = as_i64(tables[name]["member_id"])[ok]
        rows = np.bincount(cell, minlength=n * span).reshape(n, span)
        return rows.astype(np.int64), _distinct(cell, member, n * span).reshape(n, span)

    views, viewers = monthly("exposures")
    redemptions, redeemers = monthly("redemptions")

    days = schema.read_table(data_dir, "item_days", ["item_id", "ts", "stock"])
    pos, ts = positions(days)
    ok = (pos >= 0) & (ts <= end)  # a day's row is the state at its end: the as-of day counts
    pos, ts, level = pos[ok], ts[ok], as_i64(days["stock"])[ok]
    stock = np.zeros(n, dtype=np.int64)
    order = np.lexsort((ts, pos))
    if len(order):
        p = pos[order]
        last = np.flatnonzero(np.r_[p[1:] != p[:-1], True])
        stock[p[last]] = level[order][last]
    recent = ts > end - np.minimum(listed, months)[pos] * MONTH_US
    sums = np.bincount(pos[recent], weights=level[recent], minlength=n)
    stocked = np.bincount(pos[recent & (level > 0)], minlength=n).astype(np.int64)
    counts = np.bincount(pos[recent], minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_stock = np.where(counts > 0, sums / np.maximum(counts, 1), stock.astype(np.float64))

    def obj(name: str) -> npt.NDArray[np.object_]:
        return np.asarray(items[name].to_pylist(), dtype=object)

    history = core.ItemHistory(
        item_id=ids, category=obj("category"), points_class=obj("points_class"),
        points_price=as_i64(items["points_price"]),
        market_price_minor=as_i64(items["market_price_minor"]),
        perceived_discount=np.asarray(items["perceived_discount"].to_numpy(), dtype=np.float64),
        stock=stock, mean_stock=mean_stock, days_in_stock=stocked,
        months_listed=listed.astype(np.int64), redemptions=redemptions, views=views,
        viewers=viewers, redeemers=redeemers)
    return Loaded(instant(end), span, obj("name"), history)


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CatalogueReport:
    as_of: dt.datetime
    out_dir: Path
    markdown: Path
    csv: Path
    plot: Path
    counts: dict[str, int]
    assessment: core.Assessment
    loaded: Loaded


FLAGS: dict[str, str] = {  # Assessment field -> what it means
    "out_of_stock": "out of stock",
    "below_safety": "below safety level (replenish)",
    "slow_mover": "slow mover",
    "price_cut": "points-price cut suggested (below safety on a slow mover)",
    "popular_out_of_stock": "popular and out of stock (alternates offered)",
    "delist": "delisting candidate",
    "vacuum": "in the vacuum zone",
}


def _num(x: float, digits: int = 6) -> str:
    """A float for the files: empty for NaN, "inf" for infinity, else `digits` significant."""
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _alternates(alts: tuple[Alternate, ...]) -> str:
    return ";".join(str(a.item_id) for a in alts)


def csv_rows(loaded: Loaded, a: core.Assessment) -> tuple[list[str], list[list[Any]]]:
    """The CSV: one row per item with every figure and flag."""
    h, m = loaded.history, loaded.months
    k = a.last_rates.shape[1]
    header = ["item_id", "name", "category", "points_class", "points_price", "market_price_minor",
              "perceived_discount", "value_coefficient", "stock", "mean_stock", "months_listed",
              *[f"redemptions_m{j}" for j in range(1, m + 1)],
              "forecast_monthly_redemptions", "safety_level", "turnover_days", "views",
              "days_in_stock", "views_per_day_in_stock",
              "redemption_rate", *[f"redemption_rate_m{j}" for j in range(1, k + 1)],
              *FLAGS, "suggested_points_price", "points_price_cut", "value_coefficient_after",
              "popular", "alternates"]
    rows = []
    for i in range(len(h)):
        cut = int(a.suggested_points_price[i])
        rows.append([
            int(h.item_id[i]), loaded.names[i], h.category[i], h.points_class[i],
            int(h.points_price[i]), int(h.market_price_minor[i]),
            _num(float(h.perceived_discount[i])), _num(float(a.value_coefficient[i])),
            int(h.stock[i]), _num(float(h.mean_stock[i])), int(h.months_listed[i]),
            *[int(h.redemptions[i, m - j]) for j in range(1, m + 1)],  # m1: the latest month
            _num(float(a.forecast[i])), _num(float(a.safety_level[i])),
            _num(float(a.turnover_days[i])), int(a.views[i]), int(h.days_in_stock[i]),
            _num(float(a.views_per_day[i])), _num(float(a.redemption_rate[i])),
            *[_num(float(a.last_rates[i, k - j])) for j in range(1, k + 1)],
            *[int(bool(getattr(a, flag)[i])) for flag in FLAGS],
            cut or "", int(h.points_price[i]) - cut if cut else "",
            _num(float(a.value_coefficient_after[i])), int(bool(a.popular[i])),
            _alternates(a.alternates[i])])
    return header, rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _top(mask: npt.NDArray[np.bool_], *keys: Any, top: int) -> list[int]:
    """Positions of the flagged items, by the keys (the first the most significant, each
    descending), ties by position (item id), the first `top`."""
    where = np.flatnonzero(mask)
    order = np.lexsort((where, *[-np.asarray(k)[where] for k in reversed(keys)]))
    return where[order][:top].tolist()


def markdown(programme: Programme, loaded: Loaded, a: core.Assessment, counts: dict[str, int],
             *, popular_quantile: float, cut: float, top: int = TOP) -> str:
    inv, h = programme.inventory, loaded.history
    step = programme.burning.min_points_step
    date = (loaded.as_of - dt.timedelta(days=1)).date()

    def item(i: int) -> str:
        return f"{int(h.item_id[i])} {loaded.names[i]}"

    lines = [
        f"# Catalogue report as of {date} (data before {loaded.as_of:%Y-%m-%d %H:%M} UTC)", "",
        f"{len(h):,} items listed. A month is 30 days; month 1 ends at the as-of instant.", "",
        "## Summary", "",
        *_table(["flag", "items"], [[FLAGS[f], f"{counts[f]:,}"] for f in FLAGS]), "",
        "## How each figure is computed", "",
        f"- **Forecast monthly redemptions**: the mean redemptions of the last "
        f"{core.FORECAST_MONTHS} months (of the months listed, when fewer). Demand while out of "
        "stock is not seen: this forecasts redemptions, not wishes.",
        f"- **Safety level**: {inv.safety_share:g} × the forecast. **Below safety**: stock now "
        "under it (replenish).",
        f"- **Turnover days**: the mean daily stock over the forecast months ÷ (forecast / 30): "
        f"how many days the stock held lasts at the forecast rate (infinite: stock, no "
        f"redemptions). **Slow mover**: turnover over {inv.slow_mover_days} days.",
        f"- **Points-price cut**: for a slow mover below its safety level with stock left, the "
        f"whole {step}-point step nearest to {1 - cut:.0%} of the points price and below it, "
        f"lower still if needed to keep the value per point at or above the vacuum threshold "
        f"({programme.index.vacuum_threshold:g}); none when that is under one step. The value "
        "coefficient after it is market price × perceived discount ÷ the new points price. "
        f"With a forecast under {1 / inv.safety_share:g} a month the safety level is under one "
        "unit, so only an item redeemed at least that often can be below it with stock left.",
        f"- **Popular and out of stock**: views per day in stock over the forecast months in "
        f"the top {1 - popular_quantile:.0%} of the catalogue (a sold-out item is not shown: "
        f"its views alone understate the want), and no stock now. It gets "
        f"{inv.alternates} in-stock alternates by similarity (0.40 same category, 0.20 same "
        "points class, 0.25 points price: half same gift band, half log-price closeness; "
        "divided by 0.85 without a member's propensity).",
        f"- **Delisting candidate**: viewed in each of the last {inv.delist_months} months and "
        f"redeemed by fewer than {inv.delist_redemption_rate:.0%} of the distinct members who "
        "viewed it in every one of them.",
        "- **Redemption rate** (plot, CSV): distinct redeemers ÷ distinct viewers per month, "
        "summed over the forecast months.",
        "",
    ]
    sections: list[tuple[str, list[int], list[str], Callable[[int], list[str]]]] = [
        ("Below safety level", _top(a.below_safety, a.forecast, top=top),
         ["item", "stock", "safety level", "forecast / month"],
         lambda i: [item(i), str(h.stock[i]), _num(a.safety_level[i], 3),
                    _num(a.forecast[i], 3)]),
        ("Slow movers", _top(a.slow_mover, a.turnover_days, h.stock, top=top),
         ["item", "stock", "mean stock", "forecast / month", "turnover days"],
         lambda i: [item(i), str(h.stock[i]), _num(h.mean_stock[i], 3),
                    _num(a.forecast[i], 3), _num(a.turnover_days[i], 4)]),
        ("Points-price cuts", _top(a.price_cut, a.turnover_days, top=top),
         ["item", "points price", "suggested", "cut", "value coefficient", "after"],
         lambda i: [item(i), str(h.points_price[i]), str(a.suggested_points_price[i]),
                    f"{1 - a.suggested_points_price[i] / h.points_price[i]:.0%}",
                    _num(a.value_coefficient[i], 4), _num(a.value_coefficient_after[i], 4)]),
        ("Popular and out of stock", _top(a.popular_out_of_stock, a.views_per_day, top=top),
         ["item", "views", "days in stock", "alternates (similarity)"],
         lambda i: [item(i), str(a.views[i]), str(h.days_in_stock[i]), ", ".join(
             f"{x.item_id} ({x.similarity:.2f})" for x in a.alternates[i]) or "none in stock"]),
        ("Delisting candidates", _top(a.delist, a.views, top=top),
         ["item", "views", *[f"rate m{j}" for j in range(a.last_rates.shape[1], 0, -1)]],
         lambda i: [item(i), str(a.views[i]), *[f"{r:.1%}" for r in a.last_rates[i]]]),
    ]
    for title, chosen, header, row in sections:
        total = len(np.flatnonzero(_section_mask(a, title)))
        lines += [f"## {title} ({total:,}; the first {min(top, total)})", ""]
        lines += [*_table(header, [row(i) for i in chosen]), ""] if chosen else ["None.", ""]
    seen = int(plotted(a).sum())
    lines += ["![value coefficient × redemption rate](catalogue.png)", "",
              f"The plot shows {plotted_note(seen, len(h))}.", ""]
    return "\n".join(lines)


def _section_mask(a: core.Assessment, title: str) -> npt.NDArray[np.bool_]:
    return {"Below safety level": a.below_safety, "Slow movers": a.slow_mover,
            "Points-price cuts": a.price_cut, "Popular and out of stock": a.popular_out_of_stock,
            "Delisting candidates": a.delist}[title]


def plotted(a: core.Assessment) -> npt.NDArray[np.bool_]:
    """The items the plot can place: those with a redemption rate, i.e. viewed in the forecast
    months (an item nobody was shown has no rate, so no height)."""
    return ~np.isnan(a.redemption_rate)


def plotted_note(shown: int, total: int) -> str:
    """'1,958 of 1,963 items; 5 not viewed in the last 3 months are not plotted': what the plot
    holds against what the report counts, so that the two never disagree without saying why."""
    if shown == total:
        return f"{total:,} items"
    return (f"{shown:,} of {total:,} items; {total - shown:,} not viewed in the last "
            f"{core.FORECAST_MONTHS} months {'is' if total - shown == 1 else 'are'} not plotted")


PLOTTED_FLAGS = (("slow_mover", "s", "tab:orange"), ("price_cut", "v", "tab:purple"),
                 ("delist", "x", "tab:red"), ("popular_out_of_stock", "*", "tab:blue"))


def plot(programme: Programme, loaded: Loaded, a: core.Assessment, path: Path) -> Figure:
    """Value coefficient × redemption rate, the vacuum threshold, flagged items marked; every
    count in the legend is the report's, with how many of them the plot could place."""
    from matplotlib.figure import Figure  # object API: no global state, Agg canvas

    fig = Figure(figsize=(8.0, 5.5))
    ax = fig.subplots()
    x, y = a.value_coefficient, a.redemption_rate
    seen = plotted(a)
    ax.scatter(x[seen], y[seen], s=10, c="0.75",
               label=plotted_note(int(seen.sum()), len(loaded.history)))
    for flag, marker, colour in PLOTTED_FLAGS:
        flagged = getattr(a, flag)
        mask = flagged & seen
        if flagged.any():
            what = FLAGS[flag].split(" (")[0]
            ax.scatter(x[mask], y[mask], s=40 if marker == "*" else 22, marker=marker, c=colour,
                       label=f"{what} ({_legend_count(int(mask.sum()), int(flagged.sum()))})")
    cut = a.price_cut & seen
    for i in np.flatnonzero(cut)[:50]:  # where the suggested price would move them
        ax.annotate("", (a.value_coefficient_after[i], y[i]), (x[i], y[i]),
                    arrowprops={"arrowstyle": "->", "color": "tab:purple", "lw": 0.8})
    v = programme.index.vacuum_threshold
    ax.axvline(v, color="tab:red", ls="--", lw=1, label=f"vacuum threshold ({v:g} / point)")
    ax.set_xlabel("value coefficient (currency per point)")
    ax.set_ylabel(f"redemption rate (redeemers / viewers, last {core.FORECAST_MONTHS} months)")
    ax.set_title(f"Catalogue as of {(loaded.as_of - dt.timedelta(days=1)).date()}")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return fig


def _legend_count(shown: int, total: int) -> str:
    """A flag's count for the legend: the report's, and how many are plotted when not all."""
    return f"{total:,}" if shown == total else f"{total:,}, {shown:,} plotted"


def catalogue_report(data_dir: Path, programme: Programme, *, as_of: dt.date | None = None,
                     out_dir: Path | None = None, popular_quantile: float = core.POPULAR_QUANTILE,
                     cut: float = core.PRICE_CUT, top: int = TOP) -> CatalogueReport:
    """Compute the report as of the end of `as_of` (default: the latest event's day) and write
    catalogue.md, catalogue.csv and catalogue.png to `out_dir` (default
    <data_dir>/reports/catalogue)."""
    loaded = load_history(data_dir, programme, end_of_day(as_of) if as_of else None)
    a = core.assess(programme, loaded.history, popular_quantile=popular_quantile, cut=cut)
    counts = {flag: int(np.count_nonzero(getattr(a, flag))) for flag in FLAGS}
    out = Path(out_dir) if out_dir is not None else Path(data_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    header, rows = csv_rows(loaded, a)
    with (out / "catalogue.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    (out / "catalogue.md").write_text(markdown(programme, loaded, a, counts,
                                               popular_quantile=popular_quantile, cut=cut,
                                               top=top), encoding="utf-8")
    plot(programme, loaded, a, out / "catalogue.png")
    return CatalogueReport(loaded.as_of, out, out / "catalogue.md", out / "catalogue.csv",
                           out / "catalogue.png", counts, a, loaded)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
