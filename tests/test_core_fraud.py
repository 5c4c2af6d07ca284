"""The points-fraud rules: each fires at its threshold and not just below, within its window,
on events before the as-of instant only; many members at once equal one member at a time."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import Fraud
from recsvc.core import fraud

# explicit thresholds, so that tuning the programme's defaults cannot make these tests vacuous
RULES = Fraud(burst_redemptions=5, burst_window_minutes=60, drain_share=0.9,
              drain_min_points=3000, loop_window_hours=24, loop_count=3, lookback_days=30,
              anomaly_contamination=0.01)
AS_OF = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR


def us(when: dt.datetime) -> int:
    return int(when.timestamp()) * US


A = us(AS_OF)
T0 = A - 5 * DAY  # inside the 30-day lookback


def events(*rows: tuple[int, int, str, int]) -> fraud.LedgerEvents:
    """Ledger rows (member, instant µs, kind, signed points), in ledger order."""
    return fraud.LedgerEvents.of([r[0] for r in rows], [r[1] for r in rows],
                                 [r[2] for r in rows], [r[3] for r in rows])


def one(result: fraud.RuleResult, member: int = 1) -> dict[str, object]:
    i = int(np.flatnonzero(result.member == member)[0])
    return {name: getattr(result, name)[i].item()
            for name in fraud.RuleResult.__dataclass_fields__ if name != "member"}


def funded(member: int = 1, points: int = 10_000, at: int = T0 - DAY) -> tuple[int, int, str, int]:
    return (member, at, "opening", points)


def burns(member: int, instants: list[int], points: int = 100) -> list[tuple[int, int, str, int]]:
    return [(member, t, "burn", -points) for t in instants]


# --------------------------------------------------------------------------------------------
# Redemption bursts.
# --------------------------------------------------------------------------------------------
def test_burst_fires_at_five_redemptions_spanning_exactly_the_window() -> None:
    times = [T0 + k * 15 * MIN for k in range(5)]  # 0, 15, ..., 60 minutes
    got = one(fraud.evaluate_rules(events(funded(), *burns(1, times)), RULES, A))
    assert got["burst"] is True
    assert got["burst_count"] == 5
    assert got["burst_at_us"] == times[-1]


def test_burst_does_not_fire_one_redemption_short_or_one_microsecond_too_slow() -> None:
    four = [T0 + k * MIN for k in range(4)]
    got = one(fraud.evaluate_rules(events(funded(), *burns(1, four)), RULES, A))
    assert (got["burst"], got["burst_count"]) == (False, 4)
    slow = [T0 + k * 15 * MIN for k in range(4)] + [T0 + 60 * MIN + 1]
    got = one(fraud.evaluate_rules(events(funded(), *burns(1, slow)), RULES, A))
    assert (got["burst"], got["burst_count"]) == (False, 4)


def test_burst_counts_the_densest_window_of_a_longer_run() -> None:
    # 3 spread out, then 6 within 50 minutes, then 2 more a day later
    times = ([T0 - k * 3 * HOUR for k in (3, 2, 1)] + [T0 + k * 10 * MIN for k in range(6)]
             + [T0 + DAY, T0 + DAY + MIN])
    got = one(fraud.evaluate_rules(events(funded(at=T0 - 2 * DAY), *burns(1, times)), RULES, A))
    assert (got["burst"], got["burst_count"]) == (True, 6)
    assert got["burst_at_us"] == T0 + 50 * MIN


def test_burst_sees_neither_the_as_of_instant_nor_later_nor_before_the_lookback() -> None:
    at_as_of = [A - 4 * MIN + k * MIN for k in range(5)]  # the fifth exactly at the as-of instant
    ev = events(funded(), *burns(1, at_as_of))
    assert one(fraud.evaluate_rules(ev, RULES, A))["burst"] is False
    assert one(fraud.evaluate_rules(ev, RULES, A + 1))["burst"] is True
    start = A - 30 * DAY
    edge = [start - MIN + k * MIN for k in range(6)]  # the first one a minute before the lookback
    ev = events(funded(at=start - DAY), *burns(1, edge))
    assert one(fraud.evaluate_rules(ev, RULES, A))["burst_count"] == 5
    assert one(fraud.evaluate_rules(ev, RULES, A + MIN))["burst_count"] == 4


def test_burst_is_per_member() -> None:
    # two members redeeming in the same hour, interleaved: neither has five of its own
    times = [T0 + k * 5 * MIN for k in range(8)]
    rows = [(1 + k % 2, t, "burn", -100) for k, t in enumerate(times)]
    result = fraud.evaluate_rules(events(funded(1), funded(2), *rows), RULES, A)
    assert result.member.tolist() == [1, 2]
    assert result.burst_count.tolist() == [4, 4] and not result.burst.any()


# --------------------------------------------------------------------------------------------
# Balance drains.
# --------------------------------------------------------------------------------------------
def test_drain_fires_at_the_share_and_the_balance_threshold() -> None:
    got = one(fraud.evaluate_rules(events(funded(points=3000), (1, T0, "burn", -2700)), RULES, A))
    assert got["drain"] is True
    assert (got["drain_share"], got["drain_balance"], got["drain_at_us"]) == (0.9, 3000, T0)


def test_drain_does_not_fire_just_below_the_share_or_the_balance() -> None:
    below_share = events(funded(points=3000), (1, T0, "burn", -2699))
    got = one(fraud.evaluate_rules(below_share, RULES, A))
    assert got["drain"] is False and got["drain_share"] == pytest.approx(2699 / 3000)
    small_balance = events(funded(points=2999), (1, T0, "burn", -2999))
    got = one(fraud.evaluate_rules(small_balance, RULES, A))
    assert got["drain"] is False
    assert (got["drain_share"], got["drain_balance"]) == (0.0, 0)  # not a qualifying balance


def test_drain_balance_is_the_whole_history_before_the_redemption() -> None:
    # earned long before the lookback, partly lapsed, then burned inside it: 4,000 - 1,000
    rows = events((1, A - 200 * DAY, "earn", 4000), (1, A - 100 * DAY, "expire", -1000),
                  (1, T0, "burn", -2700))
    got = one(fraud.evaluate_rules(rows, RULES, A))
    assert (got["drain"], got["drain_balance"]) == (True, 3000)
    # ties at one instant: the ledger order says whether the earn came before the burn
    before = events((1, T0, "earn", 3000), (1, T0, "burn", -2700))
    assert one(fraud.evaluate_rules(before, RULES, A))["drain"] is True
    after = events(funded(points=300), (1, T0, "burn", -300), (1, T0, "earn", 3000))
    assert one(fraud.evaluate_rules(after, RULES, A))["drain"] is False


def test_drain_respects_the_lookback_and_the_as_of_instant() -> None:
    old = events(funded(points=5000, at=A - 40 * DAY), (1, A - 30 * DAY - 1, "burn", -5000))
    assert one(fraud.evaluate_rules(old, RULES, A))["drain"] is False
    assert one(fraud.evaluate_rules(old, RULES, A - 1))["drain"] is True
    future = events(funded(points=5000), (1, A, "burn", -5000))
    assert one(fraud.evaluate_rules(future, RULES, A))["drain"] is False
    assert one(fraud.evaluate_rules(future, RULES, A + 1))["drain"] is True


def test_drain_evidence_is_the_largest_share() -> None:
    rows = events(funded(points=10_000), (1, T0, "burn", -5000), (1, T0 + DAY, "burn", -4800),
                  (1, T0 + 2 * DAY, "earn", 100))
    got = one(fraud.evaluate_rules(rows, RULES, A))
    # 5,000 of 10,000, then 4,800 of 5,000 (0.96): the second is the drain
    assert got["drain"] is True
    assert (got["drain_share"], got["drain_balance"], got["drain_at_us"]) == (0.96, 5000,
                                                                              T0 + DAY)


# --------------------------------------------------------------------------------------------
# Earn-then-burn loops.
# --------------------------------------------------------------------------------------------
def loop_rows(n: int, gap: int, member: int = 1, start: int = T0 - 10 * DAY
              ) -> list[tuple[int, int, str, int]]:
    rows = []
    for k in range(n):
        t = start + k * 2 * DAY
        rows += [(member, t, "earn", 500), (member, t + gap, "burn", -500)]
    return rows


def test_loop_fires_at_three_loops_of_exactly_the_window() -> None:
    got = one(fraud.evaluate_rules(events(*loop_rows(3, 24 * HOUR)), RULES, A))
    assert (got["loop"], got["loops"]) == (True, 3)


def test_loop_does_not_fire_at_two_loops_or_one_microsecond_too_slow() -> None:
    got = one(fraud.evaluate_rules(events(*loop_rows(2, HOUR)), RULES, A))
    assert (got["loop"], got["loops"]) == (False, 2)
    got = one(fraud.evaluate_rules(events(*loop_rows(3, 24 * HOUR + 1)), RULES, A))
    assert (got["loop"], got["loops"]) == (False, 0)


def test_a_loop_is_an_earn_directly_followed_by_a_burn() -> None:
    # earn, earn, burn: one loop; earn, burn, burn: one loop; opening, burn: none;
    # earn, expire, burn: an expiry is neither, so still a loop
    rows = events(
        (1, T0, "earn", 100), (1, T0 + HOUR, "earn", 100), (1, T0 + 2 * HOUR, "burn", -200),
        (1, T0 + DAY, "earn", 300), (1, T0 + DAY + HOUR, "burn", -100),
        (1, T0 + DAY + 2 * HOUR, "burn", -100),
        (1, T0 + 2 * DAY, "opening", 500), (1, T0 + 2 * DAY + HOUR, "burn", -100),
        (1, T0 + 3 * DAY, "earn", 100), (1, T0 + 3 * DAY + HOUR, "expire", -50),
        (1, T0 + 3 * DAY + 2 * HOUR, "burn", -100),
    )
    got = one(fraud.evaluate_rules(rows, RULES, A))
    assert (got["loop"], got["loops"]) == (True, 3)


def test_loops_respect_the_lookback_and_the_as_of_instant() -> None:
    # the first loop's earn is a microsecond before the lookback
    rows = loop_rows(3, HOUR, start=A - 30 * DAY - 1)
    assert one(fraud.evaluate_rules(events(*rows), RULES, A))["loops"] == 2
    assert one(fraud.evaluate_rules(events(*rows), RULES, A - 1))["loops"] == 3
    # the third loop's burn at the as-of instant is not seen yet
    rows = loop_rows(3, HOUR, start=A - 4 * DAY - HOUR)
    assert one(fraud.evaluate_rules(events(*rows), RULES, A))["loops"] == 2
    assert one(fraud.evaluate_rules(events(*rows), RULES, A + 1))["loops"] == 3


# --------------------------------------------------------------------------------------------
# Many members at once.
# --------------------------------------------------------------------------------------------
KINDS = ("opening", "earn", "burn", "expire")


@st.composite
def ledgers(draw: st.DrawFn) -> list[tuple[int, int, str, int]]:
    rows = []
    for member in draw(st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True)):
        balance = 0
        t = A - 40 * DAY
        for _ in range(draw(st.integers(1, 25))):
            t += draw(st.integers(0, 3 * DAY))
            kind = draw(st.sampled_from(KINDS))
            if kind in ("opening", "earn"):
                pts = draw(st.integers(1, 6000))
            else:
                if balance == 0:
                    continue
                pts = -draw(st.integers(1, balance))
            balance += pts
            rows.append((member, t, kind, pts))
    # members interleave arbitrarily; each member's own rows keep their ledger order
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in _interleave(rows, order)]


def _interleave(rows: list[tuple[int, int, str, int]], order: list[int]) -> list[int]:
    """Positions of `rows` reordered so members interleave as `order` says, each member's own
    rows keeping their order."""
    queues: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        queues.setdefault(row[0], []).append(i)
    return [queues[rows[i][0]].pop(0) for i in order]


def _brute(rows: list[tuple[int, int, str, int]], as_of: int) -> dict[int, dict[str, object]]:
    """The rules, one member and one pair of events at a time."""
    out: dict[int, dict[str, object]] = {}
    start = as_of - RULES.lookback_days * DAY
    for member in sorted({r[0] for r in rows if r[1] < as_of}):
        mine = sorted([r for r in rows if r[0] == member and r[1] < as_of], key=lambda r: r[1])
        balance, best, share = 0, 0, 0.0
        flow = []
        burn_times = []
        for _, t, kind, pts in mine:
            if t >= start and kind == "burn":
                burn_times.append(t)
                if balance >= RULES.drain_min_points:
                    share = max(share, -pts / balance)
            if t >= start and kind in ("earn", "burn"):
                flow.append((t, kind))
            balance += pts
        for i, t in enumerate(burn_times):
            best = max(best, sum(t <= u <= t + 60 * MIN for u in burn_times[i:]))
        loops = sum(a[1] == "earn" and b[1] == "burn" and b[0] - a[0] <= 24 * HOUR
                    for a, b in itertools.pairwise(flow))
        out[member] = {"burst_count": best, "drain_share": share, "loops": loops}
    return out


@settings(max_examples=60, deadline=None)
@given(rows=ledgers(), back=st.integers(0, 45))
def test_many_members_at_once_equal_one_at_a_time(rows: list, back: int) -> None:
    as_of = A - back * DAY
    result = fraud.evaluate_rules(events(*rows), RULES, as_of)
    expected = _brute(rows, as_of)
    assert result.member.tolist() == sorted(expected)
    for i, member in enumerate(result.member.tolist()):
        want = expected[member]
        assert result.burst_count[i] == want["burst_count"]
        assert result.drain_share[i] == pytest.approx(want["drain_share"])
        assert result.loops[i] == want["loops"]
        alone = fraud.evaluate_rules(events(*[r for r in rows if r[0] == member]), RULES, as_of)
        assert one(alone, member) == one(result, member)


def test_no_entries_before_the_as_of_instant_means_no_members() -> None:
    result = fraud.evaluate_rules(events((1, A, "earn", 100)), RULES, A)
    assert len(result.member) == 0 and result.any.shape == (0,)


# --------------------------------------------------------------------------------------------
# Flags as the contract names them, and kinds.
# --------------------------------------------------------------------------------------------
def test_flags_are_joined_in_the_contract_order() -> None:
    got = fraud.join_flags(np.array([True, False, False, True]),
                           np.array([True, False, True, False]),
                           np.array([False, False, True, True]),
                           np.array([True, False, False, True]))
    assert got == ["redemption_burst,balance_drain,anomaly", "", "balance_drain,earn_burn_loop",
                   "redemption_burst,earn_burn_loop,anomaly"]


def test_unknown_ledger_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="refund"):
        fraud.kind_codes(["earn", "refund"])
    assert fraud.kind_codes(["burn", "opening"]).tolist() == [fraud.BURN, fraud.OPENING]


# --------------------------------------------------------------------------------------------
# Member-day aggregates.
# --------------------------------------------------------------------------------------------
def test_member_day_features_by_hand() -> None:
    day1 = A - 3 * DAY  # a UTC midnight: the as-of instant is one too
    rows = [
        (1, A - 60 * DAY, "opening", 1000),  # before the lookback: the start balance
        (1, day1 + HOUR, "earn", 1000),
        (1, day1 + 2 * HOUR, "burn", -500),  # 500 of 2,000
        (1, day1 + 4 * HOUR, "burn", -1200),  # 1,200 of 1,500
        (1, day1 + DAY + HOUR, "burn", -100),  # the next day, 100 of 300
        (1, A + HOUR, "burn", -200),  # after the as-of instant: not seen
        (2, day1, "earn", 50),
    ]
    X = fraud.member_day_features(events(*rows), A, 30, np.array([1, 2, 3]))
    f = dict(zip(fraud.DAY_FEATURES, X[0], strict=True))
    assert f == pytest.approx({
        "active_days": 2, "redemptions": 3, "max_redemptions_per_day": 2,
        "log_points_burnt": np.log1p(1800), "log_max_points_burnt_per_day": np.log1p(1700),
        "log_points_earned": np.log1p(1000), "max_burn_share": 0.8,
        "burnt_share_of_inflow": 1800 / 2000, "earn_and_burn_days": 1,
        "log_min_gap_hours": np.log1p(2.0),
    })
    quiet = dict(zip(fraud.DAY_FEATURES, X[2], strict=True))  # no entries at all
    assert quiet == {**dict.fromkeys(fraud.DAY_FEATURES, 0.0),
                     "log_min_gap_hours": np.log1p(24.0)}
    assert X[1][fraud.DAY_FEATURES.index("log_points_earned")] == pytest.approx(np.log1p(50))
    # what happens at or after the as-of instant changes nothing
    before = events(*[r for r in rows if r[1] < A])
    np.testing.assert_array_equal(fraud.member_day_features(before, A, 30, np.array([1, 2, 3])), X)
