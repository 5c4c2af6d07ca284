"""Model registry: round trip, gates, rollback, refusing broken artefacts, atomic pointer swaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from recsvc.adapters import registry as reg
from recsvc.adapters.file_store import FileStore
from recsvc.adapters.manifest import Gate
from recsvc.adapters.registry import Registry
from recsvc.errors import ArtefactInvalid, PromotionRefused

FEATURES = ["recency_days", "orders_90d", "balance", "value_coefficient"]
SERVICE = {"churn_v1": {"recency_days", "orders_90d", "balance", "tenure_days"}}
WINDOW = ("2024-01-01", "2024-06-30T00:00:00+00:00")


def known(service: str) -> Collection[str] | None:
    return SERVICE.get(service)


def train(seed: int = 0, features: list[str] = FEATURES) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, len(features)))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    params = {"objective": "binary", "num_threads": 1, "verbose": -1, "num_leaves": 4}
    return lgb.train(params, lgb.Dataset(X, y, feature_name=features), num_boost_round=5)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry", known_features=known)


def add(
    registry: Registry,
    booster: lgb.Booster,
    auc: float,
    baseline: float = 0.70,
    name: str = "churn",
    **kw: Any,
) -> str:
    kw.setdefault("derived_features", ["value_coefficient"])
    manifest = registry.register(
        name,
        booster,
        feature_service="churn_v1",
        training_window=WINDOW,
        data_fingerprint="sha256:abc",
        metrics={"roc_auc": auc, "log_loss": 0.4},
        baseline_metrics={"logistic_rfm": {"roc_auc": baseline}, "recency": {"roc_auc": 0.6}},
        **kw,
    )
    return manifest.version


def test_round_trip(registry: Registry, booster: lgb.Booster, tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# churn\n")
    version = add(registry, booster, 0.8, report_dir=report, extra={"rfm": {"cut": 120.0}})
    assert version == "v0001"
    assert add(registry, booster, 0.81) == "v0002"
    d = registry.root / "churn" / "v0001"
    assert {p.name for p in d.iterdir()} == {"model.txt", "manifest.json", "report"}
    assert (d / "report" / "report.md").read_text() == "# churn\n"

    raw = json.loads((d / "manifest.json").read_text())
    assert raw["model_name"] == "churn" and raw["version"] == "v0001"
    assert raw["features"] == FEATURES and raw["feature_service"] == "churn_v1"
    assert raw["training_window"]["start"].startswith("2024-01-01T00:00:00")
    assert raw["baseline_metrics"]["logistic_rfm"] == {"roc_auc": 0.7}
    assert {"python", "lightgbm", "numpy"} <= set(raw["library_versions"])
    assert raw["extra"] == {"rfm": {"cut": 120.0}} and raw["created_at"]

    loaded = registry.load("churn", "v0001")
    X = np.random.default_rng(1).normal(size=(20, len(FEATURES)))
    np.testing.assert_array_equal(loaded.booster.predict(X), booster.predict(X))
    assert loaded.version == "v0001" and loaded.manifest.metrics["roc_auc"] == 0.8
    with pytest.raises(reg.ModelNotFound, match="no version in production"):
        registry.load("churn")
    assert registry.names() == ["churn"] and registry.versions("churn") == ["v0001", "v0002"]


def test_a_report_from_a_private_temporary_folder_gets_the_modes_new_files_get(
    registry: Registry, booster: lgb.Booster
) -> None:
    """The training job writes its report in a tempfile folder (0700); the registry's copy must
    be readable as any folder made here is (0o777 less the umask), not private."""
    import stat
    import tempfile

    old = os.umask(0o027)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp)
            (report / "plots").mkdir(mode=0o700)
            (report / "report.md").write_text("# churn\n")
            (report / "report.md").chmod(0o600)
            (report / "plots" / "roc.png").write_bytes(b"png")
            version = add(registry, booster, 0.8, report_dir=report)
    finally:
        os.umask(old)
    copy = registry.report_dir("churn", version)
    modes = {p.relative_to(copy).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [copy, *copy.rglob("*")]}
    assert modes == {".": 0o750, "plots": 0o750, "report.md": 0o640, "plots/roc.png": 0o640}
    assert (copy / "report.md").read_text() == "# churn\n"
    assert (copy / "plots" / "roc.png").read_bytes() == b"png"


def test_model_file_path_is_accepted(
    registry: Registry, booster: lgb.Booster, tmp_path: Path
) -> None:
    path = tmp_path / "m.txt"
    booster.save_model(path)
    m = registry.register(
        "churn",
        path,
        feature_service="churn_v1",
        features=FEATURES,
        derived_features=["value_coefficient"],
        training_window=WINDOW,
        data_fingerprint="x",
        metrics={"roc_auc": 0.8},
    )
    assert (registry.root / "churn" / m.version / "model.txt").read_bytes() == path.read_bytes()


def test_gate_refuses_a_model_that_does_not_beat_its_best_baseline(
    registry: Registry, booster: lgb.Booster
) -> None:
    weak = add(registry, booster, auc=0.70, baseline=0.70)
    with pytest.raises(PromotionRefused, match="does not beat the best baseline 'logistic_rfm'"):
        registry.promote("churn", weak)
    assert registry.production("churn") is None
    strong = add(registry, booster, auc=0.75, baseline=0.70)
    assert registry.promote("churn", strong).changed
    assert registry.production("churn") == strong
    lines = (registry.root / "churn" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["action"] for e in events] == ["register", "refused", "register", "promote"]


def test_a_version_serving_a_baseline_must_beat_the_other_baselines(
    registry: Registry, booster: lgb.Booster
) -> None:
    # a classic model won the version's competition: it serves, and is judged against the rest
    served = add(registry, booster, auc=0.70, baseline=0.70,
                 extra={"served": "logistic_rfm"})
    assert registry.promote("churn", served).changed
    below = add(registry, booster, auc=0.59, baseline=0.59, extra={"served": "logistic_rfm"})
    with pytest.raises(PromotionRefused, match="does not beat the best baseline 'recency'"):
        registry.promote("churn", below)


def test_gate_refuses_a_regression_beyond_tolerance(
    registry: Registry, booster: lgb.Booster
) -> None:
    live = add(registry, booster, auc=0.800)
    registry.promote("churn", live)
    slightly_worse = add(registry, booster, auc=0.796)
    much_worse = add(registry, booster, auc=0.790)
    with pytest.raises(PromotionRefused, match=r"regresses 0\.0100 against production v0001"):
        registry.promote("churn", much_worse)
    assert registry.production("churn") == live
    assert registry.promote("churn", slightly_worse).previous == live
    # a stricter gate refuses what the default tolerance accepts
    again = add(registry, booster, auc=0.795)
    with pytest.raises(PromotionRefused, match=r"tolerance 0\.0"):
        registry.promote("churn", again, Gate(tolerance=0.0))


def test_gate_prefers_the_champion_rescored_on_the_same_data(
    registry: Registry, booster: lgb.Booster
) -> None:
    live = add(registry, booster, auc=0.85)
    registry.promote("churn", live)
    # on the newer (harder) validation window production scores only 0.78: 0.80 is progress
    challenger = add(
        registry, booster, auc=0.80, champion={"version": live, "metrics": {"roc_auc": 0.78}}
    )
    assert registry.promote("churn", challenger).changed
    # a champion entry for some other version does not count
    stale = add(
        registry, booster, auc=0.70, champion={"version": "v0099", "metrics": {"roc_auc": 0.5}}
    )
    with pytest.raises(PromotionRefused, match="as recorded in its manifest"):
        registry.promote("churn", stale)


def test_gate_needs_a_baseline_unless_told_otherwise(booster: lgb.Booster, tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v = registry.register(
        "churn",
        booster,
        feature_service="churn_v1",
        training_window=WINDOW,
        data_fingerprint="x",
        metrics={"roc_auc": 0.8},
    ).version
    with pytest.raises(PromotionRefused, match="no baseline"):
        registry.promote("churn", v)
    assert registry.promote("churn", v, Gate(require_baseline=False)).changed


def test_force_skips_the_gate_but_not_validation(registry: Registry, booster: lgb.Booster) -> None:
    weak = add(registry, booster, auc=0.5)
    assert registry.promote("churn", weak, force=True).forced
    pointer = registry.pointer("churn")
    assert pointer is not None and pointer.forced
    broken = add(registry, booster, auc=0.9)
    (registry.root / "churn" / broken / "model.txt").write_text("garbage")
    with pytest.raises(ArtefactInvalid, match="truncated or corrupt"):
        registry.promote("churn", broken, force=True)
    assert registry.production("churn") == weak


def test_promoting_the_production_version_again_changes_nothing(
    registry: Registry, booster: lgb.Booster
) -> None:
    v = add(registry, booster, auc=0.8)
    registry.promote("churn", v)
    before = (registry.root / "churn" / "PRODUCTION").read_bytes()
    assert not registry.promote("churn", v).changed
    assert (registry.root / "churn" / "PRODUCTION").read_bytes() == before


def test_rollback_restores_the_previous_pointer(registry: Registry, booster: lgb.Booster) -> None:
    with pytest.raises(PromotionRefused, match="no previous"):
        registry.rollback("churn")
    v1, v2, v3 = (add(registry, booster, auc=a) for a in (0.80, 0.81, 0.82))
    for v in (v1, v2, v3):
        registry.promote("churn", v)
    pointer = registry.pointer("churn")
    assert pointer is not None and pointer.previous == (v1, v2)
    assert registry.rollback("churn") == v2
    assert registry.production("churn") == v2
    assert registry.load("churn").version == v2
    assert registry.rollback("churn") == v1
    with pytest.raises(PromotionRefused, match="no previous"):
        registry.rollback("churn")
    assert registry.production("churn") == v1


def test_rollback_refuses_a_previous_version_that_broke(
    registry: Registry, booster: lgb.Booster
) -> None:
    v1, v2 = add(registry, booster, auc=0.80), add(registry, booster, auc=0.81)
    registry.promote("churn", v1)
    registry.promote("churn", v2)
    (registry.root / "churn" / v1 / "model.txt").unlink()
    with pytest.raises(ArtefactInvalid, match="missing"):
        registry.rollback("churn")
    assert registry.production("churn") == v2


def _model_path(registry: Registry, version: str) -> Path:
    return registry.root / "churn" / version / "model.txt"


@pytest.mark.parametrize(
    "damage",
    [
        # cut right before a tree: LightGBM 4.7 aborts the whole process on this file, so the
        # checksum must stop it before LightGBM reads it
        lambda text: text[: text.index("Tree=3")],
        # cut after the trees: LightGBM would load this silently
        lambda text: text[: text.index("end of trees")],
        lambda text: text.replace("Tree=1", "Tree=7"),
        lambda text: "",
    ],
    ids=["truncated-mid-model", "truncated-after-trees", "edited", "empty"],
)
def test_truncated_or_corrupt_model_files_are_refused(
    registry: Registry, booster: lgb.Booster, damage: Callable[[str], str]
) -> None:
    v = add(registry, booster, auc=0.8)
    registry.promote("churn", v)
    path = _model_path(registry, v)
    path.write_text(damage(path.read_text()))
    with pytest.raises(ArtefactInvalid, match="truncated or corrupt"):
        registry.load("churn")


def _edit_manifest(registry: Registry, version: str, **changes: Any) -> None:
    path = registry.root / "churn" / version / "manifest.json"
    body = json.loads(path.read_text())
    body.update(changes)
    path.write_text(json.dumps(body))


def test_manifest_naming_features_the_service_lacks_is_refused(
    registry: Registry, booster: lgb.Booster, tmp_path: Path
) -> None:
    features = ["recency_days", "orders_90d", "loyalty_score", "value_coefficient"]
    offline = Registry(registry.root)  # no feature-service check, as in an offline tool
    v = add(offline, train(features=features), auc=0.8)
    with pytest.raises(ArtefactInvalid, match=r"'churn_v1' lacks \['loyalty_score'\]"):
        registry.load("churn", v)
    with pytest.raises(ArtefactInvalid, match="lacks"):
        registry.promote("churn", v, force=True)
    # registration itself refuses it when the registry knows the feature services
    with pytest.raises(ArtefactInvalid, match="lacks"):
        add(registry, train(features=features), auc=0.8)
    # an unknown feature service is refused too; derived features need no service
    good = add(registry, booster, auc=0.8)
    _edit_manifest(registry, good, feature_service="churn_v9")
    with pytest.raises(ArtefactInvalid, match="'churn_v9' unknown"):
        registry.load("churn", good)
    _edit_manifest(registry, good, feature_service="churn_v1", derived_features=[])
    with pytest.raises(ArtefactInvalid, match=r"lacks \['value_coefficient'\]"):
        registry.load("churn", good)
    # without a known_features callable the service check is skipped (offline tools)
    assert Registry(registry.root).load("churn", good).version == good


def test_manifest_that_disagrees_with_the_model_is_refused(
    registry: Registry, booster: lgb.Booster
) -> None:
    v = add(registry, booster, auc=0.8)
    _edit_manifest(registry, v, features=[FEATURES[1], FEATURES[0], *FEATURES[2:]])
    with pytest.raises(ArtefactInvalid, match="different order"):
        registry.load("churn", v)
    _edit_manifest(registry, v, features=["recency_days"], derived_features=[])
    with pytest.raises(ArtefactInvalid, match="missing from the model"):
        registry.load("churn", v)
    _edit_manifest(registry, v, model_name="propensity")
    with pytest.raises(ArtefactInvalid, match="manifest names propensity"):
        registry.load("churn", v)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"roc_auc": "high"}}, "metrics.roc_auc"),
        ({"features": []}, "features"),
        ({"training_window": {"start": "2024-07-01", "end": "2024-01-01"}}, "start is after end"),
        ({"surprise": 1}, "surprise"),
        ({"model_sha256": "nope"}, "model_sha256"),
    ],
)
def test_invalid_manifests_are_refused(
    registry: Registry, booster: lgb.Booster, change: dict[str, Any], message: str
) -> None:
    v = add(registry, booster, auc=0.8)
    _edit_manifest(registry, v, **change)
    with pytest.raises(ArtefactInvalid, match=message):
        registry.load("churn", v)
    assert registry.list("churn")[0].error is not None


def test_unparseable_manifest_json_is_refused(registry: Registry, booster: lgb.Booster) -> None:
    v = add(registry, booster, auc=0.8)
    (registry.root / "churn" / v / "manifest.json").write_text('{"model_name": ')
    with pytest.raises(ArtefactInvalid, match="manifest invalid"):
        registry.load("churn", v)


def test_register_refuses_bad_input(registry: Registry, booster: lgb.Booster) -> None:
    with pytest.raises(ArtefactInvalid, match="features differ"):
        add(registry, booster, auc=0.8, features=list(reversed(FEATURES)))
    with pytest.raises(ArtefactInvalid, match="metrics"):
        add(registry, booster, auc=float("nan"))
    with pytest.raises(reg.ModelNotFound, match="not valid"):
        add(registry, booster, auc=0.8, name="../escape")
    with pytest.raises(ArtefactInvalid, match="derived_features"):
        add(registry, booster, auc=0.8, derived_features=["nope"])
    assert registry.versions("churn") == []
    assert not [p for p in (registry.root / "churn").iterdir() if p.name.startswith(".tmp")]


def test_list_shows_versions_metrics_and_production(
    registry: Registry, booster: lgb.Booster
) -> None:
    v1, v2 = add(registry, booster, auc=0.80), add(registry, booster, auc=0.82)
    registry.promote("churn", v2)
    rows = registry.list("churn")
    assert [(r.version, r.in_production, r.metrics["roc_auc"]) for r in rows] == [
        (v1, False, 0.80),
        (v2, True, 0.82),
    ]
    assert rows[1].baseline_metrics["logistic_rfm"]["roc_auc"] == 0.70
    assert registry.list("propensity") == []


def test_pointer_swap_uses_os_replace_and_a_failed_swap_changes_nothing(
    registry: Registry, booster: lgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = add(registry, booster, auc=0.80), add(registry, booster, auc=0.81)
    registry.promote("churn", v1)
    pointer = registry.root / "churn" / "PRODUCTION"
    before = pointer.read_bytes()
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(reg.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        registry.promote("churn", v2)
    assert calls and calls[0][1] == str(pointer)
    assert pointer.read_bytes() == before
    assert sorted(p.name for p in pointer.parent.iterdir() if p.name.startswith(".")) == [".lock"]

    monkeypatch.setattr(reg.os, "replace", real_replace)
    registry.promote("churn", v2)
    assert json.loads(pointer.read_text())["version"] == v2


def test_concurrent_registers_and_promotes_do_not_corrupt_state(
    registry: Registry, booster: lgb.Booster
) -> None:
    n = 8
    start = threading.Barrier(n)
    versions: list[str] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            start.wait()
            versions.append(add(registry, booster, auc=0.8 + i / 100))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(versions) == [f"v{i:04d}" for i in range(1, n + 1)]

    def promote(version: str) -> None:
        try:
            start.wait()
            registry.promote("churn", version, force=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pointer = registry.pointer("churn")
    assert pointer is not None
    # every promotion saw the one before it: no lost update, a complete chain
    assert sorted([*pointer.previous, pointer.version]) == sorted(versions)
    assert len(set(pointer.previous)) == n - 1


_INCREMENT = """
import sys
from recsvc.adapters.file_store import FileStore

