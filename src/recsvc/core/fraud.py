"""Points-fraud rules over ledger events: redemption bursts, balance drains, earn-then-burn loops.

Pure numpy over plain arrays, for one member or many at once (the batch job passes the whole
ledger: every member is handled by the same vectorised passes, no per-member Python loop).

Inputs are ledger entries (`LedgerEvents`): member id, instant (µs since the epoch, UTC), kind
code and signed points, in ledger order (ascending entry id), which breaks ties between entries
of the same member at the same instant. Only entries strictly before the as-of instant are
read, so a flag computed as of an instant never depends on what happened at or after it; the
rules look at the `lookback_days` before the as-of instant, the balance before a redemption is
the sum of all of the member's earlier entries (from the first one, not only the lookback).

The three rules (thresholds from the programme's `[fraud]` section):

- **redemption burst**: at least `burst_redemptions` redemptions (burn entries) whose instants
  all lie within `burst_window_minutes` of each other (last - first <= the window, inclusive);
- **balance drain**: one redemption burning at least `drain_share` of the balance just before
  it, that balance being at least `drain_min_points`. The issue's wording adds "soon after a
  change of device or address": the canonical tables hold no device or address history, so
  that condition cannot be checked and the rule fires on the drain alone;
- **earn-then-burn loop**: an earn entry followed by a burn of the same member within
  `loop_window_hours`, with no other earn or burn between them (so each earn and each burn
  closes at most one loop); `loop_count` loops in the lookback (both of their entries in it)
  flag the member. Opening balances are not earnings and expiries are not burns.

`member_day_features` gives the aggregates of member-days the batch job's isolation forest
learns from (see its docstring for every column and unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.config import Fraud
from recsvc.core.ledger import DAY_US, KIND_CODES, US

# The ledger's kind codes (recsvc.core.ledger.KIND_CODES) under the names this module exports.
from recsvc.core.ledger import KIND_BURN as BURN
from recsvc.core.ledger import KIND_EARN as EARN
from recsvc.core.ledger import KIND_EXPIRE as EXPIRE
from recsvc.core.ledger import KIND_OPENING as OPENING

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

US_PER_MINUTE = 60 * US
US_PER_HOUR = 60 * US_PER_MINUTE
NO_TIME = np.iinfo(np.int64).min  # stands for "no instant" in evidence columns

# The flag names of the contract, in the order they are joined (recsvc.v1 FraudFlag).
FLAG_NAMES: tuple[str, ...] = ("redemption_burst", "balance_drain", "earn_burn_loop", "anomaly")


def kind_codes(kinds: Sequence[str] | npt.NDArray[np.object_]) -> I8:
    """Kind codes of ledger kind names; raises ValueError naming an unknown kind."""
    values = np.asarray(kinds, dtype=object)
    names, inverse = np.unique(values, return_inverse=True)
    unknown = [str(n) for n in names if n not in KIND_CODES]
    if unknown:
        raise ValueError(f"unknown ledger kind(s) {unknown}; expected {sorted(KIND_CODES)}")
    table = np.array([KIND_CODES[n] for n in names], dtype=np.int8)
    return table[inverse.reshape(-1)]


@dataclass(frozen=True)
class LedgerEvents:
    """Ledger entries of any number of members, in ledger order (ascending entry id).

    `ts_us`: µs since the epoch (UTC); `kind`: codes of KIND_CODES; `points`: signed change
    of the balance (earn/opening > 0, burn/expire < 0).
    """

    member: I64
    ts_us: I64
    kind: I8
    points: I64

    def __post_init__(self) -> None:
        n = len(self.member)
        if not len(self.ts_us) == len(self.kind) == len(self.points) == n:
            raise ValueError("member, ts_us, kind and points must have the same length")

    def take(self, rows: npt.NDArray[np.intp] | B) -> LedgerEvents:
        """The entries at `rows` (indices or a mask), in that order."""
        return LedgerEvents(self.member[rows], self.ts_us[rows], self.kind[rows],
                            self.points[rows])

    @classmethod
    def of(cls, member: Sequence[int] | I64, ts_us: Sequence[int] | I64,
           kind: Sequence[str] | npt.NDArray[np.object_], points: Sequence[int] | I64,
           ) -> LedgerEvents:
        """From plain sequences, kinds by name."""
        return cls(np.asarray(member, dtype=np.int64), np.asarray(ts_us, dtype=np.int64),
                   kind_codes(kind), np.asarray(points, dtype=np.int64))


@dataclass(frozen=True)
class RuleResult:
    """Per member (ascending `member`, every member with an entry before the as-of instant):
    the flags of the three rules and their evidence.

    - `burst_count`: most redemptions within one burst window in the lookback (0: none);
      `burst_at_us`: instant of the last redemption of the first such window (NO_TIME: none);
    - `drain_share`: largest share of a balance of at least `drain_min_points` that one
      redemption in the lookback burnt (0.0: none); `drain_balance`: that balance before the
      redemption, points (0: none); `drain_at_us`: its instant (NO_TIME: none);
    - `loops`: earn-then-burn loops in the lookback.
    """

    member: I64
    burst: B
    drain: B
    loop: B
    burst_count: I64
    burst_at_us: I64
    drain_share: F64
    drain_balance: I64
    drain_at_us: I64
    loops: I64

    @property
    def any(self) -> B:
        return self.burst | self.drain | self.loop


@dataclass(frozen=True)
class _Sorted:
    """The entries before the as-of instant, sorted by (member, instant, ledger order)."""

    member: I64
    ts_us: I64
    kind: I8
    points: I64
    balance_before: I64  # points held just before each entry
    group: I64  # index of the member in `members`
    members: I64  # ascending unique member ids


def in_order(events: LedgerEvents, as_of_us: int) -> LedgerEvents:
    """The entries before `as_of_us`, sorted by (member, instant, ledger order): the order the
    rules read them in. `evaluate_rules` and `member_day_features` do not sort such events
    again, so a job can sort the whole ledger once and hand them slices of it."""
    if _is_in_order(events, as_of_us):
        return events
    keep = np.flatnonzero(events.ts_us < as_of_us)
    # by member, then instant; ledger order (the position) breaks ties
    return events.take(keep[np.lexsort((keep, events.ts_us[keep], events.member[keep]))])


def _is_in_order(events: LedgerEvents, as_of_us: int) -> bool:
    """All entries before `as_of_us` and sorted by (member, instant): sorting them again, ties
    broken by their positions, would leave them as they are."""
    m, t = events.member, events.ts_us
    ascending = (m[1:] > m[:-1]) | ((m[1:] == m[:-1]) & (t[1:] >= t[:-1]))
    return bool((t < as_of_us).all() and ascending.all())


def _sorted_before(events: LedgerEvents, as_of_us: int) -> _Sorted:
    e = in_order(events, as_of_us)
    member, points = e.member, e.points
    first = np.ones(len(member), dtype=bool)  # the member's first entry
    first[1:] = member[1:] != member[:-1]
    group = np.cumsum(first, dtype=np.int64) - 1
    cum = np.cumsum(points)
    start = np.flatnonzero(first)
    balance_before = cum - points - (cum[start] - points[start])[group]
    return _Sorted(member, e.ts_us, e.kind, points, balance_before, group, member[first])


def _window_mask(s: _Sorted, as_of_us: int, lookback_days: int) -> B:
    return s.ts_us >= as_of_us - lookback_days * DAY_US


def _burst(group: I64, ts: I64, n_members: int, window_us: int) -> tuple[I64, I64]:
    """Most events of a group within `window_us` (inclusive), and the instant of the last
    event of the first window holding that many; `group`/`ts` sorted by (group, ts)."""
    best = np.bincount(group, minlength=n_members).clip(max=1).astype(np.int64)
    at = np.full(n_members, NO_TIME, dtype=np.int64)
    first_event = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, bool)
    at[group[first_event]] = ts[first_event]
    k = 1
    while k < len(group):
        # events i and i+k of one group within the window: k+1 events within the window
        ok = (group[k:] == group[:-k]) & (ts[k:] - ts[:-k] <= window_us)
        if not ok.any():
            break
        hit = np.flatnonzero(ok) + k
        g = group[hit]
        first_hit = np.r_[True, g[1:] != g[:-1]]  # the earliest window of each group
        best[g[first_hit]] = k + 1
        at[g[first_hit]] = ts[hit[first_hit]]
        k += 1
    return best, at


def evaluate_rules(events: LedgerEvents, rules: Fraud, as_of_us: int) -> RuleResult:
    """The three rules for every member with an entry before `as_of_us` (µs since the epoch)."""
    s = _sorted_before(events, as_of_us)
    n = len(s.members)
    recent = _window_mask(s, as_of_us, rules.lookback_days)

    # redemption bursts
    burn = np.flatnonzero(recent & (s.kind == BURN))
    window_us = round(rules.burst_window_minutes * US_PER_MINUTE)
    burst_count, burst_at = _burst(s.group[burn], s.ts_us[burn], n, window_us)

    # balance drains: the largest qualifying share per member, and that redemption
    big = burn[s.balance_before[burn] >= max(rules.drain_min_points, 1)]
    share = -s.points[big] / s.balance_before[big]
    drain_share = np.zeros(n)
    drain_balance = np.zeros(n, dtype=np.int64)
    drain_at = np.full(n, NO_TIME, dtype=np.int64)
    if len(big):
        order = np.lexsort((-share, s.group[big]))  # per member, largest share first
        g = s.group[big][order]
        top = order[np.r_[True, g[1:] != g[:-1]]]
        drain_share[s.group[big][top]] = share[top]
        drain_balance[s.group[big][top]] = s.balance_before[big][top]
        drain_at[s.group[big][top]] = s.ts_us[big][top]

    # earn-then-burn loops: adjacent (earn, burn) pairs of a member within the loop window
    flow = np.flatnonzero(recent & ((s.kind == EARN) | (s.kind == BURN)))
    g, k, t = s.group[flow], s.kind[flow], s.ts_us[flow]
    loop_us = round(rules.loop_window_hours * US_PER_HOUR)
    pair = ((g[1:] == g[:-1]) & (k[:-1] == EARN) & (k[1:] == BURN)
            & (t[1:] - t[:-1] <= loop_us))
    loops = np.bincount(g[1:][pair], minlength=n).astype(np.int64)

    return RuleResult(
        member=s.members,
        burst=burst_count >= rules.burst_redemptions,
        # a relative tolerance: 2,700 of 3,000 is a 0.9 share however the division rounds
        drain=drain_share >= rules.drain_share * (1 - 1e-12),
        loop=loops >= rules.loop_count,
        burst_count=burst_count,
        burst_at_us=np.where(burst_count > 0, burst_at, NO_TIME),
        drain_share=drain_share,
        drain_balance=drain_balance,
        drain_at_us=drain_at,
        loops=loops,
    )


def join_flags(burst: B, drain: B, loop: B, anomaly: B) -> list[str]:
    """Per member, the names of the raised flags comma-joined in FLAG_NAMES order ("": none)."""
    flags = np.column_stack([np.asarray(burst, bool), np.asarray(drain, bool),
                             np.asarray(loop, bool), np.asarray(anomaly, bool)])
    return [",".join(name for name, on in zip(FLAG_NAMES, row, strict=True) if on)
            for row in flags.tolist()]


def split_flags(joined: str | None) -> tuple[str, ...]:
    """The flag names of a stored `fraud_flags` value (None or "": none), in FLAG_NAMES order;
    unknown names (a newer job's) are kept after the known ones, never dropped: a flagged
    member's answers ask for verification whatever the flag."""
    names = [n for n in (joined or "").split(",") if n]
    return (*(n for n in FLAG_NAMES if n in names), *(n for n in names if n not in FLAG_NAMES))


# --------------------------------------------------------------------------------------------
# Member-day aggregates for the anomaly model.
# --------------------------------------------------------------------------------------------
DAY_FEATURES: tuple[str, ...] = (
    "active_days",  # days in the lookback with an earn or a burn
    "redemptions",  # redemptions in the lookback
    "max_redemptions_per_day",
    "log_points_burnt",  # log1p(points burnt in the lookback)
    "log_max_points_burnt_per_day",  # log1p(most points burnt in one day)
    "log_points_earned",  # log1p(points earned in the lookback, openings excluded)
    "max_burn_share",  # largest share of the balance before it one redemption burnt, [0, 1]
    "burnt_share_of_inflow",  # points burnt / (balance at the lookback start + points earned)
    "earn_and_burn_days",  # days with both an earn and a burn
    "log_min_gap_hours",  # log1p(shortest time between two redemptions, hours, capped at 24)
)
MAX_GAP_HOURS = 24.0


def member_day_features(events: LedgerEvents, as_of_us: int, lookback_days: int,
                        members: I64) -> F64:
    """Per member of `members` (in that order), the aggregates of their member-days in the
    `lookback_days` before `as_of_us`: a (len(members), len(DAY_FEATURES)) matrix.

    Days are 24-hour periods counted back from the as-of instant (UTC days, the as-of instant
    being a midnight in the jobs). A member without entries in the lookback gets the quiet row:
    zeros, and the capped gap (log1p(24)).
    """
    s = _sorted_before(events, as_of_us)
    n = len(s.members)
    recent = _window_mask(s, as_of_us, lookback_days)
    start_us = as_of_us - lookback_days * DAY_US
    day = (s.ts_us - start_us) // DAY_US
    is_burn = recent & (s.kind == BURN)
    is_earn = recent & (s.kind == EARN)
    key = s.group * (lookback_days + 1) + np.clip(day, 0, lookback_days)  # member-day id
    size = n * (lookback_days + 1)

    def per_day(mask: B, values: I64 | None = None) -> I64:
        w = None if values is None else values[mask]
        return np.bincount(key[mask], weights=w, minlength=size).astype(np.int64)

    burns_d = per_day(is_burn).reshape(n, -1)
    burnt_d = per_day(is_burn, -s.points).reshape(n, -1)
    earned_d = per_day(is_earn, s.points).reshape(n, -1)
    active = (burns_d > 0) | (earned_d > 0)

    share = np.zeros(n)
    positive = is_burn & (s.balance_before > 0)
    np.maximum.at(share, s.group[positive],
                  -s.points[positive] / np.maximum(s.balance_before[positive], 1))
    # balance at the lookback start: before the first recent entry, else after the last one
    start_balance = np.zeros(n, dtype=np.int64)
    old = np.flatnonzero(~recent)  # sorted by instant within a member: the last one counts
    last = old[np.r_[s.group[old][1:] != s.group[old][:-1], True]] if len(old) else old
    start_balance[s.group[last]] = s.balance_before[last] + s.points[last]
    inflow = start_balance + earned_d.sum(1)
    burnt = burnt_d.sum(1)

    gap_h = np.full(n, MAX_GAP_HOURS)
    b = np.flatnonzero(is_burn)
    if len(b) > 1:
        same = s.group[b][1:] == s.group[b][:-1]
        gaps = (s.ts_us[b][1:] - s.ts_us[b][:-1])[same] / US_PER_HOUR
        np.minimum.at(gap_h, s.group[b][1:][same], np.minimum(gaps, MAX_GAP_HOURS))

    table = np.column_stack([
        active.sum(1),
        burns_d.sum(1),
        burns_d.max(1, initial=0),
        np.log1p(burnt),
        np.log1p(burnt_d.max(1, initial=0)),
        np.log1p(earned_d.sum(1)),
        share,
        np.where(inflow > 0, burnt / np.maximum(inflow, 1), 0.0),
        ((burns_d > 0) & (earned_d > 0)).sum(1),
        np.log1p(gap_h),
    ]).astype(np.float64)
    out = np.zeros((len(members), len(DAY_FEATURES)))
    out[:, DAY_FEATURES.index("log_min_gap_hours")] = np.log1p(MAX_GAP_HOURS)
    members = np.asarray(members, dtype=np.int64)
    pos = np.minimum(np.searchsorted(s.members, members), max(n - 1, 0))
    found = s.members[pos] == members if n else np.zeros(len(members), dtype=bool)
    out[found] = table[pos[found]]
    return out


__all__ = [
    "BURN",
    "DAY_FEATURES",
    "EARN",
    "EXPIRE",
    "FLAG_NAMES",
    "KIND_CODES",
    "NO_TIME",
    "OPENING",
    "LedgerEvents",
    "RuleResult",
    "evaluate_rules",
    "in_order",
    "join_flags",
    "kind_codes",
    "member_day_features",
    "split_flags",
]
