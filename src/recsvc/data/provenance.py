"""What the table set under DATA_DIR/tables was made from: a simulation of a given size, or an
import of real logs.

`recsvc features` simulates a population only when there are no tables, so a size asked for
later (`make features SIM_MEMBERS=100000` over a 20,000-member simulation) used to be ignored
without a word. The simulator therefore records its parameters in `tables/simulation.json`,
written into the staging folder with the tables so that both appear in the same rename; an
import replaces the whole folder, record included. `check_population` compares a size asked for
with what is on disk and refuses a difference with the way out, instead of simulating again:
features, batch scores, frequency caps, reports and models all follow the population on disk,
and imported logs must never be replaced by a simulation.

Tables simulated before the record existed have none: their members are counted and their days
read from `item_days` (one row per item per simulated day); their seed is unknown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from recsvc.data import schema
from recsvc.errors import ConfigError

RECORD = "simulation.json"


class PopulationMismatch(ConfigError):
    """A simulation size was asked for that differs from the simulated tables on disk."""


@dataclass(frozen=True)
class Size:
    """A simulated population's size and seed; None: not asked for, or not known."""

    members: int | None = None
    days: int | None = None
    seed: int | None = None

    def describe(self) -> str:
        """'20,000 members x 540 days (seed 7)', leaving out what is None."""
        parts = []
        if self.members is not None:
            parts.append(f"{self.members:,} members")
        if self.days is not None:
            parts.append(f"{self.days} days")
        text = " x ".join(parts)
        if self.seed is not None:
            text += f" (seed {self.seed})"
        return text or "any size"


@dataclass(frozen=True)
class Origin:
    """Where the tables came from: `simulated` (with the size found) or imported."""

    simulated: bool
    size: Size
    recorded: bool  # the simulator's record was there (else: counted from the tables)


def record_path(tables: Path) -> Path:
    return Path(tables) / RECORD


def write_record(tables: Path, params: dict[str, Any]) -> None:
    """Write the simulator's parameters beside the tables it writes (its staging folder)."""
    text = json.dumps(params, indent=2, sort_keys=True, default=str) + "\n"
    record_path(tables).write_text(text, encoding="utf-8")


def read_record(data_dir: Path) -> dict[str, Any] | None:
    """The simulator's record of the tables under `data_dir`; None without one."""
    try:
        return dict(json.loads(record_path(schema.tables_dir(data_dir)).read_text("utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{record_path(schema.tables_dir(data_dir))}: unreadable ({exc}); "
                          "remove it and the tables it describes") from None


def _counted(data_dir: Path) -> Origin:
    """The origin of tables without a record, from the tables themselves: simulated when every
    member's source says so (then the members counted and the days in `item_days`)."""
    root = schema.tables_dir(data_dir)
    members = ds.dataset(root / "members", schema=schema.MEMBERS, format="parquet")
    source = members.to_table(columns=["source"])["source"]
    simulated = len(source) > 0 and bool(pc.all(pc.equal(source, "simulated")).as_py())
    if not simulated:
        return Origin(False, Size(members=len(source)), recorded=False)
    days = ds.dataset(root / "item_days", schema=schema.ITEM_DAYS, format="parquet")
    n_days = int(pc.count_distinct(days.to_table(columns=["ts"])["ts"]).as_py())
    return Origin(True, Size(members=len(source), days=n_days or None), recorded=False)


def origin(data_dir: Path) -> Origin:
    """Where the tables under `data_dir` (which must exist) came from."""
    record = read_record(data_dir)
    if record is None:
        return _counted(data_dir)
    return Origin(True, Size(int(record["members"]), int(record["days"]), int(record["seed"])),
                  recorded=True)


def differences(found: Size, asked: Size) -> list[str]:
    """The fields asked for that differ from what was found (unknown ones never differ)."""
    return [name for name, want in asdict(asked).items()
            if want is not None and getattr(found, name) is not None
            and getattr(found, name) != want]


def check_population(data_dir: Path, asked: Size) -> str:
    """A line saying what the tables are; raises PopulationMismatch when they were simulated
    with another size or seed than `asked` (its None fields: not asked for)."""
    tables = schema.tables_dir(data_dir)
    found = origin(data_dir)
    if not found.simulated:
        note = ("" if asked == Size() else
                "; --members, --days and --seed size a simulation and do not apply to them")
        return f"tables: found under {tables} (imported, {found.size.members:,} members){note}"
    size = found.size  # counted from the tables (no record): its seed is None, unknown
    if differences(size, asked):
        want = replace(size, **{k: v for k, v in asdict(asked).items() if v is not None})
        raise PopulationMismatch(
            f"the tables under {tables} were simulated with {size.describe()}, not "
            f"{want.describe()} as asked; nothing was changed. A new population needs a new "
            "data directory (features, scores, frequency caps, reports and models all follow "
            f"the one on disk): remove {Path(data_dir)} (`make clean` does) and run again, or "
            "point --data-dir or RECSVC_DATA_DIR at an empty directory. Without --members, "
            "--days and --seed the tables are used as they are.")
    seed = "" if found.recorded else ", seed not recorded"
    return f"tables: found under {tables} (simulated, {size.describe()}{seed})"


__all__ = ["RECORD", "Origin", "PopulationMismatch", "Size", "check_population", "origin",
           "write_record"]
