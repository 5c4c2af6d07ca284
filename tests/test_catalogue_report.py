"""`recsvc catalogue-report` on a small simulated programme: every figure and flag recomputed
here from the tables it came from, the files it writes, and --as-of reading nothing later."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsvc import cli
from recsvc.config import parse_programme
from recsvc.core.inventory import POPULAR_QUANTILE, PRICE_CUT
from recsvc.data import schema
from recsvc.offline.simulate import run_simulation
from recsvc.reports.catalogue import catalogue_report, markdown, plot, plotted_note

# safety at a whole month of forecast, so that a slow mover running low is easy to plant
P = parse_programme({"inventory": {"safety_share": 1.0}})
DAY = dt.timedelta(days=1)
MONTH = 30 * DAY


def _rewrite(src: Path, dst: Path, change: dict[str, Any]) -> None:
    """Copy the table set at `src` to `dst`, passing the tables named in `change` through it."""
    with schema.atomic_tables(schema.tables_dir(dst)) as out:
        for name in schema.TABLES:
            table = schema.read_table(src, name)
            out.write(name, change[name](table) if name in change else table)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 members, 60 items, 200 days; then two items planted by editing their stock: the
    most viewed one sold out on the last day (popular and out of stock), and the one with most
    redemptions holding 200 units until one unit is left on the last day (a slow mover below
    its safety level: a points-price cut)."""
    root = tmp_path_factory.mktemp("catalogue")
    run_simulation(root / "sim", members=800, days=200, seed=11, programme=P, items=60,
                   show_progress=False)
    exposures = schema.read_table(root / "sim", "exposures", ["item_id"])
    redemptions = schema.read_table(root / "sim", "redemptions", ["item_id"])
    viewed = np.bincount(exposures["item_id"].to_numpy())
    redeemed = np.bincount(redemptions["item_id"].to_numpy(), minlength=len(viewed))
    popular = int(np.argmax(viewed))
    redeemed[popular] = -1
    slow = int(np.argmax(redeemed))

    def plant(days: pa.Table) -> pa.Table:
        ts = days["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
        item = days["item_id"].to_numpy()
        last = ts == ts.max()
        stock = days["stock"].to_numpy().copy()
        stock[(item == popular) & last] = 0
        stock[(item == slow) & ~last] = 200
        stock[(item == slow) & last] = 1
        return days.set_column(days.schema.get_field_index("stock"), "stock", pa.array(stock))

    _rewrite(root / "sim", root / "data", {"item_days": plant})
    return root / "data"


def _rows(path: Path) -> dict[int, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return {int(r["item_id"]): r for r in csv.DictReader(f)}


def _f(text: str) -> float:
    return math.nan if text == "" else float(text)


def _by_hand(data: Path, as_of: dt.datetime) -> dict[int, dict[str, Any]]:
    """Every figure and flag, item by item, in plain Python from the tables."""
    inv = P.inventory
    items = [i for i in schema.read_table(data, "items").to_pylist() if i["created_at"] < as_of]
    days: dict[int, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for r in schema.read_table(data, "item_days").to_pylist():
        if r["ts"] <= as_of:
            days[r["item_id"]].append((r["ts"], r["stock"]))

    def month(ts: dt.datetime) -> int | None:
        k = (as_of - ts) // MONTH
        return k if ts < as_of and k < 3 else None

    views: dict[tuple[int, int], int] = defaultdict(int)
    viewers: dict[tuple[int, int], set[int]] = defaultdict(set)
    for r in schema.read_table(data, "exposures", ["member_id", "item_id", "ts"]).to_pylist():
        if (k := month(r["ts"])) is not None:
            views[r["item_id"], k] += 1
            viewers[r["item_id"], k].add(r["member_id"])
    redemptions: dict[tuple[int, int], int] = defaultdict(int)
    redeemers: dict[tuple[int, int], set[int]] = defaultdict(set)
    for r in schema.read_table(data, "redemptions", ["member_id", "item_id", "ts"]).to_pylist():
        if (k := month(r["ts"])) is not None:
            redemptions[r["item_id"], k] += 1
            redeemers[r["item_id"], k].add(r["member_id"])
    out = {}
    for it in items:
        i = it["item_id"]
        m = min(3, max(1, math.ceil((as_of - it["created_at"]) / MONTH)))
        forecast = sum(redemptions[i, k] for k in range(m)) / m
        history = sorted(days[i])
        stock = history[-1][1] if history else 0
        window = [s for ts, s in history if ts > as_of - m * MONTH]
        mean = sum(window) / len(window) if window else stock
        turnover = (mean / (forecast / 30) if forecast else math.inf) if mean > 0 else 0.0
        rates = [len(redeemers[i, k]) / len(viewers[i, k]) if viewers[i, k] else None
                 for k in range(3)]
        in_stock_days = sum(1 for s in window if s > 0)
        out[i] = {
            "forecast": forecast, "stock": stock, "mean_stock": mean, "turnover": turnover,
            "safety": inv.safety_share * forecast,
            "below_safety": stock < inv.safety_share * forecast,
            "slow_mover": turnover > inv.slow_mover_days, "out_of_stock": stock <= 0,
            "delist": all(r is not None and r < inv.delist_redemption_rate for r in rates),
            "per_day": sum(views[i, k] for k in range(m)) / max(in_stock_days, 1),
            "price": it["points_price"],
            "value": it["market_price_minor"] / 100 * it["perceived_discount"]
            / it["points_price"]}
    per_day = np.array([o["per_day"] for o in out.values()])
    cut = np.quantile(per_day, 0.75)
    for o in out.values():
        o["popular"] = o["per_day"] > 0 and o["per_day"] >= cut
    return out


def test_every_figure_and_flag_follows_from_the_tables(data: Path, tmp_path: Path) -> None:
    report = catalogue_report(data, P, out_dir=tmp_path / "out")
    rows = _rows(report.csv)
    want = _by_hand(data, report.as_of)
    assert set(rows) == set(want)
    for i, w in want.items():
        r = rows[i]
        assert int(r["stock"]) == w["stock"], i
        assert _f(r["forecast_monthly_redemptions"]) == pytest.approx(w["forecast"], rel=1e-5)
        assert _f(r["safety_level"]) == pytest.approx(w["safety"], rel=1e-5)
        assert _f(r["mean_stock"]) == pytest.approx(w["mean_stock"], rel=1e-5)
        assert _f(r["turnover_days"]) == pytest.approx(w["turnover"], rel=1e-5)
        assert _f(r["value_coefficient"]) == pytest.approx(w["value"], rel=1e-5)
        assert _f(r["views_per_day_in_stock"]) == pytest.approx(w["per_day"], rel=1e-5)
        for flag in ("below_safety", "slow_mover", "out_of_stock", "delist", "popular"):
            assert r[flag] == str(int(w[flag])), (i, flag)
        assert r["popular_out_of_stock"] == str(int(w["popular"] and w["out_of_stock"]))
        cut = w["below_safety"] and w["slow_mover"] and not w["out_of_stock"]
        assert r["price_cut"] == str(int(cut and r["suggested_points_price"] != "")), i
        if r["price_cut"] == "1":
            new = int(r["suggested_points_price"])
            assert 100 <= new < w["price"] and new % 100 == 0
            assert int(r["points_price_cut"]) == w["price"] - new
            after = _f(r["value_coefficient_after"])
            assert after == pytest.approx(w["value"] * w["price"] / new, rel=1e-5)
            assert after >= P.index.vacuum_threshold
        else:
            assert r["suggested_points_price"] == r["value_coefficient_after"] == ""
        alternates = [int(x) for x in r["alternates"].split(";") if x]
        if r["popular_out_of_stock"] == "1":
            assert 2 <= len(alternates) <= P.inventory.alternates
            assert all(want[x]["stock"] > 0 and x != i for x in alternates)
        else:
            assert alternates == []
    # the planted items: one of each flag the simulation alone rarely shows
    assert report.counts["popular_out_of_stock"] >= 1 and report.counts["price_cut"] >= 1
    assert report.counts["slow_mover"] >= 1 and report.counts["delist"] >= 1
    assert report.counts == {flag: sum(r[flag] == "1" for r in rows.values())
                             for flag in report.counts}


def test_the_files(data: Path) -> None:
    report = catalogue_report(data, P)
    assert report.out_dir == data / "reports" / "catalogue"
    header = report.csv.read_text(encoding="utf-8").splitlines()[0].split(",")
    for column in ("item_id", "forecast_monthly_redemptions", "safety_level", "turnover_days",
                   "below_safety", "slow_mover", "price_cut", "suggested_points_price",
                   "value_coefficient_after", "popular_out_of_stock", "alternates", "delist",
                   "redemption_rate_m1", "redemption_rate_m3", "value_coefficient"):
        assert column in header
    assert report.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.markdown.read_text(encoding="utf-8")
    assert f"| slow mover | {report.counts['slow_mover']:,} |" in md
    assert "## How each figure is computed" in md and "![" in md
    cut = next(r for r in _rows(report.csv).values() if r["price_cut"] == "1")
    assert f"| {cut['item_id']} {cut['name']} | {cut['points_price']} | " \
           f"{cut['suggested_points_price']} |" in md


def _legend(figure: Any) -> list[str]:
    return [t.get_text() for t in figure.axes[0].get_legend().get_texts()]


def test_the_plot_says_how_many_of_the_reports_items_it_shows(data: Path, tmp_path: Path) -> None:
    """An item nobody viewed in the forecast months has no redemption rate, so no place on the
    plot: the legend and the Markdown give the report's count and how many are plotted, never a
    smaller count of their own (the plot said 1,958 items where the report said 1,963)."""
    report = catalogue_report(data, P, out_dir=tmp_path / "report")
    a, n = report.assessment, len(report.loaded.history)
    assert int(np.isnan(a.redemption_rate).sum()) == 3  # items nobody was shown lately
    note = f"{n - 3} of {n} items; 3 not viewed in the last 3 months are not plotted"
    assert _legend(plot(P, report.loaded, a, tmp_path / "as-is.png"))[0] == note
    assert f"The plot shows {note}." in report.markdown.read_text(encoding="utf-8")
    # every item viewed: the count alone
    viewed = dataclasses.replace(a, redemption_rate=np.nan_to_num(a.redemption_rate))
    assert _legend(plot(P, report.loaded, viewed, tmp_path / "all.png"))[0] == f"{n} items"
    # a slow mover not viewed either: the flag's count is the report's, and how many are plotted
    slow = int(np.flatnonzero(a.slow_mover & ~np.isnan(a.redemption_rate))[0])
    rate = a.redemption_rate.copy()
    rate[slow] = np.nan
    hidden = dataclasses.replace(a, redemption_rate=rate)
    legend = _legend(plot(P, report.loaded, hidden, tmp_path / "hidden.png"))
    note = f"{n - 4} of {n} items; 4 not viewed in the last 3 months are not plotted"
    slow_total = report.counts["slow_mover"]
    slow_plotted = int((a.slow_mover & ~np.isnan(rate)).sum())
    assert slow_plotted < slow_total
    assert legend[0] == note and f"slow mover ({slow_total}, {slow_plotted} plotted)" in legend
    md = markdown(P, report.loaded, hidden, report.counts,
                  popular_quantile=POPULAR_QUANTILE, cut=PRICE_CUT)
    assert f"The plot shows {note}." in md
    assert f"| slow mover | {slow_total:,} |" in md and f"{n:,} items listed" in md
    assert plotted_note(1958, 1963) == \
        "1,958 of 1,963 items; 5 not viewed in the last 3 months are not plotted"
    assert plotted_note(1962, 1963).endswith("; 1 not viewed in the last 3 months is not plotted")


def test_as_of_reads_nothing_later(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    latest = catalogue_report(data, P, out_dir=tmp_path / "latest").as_of
    day = (latest - 41 * DAY).date()
    end = latest - 40 * DAY
    cut = pa.scalar(end, schema.TS)

    def before(table: pa.Table) -> pa.Table:
        return table.filter(pc.less(table["ts"], cut))

    _rewrite(data, tmp_path / "then", {
        **{name: before for name in ("orders", "ledger", "redemptions", "exposures")},
        "item_days": lambda t: t.filter(pc.less_equal(t["ts"], cut)),
        "items": lambda t: t.filter(pc.less(t["created_at"], cut)),
        "members": lambda t: t.filter(pc.less(t["signup_at"], cut))})
    full = catalogue_report(data, P, as_of=day, out_dir=tmp_path / "full")
    then = catalogue_report(tmp_path / "then", P, as_of=day, out_dir=tmp_path / "then-out")
    assert full.as_of == then.as_of == end
    assert full.csv.read_text(encoding="utf-8") == then.csv.read_text(encoding="utf-8")
    assert full.csv.read_text(encoding="utf-8") != (tmp_path / "latest" / "catalogue.csv") \
        .read_text(encoding="utf-8")
    # the command line, with the same programme rules from a file
    rules = tmp_path / "programme.toml"
    rules.write_text("[inventory]\nsafety_share = 1.0\n", encoding="utf-8")
    monkeypatch.setenv("RECSVC_PROGRAMME", str(rules))
    assert cli.main(["catalogue-report", "--data-dir", str(data), "--as-of", str(day),
                     "--out", str(tmp_path / "cli")]) == 0
    said = capsys.readouterr().out
    assert f"catalogue report as of {day}: " in said and "slow mover" in said
    assert (tmp_path / "cli" / "catalogue.csv").read_text(encoding="utf-8") == \
        full.csv.read_text(encoding="utf-8")
