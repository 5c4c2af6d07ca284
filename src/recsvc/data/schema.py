"""The canonical tables: Arrow schemas, and atomic reading/writing of a table directory.

Money is integer minor units, points are integers, timestamps are UTC (microseconds). Every
table lives in `<data_dir>/tables/<name>/part-*.parquet`; a writer fills a fresh directory and
swaps it in with renames, so a reader never sees a half-written table set.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsvc.errors import DataMissing

TS = pa.timestamp("us", tz="UTC")

MEMBERS = pa.schema(
    [
        ("member_id", pa.int64()),
        ("external_id", pa.string()),  # the source system's customer id (imports), else null
        ("signup_at", TS),
        ("age_band", pa.string()),  # "18-24" | "25-34" | "35-44" | "45+" | null when unknown
        ("source", pa.string()),  # "simulated" | "imported"
    ]
)

ITEMS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("points_class", pa.string()),  # "base" | "growth" | "luxury"
        ("market_price_minor", pa.int64()),
        ("points_price", pa.int64()),
        ("perceived_discount", pa.float64()),  # perceived discount rate, (0, 1]
        ("created_at", TS),
    ]
)

# Daily end-of-day state of each redeemable item: price multiplier and stock.
ITEM_DAYS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("ts", TS),  # end of the day (next midnight UTC) the state holds for
        ("discount_coefficient", pa.float64()),  # current price multiplier, 20 % off -> 0.8
        ("stock", pa.int64()),
        ("replenished", pa.int64()),  # units added that day
    ]
)

ORDERS = pa.schema(
    [
        ("order_id", pa.int64()),
        ("member_id", pa.int64()),
        ("ts", TS),
        ("amount_minor", pa.int64()),
        ("quantity", pa.int64()),
        ("category", pa.string()),
        ("points_earned", pa.int64()),
    ]
)

# The points ledger: every change to a balance. Sum of `points` per member = balance.
LEDGER = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("member_id", pa.int64()),
        ("ts", TS),
        ("kind", pa.string()),  # "earn" | "burn" | "expire" | "opening" (codes: ledger.KIND_CODES)
        ("points", pa.int64()),  # signed: earn/opening > 0, burn/expire < 0
        ("expires_at", TS),  # earn/opening: when these points lapse; null otherwise
        ("ref_id", pa.int64()),  # order_id (earn), redemption_id (burn), null otherwise
    ]
)

REDEMPTIONS = pa.schema(
    [
        ("redemption_id", pa.int64()),
        ("member_id", pa.int64()),
        ("item_id", pa.int64()),
        ("exposure_id", pa.int64()),
        ("ts", TS),
        ("points", pa.int64()),  # points burned (> 0)
        ("cash_minor", pa.int64()),  # cash top-up for points + cash redemptions (>= 0)
    ]
)

# An item shown to a member, with its outcome (the propensity label).
EXPOSURES = pa.schema(
    [
        ("exposure_id", pa.int64()),
        ("member_id", pa.int64()),
        ("item_id", pa.int64()),
        ("ts", TS),
        ("surface", pa.string()),  # "product_page" | "points_centre" | "cart"
        ("balance", pa.int64()),  # points balance when shown
        ("redeemed", pa.bool_()),  # redeemed within 7 days of being shown
        ("redemption_id", pa.int64()),  # null when not redeemed
    ]
)

TABLES: dict[str, pa.Schema] = {
    "members": MEMBERS,
    "items": ITEMS,
    "item_days": ITEM_DAYS,
    "orders": ORDERS,
    "ledger": LEDGER,
    "redemptions": REDEMPTIONS,
    "exposures": EXPOSURES,
}

# Oracle files: the simulator's true probabilities. No training code reads these.
ORACLE_EXPOSURES = pa.schema([("exposure_id", pa.int64()), ("p_redeem_7d", pa.float64())])
ORACLE_CHURN = pa.schema(
    [
        ("member_id", pa.int64()),
        ("ts", TS),  # cut-off instant
        ("p_no_order_90d", pa.float64()),
        ("alive", pa.bool_()),
    ]
)
# The points abusers the simulator planted, one row per abuser that acted (recsvc.core.fraud).
ORACLE_ABUSERS = pa.schema(
    [
        ("member_id", pa.int64()),
        ("kind", pa.string()),  # "redemption_burst" | "balance_drain" | "earn_burn_loop"
        ("from_ts", TS),  # the first abusive redemption
        ("to_ts", TS),  # the last one
    ]
)


def tables_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tables"


def oracle_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "oracle"


def has_tables(data_dir: Path) -> bool:
    return (tables_dir(data_dir) / "_SUCCESS").exists()


def read_table(data_dir: Path, name: str, columns: list[str] | None = None,
               where: pc.Expression | None = None) -> pa.Table:
    """Read one canonical table (all parts), with its declared schema; `where` keeps only
    the rows it holds for (e.g. one range of member ids)."""
    return dataset(data_dir, name).to_table(columns=columns, filter=where)


def dataset(data_dir: Path, name: str) -> ds.Dataset:
    """One canonical table as an Arrow dataset (all parts, its declared schema), to scan."""
    path = tables_dir(data_dir) / name
    if not has_tables(data_dir) or not path.exists():
        raise DataMissing(
            f"no {name!r} table under {tables_dir(data_dir)}: run `recsvc simulate` or "
            "`recsvc import-transactions` first (or `make features`)"
        )
    return ds.dataset(path, schema=TABLES[name], format="parquet")


class TableSetWriter:
    """Writes a complete set of tables part by part into a staging directory."""

    def __init__(self, staging: Path, schemas: dict[str, pa.Schema], prefix: str = "") -> None:
        self.staging = staging
        self.schemas = schemas
        self.prefix = prefix  # several writers into one staging directory: one prefix each
        self._parts: dict[str, int] = dict.fromkeys(schemas, 0)
        for name in schemas:
            (staging / name).mkdir(parents=True, exist_ok=True)

    def write(self, name: str, batch: pa.Table | dict[str, object]) -> None:
        schema = self.schemas[name]
        table = batch if isinstance(batch, pa.Table) else pa.table(batch, schema=schema)
        table = table.select(schema.names).cast(schema)
        if table.num_rows == 0 and self._parts[name] > 0:
            return
        part = self._parts[name]
        pq.write_table(table, self.staging / name / f"part-{self.prefix}{part:05d}.parquet",
                       compression="zstd")
        self._parts[name] = part + 1

    def written_elsewhere(self, name: str, parts: int) -> None:
        """Count `parts` files another writer (a worker) put into this staging directory."""
        self._parts[name] += parts

    @property
    def parts(self) -> dict[str, int]:
        return dict(self._parts)

    def finish(self) -> None:
        for name, schema in self.schemas.items():
            if self._parts[name] == 0:  # every table exists, even when empty
                self.write(name, schema.empty_table())


@contextmanager
def atomic_tables(
    target: Path, schemas: dict[str, pa.Schema] | None = None
) -> Iterator[TableSetWriter]:
    """Stage a full table set and swap it into `target` only if the block succeeds.

    On any exception the staging directory is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    writer = TableSetWriter(staging, schemas or TABLES)
    try:
        yield writer
        writer.finish()
        (staging / "_SUCCESS").touch()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
