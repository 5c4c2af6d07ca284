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

import csv
import datetime as dt
import logging
import shutil
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.data import schema
from recsvc.errors import ImportFailed
from recsvc.progress import Stopwatch, progress

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

REQUIRED = ("customer_id", "timestamp", "amount")
OPTIONAL = ("quantity", "category")
MAX_LISTED = 20
MIN_YEAR, END_YEAR = 1900, 2200  # plausible purchase years; also keeps pandas' ns range safe
MAX_INT_DIGITS = 12  # amounts below 10^12 units stay exact as float64 minor units

_AMOUNT_RE = r"^(?P<sign>[+-]?)(?P<int>\d*)(?:\.(?P<frac>\d*))?$"
_QUANTITY_RE = r"^(?P<sign>[+-]?)(?P<int>\d+)(?:\.0*)?$"
_US_RE = (r"^(?P<mo>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})"
          r"(?:[ T](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?)?$")
# An explicit zone after a time: pandas then yields the instant itself, not a wall time.
_AWARE_RE = r"^\d{4}-?\d{1,2}-?\d{1,2}[T ].*\d\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
# pandas' ISO 8601 also takes "2011" or "2011-12"; a purchase needs at least a whole date.
_ISO_DATE_RE = r"^\d{4}(?:-\d{1,2}-\d{1,2}|\d{4})(?:[T ]|$)"

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
# Reading.
# --------------------------------------------------------------------------------------------
class _Problems:
    """Bad cells, collected column-wise; only the first few by line are ever formatted."""

    def __init__(self) -> None:
        self._lines: list[I64] = []
        self._ranks: list[int] = []
        self._describe: list[Callable[[int], str]] = []

    def cells(self, lines: I64, bad: Mask, column: str, rank: int,
              values: pa.Array, what: Callable[[str], str]) -> None:
        """Record the rows in `bad`: `what(value)` says what is wrong with the cell."""
        idx = np.flatnonzero(bad)

        def describe(k: int) -> str:
            value = values[int(idx[k])].as_py()
            return f"line {lines[idx[k]]}, column {column!r}: {what(value)}"

        self._add(lines[idx], rank, describe)

    def line(self, line: int, message: str) -> None:
        """Record a problem with a whole line (before any column)."""
        self._add(np.array([line], dtype=np.int64), -1, lambda _k: message)

    def _add(self, lines: I64, rank: int, describe: Callable[[int], str]) -> None:
        if len(lines):
            self._lines.append(lines)
            self._ranks.append(rank)
            self._describe.append(describe)

    @property
    def count(self) -> int:
        return sum(len(x) for x in self._lines)

    def fail(self, path: Path) -> ImportFailed:
        lines = np.concatenate(self._lines)
        sizes = [len(x) for x in self._lines]
        check = np.repeat(np.arange(len(sizes)), sizes)
        within = np.arange(len(lines)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        first = np.lexsort((np.asarray(self._ranks)[check], lines))[:MAX_LISTED]
        bad_rows = len(np.unique(lines))
        text = [f"{path}: {bad_rows:,} bad row{'s' if bad_rows != 1 else ''}, nothing imported:"]
        text += [f"  {self._describe[check[i]](int(within[i]))}" for i in first]
        rest = len(lines) - len(first)
        if rest:
            text.append(f"  ... and {rest:,} more problem{'s' if rest != 1 else ''}")
        return ImportFailed("\n".join(text))


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _read_header(path: Path) -> list[str]:
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = b""
            while b"\n" not in head and b"\r" not in head:
                chunk = stream.read(65_536)
                if not chunk:
                    break
                head += chunk
    except (OSError, pa.ArrowException) as exc:
        raise ImportFailed(f"{path}: cannot read: {exc}") from None
    first = head.splitlines()[0] if head else b""
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFailed(f"{path}: the header line is not UTF-8 text") from None
    if not text.strip():
        raise ImportFailed(f"{path}: the file is empty (expected a header line "
                           f"'{','.join(REQUIRED)}[,quantity][,category]' and transactions)")
    names = [n.strip().lower() for n in next(csv.reader([text]))]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        found = ", ".join(repr(n) for n in names)
        raise ImportFailed(f"{path}: missing required column(s) "
                           f"{', '.join(repr(c) for c in missing)} in the header (found {found})")
    repeated = sorted({n for n in names if names.count(n) > 1} & {*REQUIRED, *OPTIONAL})
    if repeated:
        raise ImportFailed(f"{path}: column(s) {', '.join(map(repr, repeated))} appear twice "
                           "in the header")
    return names


def _read_rows(path: Path, names: list[str]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """All wanted columns as trimmed text, and the lines the parser could not split."""
    wanted = [c for c in (*REQUIRED, *OPTIONAL) if c in names]
    ragged: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        text = row.text or ""
        if text.strip():
            ragged.append((int(row.number), f"line {row.number}: expected {row.expected_columns} "
                                            f"fields, found {row.actual_columns}: {_show(text)}"))
        else:
            ragged.append((int(row.number), ""))  # a whitespace-only line is a blank line
        return "skip"

    # Auto-generated names keep the parser from choking on blank or repeated ignored columns.
    column_names = [n if n in wanted else f"_ignored{i}" for i, n in enumerate(names)]
    try:
        table = pa_csv.read_csv(
            str(path),
            # single-threaded, so that skipped rows carry their physical line numbers
            read_options=pa_csv.ReadOptions(use_threads=False, column_names=column_names,
                                            skip_rows=1, block_size=1 << 24),
            # empty lines stay rows (of empty fields), so row i keeps a known line number
            parse_options=pa_csv.ParseOptions(ignore_empty_lines=False,
                                              invalid_row_handler=on_invalid),
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()),
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        if "skip initial" in str(exc):  # only a header line, without a line break after it
            table = pa.table({c: pa.array([], pa.string()) for c in wanted})
        elif "UTF8" in str(exc):
            raise ImportFailed(f"{path}: not UTF-8 text; save the file as UTF-8 ({exc})") from None
        else:
            raise ImportFailed(f"{path}: not a readable CSV file: {exc}") from None
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read: {exc}") from None
    columns = {c: pc.utf8_trim_whitespace(table[c].combine_chunks()) for c in wanted}
    return pa.table(columns), ragged


def _row_lines(n_rows: int, skipped_lines: list[int]) -> I64:
    """File line of each table row: rows fill the lines after the header the parser kept."""
    rows = np.arange(n_rows, dtype=np.int64)
    skipped = np.sort(np.asarray(skipped_lines, dtype=np.int64))
    kept_before = skipped - np.arange(len(skipped)) - 2  # rows that precede each skipped line
    return rows + 2 + np.searchsorted(kept_before, rows, side="right")


# --------------------------------------------------------------------------------------------
# Parsing columns.
# --------------------------------------------------------------------------------------------
def _decimals(programme: Programme) -> int:
    minor = programme.currency.minor_per_unit
    decimals = len(str(minor)) - 1
    if minor != 10**decimals:
        raise ImportFailed(f"currency.minor_per_unit = {minor} is not a power of ten, so "
                           "decimal amounts cannot be converted exactly")
    return decimals


def _field(struct: pa.Array, name: str) -> pa.Array:
    return pc.fill_null(pc.struct_field(struct, name), "")


def _to_int(text: pa.Array, ok: Mask) -> I64:
    digits = pc.if_else(pa.array(ok, pa.bool_()), pc.if_else(pc.equal(text, ""), "0", text), "0")
    return np.array(pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _parse_amount(text: pa.Array, decimals: int, lines: I64, problems: _Problems,
                  rank: int) -> I64:
    parts = pc.extract_regex(text, _AMOUNT_RE)
    matched = np.asarray(parts.is_valid())
    sign, whole, frac = (_field(parts, k) for k in ("sign", "int", "frac"))
    whole_len = np.asarray(pc.utf8_length(whole))
    frac_len = np.asarray(pc.utf8_length(frac))
    empty = np.asarray(pc.equal(text, ""))
    numeric = matched & ((whole_len > 0) | (frac_len > 0))
    too_fine = numeric & (frac_len > decimals)
    too_big = numeric & (whole_len > MAX_INT_DIGITS)
    ok = numeric & ~too_fine & ~too_big
    padded = pc.utf8_slice_codeunits(pc.utf8_rpad(frac, decimals, "0"), 0, decimals)
    minor = _to_int(whole, ok) * 10**decimals
    if decimals:
        minor += _to_int(padded, ok)
    negative = ok & np.asarray(pc.equal(sign, "-")) & (minor > 0)
    minor[negative] = 0
    minor[~ok] = 0

    checks: list[tuple[Mask, Callable[[str], str]]] = [
        (empty, lambda v: "missing value"),
        (~numeric & ~empty, lambda v: f"{_show(v)} is not a number"),
        (too_fine, lambda v: f"{_show(v)} has more than {decimals} decimals"),
        (too_big & ~too_fine, lambda v: f"{_show(v)} is too large"),
        (negative, lambda v: f"{_show(v)} is negative"),
    ]
    for bad, what in checks:
        problems.cells(lines, bad, "amount", rank, text, what)
    return minor


def _parse_quantity(text: pa.Array, lines: I64, problems: _Problems, rank: int) -> I64:
    parts = pc.extract_regex(text, _QUANTITY_RE)
    empty = np.asarray(pc.equal(text, ""))
    whole = _field(parts, "int")
    matched = np.asarray(parts.is_valid()) & (np.asarray(pc.utf8_length(whole)) <= MAX_INT_DIGITS)
    qty = _to_int(whole, matched)
    negative = matched & np.asarray(pc.equal(_field(parts, "sign"), "-")) & (qty > 0)
    qty[~matched | negative] = 0
    qty[empty] = 1
    problems.cells(lines, ~matched & ~empty, "quantity", rank, text,
                   lambda v: f"{_show(v)} is not a whole number")
    problems.cells(lines, negative, "quantity", rank, text, lambda v: f"{_show(v)} is negative")
    return qty


def _us_datetimes(text: pa.Array) -> tuple[I64, Mask]:
    """Wall-clock microseconds of `M/D/YYYY[ H:MM[:SS]]` texts, and which ones are real dates."""
    parts = pc.extract_regex(text, _US_RE)
    ok = np.array(parts.is_valid())
    num = {k: _to_int(_field(parts, k), ok) for k in ("y", "mo", "d", "h", "mi", "s")}
    y, mo, d = num["y"], num["mo"], num["d"]
    ok &= (mo >= 1) & (mo <= 12) & (d >= 1) & (num["h"] < 24) & (num["mi"] < 60) & (num["s"] < 60)
    month = np.where(ok, (y - 1970) * 12 + mo - 1, 0).astype("datetime64[M]")
    day = month.astype("datetime64[D]") + np.where(ok, d - 1, 0)
    ok &= day.astype("datetime64[M]") == month  # rejects 2/30 instead of rolling it over
    secs = (num["h"] * 60 + num["mi"]) * 60 + num["s"]
    wall = day.astype("datetime64[us]").astype(np.int64) + secs * ledger.US
    return np.where(ok, wall, 0), ok


def _parse_timestamps(text: pa.Array, tz: str, lines: I64, problems: _Problems,
                      rank: int) -> I64:
    n = len(text)
    us_style = np.asarray(pc.match_substring_regex(text, r"^\d{1,2}/"))
    result = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    aware = np.zeros(n, dtype=bool)

    idx = np.flatnonzero(us_style)
    if len(idx):
        result[idx], ok[idx] = _us_datetimes(text.take(pa.array(idx)))
    idx = np.flatnonzero(~us_style)
    if len(idx):
        iso = text.take(pa.array(idx))
        # utc=True: zoned texts give their instant, naive ones their wall time read as UTC.
        parsed = pd.to_datetime(pd.Series(iso.to_numpy(zero_copy_only=False), dtype=object),
                                format="ISO8601", errors="coerce", utc=True)
        good = parsed.notna().to_numpy() & np.asarray(pc.match_substring_regex(iso, _ISO_DATE_RE))
        ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        result[idx] = np.where(good, ns // 1000, 0)
        ok[idx] = good
        aware[idx] = np.asarray(pc.match_substring_regex(iso, _AWARE_RE)) & good

    naive = ok & ~aware
    if tz != "UTC" and naive.any():
        wall = pd.DatetimeIndex(result[naive].astype("datetime64[us]"))
        local = wall.tz_localize(tz, ambiguous=np.ones(len(wall), dtype=bool),
                                 nonexistent="shift_forward").tz_convert("UTC")
        result[naive] = local.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)

    years = result.astype("datetime64[us]").astype("datetime64[Y]").astype(np.int64) + 1970
    out_of_range = ok & ((years < MIN_YEAR) | (years >= END_YEAR))
    empty = np.asarray(pc.equal(text, ""))
    checks: list[tuple[Mask, Callable[[str], str]]] = [
        (empty, lambda v: "missing value"),
        (~ok & ~empty, lambda v: f"{_show(v)} is not a date/time (ISO 8601 or M/D/YYYY H:MM)"),
        (out_of_range, lambda v: f"{_show(v)} is outside the years {MIN_YEAR}–{END_YEAR - 1}"),
    ]
    for bad, what in checks:
        problems.cells(lines, bad, "timestamp", rank, text, what)
    return result


def _check_timezone(tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ImportFailed(f"timezone: unknown time zone {tz!r} (use an IANA name such as "
                           "'UTC' or 'Europe/London')") from None


@dataclass
class _Rows:
    customer: pa.Array  # text
    ts: I64  # UTC microseconds
    amount: I64  # minor units
    quantity: I64
    category: pa.Array  # text or null


def _parse(path: Path, programme: Programme, tz: str) -> tuple[_Rows, int, int]:
    """Read and validate the whole file; returns its rows, the row count and blank lines."""
    names = _read_header(path)
    table, ragged = _read_rows(path, names)
    cols = table.column_names
    lines = _row_lines(table.num_rows, [line for line, _ in ragged])
    blank = np.ones(table.num_rows, dtype=bool)
    for c in cols:
        blank &= np.asarray(pc.equal(table[c], ""))
    blank_count = int(blank.sum()) + sum(1 for _, msg in ragged if not msg)
    if blank.any():
        keep = np.flatnonzero(~blank)
        table = table.take(pa.array(keep))
        lines = lines[keep]
    problems = _Problems()
    for line, msg in ragged:
        if msg:
            problems.line(line, msg)
    if table.num_rows == 0 and not problems.count:
        raise ImportFailed(f"{path}: the file has a header but no transactions")

    customer = table["customer_id"].combine_chunks()
    problems.cells(lines, np.asarray(pc.equal(customer, "")), "customer_id", 0,
                   customer, lambda v: "missing value")
    ts = _parse_timestamps(table["timestamp"].combine_chunks(), tz, lines, problems, 1)
    amount = _parse_amount(table["amount"].combine_chunks(), _decimals(programme), lines,
                           problems, 2)
    if "quantity" in cols:
        quantity = _parse_quantity(table["quantity"].combine_chunks(), lines, problems, 3)
    else:
        quantity = np.ones(table.num_rows, dtype=np.int64)
    if "category" in cols:
        raw = table["category"].combine_chunks()
        category = pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
    else:
        category = pa.nulls(table.num_rows, pa.string())
    if problems.count:
        raise problems.fail(path)
    return _Rows(customer, ts, amount, quantity, category), table.num_rows, blank_count


# --------------------------------------------------------------------------------------------
# Orders, members and the ledger.
# --------------------------------------------------------------------------------------------
def _sorted_codes(values: pa.Array) -> tuple[I64, list[str]]:
    """Codes that follow the text order of the distinct values (null = -1), and those values.

    Codes by first appearance would make tie-breaks depend on row order; sorted ones do not.
    """
    enc = pc.dictionary_encode(values)
    order = np.asarray(pc.sort_indices(enc.dictionary), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    codes = np.r_[rank, -1][idx]  # index -1 picks the appended null code
    return codes, enc.dictionary.take(pa.array(order)).to_pylist()


def _per_day(ts_us: I64, fn: Callable[[dt.date], Any]) -> npt.NDArray[Any]:
    """`fn` of each timestamp's UTC date, computed once per distinct day."""
    days, inverse = np.unique(ts_us // ledger.DAY_US, return_inverse=True)
    epoch = dt.date(1970, 1, 1)
    table = np.array([fn(epoch + dt.timedelta(days=int(d))) for d in days])
    return table[inverse]


@dataclass
class _Orders:
    """One entry per order, grouped by customer and in time order within a customer."""

    cust: I64  # sorted customer code
    ts: I64
    amount: I64
    quantity: I64
    cat: I64  # sorted category code, -1 for none
    duplicates: int
    merged: int


def _collapse(rows: _Rows, cust: I64, cat: I64) -> _Orders:
    """Drop exact duplicates and fold basket lines (same customer and time) into orders."""
    # Sorting on every column puts exact duplicates next to each other, and leaves each basket's
    # largest line (then one with a category, then the last category) last in its group.
    order = np.lexsort((cat, rows.quantity, rows.amount, rows.ts, cust))
    cust, ts, amount = cust[order], rows.ts[order], rows.amount[order]
    quantity, cat = rows.quantity[order], cat[order]
    same = ((cust[1:] == cust[:-1]) & (ts[1:] == ts[:-1]) & (amount[1:] == amount[:-1])
            & (quantity[1:] == quantity[:-1]) & (cat[1:] == cat[:-1]))
    keep = np.r_[True, ~same]
    cust, ts, amount, quantity, cat = cust[keep], ts[keep], amount[keep], quantity[keep], cat[keep]

    starts = np.flatnonzero(np.r_[True, (cust[1:] != cust[:-1]) | (ts[1:] != ts[:-1])])
    lasts = np.r_[starts[1:], len(cust)] - 1
    return _Orders(cust[starts], ts[starts], np.add.reduceat(amount, starts),
                   np.add.reduceat(quantity, starts), cat[lasts],
                   duplicates=int((~keep).sum()), merged=len(cust) - len(starts))


def _earn(o: _Orders, firsts: I64, categories: list[str], programme: Programme
          ) -> tuple[I64, I64, I64]:
    """Points earned by each order, with the expiry month and instant of those points."""
    # Tier before each order: the customer's spend on earlier orders only.
    spent = np.cumsum(o.amount)
    sizes = np.diff(np.r_[firsts, len(o.cust)])
    spend_before = spent - o.amount - np.repeat(spent[firsts] - o.amount[firsts], sizes)
    tier = ledger.tier_for_spend(programme, spend_before)
    tier_names = programme.tiers.order
    tier_mult = np.array([programme.earning.tier_multipliers[t] for t in tier_names])[tier]
    tier_months = np.array([ledger.expiry_months_for_tier(programme, t) for t in tier_names])
    cat_table = np.array([ledger.category_multiplier(programme, c) for c in [*categories, None]])
    cat_mult = cat_table[o.cat]  # code -1 picks the trailing None entry
    campaign = _per_day(o.ts, lambda d: ledger.campaign_multiplier(programme, d)).astype(float)
    points = ledger.points_earned(programme, o.amount, tier_mult, cat_mult, campaign)
    expiry_month = _per_day(o.ts, ledger.month_index).astype(np.int64) + tier_months[tier]
    months, inverse = np.unique(expiry_month, return_inverse=True)
    instants = np.array([ledger.epoch_us(ledger.expiry_instant(int(m))) for m in months],
                        dtype=np.int64)
    return points, expiry_month, instants[inverse]


def _ledger_table(member: I64, ts: I64, order_id: I64, points: I64, expiry_month: I64,
                  expires_at: I64) -> tuple[pa.Table, int, int, int]:
    """Earn entries for orders with points, expire entries for lapsed buckets; and counts."""
    earn = np.flatnonzero(points > 0)
    # A log has no burns, so a member's bucket of one expiry month lapses whole, once the file's
    # clock has passed its expiry instant.
    lapsed = earn[expires_at[earn] <= ts.max()]
    lapsed = lapsed[np.lexsort((expiry_month[lapsed], member[lapsed]))]
    lap_member, lap_month = member[lapsed], expiry_month[lapsed]
    heads = np.flatnonzero(np.r_[True, (lap_member[1:] != lap_member[:-1])
                                 | (lap_month[1:] != lap_month[:-1])][: len(lapsed)])
    exp_points = -np.add.reduceat(points[lapsed], heads) if len(lapsed) else np.zeros(0, np.int64)

    n_earn, n_exp = len(earn), len(heads)
    l_member = np.r_[member[earn], lap_member[heads]]
    l_ts = np.r_[ts[earn], expires_at[lapsed][heads]]
    l_kind = np.r_[np.ones(n_earn, dtype=np.int64), np.zeros(n_exp, dtype=np.int64)]
    l_points = np.r_[points[earn], exp_points]
    l_ref = np.r_[order_id[earn], np.full(n_exp, -1, dtype=np.int64)]
    l_expires = np.r_[expires_at[earn], np.zeros(n_exp, np.int64)]
    # Points lapse at the start of their instant, so an expiry sorts before an earn at that time.
    seq = np.lexsort((l_ref, l_member, l_kind, l_ts))
    is_earn = l_kind[seq] == 1
    table = pa.table({
        "entry_id": np.arange(len(seq), dtype=np.int64),
        "member_id": l_member[seq],
        "ts": pa.array(l_ts[seq], pa.int64()).cast(schema.TS),
        "kind": pa.array(np.where(is_earn, "earn", "expire").astype(object), pa.string()),
        "points": l_points[seq],
        "expires_at": pa.array(l_expires[seq], pa.int64(), mask=~is_earn).cast(schema.TS),
        "ref_id": pa.array(l_ref[seq], pa.int64(), mask=~is_earn),
    }, schema=schema.LEDGER)
    return table, n_earn, n_exp, int(-exp_points.sum())


@dataclass
class _Built:
    members: pa.Table
    orders: pa.Table
    ledger: pa.Table
    duplicates: int
    merged: int
    earn_entries: int
    expire_entries: int
    points_earned: int
    points_expired: int


def _build(rows: _Rows, programme: Programme) -> _Built:
    cust, customers = _sorted_codes(rows.customer)
    cat, categories = _sorted_codes(rows.category)
    o = _collapse(rows, cust, cat)

    # Orders are grouped by customer and in time order, so a group's head is its first order.
    firsts = np.flatnonzero(np.r_[True, o.cust[1:] != o.cust[:-1]])
    member_order = np.lexsort((o.cust[firsts], o.ts[firsts]))
    member_of_cust = np.empty(len(customers), dtype=np.int64)
    member_ids = np.arange(1, len(firsts) + 1, dtype=np.int64)  # ids start at 1
    member_of_cust[o.cust[firsts][member_order]] = member_ids
    member = member_of_cust[o.cust]
    members = pa.table({
        "member_id": member_ids,
        "external_id": pa.array(customers, pa.string()).take(
            pa.array(o.cust[firsts][member_order])),
        "signup_at": pa.array(o.ts[firsts][member_order], pa.int64()).cast(schema.TS),
        "age_band": pa.nulls(len(firsts), pa.string()),
        "source": pa.array(["imported"] * len(firsts), pa.string()),
    }, schema=schema.MEMBERS)

    points, expiry_month, expires_at = _earn(o, firsts, categories, programme)
    by_time = np.lexsort((member, o.ts))
    order_id = np.empty(len(o.ts), dtype=np.int64)
    order_id[by_time] = np.arange(len(o.ts))
    category_names = np.array([*categories, None], dtype=object)
    orders = pa.table({
        "order_id": order_id[by_time],
        "member_id": member[by_time],
        "ts": pa.array(o.ts[by_time], pa.int64()).cast(schema.TS),
        "amount_minor": o.amount[by_time],
        "quantity": o.quantity[by_time],
        "category": pa.array(category_names[o.cat[by_time]], pa.string()),
        "points_earned": points[by_time],
    }, schema=schema.ORDERS)

    ledger_table, n_earn, n_exp, expired = _ledger_table(member, o.ts, order_id, points,
                                                         expiry_month, expires_at)
    return _Built(members, orders, ledger_table, o.duplicates, o.merged, n_earn, n_exp,
                  int(points.sum()), expired)


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
    _check_timezone(tz)
    with progress("import", 4, unit="steps") as bar:
        bar.set_postfix_str("reading and checking rows")
        rows, n_rows, blank = _parse(path, programme, tz)
        bar.update(1)
        bar.set_postfix_str("orders and ledger")
        built = _build(rows, programme)
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
