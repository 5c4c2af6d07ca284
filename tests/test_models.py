"""Training end to end on a small simulated programme: gates, registry, batch vs online scores."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsvc.adapters import feast as fstore
from recsvc.adapters.context import Context
from recsvc.adapters.manifest import Gate
from recsvc.config import load_programme
from recsvc.core import index as idx
from recsvc.data import schema
from recsvc.errors import PromotionRefused
from recsvc.ml import inputs, runtime
from recsvc.ml.propensity_rows import PropensityRows
from recsvc.ml.runtime import calibrated
from recsvc.ml.scoring import ChurnScorer
from recsvc.offline.batch_scoring import score_batch
from recsvc.offline.fitting import EARLY_STOPPING, MAX_ROUNDS, EarlyStop
from recsvc.offline.training import earlier_split, train_model
from recsvc.offline.training_sets import (
    Split,
    TrainOptions,
    churn_cutoffs,
    churn_frame,
    fallback_horizons,
    split_cutoffs,
)

P = load_programme()


def test_both_models_beat_their_baselines_and_are_promoted(trained: Context) -> None:
    outcome = trained.outcome  # type: ignore[attr-defined]
    assert outcome.refused == {}
    assert set(outcome.promoted) == {"churn", "propensity"}
    for name in ("churn", "propensity"):
        manifest = trained.registry.manifest(name, outcome.promoted[name])
        best = max(v["roc_auc"] for v in manifest.baseline_metrics.values())
        assert manifest.metrics["roc_auc"] > best, name
        test = manifest.extra["test"]
        served = test.get("served", test["lightgbm"])["roc_auc"]
        assert served > max(v["roc_auc"] for k, v in test.items()
                            if k not in ("served", *runtime.TREES, "oracle")), name
        assert test["oracle"]["roc_auc"] >= served - 0.005, name
        report = trained.registry.report_dir(name, outcome.promoted[name])
        assert (report / "report.md").exists() and (report / "calibration.png").exists()
        assert manifest.feature_service == {"churn": "churn_v1",
                                            "propensity": "propensity_v1"}[name]
    # the classic churn models, asked the caller's question, are among what churn had to beat
    churn = trained.registry.manifest("churn", outcome.promoted["churn"])
    # they competed with the trees on validation, and the trees won on this programme
    assert set(churn.extra["candidates"]) == {*runtime.TREES, *runtime.CLASSIC}
    assert churn.extra["served"] in runtime.TREES
    candidates = churn.extra["candidates"]
    assert churn.metrics["roc_auc"] == pytest.approx(candidates[churn.extra["served"]])
    assert max(candidates[k] for k in runtime.CLASSIC) < churn.metrics["roc_auc"]
    assert {"bgnbd_p_no_purchase", "pareto_nbd_p_no_purchase",
            "pareto_nbd_expected_purchases"} <= set(churn.baseline_metrics)
    assert set(churn.extra["pareto_nbd_weekly"]) >= {"r", "alpha", "s", "beta"}


def test_the_gate_refuses_a_worse_model_and_rollback_restores(trained: Context) -> None:
    reg = trained.registry
    production = reg.production("churn")
    assert production is not None
    # a second version, judged by a gate that demands a margin no model can reach
    result = train_model("churn", Path(trained.settings.data_dir), P, trained.history, reg,
                         TrainOptions(horizon_days=90, seed=11), data_fingerprint="t",
                         say=lambda _: None)
    with pytest.raises(PromotionRefused, match="does not beat"):
        reg.promote("churn", result.manifest.version, Gate(min_margin=0.5))
    assert reg.production("churn") == production  # a refused promotion changes nothing
    reg.promote("churn", result.manifest.version, force=True)
    assert reg.production("churn") == result.manifest.version
    assert reg.rollback("churn") == production
    assert reg.production("churn") == production


def test_batch_scores_match_online_scores(trained: Context, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    batch = score_batch(trained, as_of=None, out=out, say=lambda _: None)
    scores = pd.read_csv(out)
    assert len(scores) == batch.rows > 1000
    assert list(scores.columns[:4]) == ["customer_id", "churn_probability", "band", "segment"]
    assert scores.churn_probability.between(0, 1).all()
    assert set(scores.band) <= {"low", "medium", "high"}
    assert set(scores.segment) <= {"loyal", "potential", "dormant", "ordinary"}
    # the online path: features read online, scored by the same scorer the service uses
    scorer = ChurnScorer(trained.registry.load("churn"))
    sample = scores.sample(25, random_state=1)
    rows = [{"member_id": int(m)} for m in sample.member_id]
    online = fstore.online_features(trained.store, "churn_v1", rows)
    got = scorer.score(inputs.feature_columns(online))
    np.testing.assert_allclose(got.probability, sample.churn_probability, atol=1e-6)
    assert got.segment.tolist() == sample.segment.tolist()
    # and the materialised batch scores are readable online
    published = fstore.online_features(trained.store, "churn_scores_v1", rows)
    np.testing.assert_allclose(np.asarray(published["member_churn_scores__churn_probability"],
                                          dtype=float), sample.churn_probability, atol=1e-6)


def test_batch_scores_by_ranges_of_members_are_the_scores_of_one_pass(
        trained: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local engine reads and scores members by id ranges (`LOCAL_RANGE`), so what it
    holds at once is bounded at any population; split finer, every score and the rows' order
    are the same."""
    from recsvc.offline import batch_scoring

    whole = score_batch(trained, as_of=None, out=tmp_path / "whole.csv", say=lambda _: None)
    monkeypatch.setattr(batch_scoring, "LOCAL_RANGE", 700)
    split = score_batch(trained, as_of=None, out=tmp_path / "split.csv", say=lambda _: None)
    assert whole.rows == split.rows > 3 * 700
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "split.csv"),
                                  pd.read_csv(tmp_path / "whole.csv"))