store = FileStore(sys.argv[1])
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    with store.lock("churn/.lock"):
        count = int(store.read_bytes("count")) if store.exists("count") else 0
        store.write_atomic("count", str(count + 1).encode())
"""


def test_the_lock_excludes_other_processes(tmp_path: Path) -> None:
    # every registry writer runs under FileStore.lock; here it guards a bare read-modify-write
    # that loses updates without it. The children start while the test holds the lock, so they
    # all contend from the moment it lets go.
    n, times = 3, 50
    store = FileStore(tmp_path)
    with store.lock("churn/.lock"):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _INCREMENT, str(tmp_path), str(times)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(n)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        p.communicate(timeout=60)
    assert [p.returncode for p in procs] == [0] * n
    assert int((tmp_path / "count").read_text()) == n * times


_PROMOTE_AND_ROLL_BACK = """
import sys
from recsvc.errors import PromotionRefused
from recsvc.adapters.registry import Registry

registry = Registry(sys.argv[1])
versions = sys.argv[3].split(",")
print("ready", flush=True)
sys.stdin.readline()
for k in range(int(sys.argv[2])):
    registry.promote("churn", versions[k % len(versions)], force=True)
    try:
        registry.rollback("churn")
    except PromotionRefused:
        pass  # the other process rolled back to the start of the history meanwhile
