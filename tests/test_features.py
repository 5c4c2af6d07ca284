"""The feature platform: snapshot values, point-in-time retrieval, SQLite and Redis agree, jobs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import TINY_AS_OF, at
from recsvc import cli
from recsvc.adapters import feast as store
from recsvc.adapters import materialise, online_write
from recsvc.config import load_programme
from recsvc.errors import ConfigError, DataMissing, FeatureStoreUnavailable
from recsvc.jobs.features import run_features
from recsvc.offline import compute, snapshots
from recsvc.settings import Settings

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def _settings(data_dir: Path, project: str, redis_url: str | None = None) -> Settings:
    return Settings(data_dir=data_dir, feature_repo=REPO, feast_project=project,
                    redis_url=redis_url)


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_features(tiny_tables_dir: Path) -> dict[str, pd.DataFrame]:
    tables = snapshots.read_inputs(tiny_tables_dir)
    return {v: t.to_pandas() for v, t in snapshots.compute_features(tables, P).items()}


def _row(frame: pd.DataFrame, key: str, entity: int, when: str) -> dict[str, Any]:
    hit = frame[(frame[key] == entity) & (frame["ts"] == pd.Timestamp(at(when)))]
    assert len(hit) == 1, f"no single snapshot of {key}={entity} at {when}"
    return {k: (None if isinstance(v, float) and np.isnan(v) else v)
            for k, v in hit.iloc[0].to_dict().items()}


# --------------------------------------------------------------------------------------------
# Snapshot values, worked out by hand from the tiny tables (see conftest.py).
# --------------------------------------------------------------------------------------------
def test_snapshots_have_the_columns_and_types_the_feast_views_declare(tmp_path: Path) -> None:
    from feast.type_map import pa_to_feast_value_type

    defs = store.load_definitions(tmp_path, REPO)
    # the computed views, plus the batch scores the scoring job writes
    assert {v.name for v in defs.views} == {*compute.VIEWS, "member_churn_scores",
                                            "member_fraud_flags"}
    assert {s.name for s in defs.services} == {"propensity_v1", "churn_v1", "churn_scores_v1",
                                               "redemption_v1", "fraud_v1", "hint_v1"}
    for view in (v for v in defs.views if v.name in compute.VIEWS):
        arrow = compute.VIEWS[view.name]
        key = compute.ENTITY_KEY[view.name]
        assert arrow.names == [key, "ts", *(f.name for f in view.features)]
        for f in view.features:
            inferred = pa_to_feast_value_type(str(arrow.field(f.name).type))
            assert f.dtype.to_value_type() == inferred, f"{view.name}.{f.name}"
        expected = tmp_path.resolve() / "features" / view.name / "*.parquet"
        assert view.batch_source.path == str(expected)


def test_the_views_columns_the_feast_definitions_and_the_model_inputs_are_one_source(
        tmp_path: Path) -> None:
    """recsvc.data.views defines each computed view's columns once: the feature job's schema,
    the Feast definitions (names, meanings; their types above) and the model inputs' names
    are that definition, so none can drift from the others."""
    from recsvc.data import views
    from recsvc.ml import inputs

    feast_views = {v.name: v for v in store.load_definitions(tmp_path, REPO).views}
    assert list(compute.VIEWS) == list(views.COMPUTED)
    for name, view in views.COMPUTED.items():
        assert compute.VIEWS[name] == view.arrow_schema, name
        assert compute.ENTITY_KEY[name] == view.entity_key
        assert feast_views[name].description == view.description
        assert [(f.name, f.description) for f in feast_views[name].features] == \
            [(c.name, c.description) for c in view.columns], name
    for view, names in ((views.MEMBER_ACTIVITY, inputs.MEMBER_ACTIVITY),
                        (views.MEMBER_POINTS, inputs.MEMBER_POINTS),
                        (views.ITEM_CATALOGUE, inputs.ITEM_CATALOGUE),
                        (views.ITEM_STATS, inputs.ITEM_STATS)):
        assert names == view.features, view.name


def test_member_activity_windows_recency_tier_and_nulls(tiny_features: dict) -> None:
    act = tiny_features["member_activity"]
    m1 = _row(act, "member_id", 1, "2025-02-16")
    assert m1 == m1 | {
        "orders_30d": 1, "orders_90d": 2, "orders_365d": 2, "orders_total": 2,
        "spend_30d_minor": 20_000, "spend_90d_minor": 30_000, "spend_365d_minor": 30_000,
        "spend_total_minor": 30_000, "avg_order_value_365d_minor": 15_000.0,
        "mean_interpurchase_days": 36.0, "tier": "silver", "age_band": "25-34",
    }
    assert m1["days_since_last_order"] == pytest.approx(5 + 14 / 24)  # since 02-10 10:00
    assert m1["tenure_days"] == pytest.approx(76 + 15 / 24)  # since 2024-12-01 09:00
    # the weekly snapshot on the day of the second order does not see it yet (10:00 > 00:00)
    assert _row(act, "member_id", 1, "2025-02-10")["orders_total"] == 1
    # three orders: mean gap = (03-01 09:00 - 01-05 10:00) / 2
    assert _row(act, "member_id", 1, "2025-03-21")["mean_interpurchase_days"] == pytest.approx(
        (54 + 23 / 24) / 2)
    # and the gaps' spread: 36 days, then 18 days 23 hours (a sample of two)
    assert _row(act, "member_id", 1, "2025-03-21")["interpurchase_days_std"] == pytest.approx(
        (36 - (18 + 23 / 24)) / np.sqrt(2))
    assert m1["interpurchase_days_std"] is None  # two orders: one gap, no spread
    # member 3 turns gold with 6,000.00 of spend, one order has no inter-purchase gap
    assert _row(act, "member_id", 3, "2025-01-16")["tier"] == "silver"
    m3 = _row(act, "member_id", 3, "2025-01-21")
    assert (m3["tier"], m3["orders_total"], m3["mean_interpurchase_days"]) == ("gold", 1, None)
    # member 2 never ordered: nulls where a value would be made up, zeros for counts
    m2 = _row(act, "member_id", 2, "2025-03-21")
    assert m2 == m2 | {"days_since_last_order": None, "avg_order_value_365d_minor": None,
                       "mean_interpurchase_days": None, "orders_total": 0, "orders_30d": 0,
                       "spend_total_minor": 0, "tier": "silver", "age_band": None}


def test_gap_spread_matches_numpy_on_simulated_orders(tmp_path: Path) -> None:
    from recsvc.offline.simulate import run_simulation

    run_simulation(tmp_path, members=300, days=300, seed=5, programme=P, show_progress=False)
    tables = snapshots.read_inputs(tmp_path)
    act = snapshots.compute_features(tables, P)["member_activity"].to_pandas()
    orders = tables["orders"].to_pandas()
    orders["s"] = [int(t.timestamp()) for t in orders.ts]  # whole seconds, as the job keys them
    checked = 0
    for row in act[act.orders_total >= 3].sample(400, random_state=1).itertuples():
        mine = orders[(orders.member_id == row.member_id) & (orders.ts < row.ts)]
        gaps = np.diff(np.sort(mine.s.to_numpy())) / 86400.0
        assert row.interpurchase_days_std == pytest.approx(np.std(gaps, ddof=1), abs=1e-9)
        checked += 1
    assert checked == 400
    assert act[act.orders_total < 3].interpurchase_days_std.isna().all()


def test_member_points_balance_fifo_expiry_and_90_day_windows(tiny_features: dict) -> None:
    pts = tiny_features["member_points"]

    def at_(when: str) -> dict[str, Any]:
        return _row(pts, "member_id", 1, when)

    # 300 (lapsing 03-01) + 80 (lapsing 03-15) opening, +100 earned; only the 300 lapse
    # within 30 days of 02-03
    assert at_("2025-02-03") == at_("2025-02-03") | {
        "points_balance": 480, "points_expiring_30d": 300, "points_earned_90d": 100}
    # the 350-point redemption took the earliest-expiring points first: all 300, then 50 of
    # the 80, so 30 are left to lapse; burning the latest-expiring first would leave 380
    assert at_("2025-02-16") == at_("2025-02-16") | {
        "points_balance": 330, "points_expiring_30d": 30, "points_earned_90d": 300,
        "points_redeemed_90d": 350, "redemptions_90d": 1, "days_since_last_redemption": 0.5,
        "member_views_90d": 1, "points_centre_views_90d": 1, "points_centre_views_365d": 1}
    # the 30 lapse on 03-15; the 50 earned on 03-01 lapse in 2026
    assert at_("2025-03-16") == at_("2025-03-16") | {
        "points_balance": 350, "points_expiring_30d": 0, "points_earned_90d": 350}
    assert _row(pts, "member_id", 2, "2025-03-21") == _row(pts, "member_id", 2, "2025-03-21") | {
        "points_balance": 0, "points_expiring_30d": 0, "redemptions_90d": 0,
        "days_since_last_redemption": None, "member_views_90d": 2, "points_centre_views_90d": 1}
    # member 1 was shown items on the points centre (02-15) and on a product page (03-20)
    assert _row(pts, "member_id", 1, "2025-03-21") == _row(pts, "member_id", 1, "2025-03-21") | {
        "member_views_90d": 2, "points_centre_views_90d": 1}


def test_member_expiry_lists_the_live_lots_earliest_first(tiny_features: dict) -> None:
    exp = tiny_features["member_expiry"]

    def lots(member: int, when: str) -> list[tuple[str, int]]:
        row = _row(exp, "member_id", member, when)
        return [(dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d"), points)
                for at, points in zip(row["expiry_at_s"], row["expiry_points"], strict=True)]

    # the same FIFO story as above, as lots: 300 + 80 opening, then what the redemption left
    assert lots(1, "2025-02-03")[:2] == [("2025-03-01", 300), ("2025-03-15", 80)]
    assert lots(1, "2025-02-16")[0] == ("2025-03-15", 30)
    assert sum(p for _, p in lots(1, "2025-03-16")) == 350
    assert all(at > "2025-03-16" for at, _ in lots(1, "2025-03-16"))
    assert lots(2, "2025-03-21") == []


def test_item_catalogue_and_stats(tiny_features: dict) -> None:
    cat, stats = tiny_features["item_catalogue"], tiny_features["item_stats"]
    promo = _row(cat, "item_id", 10, "2025-02-05")
    assert (promo["discount_coefficient"], promo["stock"], promo["points_class"]) == (
        0.8, 5, "base")
    after = _row(cat, "item_id", 10, "2025-02-16")  # the state at the end of 02-15
    assert (after["discount_coefficient"], after["stock"], after["market_price_minor"]) == (
        1.0, 4, 8_000)
    s = _row(stats, "item_id", 10, "2025-02-16")
    assert s == s | {"item_views_30d": 1, "item_views_90d": 2, "item_redemptions_30d": 1,
                     "item_redemptions_90d": 1, "item_redemption_rate_30d": 1.0,
                     "item_redemption_rate_90d": 0.5, "stock_turnover_days": 120.0}
    before = _row(stats, "item_id", 10, "2025-02-15")  # no views in 30 days: no rate
    assert (before["item_views_30d"], before["item_redemption_rate_30d"]) == (0, None)
    last = _row(stats, "item_id", 10, "2025-03-21")
    assert (last["item_redemptions_30d"], last["stock_turnover_days"]) == (0, None)
    assert last["item_redemption_rate_90d"] == pytest.approx(1 / 3)
    # item 11 exists from 2025-01-15: its first snapshot is the end of that day
    assert cat[cat.item_id == 11]["ts"].min() == pd.Timestamp(at("2025-01-16"))


def test_snapshot_instants(tiny_features: dict) -> None:
    act = tiny_features["member_activity"]
    days = {m: sorted(g["ts"].dt.strftime("%m-%d")) for m, g in act.groupby("member_id")}
    # member 3: end of signup day, weekly after it, end of each order day, each week start
    # (Mondays at midnight: the churn cut-offs) and month start (02-01 and 03-01), and the as-of
    mondays = ["01-20", "01-27", "02-03", "02-10", "02-17", "02-24", "03-03", "03-10", "03-17"]
    assert days[3] == sorted(["01-16", "01-21", "01-23", "01-30", "02-01", "02-06", "02-13",
                              "02-20", "02-27", "03-01", "03-06", "03-13", "03-20", "03-21",
                              *mondays])
    # member 1 signed up before the first event: nothing before the end of 2025-01-01
    assert days[1][0] == "01-02" and "03-16" in days[1]  # the lapse on 03-15 refreshes
    for frame in tiny_features.values():
        assert frame["ts"].max() == pd.Timestamp(TINY_AS_OF)
        assert (frame["ts"].dt.hour == 0).all()


def test_an_earlier_as_of_sees_only_what_was_known_then(tiny_tables_dir: Path,
                                                        tiny_features: dict) -> None:
    cut = pd.Timestamp(at("2025-02-16"))
    tables = snapshots.read_inputs(tiny_tables_dir)
    for view, table in snapshots.compute_features(tables, P, as_of=cut.to_pydatetime()).items():
        frame = table.to_pandas()
        assert frame["ts"].max() == cut, view
        key = compute.ENTITY_KEY[view]
        both = frame.merge(tiny_features[view], on=[key, "ts"], suffixes=("", "_full"))
        # the same snapshots as the full run up to the cut (the cut run adds as-of ones)
        assert len(both) >= (frame["ts"] < cut).sum() > 0
        for col in table.column_names[2:]:
            pd.testing.assert_series_equal(both[col], both[f"{col}_full"], check_names=False)


def test_expiring_points_match_a_naive_replay_on_simulated_data(tmp_path: Path) -> None:
    from recsvc.offline.simulate import run_simulation

    run_simulation(tmp_path, members=150, days=200, seed=3, programme=P, show_progress=False)
    tables = snapshots.read_inputs(tmp_path)
    views = snapshots.compute_features(tables, P)
    points = views["member_points"].to_pandas()
    lots_by_snapshot = {
        (r["member_id"], pd.Timestamp(r["ts"])): list(zip(r["expiry_at_s"], r["expiry_points"],
                                                          strict=True))
        for r in views["member_expiry"].to_pylist()}
    ledger = tables["ledger"].to_pandas().sort_values(["member_id", "ts"], kind="stable")
    checked = 0
    for member, snaps in points.groupby("member_id"):
        events = ledger[ledger.member_id == member]
        for snap in snaps.itertuples():
            lots: dict[pd.Timestamp, int] = {}
            for e in events[events.ts < snap.ts].itertuples():
                if e.kind in ("earn", "opening"):
                    lots[e.expires_at] = lots.get(e.expires_at, 0) + e.points
                elif e.kind == "burn":
                    want = -e.points
                    for expiry in sorted(lots):
                        take = 0 if expiry <= e.ts else min(want, lots[expiry])
                        lots[expiry] = 0 if expiry <= e.ts else lots[expiry] - take
                        want -= take
            live = {k: v for k, v in lots.items() if k >= snap.ts}
            soon = sum(v for k, v in live.items() if k < snap.ts + pd.Timedelta(days=30))
            assert (snap.points_expiring_30d, snap.points_balance) == (soon, sum(live.values()))
            got = lots_by_snapshot[(member, snap.ts)]
            assert got == sorted((int(k.timestamp()), v) for k, v in live.items() if v)
            checked += 1
    assert checked > 1000


# --------------------------------------------------------------------------------------------
# Feast: the registry, point-in-time retrieval, the online stores.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqlite_store(tiny_tables_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import shutil

    data = tmp_path_factory.mktemp("feast") / "data"
    shutil.copytree(tiny_tables_dir, data)
    settings = _settings(data, f"recsvc_test_{uuid.uuid4().hex[:10]}")
    run_features(settings, P, say=_quiet)
    return store.open_store(settings)


def _history(feast_store: Any, service: str, rows: list[tuple]) -> pd.DataFrame:
    keys = ["member_id", "item_id"][: len(rows[0]) - 1]
    frame = pd.DataFrame(rows, columns=[*keys, "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    out = store.historical_features(feast_store, service, frame)
    return out.sort_values("event_timestamp").reset_index(drop=True)


def test_training_rows_see_an_event_only_after_it_happened(sqlite_store: Any) -> None:
    # member 3 orders 10.00 on 2025-03-05 10:00 and earns 12 points
    rows = [(3, "2025-03-05 09:59"), (3, "2025-03-05 23:59"), (3, "2025-03-06 00:00"),
            (3, "2025-03-09 12:00")]
    churn = _history(sqlite_store, "churn_v1", rows)
    assert churn["member_activity__orders_total"].tolist() == [1, 1, 2, 2]
    assert churn["member_points__points_balance"].tolist() == [6000, 6000, 6012, 6012]
    assert churn["member_activity__spend_30d_minor"].tolist() == [0, 0, 1000, 1000]

    # item 10 is redeemed on 2025-02-15 12:00 by member 1 (350 points): both sides move
    rows2 = [(1, 10, "2025-02-15 11:00"), (1, 10, "2025-02-16 00:00")]
    prop = _history(sqlite_store, "propensity_v1", rows2)
    assert prop["item_stats__item_redemptions_30d"].tolist() == [0, 1]
    assert prop["item_catalogue__stock"].tolist() == [5, 4]
    assert prop["member_points__redemptions_90d"].tolist() == [0, 1]
    assert prop["member_points__points_balance"].tolist() == [680, 330]
    assert set(store.feature_names(sqlite_store, "propensity_v1")) <= set(prop.columns)


def test_upstream_noise_is_silenced_and_nothing_else(sqlite_store: Any, tiny_tables_dir: Path,
                                                     tmp_path: Path, caplog: Any) -> None:
    """Opening a store and reading it offline logs no "Registry cache expired" and shows no
    DuckDB deprecation from ibis, even where a user's run shows every warning; other Feast
    records still pass."""
    import logging
    import shutil
    import warnings

    data = tmp_path / "data"
    shutil.copytree(tiny_tables_dir, data)
    caplog.set_level(logging.INFO)
    # Feast's own logger too: a level set on it elsewhere (an earlier test) would hide INFO
    caplog.set_level(logging.INFO, logger="feast.infra.registry.registry")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        store._quiet_upstream.__wrapped__()  # as the first open did, over the "default"
        opened = store.open_store(_settings(data, f"recsvc_test_{uuid.uuid4().hex[:10]}"))
        opened.list_feature_views()
        _history(sqlite_store, "churn_v1", [(3, "2025-03-05 09:59")])
    assert not [w for w in seen if "fetch_arrow_table" in str(w.message)]
    assert "Registry cache expired" not in caplog.text
    logging.getLogger("feast.infra.registry.registry").info("Registry file modified")
    assert "Registry file modified" in caplog.text


@pytest.mark.parametrize("when", ["2025-03-21 00:00", "2025-03-05 23:59", "2025-01-20 12:00",
                                  "2025-04-01 00:00", "2025-05-01 00:00",
                                  "2024-06-01 00:00"])
def test_features_at_one_instant_are_feasts_point_in_time_join(sqlite_store: Any,
                                                              when: str) -> None:
    """score-batch reads every member's features at its as-of instant from the snapshots
    (`materialise.features_at`); that is Feast's point-in-time join for such rows, value for
    value and type for type: members with rows, without any (404), an instant before the
    data and one where a view's ttl has run out; a service over two entities' views."""
    from recsvc.ml import inputs

    frame = pd.DataFrame({"member_id": [3, 1, 404, 2, 1], "item_id": [10, 11, 10, 999, 10],
                          "event_timestamp": pd.Timestamp(at(when))})
    # (the tiny data has no fraud flags, which hint_v1 and redemption_v1 read)
    for service in ("churn_v1", "propensity_v1"):
        feast_join = inputs.with_features(
            lambda s, f: store.historical_features(sqlite_store, s, f), service, frame)
        direct = inputs.with_features(
            lambda s, f: materialise.features_at(sqlite_store, s, f, at(when)), service, frame)
        assert list(direct.columns) == list(feast_join.columns), service
        assert direct.dtypes.tolist() == feast_join.dtypes.tolist(), service
        ours, theirs = inputs.frame_columns(direct), inputs.frame_columns(feast_join)
        for column, want in theirs.items():
            if want.dtype.kind == "f":
                np.testing.assert_array_equal(ours[column], want, err_msg=column)
            elif column != "event_timestamp":
                assert [_plain(v) for v in ours[column]] == [_plain(v) for v in want], column


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, np.ndarray) else value


def test_online_rows_are_the_ones_feast_itself_would_write(sqlite_store: Any) -> None:
    from feast.utils import _convert_arrow_to_proto

    for view in sqlite_store.list_feature_views():
        if view.name not in compute.VIEWS:
            continue
        table = materialise.snapshot_rows(sqlite_store, view, at("2025-01-01"), TINY_AS_OF)
        batch = table.combine_chunks().to_batches()[0]
        keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
        ours = online_write.arrow_to_online_rows(batch, view)
        theirs = _convert_arrow_to_proto(batch, view, keys)
        assert len(ours) == len(theirs) == batch.num_rows
        for a, b in zip(ours, theirs, strict=True):
            assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2], view.name


def test_online_values_are_the_latest_snapshot(sqlite_store: Any, tiny_features: dict) -> None:
    got = store.online_features(sqlite_store, "churn_v1", [{"member_id": 1}, {"member_id": 2},
                                                           {"member_id": 404}])
    expect = _row(tiny_features["member_points"], "member_id", 1, "2025-03-21")
    assert got["member_points__points_balance"] == [expect["points_balance"], 0, None]
    assert got["member_activity__days_since_last_order"][1:] == [None, None]
    assert got["member_activity__tier"] == ["silver", "silver", None]


def test_unknown_feature_service_is_data_missing(sqlite_store: Any) -> None:
    from recsvc.errors import DataMissing

    with pytest.raises(DataMissing, match="nope_v9"):
        store.online_features(sqlite_store, "nope_v9", [{"member_id": 1}])


# --------------------------------------------------------------------------------------------
# Configuration and the job.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/15", "127.0.0.1:6379,db=15"),
    ("redis://redis", "redis:6379,db=0"),
    ("redis://:s3cr%2Ft@cache:6380/2", 'cache:6380,db=2,password="s3cr/t"'),
    ("redis://:123@cache:6379/0", 'cache:6379,db=0,password="123"'),
    ("rediss://app:pw@cache:6379/1", 'cache:6379,db=1,username="app",password="pw",ssl=true'),
])
def test_redis_url_becomes_feast_connection_string(url: str, expected: str) -> None:
    assert store.redis_connection_string(url) == expected


@pytest.mark.parametrize("url", ["http://x:1/0", "redis://h:1/abc", "redis://:a,b@h:1/0",
                                 "redis://h:99999/0"])
def test_bad_redis_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="RECSVC_REDIS_URL"):
        store.redis_connection_string(url)


def test_cluster_takes_no_database() -> None:
    assert store.redis_connection_string("redis://n1:7000/0", cluster=True) == "n1:7000"
    with pytest.raises(ConfigError, match="database 0"):
        store.redis_connection_string("redis://n1:7000/3", cluster=True)


def test_each_online_store_kind_has_its_own_registry(tmp_path: Path) -> None:
    lite = store.repo_config_dict(_settings(tmp_path, "p"))
    red = store.repo_config_dict(_settings(tmp_path, "p", "redis://h:1/2"))
    assert lite["registry"]["path"] != red["registry"]["path"]
    assert lite["online_store"] == {"type": "sqlite",
                                    "path": str(tmp_path.resolve() / "feast/online.sqlite.db")}
    assert red["online_store"] == {"type": "redis", "connection_string": "h:1,db=2"}
    assert lite["project"] == red["project"] == "p"


def test_features_job_second_run_does_nothing(tiny_data_dir: Path, capsys: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_FEAST_PROJECT", f"recsvc_test_{uuid.uuid4().hex[:10]}")
    monkeypatch.delenv("RECSVC_REDIS_URL", raising=False)
    monkeypatch.setenv("RECSVC_FEATURE_REPO", str(REPO))
    assert cli.main(["features", "--data-dir", str(tiny_data_dir)]) == 0
    first = capsys.readouterr().out
    assert "features: 477 snapshot rows" in first and "definitions: applied" in first
    assert "online (sqlite, rewrite): 13 rows" in first
    assert cli.main(["features", "--data-dir", str(tiny_data_dir)]) == 0
    second = capsys.readouterr().out
    assert "features: up to date with the tables" in second
    assert "definitions: unchanged" in second
    assert "online (sqlite): up to date" in second and "nothing to do" in second


def test_features_job_simulates_when_there_are_no_tables(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", f"recsvc_test_{uuid.uuid4().hex[:10]}")
    lines: list[str] = []
    run = run_features(settings, P, members=200, days=40, say=lines.append)
    assert run.simulated and run.computed and run.applied
    assert run.materialized_rows > 200
    assert lines[0].startswith("tables: none") and "rows/s" in lines[1]


def test_no_tables_and_no_simulation_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", feast_project="p", simulate_when_empty=False)
    with pytest.raises(DataMissing, match="import-transactions"):
        run_features(settings, P, say=_quiet)
    assert not (tmp_path / "data" / "tables").exists()


def test_snapshot_period_beyond_the_ttl_is_refused(tiny_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="snapshot-every-days"):
        run_features(_settings(tiny_data_dir, "p"), P, snapshot_every_days=15, say=_quiet)


# --------------------------------------------------------------------------------------------
# Redis: the same values as SQLite, rewinds, and what a dead Redis looks like.
# --------------------------------------------------------------------------------------------
ENTITY_ROWS = [{"member_id": m, "item_id": i} for m in (1, 2, 3, 404) for i in (10, 11, 77)]


def _both(data: Path, project: str, redis_url: str) -> Iterator[Any]:
    for url in (None, redis_url):
        yield store.open_store(_settings(data, project, url))


@pytest.mark.redis
def test_sqlite_and_redis_serve_identical_values(tiny_data_dir: Path, redis_url: str,
                                                 redis_project: str) -> None:
    for url in (None, redis_url):
        run = run_features(_settings(tiny_data_dir, redis_project, url), P, say=_quiet)
        assert run.materialized_rows == 13
    lite, red = _both(tiny_data_dir, redis_project, redis_url)
    for service in ("churn_v1", "propensity_v1", "redemption_v1"):
        rows = ENTITY_ROWS if service == "propensity_v1" else [
            {"member_id": m} for m in (1, 2, 3, 404)]
        a = store.online_features(lite, service, rows)
        b = store.online_features(red, service, rows)
        assert a == b
        assert a["member_points__points_balance"][:1] == [350]
        if service == "redemption_v1":  # list features come back as lists from both stores
            assert sum(a["member_expiry__expiry_points"][0]) == 350

    # rewinding to an earlier as-of rewrites both stores (Redis alone would keep the newer)
    for url in (None, redis_url):
        run = run_features(_settings(tiny_data_dir, redis_project, url), P,
                           as_of=dt.date(2025, 2, 15), say=_quiet)
        assert run.online_mode == "rewrite"
    lite, red = _both(tiny_data_dir, redis_project, redis_url)
    a = store.online_features(lite, "propensity_v1", ENTITY_ROWS)
    assert a == store.online_features(red, "propensity_v1", ENTITY_ROWS)
    assert a["member_points__points_balance"][0] == 330
    assert a["item_catalogue__stock"][0] == 4


@pytest.mark.redis
def test_a_store_that_lost_its_rows_is_filled_again(tiny_data_dir: Path, redis_url: str,
                                                    redis_project: str) -> None:
    """The job's record of the last fill lives beside the data; the fill mark lives in the
    store. A Redis restarted empty (here: the project's keys deleted) or an online file
    deleted loses the mark with the rows, and the next run fills the store again instead of
    reporting it up to date."""
    import redis

    for url in (None, redis_url):
        settings = _settings(tiny_data_dir, redis_project, url)
        run_features(settings, P, say=_quiet)
        assert materialise.read_fill_mark(settings) is not None
        again = run_features(settings, P, say=_quiet)
        assert again.online_mode == "none"  # up to date, and the store says so too
        if url is None:
            online = store.repo_config_dict(settings)["online_store"]["path"]
            Path(online).unlink()
        else:
            client = redis.Redis.from_url(redis_url)
            try:
                assert online_write.delete_project_keys(client, redis_project) > 0
            finally:
                client.close()
        assert materialise.read_fill_mark(settings) is None
        lines: list[str] = []
        refilled = run_features(settings, P, say=lines.append)
        assert refilled.online_mode == "rewrite" and refilled.materialized_rows == 13
        assert any("does not hold the mark of the last fill" in line for line in lines)
        got = store.online_features(store.open_store(settings), "churn_v1", [{"member_id": 1}])
        assert got["member_points__points_balance"] == [350]


def test_a_dead_redis_is_feature_store_unavailable(tiny_data_dir: Path) -> None:
    settings = _settings(tiny_data_dir, "recsvc_test_dead", "redis://127.0.0.1:1/0")
    feast_store = store.open_store(settings)
    store.apply_definitions(feast_store, store.load_definitions(tiny_data_dir, REPO))
    with pytest.raises(FeatureStoreUnavailable, match="Redis"):
        store.online_features(feast_store, "churn_v1", [{"member_id": 1}])


def test_arrow_nan_and_null_become_empty_values() -> None:
    from feast.value_type import ValueType

    values = online_write.proto_values(pa.array([1.5, None, float("nan")]), ValueType.DOUBLE)
    assert values is not None
    assert [v.WhichOneof("val") for v in values] == ["double_val", None, None]
