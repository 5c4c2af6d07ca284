"""Tests of `recsvc import-transactions`: rules-based ledger, bad rows, atomicity and the CLI."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsvc import cli
from recsvc.config import Programme, parse_programme
from recsvc.core import ledger
from recsvc.data import schema
from recsvc.errors import ImportFailed
from recsvc.offline.importer import import_transactions

HEADER = "customer_id,timestamp,amount,quantity,category"

# Small thresholds so that a handful of orders crosses tiers; one double-points day.
RULES = {
    "earning": {
        "points_per_unit": 1,
        "double_points_days": ["06-18"],
        "double_points_multiplier": 2.0,
        "tier_multipliers": {"silver": 1.0, "gold": 1.5, "diamond": 2.0},
        "category_multipliers": {"beauty": 1.5},
    },
    "tiers": {"order": ["silver", "gold", "diamond"], "min_spend_units": [0, 100, 1000]},
    "expiry": {"ordinary_months": 12, "high_value_months": 24, "high_value_tiers": ["diamond"]},
}

# Line numbers are in the comments: the header is line 1.
GOOD = f"""{HEADER}
A,2023-03-05 12:00:00,10.00,2,beauty
A,2023-01-10 10:00:00,80.00,1,books
B,2023-01-05T08:00:00Z,12.34,,
A,2023-02-01 09:00,50.00,1,beauty
C,2022-01-15,20.00,1,
A,2023-03-05 12:00:00,30.00,1,toys
B,2023-01-05T08:00:00Z,12.34,,
A,6/18/2023 15:00,10.00,1,
A,2023-06-18 18:00:00,0,1,
C,2023-03-15 12:00:00,10.29,1,

