"""What the tables were made from: the simulator records its size and seed, `recsvc features`
refuses another size instead of ignoring it, and imported logs are never sized as a simulation."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from recsvc import cli
from recsvc.config import load_programme
from recsvc.data import provenance, schema
from recsvc.data.provenance import PopulationMismatch, Size, check_population
from recsvc.jobs.features import MEMBERS_ENV, run_features
from recsvc.offline.importer import import_transactions
from recsvc.offline.simulate import run_simulation
from recsvc.settings import Settings

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"
MEMBERS, DAYS, SEED = 200, 40, 5


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("provenance") / "data"
    run_simulation(data, members=MEMBERS, days=DAYS, seed=SEED, programme=P, show_progress=False)
    return data


@pytest.fixture
def data(simulated: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated tables."""
    shutil.copytree(simulated, tmp_path / "data")
    return tmp_path / "data"


def _files(data_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(data_dir)): p.stat().st_mtime_ns
            for p in data_dir.rglob("*") if p.is_file()}


def test_the_simulator_records_its_size_beside_the_tables(simulated: Path) -> None:
    record = json.loads((schema.tables_dir(simulated) / provenance.RECORD).read_text())
    assert {k: record[k] for k in ("members", "days", "seed")} == \
        {"members": MEMBERS, "days": DAYS, "seed": SEED}
    assert record["start"] == "2025-01-01" and record["items"] == 300
    found = provenance.origin(simulated)
    assert found == provenance.Origin(True, Size(MEMBERS, DAYS, SEED), recorded=True)


def test_the_same_size_or_none_asked_for_is_accepted(simulated: Path) -> None:
    for asked in (Size(MEMBERS, DAYS, SEED), Size(), Size(members=MEMBERS), Size(seed=SEED)):
        line = check_population(simulated, asked)
        assert line == (f"tables: found under {schema.tables_dir(simulated)} (simulated, "
                        f"200 members x 40 days (seed 5))")


@pytest.mark.parametrize("asked", [Size(members=MEMBERS * 5), Size(days=DAYS + 1),
                                   Size(MEMBERS, DAYS, SEED + 1)])
def test_another_size_or_seed_is_refused_saying_how_to_start_again(
        data: Path, asked: Size) -> None:
    with pytest.raises(PopulationMismatch) as refused:
        check_population(data, asked)
    message = str(refused.value)
    assert f"were simulated with 200 members x 40 days (seed 5), not {asked.members or 200:,} " \
           f"members x {asked.days or 40} days (seed {asked.seed or 5}) as asked" in message
    assert "nothing was changed" in message and "`make clean`" in message
    assert "RECSVC_DATA_DIR" in message


def test_features_refuses_another_size_and_changes_nothing(
        data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What `make features SIM_MEMBERS=1000` runs over a 200-member simulation: exit 2, the
    reason on stderr, the data directory as it was (no snapshots computed either)."""
    before = _files(data)
    monkeypatch.setenv("RECSVC_FEATURE_REPO", str(REPO))
    monkeypatch.setenv("RECSVC_FEAST_PROJECT", f"recsvc_test_{uuid.uuid4().hex[:10]}")
    assert cli.main(["features", "--data-dir", str(data), "--members", "1000", "--days", "40",
                     "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsvc features: error: the tables under ")
    assert "200 members x 40 days (seed 5), not 1,000 members x 40 days (seed 5)" in err
    monkeypatch.setenv(MEMBERS_ENV, "1000")  # the environment's size is asked for as well
    assert cli.main(["features", "--data-dir", str(data)]) == 2
    assert "not 1,000 members x 40 days (seed 5)" in capsys.readouterr().err
    with pytest.raises(PopulationMismatch, match="not 200 members x 41 days"):  # the library
        run_features(Settings(data_dir=data, feature_repo=REPO), P, days=41, say=lambda _: None)
    assert _files(data) == before


def test_tables_simulated_before_the_record_are_counted(data: Path) -> None:
    (schema.tables_dir(data) / provenance.RECORD).unlink()
    assert provenance.origin(data) == provenance.Origin(True, Size(MEMBERS, DAYS), recorded=False)
    # the seed is not known, so it is not held against them; members and days are
    assert check_population(data, Size(MEMBERS, DAYS, SEED + 1)).endswith(
        "(simulated, 200 members x 40 days, seed not recorded)")
    with pytest.raises(PopulationMismatch, match="200 members x 40 days, not 201 members"):
        check_population(data, Size(MEMBERS + 1, DAYS, SEED))


def test_imported_tables_are_never_sized_as_a_simulation(data: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("customer_id,timestamp,amount\nA,2025-01-02,12.50\nB,2025-01-03,40.00\n"
                   "A,2025-02-01,8.00\n", encoding="utf-8")
    import_transactions(log, data, P)
    assert not (schema.tables_dir(data) / provenance.RECORD).exists()  # went with the tables
    assert provenance.origin(data) == provenance.Origin(False, Size(members=2), recorded=False)
    line = check_population(data, Size(20_000, 540, 7))
    assert line == (f"tables: found under {schema.tables_dir(data)} (imported, 2 members); "
                    "--members, --days and --seed size a simulation and do not apply to them")
    assert check_population(data, Size()).endswith("(imported, 2 members)")