def test_training_and_serving_use_the_one_index_definition() -> None:
    cols = {
        "market_price_minor": np.array([8000.0]), "perceived_discount": np.array([0.85]),
        "points_price": np.array([800.0]), "discount_coefficient": np.array([0.8]),
        "points_balance": np.array([640.0]), "orders_90d": np.array([3.0]),
        "days_since_last_order": np.array([10.0]), "age_band": np.array(["35-44"], dtype=object),
        "avg_order_value_365d_minor": np.array([5000.0]), "points_expiring_30d": np.array([0.0]),
        "category": np.array(["toys"], dtype=object),
        "top_category_1": np.array(["toys"], dtype=object),
        "top_category_1_share": np.array([0.5]),
        "top_category_2": np.array([None], dtype=object),
        "top_category_2_share": np.array([np.nan]),
        "top_category_3": np.array([None], dtype=object),
        "top_category_3_share": np.array([np.nan]),
        "member_views_90d": np.array([10.0]), "redemptions_90d": np.array([1.0]),
        "member_views_365d": np.array([0.0]), "redemptions_365d": np.array([0.0]),
        "points_centre_views_90d": np.array([4.0]), "points_centre_views_365d": np.array([0.0]),
    }
    got = inputs.index_inputs(cols, P)
    core = idx.index_factors(P.index, market_price=80.0, perceived_discount=0.85,
                             points_price=800.0, item_discount=0.8, balance=640.0,
                             orders_90d=3.0, days_since_last_order=10.0)
    assert got["value_coefficient"][0] == core.value_coefficient == 0.085
    assert got["demand_match"][0] == core.demand_match == 0.8
    assert got["recommendation_index"][0] == core.recommendation_index
    assert got["category_affinity"][0] == 0.5
    assert got["member_redemption_rate_90d"][0] == 0.1
    assert np.isnan(got["member_redemption_rate_365d"][0])
    assert got["points_centre_share_90d"][0] == 0.4
    assert np.isnan(got["points_centre_share_365d"][0])
    assert inputs.idx is idx  # the module training imports is the core's


def test_a_members_compiled_inputs_equal_the_training_matrix() -> None:
    """The service encodes a member's inputs once per read, in plain Python
    (`PropensityRows.member`); training builds the same inputs as columns (`member_rates`,
    `matrix`). Both must give the same bits: missing values, no views, NaN and unknown
    categories included."""
    rng = np.random.default_rng(5)
    numeric = [n for n in inputs.MEMBER_ACTIVITY + inputs.MEMBER_POINTS
               if n not in (*inputs.CATEGORICAL, *inputs.NOT_INPUTS, "points_balance")]
    names = [*numeric, "tier", "age_band", *inputs.MEMBER_RATES]
    vocab = {"tier": ["gold", "silver"], "age_band": ["18-24", "25-34"]}
    members = []
    for _ in range(300):
        member = {}
        for n in numeric:
            r = rng.random()
            member[n] = (None if r < 0.15 else float("nan") if r < 0.2 else 0 if r < 0.35
                         else int(rng.integers(0, 50)) if r < 0.7 else float(rng.random() * 9))
        member["tier"] = rng.choice(["gold", "silver", "bronze", None])
        member["age_band"] = rng.choice(["18-24", "25-34", None])
        members.append(member)
    cols = {n: np.array([m.get(n) for m in members], dtype=object) for n in numeric}
    cols |= {n: np.array([m[n] for m in members], dtype=object) for n in vocab}
    cols |= inputs.member_rates(cols)
    want = inputs.matrix(cols, names, vocab)
    rows = PropensityRows(names, vocab, {}, 0)
    assert list(rows.member_names) == names
    got = np.stack([rows.member(m) for m in members])
    np.testing.assert_array_equal(got, want)
    assert np.isnan(want[:, names.index("member_redemption_rate_90d")]).any()  # no views seen


