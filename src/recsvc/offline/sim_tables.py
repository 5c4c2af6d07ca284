"""What the simulator writes: columns buffered between monthly flushes, the instant of a moment
of a simulated day, and the tables as written.

Members and items are positions 0..n-1 inside the simulator; every table written numbers them
from 1 (id = position + 1, `to_arrow`), since recsvc.v1 reads an id of 0 as "not set".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.core.ledger import US
from recsvc.data import schema
from recsvc.data.columns import NULL_US
from recsvc.offline.population import AGE_BANDS, CATEGORIES, Catalogue, Members

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

ID_COLUMNS = frozenset({"member_id", "item_id"})  # written as position + 1 (`to_arrow`)
SECONDS_PER_DAY = 86_400


class Buffers:
    """Columns accumulated between flushes, per table."""

    def __init__(self) -> None:
        self.cols: dict[str, dict[str, list[Any]]] = {}

    def add(self, table: str, **columns: Any) -> None:
        tab = self.cols.setdefault(table, {})
        for name, values in columns.items():
            tab.setdefault(name, []).append(np.asarray(values))

    def rows(self, table: str) -> int:
        tab = self.cols.get(table)
        return 0 if not tab else sum(len(v) for v in next(iter(tab.values())))

    def take(self, table: str) -> dict[str, Any]:
        tab = self.cols.pop(table, {})
        return {k: np.concatenate(v) for k, v in tab.items()}


def day_us(day0: dt.date, day: int, seconds: F64 | I64) -> I64:
    """Microseconds since the epoch (UTC) of `seconds` into day offset `day` from `day0`."""
    base = (day0.toordinal() - dt.date(1970, 1, 1).toordinal() + day) * SECONDS_PER_DAY
    return ((base + np.asarray(seconds, dtype=np.float64)) * US).astype(np.int64)


def to_arrow(cols: dict[str, Any], sch: pa.Schema) -> pa.Table:
    """The columns as a table of `sch`; every table the simulator writes passes here, and here
    (only) a member's or an item's position becomes its id, position + 1."""
    arrays = []
    for f in sch:
        values = cols[f.name]
        if pa.types.is_timestamp(f.type) or pa.types.is_integer(f.type):
            ints = values.astype(np.int64)
            if f.name in ID_COLUMNS:
                ints = ints + 1
            arr = pa.array(ints, type=pa.int64(), mask=ints == NULL_US)
            arrays.append(arr.cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=sch)


def write_items(out: schema.TableSetWriter, c: Catalogue, start: dt.date) -> None:
    """The catalogue, created a year before the simulation starts."""
    names = [f"{CATEGORIES[k]}-{i:05d}" for i, k in enumerate(c.category, start=1)]
    created = day_us(start, -365, np.zeros(c.n))
    out.write(
        "items",
        to_arrow(
            dict(
                item_id=np.arange(c.n, dtype=np.int64),
                name=np.array(names, dtype=object),
                category=np.array(CATEGORIES, dtype=object)[c.category],
                points_class=c.points_class.astype(object),
                market_price_minor=c.price_minor,
                points_price=c.points_price,
                perceived_discount=c.perceived_discount,
                created_at=created,
            ),
            schema.ITEMS,
        ),
    )


def write_members(out: schema.TableSetWriter, m: Members, start: dt.date) -> None:
    """The members with their signup instants and age bands."""
    out.write(
        "members",
        to_arrow(
            dict(
                member_id=np.arange(m.n, dtype=np.int64),
                external_id=np.full(m.n, None, dtype=object),
                signup_at=day_us(start, 0, m.signup_day * SECONDS_PER_DAY),
                age_band=np.array(AGE_BANDS, dtype=object)[m.age],
                source=np.full(m.n, "simulated", dtype=object),
            ),
            schema.MEMBERS,
        ),
    )
