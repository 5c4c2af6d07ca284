"""Reading a transaction log: the CSV's header and rows (pyarrow), each column parsed and checked
at once (amounts exact from the text, quantities, timestamps in ISO or US style and a time
zone), and every bad cell collected by line before anything is written (`parse_log`). The
decisions are in `recsvc.offline.importer`."""

from __future__ import annotations

import csv
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
from recsvc.errors import ImportFailed

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


# --------------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------------
class Problems:
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


def _parse_amount(text: pa.Array, decimals: int, lines: I64, problems: Problems,
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


def _parse_quantity(text: pa.Array, lines: I64, problems: Problems, rank: int) -> I64:
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


def _parse_timestamps(text: pa.Array, tz: str, lines: I64, problems: Problems,
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


def check_timezone(tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ImportFailed(f"timezone: unknown time zone {tz!r} (use an IANA name such as "
                           "'UTC' or 'Europe/London')") from None


@dataclass
class Rows:
    customer: pa.Array  # text
    ts: I64  # UTC microseconds
    amount: I64  # minor units
    quantity: I64
    category: pa.Array  # text or null


def parse_log(path: Path, programme: Programme, tz: str) -> tuple[Rows, int, int]:
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
    problems = Problems()
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
    return Rows(customer, ts, amount, quantity, category), table.num_rows, blank_count