def test_cutoffs_are_split_with_label_gaps() -> None:
    months = [dt.datetime(2025, m, 1, tzinfo=dt.UTC) for m in range(1, 13)]
    train, valid, test = split_cutoffs(months, dt.timedelta(days=90))
    assert test == months[-1]
    assert valid + dt.timedelta(days=90) <= test
    assert all(c + dt.timedelta(days=90) <= valid for c in train)
    # a short log: the windows overlap rather than leave nothing to train on
    short_train, short_valid, short_test = split_cutoffs(months[:4], dt.timedelta(days=90))
    assert (short_train, short_valid, short_test) == (months[:2], months[2], months[3])
    with pytest.raises(Exception, match="at least 3 cut-offs"):
        split_cutoffs(months[:2], dt.timedelta(days=90))


def test_the_earlier_fold_is_the_split_one_label_window_back() -> None:
    weeks = [dt.datetime(2025, 1, 6, tzinfo=dt.UTC) + dt.timedelta(weeks=w) for w in range(40)]
    train, valid, test = split_cutoffs(weeks, dt.timedelta(days=28))
    at = [*train, valid, test]
    stamps = np.array([c for c in at for _ in range(3)])
    frame = pd.DataFrame({"event_timestamp": pd.to_datetime(stamps, utc=True)})
    part = np.array(["train"] * 3 * len(train) + ["valid"] * 3 + ["test"] * 3)
    split = Split(frame, part, np.zeros(len(frame), dtype=np.int64), (weeks[0], weeks[-1]))
    earlier = earlier_split(split, dt.timedelta(days=28))
    assert earlier is not None
    e_valid = {s for s, p in zip(stamps, earlier.part, strict=True) if p == "valid"}
    e_train = sorted({s for s, p in zip(stamps, earlier.part, strict=True) if p == "train"})
    assert e_valid == {train[-1]}  # the last training cut-off validates
    assert e_train == [c for c in train if c + dt.timedelta(days=28) <= train[-1]]
    # the old validation and test rows judge nothing here
    assert set(earlier.part[part != "train"]) == {"unused"}
    assert earlier.bounds["valid"] == f"{train[-1]:%Y-%m-%d}"
    # too few training cut-offs for a window before the last: one fold decides
    few = Split(frame, np.where(np.isin(stamps, train[-2:]), "train", "x"), split.label,
                split.window)
    assert earlier_split(few, dt.timedelta(days=28)) is None


def _us(day: dt.datetime) -> int:
    return int(day.timestamp()) * 1_000_000


def test_churn_cutoffs_are_week_starts_up_to_a_month_start_for_test() -> None:
    got = [dt.datetime.fromtimestamp(us / 1e6, dt.UTC) for us in churn_cutoffs(
        _us(dt.datetime(2025, 1, 1, tzinfo=dt.UTC)), _us(dt.datetime(2025, 6, 20, tzinfo=dt.UTC)))]
    assert got[-1] == dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # the last month start: test
    weekly = got[:-1]
    assert all(d.weekday() == 0 and d.hour == 0 for d in weekly)  # Mondays, midnight UTC
    assert {(b - a).days for a, b in itertools.pairwise(weekly)} == {7}
    assert weekly[0] == dt.datetime(2025, 1, 6, tzinfo=dt.UTC)
    assert weekly[-1] == dt.datetime(2025, 5, 26, tzinfo=dt.UTC)
    # a span with no month start: the week starts alone
    short = churn_cutoffs(_us(dt.datetime(2025, 1, 2, tzinfo=dt.UTC)),
                          _us(dt.datetime(2025, 1, 20, tzinfo=dt.UTC)))
    assert len(short) == 3


