"""The canonical tables' Arrow columns as numpy arrays: the one conversion every job uses.

Instants become int64 µs since the epoch (`recsvc.core.ledger.US`), a null one NULL_US (before
every instant); other integer columns become int64 with nulls as 0; ledger kinds become the codes
of `recsvc.core.ledger.KIND_CODES`. The core works on the arrays and never sees Arrow.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.core import ledger

I64 = npt.NDArray[np.int64]

NULL_US = np.iinfo(np.int64).min  # a null instant: before every real one


def as_us(col: pa.ChunkedArray | pa.Array) -> I64:
    """Timestamps (or int64) as int64 µs since the epoch, nulls as NULL_US."""
    return np.asarray(pc.fill_null(col.cast(pa.int64()), NULL_US).to_numpy(), dtype=np.int64)


def as_i64(col: pa.ChunkedArray | pa.Array) -> I64:
    """An integer (or boolean) column as int64, nulls as 0."""
    return np.asarray(pc.fill_null(col, 0).to_numpy(), dtype=np.int64)


def kind_codes(col: pa.ChunkedArray | pa.Array) -> I64:
    """Ledger kind names as int64 codes of `ledger.KIND_CODES`; any other value, null included,
    as `ledger.KIND_OTHER`."""
    code = np.full(len(col), ledger.KIND_OTHER, dtype=np.int64)
    for name, value in ledger.KIND_CODES.items():
        code[as_i64(pc.equal(col, name).cast(pa.int64())) == 1] = value
    return code
