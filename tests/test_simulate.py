"""The simulator: deterministic by seed, ledger invariants hold, behaviour follows the seeds."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from recsvc.config import load_programme
from recsvc.core import index as idx
from recsvc.core import ledger, redemption
from recsvc.data import schema
from recsvc.offline import behaviour
from recsvc.offline.population import CATEGORIES
from recsvc.offline.simulate import run_simulation

P = load_programme()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    run_simulation(out, members=3000, days=150, seed=11, programme=P)
    return out


def _tables(d: Path) -> dict[str, pd.DataFrame]:
    return {name: schema.read_table(d, name).to_pandas() for name in schema.TABLES}


def test_same_seed_same_data_other_seed_other_data(sim: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run_simulation(again, members=3000, days=150, seed=11, programme=P)
    a, b = _tables(sim), _tables(again)
    for name in schema.TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
    other = tmp_path / "other"
    run_simulation(other, members=3000, days=150, seed=12, programme=P)
    assert not a["orders"].equals(_tables(other)["orders"])


def test_every_table_has_its_schema(sim: Path) -> None:
    for name, sch in schema.TABLES.items():
        table = schema.read_table(sim, name)
        assert table.schema.equals(sch), name
        assert table.num_rows > 0, name


def test_ledger_never_negative_and_balance_is_its_sum(sim: Path) -> None:
    led = schema.read_table(sim, "ledger").to_pandas().sort_values(["member_id", "ts", "entry_id"])
    running = led.groupby("member_id").points.cumsum()
    assert running.min() >= 0
    assert set(led.kind) == {"opening", "earn", "burn", "expire"}
    assert (led.loc[led.kind.isin(["earn", "opening"]), "points"] > 0).all()
    assert (led.loc[led.kind.isin(["burn", "expire"]), "points"] < 0).all()


def test_expiry_and_burning_are_fifo(sim: Path) -> None:
    """Replay each member: burns draw on the earliest-expiring points, and what lapses at a
    month end is exactly what is left of the points expiring then."""
    led = schema.read_table(sim, "ledger").to_pandas().sort_values(["member_id", "ts", "entry_id"])
    members = led.member_id.unique()[:400]
    for member in members:
        lots: dict[pd.Timestamp, int] = defaultdict(int)
        for row in led[led.member_id == member].itertuples():
            if row.kind in ("earn", "opening"):
                lots[row.expires_at] += row.points
            elif row.kind == "burn":
                keys = sorted(lots)
                left, _ = ledger.burn_fifo(np.array([lots[k] for k in keys]), -row.points)
                for k, v in zip(keys, left, strict=True):
                    lots[k] = int(v)
            else:
                assert lots.get(row.ts, 0) == -row.points
                lots[row.ts] = 0
            assert all(v >= 0 for v in lots.values())
            assert all(k > row.ts or v == 0 for k, v in lots.items())  # nothing past its expiry


def test_orders_earn_by_the_rules(sim: Path) -> None:
    t = _tables(sim)
    orders = t["orders"].sort_values(["member_id", "ts", "order_id"])
    prior = orders.groupby("member_id").amount_minor.cumsum() - orders.amount_minor
    tiers = ledger.tier_for_spend(P, prior.to_numpy())
    tier_mult = np.array([P.earning.tier_multipliers[n] for n in P.tiers.order])[tiers]
    cat_mult = orders.category.map(lambda c: ledger.category_multiplier(P, c)).to_numpy()
    camp = orders.ts.map(lambda ts: ledger.campaign_multiplier(P, ts.date())).to_numpy()
    expected = ledger.points_earned(P, orders.amount_minor.to_numpy(), tier_mult, cat_mult, camp)
    assert np.array_equal(orders.points_earned.to_numpy(), expected)
    assert set(orders.category) <= set(CATEGORIES)
    earns = t["ledger"][t["ledger"].kind == "earn"].set_index("ref_id").points
    with_points = orders[orders.points_earned > 0].set_index("order_id").points_earned
    assert earns.sort_index().equals(with_points.sort_index())


def test_redemptions_pay_points_plus_cash_exactly(sim: Path) -> None:
    t = _tables(sim)
    red = t["redemptions"].merge(t["items"], on="item_id")
    assert (red.points > 0).all() and (red.cash_minor >= 0).all()
    step = P.burning.min_points_step
    assert ((red.points % step == 0) | (red.points == red.points_price)).all()
    # the cash top-up is the uncovered share of the day's price (SPEC §3 points + cash)
    days = t["item_days"].assign(day=lambda d: d.ts - pd.Timedelta(days=1))
    red = red.assign(day=red.ts.dt.floor("D")).merge(days, on=["item_id", "day"])
    price = np.round(red.market_price_minor * red.discount_coefficient).astype(np.int64)
    expected = redemption.cash_for_remainder(red.points_price.to_numpy(), price.to_numpy(),
                                             red.points.to_numpy())
    assert np.array_equal(red.cash_minor.to_numpy(), expected)
    assert ((red.cash_minor == 0) == (red.points == red.points_price)).all()
    exp = t["exposures"]
    assert exp.redeemed.sum() == len(red)
    assert set(exp.loc[exp.redeemed, "redemption_id"]) == set(red.redemption_id)


def test_stock_never_negative_and_only_stocked_items_are_shown(sim: Path) -> None:
    t = _tables(sim)
    days = t["item_days"]
    assert (days.stock >= 0).all()
    assert days.replenished.sum() > 0
    # stock when shown = the day's opening stock (last night's + today's replenishment)
    # less the redemptions of that item earlier the same day
    opening = days[["item_id", "ts", "stock"]].assign(ts=days.ts + pd.Timedelta(days=1))
    opening = opening.merge(days[["item_id", "ts", "replenished"]], on=["item_id", "ts"])
    opening["stock"] += opening.replenished
    exp, red = t["exposures"].copy(), t["redemptions"].sort_values("ts")
    for frame in (exp, red):
        frame["day_end"] = frame.ts.dt.floor("D") + pd.Timedelta(days=1)
    shown = exp.merge(opening.rename(columns={"ts": "day_end"}), on=["item_id", "day_end"])
    assert len(shown) > 0.9 * len(exp)  # all but the first day, which has no previous night
    sold = {key: g.ts.to_numpy() for key, g in red.groupby(["item_id", "day_end"])}
    empty = np.array([], dtype=red.ts.to_numpy().dtype)
    earlier = np.array(
        [
            np.searchsorted(sold.get((item, day), empty), ts)
            for item, day, ts in zip(shown.item_id, shown.day_end, shown.ts.to_numpy(), strict=True)
        ]
    )
    assert (shown.stock.to_numpy() - earlier > 0).all()


def test_redemption_rate_rises_with_value_per_point(sim: Path) -> None:
    """The seeds: the higher the value per point, the more members redeem."""
    t = _tables(sim)
    exp = t["exposures"].merge(t["items"], on="item_id")
    vc = idx.value_coefficient(
        exp.market_price_minor / 100, exp.perceived_discount, exp.points_price
    )
    rates = exp.groupby(pd.qcut(vc, 4), observed=True).redeemed.mean().to_numpy()
    assert np.all(np.diff(rates) > 0), rates
    assert rates[-1] > 3 * rates[0]


def test_points_centre_share_follows_appetite() -> None:
    """An average member sees the surfaces in SURFACE_P; a keener one is on the points centre
    more often, the other two keep their ratio."""
    rng = np.random.default_rng(3)
    n = 200_000
    for appetite, centre in ((-0.7, (0.13, 0.19)), (0.0, (0.29, 0.31)), (0.7, (0.47, 0.53))):
        got = np.bincount(behaviour.surfaces(rng, np.full(n, appetite)), minlength=3) / n
        assert centre[0] < got[1] < centre[1], (appetite, got)
        assert got[0] / got[2] == pytest.approx(0.5 / 0.2, rel=0.03)
    assert np.allclose(np.bincount(behaviour.surfaces(rng, np.zeros(n)), minlength=3) / n,
                       behaviour.SURFACE_P, atol=0.005)


def test_points_centre_regulars_redeem_more_elsewhere_too(sim: Path) -> None:
    """The points-centre share is an observable trace of appetite: members who are often there
    also redeem more of what product pages show them."""
    exp = _tables(sim)["exposures"]
    exp = exp[~exp.member_id.isin(_abuser_ids(sim))]
    by = exp.assign(centre=exp.surface == "points_centre").groupby("member_id")
    share = by.centre.mean()[by.size() >= 20]
    page = exp[(exp.surface == "product_page") & exp.member_id.isin(share.index)]
    high = page.member_id.isin(share.index[share > share.median()])
    assert page[high].redeemed.mean() > 1.3 * page[~high].redeemed.mean()


def _abuser_ids(d: Path) -> set[int]:
    ab = pads.dataset(schema.oracle_dir(d) / "abusers", format="parquet").to_table()
    return set(ab.column("member_id").to_pylist())


def test_oracle_is_separate_and_complete(sim: Path) -> None:
    oracle = (
        pads.dataset(schema.oracle_dir(sim) / "exposures", format="parquet").to_table().to_pandas()
    )
    exp = schema.read_table(sim, "exposures").to_pandas()
    assert len(oracle) == len(exp) and set(oracle.exposure_id) == set(exp.exposure_id)
    assert oracle.p_redeem_7d.between(0, 1).all()
    churn = pads.dataset(schema.oracle_dir(sim) / "churn", format="parquet").to_table().to_pandas()
    assert churn.p_no_order_90d.between(0, 1).all()
    assert (churn.loc[~churn.alive, "p_no_order_90d"] == 1.0).all()
    assert set(churn.ts.dt.day) == {1}
    # a member who has dropped out is never seen ordering again
    orders = schema.read_table(sim, "orders").to_pandas()
    dead = churn[~churn.alive].groupby("member_id").ts.min()
    later = orders.merge(dead.rename("dead_at"), on="member_id")
    assert not (later.ts >= later.dead_at).any()


def test_members_and_items_are_numbered_from_1(sim: Path) -> None:
    """Ids start at 1 (recsvc.v1 reads an id of 0 as "not set"): members and items are dense
    1..n, and every table and oracle file names them by those ids."""
    t = _tables(sim)
    members, items = t["members"].member_id, t["items"].item_id
    assert members.tolist() == list(range(1, 3001)) and t["members"].external_id.isna().all()
    assert items.tolist() == list(range(1, len(items) + 1))
    assert all(name.endswith(f"-{i:05d}") for name, i in zip(t["items"].name, items,
                                                              strict=True))
    oracle = {name: pads.dataset(schema.oracle_dir(sim) / name, format="parquet").to_table()
              .to_pandas() for name in ("churn", "abusers")}
    for name, frame in {**t, **oracle}.items():
        for column, known in (("member_id", members), ("item_id", items)):
            if column in frame:
                assert frame[column].isin(known).all(), (name, column)
    assert set(t["item_days"].item_id) == set(items)  # every item, every day
    assert set(oracle["churn"].member_id) <= set(members) and len(oracle["abusers"]) > 0


def test_rejects_nonsense_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        run_simulation(tmp_path, members=0, days=10, seed=1, programme=P)
    assert not (tmp_path / "tables").exists()
    _ = dt  # dates are checked through the CLI parser in test_cli
