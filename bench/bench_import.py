"""Benchmark `import_transactions` on a generated one-million-row transaction log.

    python bench/bench_import.py [--rows 1000000] [--customers 25000] [--timezone UTC]

The log looks like a real retail export: a few heavy buyers and many one- or two-time
customers, two years of purchases, baskets of several lines sharing a customer and timestamp,
about 1 % re-sent duplicate rows, zero amounts, and the rows shuffled.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsvc.config import load_programme
from recsvc.offline.importer import import_transactions

CATEGORIES = np.array(["apparel", "beauty", "books", "electronics", "grocery", "home", "toys", ""])


def generate(path: Path, rows: int, customers: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_dup = rows // 100
    n_lines = rows - n_dup
    # Orders first: customers weighted by a heavy-tailed activity, times over two years.
    n_orders = int(n_lines / 1.6)
    weight = rng.pareto(1.2, customers) + 0.3
    cust = rng.choice(customers, n_orders, p=weight / weight.sum())
    start = np.datetime64("2022-01-01T00:00:00", "s").astype(np.int64)
    order_ts = start + rng.integers(0, 2 * 365 * 86_400, n_orders)
    # Then basket lines: each order gets one line, the rest are spread over the orders.
    extra = rng.integers(0, n_orders, n_lines - n_orders)
    owner = np.concatenate([np.arange(n_orders), extra])
    cents = np.round(rng.lognormal(7.3, 1.0, n_lines)).astype(np.int64)
    cents[rng.random(n_lines) < 0.002] = 0
    qty = rng.geometric(0.6, n_lines)
    cat = CATEGORIES[rng.integers(0, len(CATEGORIES), n_lines)]
    dup = rng.integers(0, n_lines, n_dup)
    pick = np.concatenate([np.arange(n_lines), dup])[rng.permutation(rows)]
    line_owner = owner[pick]

    ts_text = pc.strftime(pa.array(order_ts[line_owner] * 1_000_000, pa.timestamp("us")),
                          format="%Y-%m-%d %H:%M:%S")
    amount = cents[pick]
    table = pa.table({
        "customer_id": pa.array((10_000 + cust[line_owner]).astype(str)),
        "timestamp": ts_text,
        "amount": pa.array([f"{a // 100}.{a % 100:02d}" for a in amount.tolist()]),
        "quantity": pa.array(qty[pick].astype(str)),
        "category": pa.array(cat[pick]),
    })
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(quoting_style="none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=25_000)
    parser.add_argument("--timezone", default="UTC")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "transactions.csv"
        t0 = time.perf_counter()
        generate(path, args.rows, args.customers)
        size = path.stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        s = import_transactions(path, Path(tmp) / "data", load_programme(), tz=args.timezone)
        print(f"imported: {s.orders:,} orders, {s.members:,} members, "
              f"{s.ledger_entries:,} ledger entries, {s.duplicates_dropped:,} duplicates dropped, "
              f"{s.basket_lines_merged:,} basket lines merged")
        print(f"import_transactions: {s.rows_read:,} rows in {s.seconds:.2f} s "
              f"= {s.rows_per_second:,.0f} rows/s")


if __name__ == "__main__":
    main()