E,2023-05-01 10:00:00,1000.00,1,
E,2023-05-02 10:00:00,10.00,1,
F,2023-07-01 00:00:00,0.29,3,
AA,2023-07-01 00:00:00,12.5,1,
D,2024-03-10 12:00:00,5.00,1,
"""


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(*args, tzinfo=dt.UTC))


@pytest.fixture
def programme() -> Programme:
    return parse_programme(RULES)


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: schema.read_table(data_dir, name).to_pandas() for name in schema.TABLES}


def check_ledger_invariant(t: dict[str, pd.DataFrame]) -> None:
    led = t["ledger"].sort_values(["member_id", "ts", "entry_id"])
    running = led.groupby("member_id")["points"].cumsum()
    assert (running >= 0).all(), "a balance went negative"
    assert set(led["kind"]) <= {"earn", "expire"}
    earn = led[led.kind == "earn"].set_index("ref_id")
    orders = t["orders"].set_index("order_id")
    assert (earn["points"] > 0).all()
    assert (orders.loc[earn.index, "points_earned"] == earn["points"]).all()
    assert (orders.loc[earn.index, "member_id"] == earn["member_id"]).all()
    assert (orders.loc[earn.index, "ts"] == earn["ts"]).all()
    assert (orders.drop(index=earn.index)["points_earned"] == 0).all()
    assert t["ledger"]["entry_id"].tolist() == list(range(len(led)))
    assert t["ledger"].sort_values("entry_id")["ts"].is_monotonic_increasing


def test_good_file_builds_members_orders_and_ledger(tmp_path: Path, programme: Programme) -> None:
    data = tmp_path / "data"
    s = import_transactions(write(tmp_path, GOOD), data, programme)
    t = tables(data)

    assert (s.rows_read, s.blank_lines, s.duplicates_dropped) == (15, 1, 1)
    assert (s.basket_lines_merged, s.orders, s.members) == (1, 13, 7)
    for name in ("items", "item_days", "redemptions", "exposures"):
        assert t[name].empty

    m = t["members"].set_index("external_id")
    # ids from 1 (0 is "not set" in recsvc.v1), by first purchase, ties (AA and F at the same
    # instant) by customer id; the log's own id stays in external_id
    assert m["member_id"].to_dict() == {"C": 1, "B": 2, "A": 3, "E": 4, "AA": 5, "F": 6, "D": 7}
    assert t["members"]["member_id"].tolist() == list(range(1, 8))
    assert m.loc["A", "signup_at"] == utc(2023, 1, 10, 10)
    assert (m["source"] == "imported").all() and m["age_band"].isna().all()

    o = t["orders"]
    assert o["order_id"].tolist() == list(range(13))
    assert o["ts"].is_monotonic_increasing
    a = o[o.member_id == 3].set_index("ts")
    # 80 at silver; 50 beauty at silver ×1.5; the basket (30 toys + 10 beauty) is a toys order
    # at gold (spend before 130 ≥ 100) ×1.5; 10 on the double-points day at gold ×1.5×2; then a
    # zero order later that day, kept as a separate order.
    assert a["amount_minor"].tolist() == [8000, 5000, 4000, 1000, 0]
    assert a["points_earned"].tolist() == [80, 75, 60, 30, 0]
    assert a.loc[utc(2023, 3, 5, 12), "quantity"] == 3
    assert a.loc[utc(2023, 3, 5, 12), "category"] == "toys"
    assert pd.isna(a.loc[utc(2023, 6, 18, 15), "category"])
    e = o[o.member_id == 4]
    # 1000 at silver, then diamond (spend before 1000) ×2
    assert e["points_earned"].tolist() == [1000, 20]
    small = o.set_index("member_id")
    assert small.loc[6, "amount_minor"] == 29 and small.loc[6, "points_earned"] == 0
    assert small.loc[6, "quantity"] == 3
    assert small.loc[5, "amount_minor"] == 1250
    assert small.loc[2, "amount_minor"] == 1234 and small.loc[2, "quantity"] == 1

    check_ledger_invariant(t)
    led = t["ledger"]
    earn = led[led.kind == "earn"].set_index("ref_id")
    e_orders = e.set_index("ts")["order_id"]
    # 12 months for a silver order, 24 for one earned at diamond: lapse at the month's end
    assert earn.loc[e_orders[utc(2023, 5, 1, 10)], "expires_at"] == utc(2024, 6, 1)
    assert earn.loc[e_orders[utc(2023, 5, 2, 10)], "expires_at"] == utc(2025, 6, 1)
    assert led[led.kind == "expire"]["expires_at"].isna().all()
    assert led[led.kind == "expire"]["ref_id"].isna().all()

    # The file ends on 2024-03-10: buckets lapsing by then expire, one row per member and month.
    expired = led[led.kind == "expire"].sort_values(["member_id", "ts"])
    assert list(zip(expired.member_id, expired.ts, expired.points, strict=True)) == [
        (1, utc(2023, 2, 1), -20),  # C's first purchase, a year before the second
        (2, utc(2024, 2, 1), -12),  # B's only purchase
        (3, utc(2024, 2, 1), -80),
        (3, utc(2024, 3, 1), -75),
    ]
    balance = led.groupby("member_id")["points"].sum().to_dict()
    assert balance == {1: 10, 2: 0, 3: 90, 4: 1020, 5: 12, 7: 5}  # F earned nothing
    assert s.points_earned == 80 + 75 + 60 + 30 + 12 + 20 + 10 + 1000 + 20 + 12 + 5
    assert s.points_expired == 187
    assert (s.earn_entries, s.expire_entries) == (11, 4)
    assert s.ledger_entries == len(led)


def test_naive_times_use_the_timezone(tmp_path: Path, programme: Programme) -> None:
    text = (f"{HEADER}\nA,2023-07-01 09:00:00,1.00,1,\nB,2023-07-01T09:00:00+02:00,1.00,1,\n"
            "C,7/1/2023 9:00,1.00,1,\nD,2023-07-01,1.00,1,\n")
    import_transactions(write(tmp_path, text), tmp_path / "d", programme, tz="Europe/Berlin")
    o = tables(tmp_path / "d")["orders"]
    members = tables(tmp_path / "d")["members"].set_index("member_id")["external_id"]
    got = dict(zip(o.member_id.map(members), o.ts, strict=True))
    assert got == {"A": utc(2023, 7, 1, 7), "B": utc(2023, 7, 1, 7), "C": utc(2023, 7, 1, 7),
                   "D": utc(2023, 6, 30, 22)}
    with pytest.raises(ImportFailed, match="Mars/Olympus"):
        import_transactions(write(tmp_path, text), tmp_path / "d", programme, tz="Mars/Olympus")


BAD = f"""{HEADER}
A,2023-01-10 10:00:00,80.00,1,books
A,2023-13-10 10:00:00,80.00,1,books
B,2023-01-05 08:00:00,-12.34,1,