def test_a_short_history_is_labelled_at_the_longest_horizon_with_honest_splits(
        tmp_path: Path) -> None:
    # nine months of orders from one member a week; asked about 273 days
    orders = pd.DataFrame({"member_id": np.repeat(np.arange(1, 41), 39),
                           "ts": np.tile(pd.date_range("2025-01-01", periods=39, freq="7D",
                                                       tz="UTC"), 40)})
    data = tmp_path / "data"
    n = len(orders)
    with schema.atomic_tables(schema.tables_dir(data)) as tables:
        tables.write("orders", {
            "order_id": np.arange(n), "member_id": orders.member_id.to_numpy(),
            "ts": orders.ts.to_numpy(), "amount_minor": np.full(n, 1000),
            "quantity": np.ones(n, dtype=np.int64), "category": ["food"] * n,
            "points_earned": np.full(n, 10)})
    limit = dt.datetime(2025, 10, 1, tzinfo=dt.UTC)
    frame, bounds = churn_frame(data, limit, TrainOptions(horizon_days=273))
    days = int(bounds["horizon_days"])
    assert days < 273 and "too short for labels at 273 days" in bounds["note"]
    cuts = sorted(frame.event_timestamp.unique())
    train = frame[frame.part == "train"].event_timestamp.max()
    valid = frame[frame.part == "valid"].event_timestamp.max()
    test = frame[frame.part == "test"].event_timestamp.max()
    window = pd.Timedelta(days=days)
    assert train + window <= valid and valid + window <= test  # a label window apart
    assert test + window <= pd.Timestamp(limit) and len(cuts) >= 3
    # the longest such: asked at any longer horizon of the ladder, it had to go shorter too
    for d in (d for d in fallback_horizons(273) if d > days):
        _, shorter = churn_frame(data, limit, TrainOptions(horizon_days=d))
        assert int(shorter["horizon_days"]) < d


def test_platt_calibration_is_monotone() -> None:
    raw = np.linspace(-5, 5, 11)
    p = calibrated(raw, {"a": 1.2, "b": -0.3})
    assert np.all(np.diff(p) > 0) and p.min() > 0 and p.max() < 1


def test_propensity_from_online_features_matches_the_offline_store(trained: Context) -> None:
    """Serving reads the online store, training the offline one: the same pairs score alike."""
    from recsvc.adapters.online import OnlineReader
    from recsvc.data import schema
    from recsvc.ml.inputs import with_features
    from recsvc.ml.scoring import PropensityScorer
    from recsvc.offline.batch_scoring import features_as_of

    data_dir = Path(trained.settings.data_dir)
    as_of = features_as_of(data_dir)
    members = schema.read_table(data_dir, "members", ["member_id"])["member_id"].to_numpy()[:5]
    items = schema.read_table(data_dir, "items", ["item_id"])["item_id"].to_numpy()[:6]
    pairs = pd.DataFrame([(int(m), int(i)) for m in members for i in items],
                         columns=["member_id", "item_id"])
    offline = inputs.frame_columns(with_features(trained.history, "propensity_v1",
                                     pairs.assign(event_timestamp=pd.Timestamp(as_of))))
    reader = OnlineReader.from_store(trained.store)
    member_cols = reader.read_service("propensity_v1", "member_id", pairs.member_id.tolist())
    item_cols = reader.read_service("propensity_v1", "item_id", pairs.item_id.tolist())
    online = inputs.feature_columns({**member_cols, **item_cols})
    scorer = PropensityScorer(trained.registry.load("propensity"), P)
    for cols in (offline, online):
        cols["surface"] = np.full(len(pairs), "product_page", dtype=object)
    np.testing.assert_allclose(scorer.score(online), scorer.score(offline), atol=1e-9)
    assert 0.0 < scorer.score(online).mean() < 0.5


def test_the_callers_early_stopping_stops_where_lightgbms_does() -> None:
    # the rule the Dask fit applies by hand, on fits that extend one another, against
    # lgb.early_stopping on the same data: the same trees kept, the same best iteration
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 5))
    y = (X[:, 0] + rng.normal(scale=2.0, size=3000) > 0).astype(np.int64)
    X_valid = rng.normal(size=(1000, 5))
    y_valid = (X_valid[:, 0] + rng.normal(scale=2.0, size=1000) > 0).astype(np.int64)
    params = {"objective": "binary", "metric": "auc", "learning_rate": 0.02, "num_leaves": 7,
              "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1, "deterministic": True}
    evals: dict[str, Any] = {}
    stopped = lgb.train(params, lgb.Dataset(X, y), num_boost_round=MAX_ROUNDS,
                        valid_sets=[lgb.Dataset(X_valid, y_valid)], valid_names=["v"],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False),
                                   lgb.record_evaluation(evals)])
    trained, best = len(evals["v"]["auc"]), stopped.best_iteration
    assert 0 < best < trained < MAX_ROUNDS  # it did stop
    full = lgb.train(params, lgb.Dataset(X, y), num_boost_round=trained + 50)
    curve = EarlyStop(X_valid, y_valid, None)
    short = lgb.Booster(model_str=full.model_to_string(num_iteration=best))
    assert curve.where(short, last=False) is None  # not yet in sight: fit again, longer
    assert curve.where(short, last=True) == (best, best)
    assert curve.where(full, last=False) == (trained, best)
