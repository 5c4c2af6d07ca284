"""Import a real transaction log (CSV) into the canonical tables: members, orders and the ledger.

The file has a header line and one row per purchase line:

    customer_id,timestamp,amount[,quantity][,category]

Column names are matched case-insensitively; other columns are ignored. The whole file is
parsed and validated column-wise (pyarrow, pandas, numpy), never row by row in Python, so a
million rows take a couple of seconds.

Decisions:

- `amount` is in currency units with at most as many decimals as the currency has minor units
  (2 by default: `12.50`), converted to integer minor units exactly from the text, never via a
  float. Zero is allowed (the order is kept and earns nothing); negative is a bad row.
- `quantity` defaults to 1 and must be a non-negative whole number; `category` is optional
  (empty means none). Categories choose the programme's category multiplier.
- `timestamp` is ISO 8601 (`2011-12-09T12:50:00`, `2011-12-09 12:50:00`, a date alone,
  optionally with `Z` or an offset) or US style `M/D/YYYY H:MM[:SS]` / `M/D/YYYY`. Times without
  an offset are wall-clock times in `tz`; a wall time that does not exist (spring forward) moves
  forward, an ambiguous one (fall back) is read as the first of the two. Stored as UTC.
- Every bad row is collected first; `ImportFailed` lists the first 20 problems by line (the
  header is line 1) and counts the rest. Nothing is written unless the whole file is good.
- Blank lines (and rows whose every field is empty) are skipped.
- Rows equal in every parsed column (so `12.5` equals `12.50`) are re-sent records: all but one
  are dropped. Remaining rows with the same customer and timestamp are lines of one order:
  amounts and quantities are summed and the category is that of the largest line (ties: a line
  with a category, then the alphabetically last one). A date-only timestamp therefore makes all
  of a customer's lines of that day one order; orders at different times of a day stay separate.
- Members get dense ids from 1 in order of (first purchase, customer id as text) (recsvc.v1
  reads an id of 0 as "not set"); the log's own customer id is kept in `external_id`; their
  signup is the first purchase.
- The ledger follows the programme rules via `recsvc.core.ledger`: each order earns at the tier
  reached by the member's spend *before* it, times the category and double-points-day (UTC date)
  multipliers; its points expire at the end of the month `months` after the order's month, the
  months depending on that tier. Orders earning 0 points have no ledger row (as the simulator).
  A log has no burns, so each member's points of one expiry month lapse whole: one `expire` row
  at the expiry instant for every bucket that expires no later than the file's last timestamp.
- The new table set replaces the previous one atomically; the simulator's oracle directory is
  removed afterwards, since imported data has no ground truth.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

from recsvc.config import Programme
from recsvc.data import schema
from recsvc.errors import ImportFailed
from recsvc.offline.import_csv import check_timezone, parse_log
from recsvc.offline.import_ledger import build_tables
from recsvc.progress import Stopwatch, progress

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

HELP_DESCRIPTION = """\
Import a real transaction log (CSV) as members, orders and the points ledger, in the same
tables the simulator writes (items, item_days, redemptions and exposures stay empty). The new
tables replace the old ones atomically; on any error nothing is changed."""

HELP_EPILOG = """\
columns (header line required, names case-insensitive, other columns ignored):
  customer_id  the customer's id in the source system (text; required)
  timestamp    ISO 8601: 2011-12-09T12:50:00, 2011-12-09 12:50:00 or 2011-12-09, optionally
               with Z or an offset (+01:00); or M/D/YYYY H:MM[:SS] or M/D/YYYY (12/1/2010 8:26,
               month first). Times without an offset are in --timezone (default UTC); a time
               skipped by a DST change moves forward, a repeated one is read as the first.
  amount       money spent on the line in currency units, at most 2 decimals (12.50), >= 0;
               converted exactly to integer minor units
  quantity     optional whole number >= 0 (default 1)
  category     optional product category (chooses the programme's category multiplier)

what is done with:
  bad rows       an unparseable date, a negative or non-numeric amount, a missing id, a wrong
                 number of fields, ...: the import fails and nothing is written; the first 20
                 problems are listed by line (header = line 1) and column, the rest counted
  duplicates     rows equal in every column (after parsing: 12.5 = 12.50) are re-sent
                 records: one is kept, the others are dropped and counted
  baskets        rows with the same customer and timestamp are lines of one order: amounts
                 and quantities summed, category of the largest line (so date-only timestamps
                 make one order per customer and day)
  several orders a day
                 separate orders when their timestamps differ
  zero amounts   kept as orders; they earn no points
  unsorted rows, one-purchase customers, gaps of years: handled; row order does not matter
  blank lines    skipped

points: each order earns by the programme rules at the tier reached by the customer's earlier
spend, with the category and double-points-day multipliers; points lapse at the end of the
month 12 (high tiers: 24, or as configured) months after they were earned, and every lapse up
to the file's last timestamp is written as an expire entry. Members are numbered from 1 by
first purchase (the customer_id is kept as the member's external_id); the simulator's oracle
files are removed.

exit codes:
  0    imported
  2    bad file, bad rows, unknown time zone or invalid settings (nothing was changed)
  130  interrupted (nothing was changed)
"""


@dataclass(frozen=True)
class ImportSummary:
    """What an import read and wrote."""

    rows_read: int  # data rows, blank lines excluded
    blank_lines: int
    duplicates_dropped: int
    basket_lines_merged: int  # lines folded into another line's order
    orders: int
    members: int
    earn_entries: int
    expire_entries: int
    points_earned: int
    points_expired: int
    first_ts: dt.datetime
    last_ts: dt.datetime
    seconds: float

    @property
    def ledger_entries(self) -> int:
        return self.earn_entries + self.expire_entries

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------------------------
# The job.
# --------------------------------------------------------------------------------------------
def import_transactions(path: Path, data_dir: Path, programme: Programme, *,
                        tz: str = "UTC") -> ImportSummary:
    """Import the transaction log at `path` into the tables under `data_dir`.

    Raises ImportFailed (nothing written, previous tables intact) when the file or a row is bad.
    """
    watch = Stopwatch()
    path, data_dir = Path(path), Path(data_dir)
    check_timezone(tz)
    with progress("import", 4, unit="steps") as bar:
        bar.set_postfix_str("reading and checking rows")
        rows, n_rows, blank = parse_log(path, programme, tz)
        bar.update(1)
        bar.set_postfix_str("orders and ledger")
        built = build_tables(rows, programme)
        bar.update(1)
        bar.set_postfix_str("writing tables")
        with schema.atomic_tables(schema.tables_dir(data_dir)) as out:
            for name in ("members", "orders", "ledger"):
                out.write(name, getattr(built, name))
        bar.update(1)
        # Only now, with the new tables in place: the old oracle described data that is gone.
        try:
            shutil.rmtree(schema.oracle_dir(data_dir))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ImportFailed(f"tables imported, but the old oracle directory could not be "
                               f"removed: {exc}") from None
        bar.update(1)

    first_ts, last_ts = (pc.min_max(built.orders["ts"]).as_py()[k] for k in ("min", "max"))
    summary = ImportSummary(
        rows_read=n_rows, blank_lines=blank, duplicates_dropped=built.duplicates,
        basket_lines_merged=built.merged, orders=built.orders.num_rows,
        members=built.members.num_rows, earn_entries=built.earn_entries,
        expire_entries=built.expire_entries, points_earned=built.points_earned,
        points_expired=built.points_expired, first_ts=first_ts, last_ts=last_ts,
        seconds=watch.seconds,
    )
    log.debug("import summary: %s", summary)
    return summary


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


__all__ = ["ImportSummary", "import_transactions"]