C,2023-01-05 08:00:00,abc,1,
,2023-01-05 08:00:00,1.00,1,
D,2/30/2023 8:00,1.001,x,
E,2023-01-06,1.00,1
"""


def test_bad_rows_are_all_named_and_nothing_is_written(tmp_path: Path,
                                                       programme: Programme) -> None:
    data = tmp_path / "data"
    import_transactions(write(tmp_path, GOOD, "good.csv"), data, programme)
    oracle = schema.oracle_dir(data)
    oracle.mkdir()
    before = tables(data)
    bad = write(tmp_path, BAD, "bad.csv")
    listing = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    with pytest.raises(ImportFailed) as err:
        import_transactions(bad, data, programme)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("bad.csv: 6 bad rows, nothing imported:")
    assert [x.strip() for x in lines[1:]] == [
        "line 3, column 'timestamp': '2023-13-10 10:00:00' is not a date/time "
        "(ISO 8601 or M/D/YYYY H:MM)",
        "line 4, column 'amount': '-12.34' is negative",
        "line 6, column 'amount': 'abc' is not a number",
        "line 7, column 'customer_id': missing value",
        "line 8, column 'timestamp': '2/30/2023 8:00' is not a date/time "
        "(ISO 8601 or M/D/YYYY H:MM)",
        "line 8, column 'amount': '1.001' has more than 2 decimals",
        "line 8, column 'quantity': 'x' is not a whole number",
        "line 9: expected 5 fields, found 4: 'E,2023-01-06,1.00,1'",
    ]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == listing  # no staging directory left, oracle still there
    for name, frame in tables(data).items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_only_the_first_20_problems_are_listed(tmp_path: Path, programme: Programme) -> None:
    rows = "".join(f"A{i},2023-01-01,minus {i},1,\n" for i in range(25))
    with pytest.raises(ImportFailed) as err:
        import_transactions(write(tmp_path, f"{HEADER}\n{rows}"), tmp_path / "d", programme)
    text = str(err.value)
    assert "25 bad rows" in text
    assert "line 21, column 'amount': 'minus 19' is not a number" in text
    assert "line 22," not in text
    assert text.endswith("... and 5 more problems")
    assert not (tmp_path / "d").exists() or not schema.has_tables(tmp_path / "d")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        (HEADER, "header but no transactions"),
        (f"{HEADER}\n", "header but no transactions"),
        (f"{HEADER}\n\n,,,,\n", "header but no transactions"),
        ("customer_id,amount\nA,1.00\n", "missing required column(s) 'timestamp'"),
        ("customer;timestamp;amount\n", "'customer_id', 'timestamp', 'amount'"),
        ("customer_id,timestamp,amount,amount\n", "'amount' appear twice"),
    ],
)
def test_empty_or_headless_files_fail_clearly(tmp_path: Path, programme: Programme, text: str,
                                             message: str) -> None:
    data = tmp_path / "data"
    with pytest.raises(ImportFailed, match=re.escape(message)):
        import_transactions(write(tmp_path, text), data, programme)
    assert not schema.has_tables(data)


def test_missing_file_fails_clearly(tmp_path: Path, programme: Programme) -> None:
    with pytest.raises(ImportFailed, match="cannot read"):
        import_transactions(tmp_path / "nope.csv", tmp_path / "d", programme)


def test_duplicates_are_dropped_and_baskets_merged(tmp_path: Path, programme: Programme) -> None:
    text = f"""{HEADER}