"""


def test_two_processes_promoting_and_rolling_back_never_leave_the_pointer_dangling(
    registry: Registry, booster: lgb.Booster
) -> None:
    """Two processes promote and roll back at once while this one reads: the pointer names a
    version that loads every time it is read, and the history stays a chain of real ones."""
    versions = [add(registry, booster, auc=0.8 + i / 100) for i in range(3)]
    registry.promote("churn", versions[0], force=True)
    procs = [subprocess.Popen(
        [sys.executable, "-c", _PROMOTE_AND_ROLL_BACK, str(registry.root), "15",
         ",".join(versions[k:] + versions[:k])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in (1, 2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reads = 0
    while any(proc.poll() is None for proc in procs) or reads == 0:
        pointer = registry.pointer("churn")
        assert pointer is not None and pointer.version in versions
        assert set(pointer.previous) <= set(versions)
        registry.load("churn", pointer.version)  # whole, and what it names is whole
        reads += 1
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert reads > 1


def test_gate_check_is_a_pure_function(registry: Registry, booster: lgb.Booster) -> None:
    live = registry.manifest("churn", add(registry, booster, auc=0.80))
    cand = registry.manifest("churn", add(registry, booster, auc=0.65, baseline=0.5))
    assert Gate().check(live, None) == []
    reasons = Gate().check(cand, live)
    assert len(reasons) == 1 and "regresses" in reasons[0]
    lower_better = Gate(metric="log_loss", higher_is_better=False, require_baseline=False)
    assert lower_better.check(cand, live) == []  # equal log loss: no regression
    assert "no 'pr_auc' metric" in Gate(metric="pr_auc").check(cand, None)[0]