A,2023-01-01 10:00:00,10.00,1,toys
A,2023-01-01 10:00:00,10.0,1,toys
A,2023-01-01 10:00:00,10.00,1,toys
A,2023-01-01 10:00:00,10.00,2,toys
A,2023-01-01 10:00:00,25.00,1,beauty
A,2023-01-01 10:00:01,10.00,1,toys
"""
    s = import_transactions(write(tmp_path, text), tmp_path / "d", programme)
    assert (s.rows_read, s.duplicates_dropped, s.basket_lines_merged, s.orders) == (6, 2, 2, 2)
    o = tables(tmp_path / "d")["orders"]
    assert o["amount_minor"].tolist() == [4500, 1000]
    assert o["quantity"].tolist() == [4, 1]
    assert o["category"].tolist() == ["beauty", "toys"]
    assert o["points_earned"].tolist() == [67, 10]  # 45 × 1.5 (beauty), floored


def random_log(n: int, customers: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = np.datetime64("2021-01-01T00:00:00", "s")
    ts = start + rng.integers(0, 3 * 365 * 86_400, n).astype("timedelta64[s]")
    cents = rng.integers(0, 20_000, n)
    return pd.DataFrame({
        "customer_id": [f"c{i}" for i in rng.integers(0, customers, n)],
        "timestamp": pd.Series(ts).dt.strftime("%Y-%m-%d %H:%M:%S"),
        "amount": [f"{c // 100}.{c % 100:02d}" for c in cents],
        "quantity": rng.integers(0, 4, n),
        "category": rng.choice(["beauty", "books", "toys", ""], n),
    })


def test_unsorted_rows_give_the_same_tables(tmp_path: Path, programme: Programme) -> None:
    log = random_log(3000, 200, seed=1)
    log = pd.concat([log, log.iloc[:100], log.iloc[100:200].assign(amount="1.00")])
    by_time = log.sort_values(["timestamp", "customer_id"], kind="stable")
    shuffled = log.sample(frac=1.0, random_state=3)
    by_time.to_csv(tmp_path / "sorted.csv", index=False)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    a = import_transactions(tmp_path / "sorted.csv", tmp_path / "a", programme)
    b = import_transactions(tmp_path / "shuffled.csv", tmp_path / "b", programme)
    assert a.duplicates_dropped == 100 and a.basket_lines_merged >= 100
    assert (a.orders, a.members, a.ledger_entries) == (b.orders, b.members, b.ledger_entries)
    ta, tb = tables(tmp_path / "a"), tables(tmp_path / "b")
    for name in schema.TABLES:
        pd.testing.assert_frame_equal(ta[name], tb[name])
    check_ledger_invariant(ta)
    assert (ta["ledger"]["kind"] == "expire").any()


def test_points_match_a_member_by_member_reference(tmp_path: Path,
                                                    programme: Programme) -> None:
    """The vectorised ledger equals the rules applied one order at a time, per member."""
    log = random_log(2000, 60, seed=7)
    log.to_csv(tmp_path / "log.csv", index=False)
    import_transactions(tmp_path / "log.csv", tmp_path / "d", programme)
    t = tables(tmp_path / "d")
    names = t["members"].set_index("external_id")["member_id"]
    # every customer is a member, numbered densely from 1, its own id kept in external_id
    assert sorted(names) == list(range(1, log.customer_id.nunique() + 1))
    assert set(names.index) == set(log.customer_id)

    lines = log.assign(cents=[int(a.replace(".", "")) for a in log.amount],
                       category=log.category.replace("", None)).drop_duplicates()
    expected_orders, expected_expiry = [], []
    last = pd.Timestamp(lines.timestamp.max(), tz="UTC")
    for cust, own in lines.groupby("customer_id"):
        spent, buckets = 0, {}
        for when, basket in own.groupby("timestamp"):  # groupby sorts by time
            ts = pd.Timestamp(when, tz="UTC")
            amount = int(basket.cents.sum())
            top = basket.sort_values(["cents", "quantity", "category"], na_position="first")
            category = top.category.iloc[-1]
            tier = programme.tiers.order[ledger.tier_for_spend(programme, spent)]
            pts = ledger.points_earned(programme, amount,
                                       programme.earning.tier_multipliers[tier],
                                       ledger.category_multiplier(programme, category),
                                       ledger.campaign_multiplier(programme, ts.date()))
            expected_orders.append((names[cust], ts, amount, pts))
            month = ledger.month_index(ts) + ledger.expiry_months_for_tier(programme, tier)
            if pts:
                buckets[month] = buckets.get(month, 0) + pts
            spent += amount
        for month, pts in buckets.items():
            at = pd.Timestamp(ledger.expiry_instant(month))
            if at <= last:
                expected_expiry.append((names[cust], at, -pts))

    o = t["orders"]
    got = list(zip(o.member_id, o.ts, o.amount_minor, o.points_earned, strict=True))
    assert sorted(got) == sorted(expected_orders)
    led = t["ledger"][t["ledger"].kind == "expire"]
    assert sorted(zip(led.member_id, led.ts, led.points, strict=True)) == sorted(expected_expiry)
    check_ledger_invariant(t)


def test_a_logs_own_ids_stay_in_external_id(tmp_path: Path, programme: Programme) -> None:
    """A log's customer ids, numeric ones too (a "0" among them), are never member ids:
    members are numbered from 1 by first purchase, and each keeps its customer id."""
    log = f"{HEADER}\n7,2023-01-02,5.00,1,\n0,2023-01-01,3.00,1,\n1,2023-01-03,4.00,1,\n"
    import_transactions(write(tmp_path, log), tmp_path / "d", programme)
    t = tables(tmp_path / "d")
    assert list(zip(t["members"].member_id, t["members"].external_id, strict=True)) == [
        (1, "0"), (2, "7"), (3, "1")]
    assert dict(zip(t["orders"].member_id, t["orders"].amount_minor, strict=True)) == {
        1: 300, 2: 500, 3: 400}


def test_import_replaces_tables_and_removes_the_oracle(tmp_path: Path,
                                                       programme: Programme) -> None:
    data = tmp_path / "data"
    import_transactions(write(tmp_path, GOOD), data, programme)
    (schema.oracle_dir(data) / "churn").mkdir(parents=True)
    s = import_transactions(write(tmp_path, f"{HEADER}\nZ,2023-01-01,1.00,1,\n"), data, programme)
    assert s.members == 1
    assert tables(data)["members"]["external_id"].tolist() == ["Z"]
    assert not schema.oracle_dir(data).exists()
    assert sorted(p.name for p in data.iterdir()) == ["tables"]


def test_minimal_columns_extra_columns_and_gzip(tmp_path: Path, programme: Programme) -> None:
    text = ("InvoiceNo,Customer_ID, Timestamp ,Amount,Country\r\n"
            '1,X,2023-01-01 10:00:00,2.50,"Kingdom, United"\r\n2,X,2023-01-02 10:00:00,3.00,\r\n')
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(("\ufeff" + text).encode()))
    s = import_transactions(path, tmp_path / "d", programme)
    o = tables(tmp_path / "d")["orders"]
    assert (s.orders, s.members) == (2, 1)
    assert o["amount_minor"].tolist() == [250, 300]
    assert o["quantity"].tolist() == [1, 1]
    assert o["category"].isna().all()


def test_text_that_is_not_utf8_fails_clearly(tmp_path: Path, programme: Programme) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\nA,2023-01-01,1.00,1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ImportFailed, match="not UTF-8"):
        import_transactions(path, tmp_path / "d", programme)


def test_cli_help_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RECSVC_PROGRAMME", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main(["import-transactions", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for phrase in ("customer_id", "duplicates", "zero amounts", "several orders a day",
                   "exit codes", "--timezone", "--data-dir"):
        assert phrase in out

    data = tmp_path / "data"
    good = write(tmp_path, GOOD, "good.csv")
    assert cli.main(["import-transactions", str(good), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "rows read" in out and "rows/s" in out
    assert schema.has_tables(data)

    bad = write(tmp_path, BAD, "bad.csv")
    assert cli.main(["import-transactions", str(bad), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "line 4, column 'amount': '-12.34' is negative" in err

    monkeypatch.setenv("RECSVC_DATA_DIR", str(tmp_path / "from_env"))
    assert cli.main(["import-transactions", str(good), "--timezone", "Asia/Shanghai"]) == 0
    assert schema.has_tables(tmp_path / "from_env")
    assert cli.main(["import-transactions", str(good), "--timezone", "Nowhere/Land"]) == 2


@pytest.mark.slow
def test_two_hundred_thousand_rows(tmp_path: Path, programme: Programme) -> None:
    log = random_log(200_000, 10_000, seed=5)
    log.to_csv(tmp_path / "big.csv", index=False)
    s = import_transactions(tmp_path / "big.csv", tmp_path / "d", programme)
    assert s.rows_read == 200_000
    assert s.members == 10_000
    t = tables(tmp_path / "d")
    assert len(t["orders"]) == s.orders
    check_ledger_invariant(t)
