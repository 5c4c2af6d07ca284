"""Nudges: the reminders due to a member now, and the frequency caps each one counts against.

Pure functions over the member's points, the programme and the core ranking (SPEC §3, §5;
issue 7). The rules, most urgent first (the order of the answer):

- ``expiry_urgent``: the member's dated points lapsing in (now, now + ``expiry.urgent_days``];
- ``expiry``: those lapsing in (now + ``urgent_days``, now + ``expiry.reminder_days``]. The urgent
  reminder supersedes the ordinary one *for the same points*: each point is in at most one
  expiry nudge, and points lapsing later still get their ordinary reminder. Both carry the
  best ways to use exactly those points: the catalogue ranked by `ranking.recommend` for the
  member with those points as the budget (so demand match, points + cash and the
  "uses expiring points" reason are about them), kept where the points pay for the item
  outright or as points + cash, the first ``nudges.options``;
- ``low_balance``: 0 < balance < ``low_balance.below``, with what the balance still buys (ranked
  the same way, the whole balance as the budget). With no points there is nothing left to buy:
  a member with none (a cold start among them) gets no low-balance reminder;
- ``unlock_close``: the nearest category unlock whose gap is at most ``nudges.unlock_close_share``
  of its threshold (`ranking.unlocks_in_reach`, whose spend comes from
  `redemption.spend_to_earn` at the member's tier multiplier).

Frequency caps (``[[nudges.caps]]``): a nudge counts against every cap of its kind on its
channel (a cap on channel "*" counts all channels together), and each item it suggests against
every "item" cap on that channel, per item. `decide` is the one definition of what a cap
store does with the counts it holds: a nudge is granted only when each of its kind's caps has
room, and then all of them count it; an item whose cap is full is dropped from the nudge's
options (the nudge stays); the nudges of one call are decided in order, each seeing what the
earlier ones took. The stores (recsvc.adapters.caps) apply it atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from recsvc.config import NudgeCap, Programme
from recsvc.core.cart import NO_EXPIRY, PointsBalance, _format_amount
from recsvc.core.ranking import Member, Option, Unlock, unlocks_in_reach

KINDS = ("expiry_urgent", "expiry", "low_balance", "unlock_close")
"""The kinds of nudge, most urgent first (the order of an answer)."""
OPTION_KINDS = ("expiry_urgent", "expiry", "low_balance")
"""The kinds that suggest items (and so count against item caps)."""
ITEM_CAP = "item"
CANDIDATES_PER_OPTION = 4
"""Ranked options asked for per option offered: room for the ones the points cannot pay."""

Rank = Callable[[Member, bool, int], Sequence[Option]]
"""The core ranking for a member: (member, affordable only, limit) -> options, best first."""


@dataclass(frozen=True)
class Nudge:
    kind: str
    points: int
    """Expiry: the points lapsing; low balance: the balance; unlock: the gap."""
    expires_at: dt.datetime | None
    """Expiry: the latest lapse instant of the points it covers."""
    options: tuple[Option, ...]
    unlock: Unlock | None
    message: str


def _usable(rank: Rank, member: Member, budget: int, step: int, count: int
            ) -> tuple[Option, ...]:
    """The best `count` options `budget` points pay for, outright or as points + cash."""
    ranked = rank(dataclasses.replace(member, balance=budget), budget < step,
                  count * CANDIDATES_PER_OPTION)
    return tuple(o for o in ranked if o.points_cash)[:count]


def _days(later: dt.datetime, now: dt.datetime) -> int:
    return max(math.ceil((later - now).total_seconds() / 86_400), 0)


def _expiry(kind: str, lots: list[tuple[dt.datetime, int]], now: dt.datetime,
            member: Member, rank: Rank, programme: Programme) -> Nudge | None:
    points = sum(p for _, p in lots)
    if points <= 0:
        return None
    last = max(at for at, _ in lots)
    # the ranking's member spends exactly these points, all of them about to lapse
    spender = dataclasses.replace(member, expiring_points=points)
    options = _usable(rank, spender, points, programme.burning.min_points_step,
                      programme.nudges.options)
    days = _days(last, now)
    when = f"in {days} day{'s' if days != 1 else ''}" if kind == "expiry_urgent" else \
        f"by {last:%Y-%m-%d}"
    return Nudge(kind, points, last, options, None,
                 f"{points:,} points expire {when}: use them before they lapse.")


def due(programme: Programme, member: Member, points: PointsBalance, now: dt.datetime,
        rank: Rank) -> list[Nudge]:
    """The nudges due to the member at `now`, most urgent first (see the module docstring).

    `points` holds the member's live lots (`PointsBalance.reconcile`); `member.balance` is
    the balance used for the low-balance and unlock rules.
    """
    urgent_until = now + dt.timedelta(days=programme.expiry.urgent_days)
    reminder_until = now + dt.timedelta(days=programme.expiry.reminder_days)
    urgent: list[tuple[dt.datetime, int]] = []
    soon: list[tuple[dt.datetime, int]] = []
    for at, pts in points.buckets:
        if at == NO_EXPIRY or pts <= 0 or at <= now:
            continue
        if at <= urgent_until:
            urgent.append((at, pts))
        elif at <= reminder_until:
            soon.append((at, pts))
    out = [n for n in (_expiry("expiry_urgent", urgent, now, member, rank, programme),
                       _expiry("expiry", soon, now, member, rank, programme)) if n]
    balance = member.balance
    if 0 < balance < programme.low_balance.below:
        options = _usable(rank, member, balance, programme.burning.min_points_step,
                          programme.nudges.options)
        out.append(Nudge("low_balance", balance, None, options, None,
                         f"You have {balance:,} points left: use them, or earn more with "
                         "your next order."))
    near = unlocks_in_reach(programme, member, programme.nudges.unlock_close_share)
    if near:
        u = near[0]
        spend = _format_amount(u.spend_to_unlock_minor, programme.currency.minor_per_unit)
        out.append(Nudge("unlock_close", u.points_gap, None, (), u,
                         f"{u.points_gap:,} more points unlock {u.category}: spend {spend} to "
                         "get there."))
    return out


# --------------------------------------------------------------------------------------------
# Frequency caps.
# --------------------------------------------------------------------------------------------
CapKey = tuple[str, int | None]
"""What a cap store counts, per member: (cap name, None) or, for item caps, (cap name, item)."""


@dataclass(frozen=True)
class Reservation:
    """What one nudge asks of the cap store: room in every cap of `caps`, and, per item it
    suggests, room in that item's caps (else the item is dropped)."""

    kind: str
    caps: tuple[NudgeCap, ...]
    items: tuple[tuple[int, tuple[NudgeCap, ...]], ...]

    def counted(self) -> list[tuple[CapKey, NudgeCap]]:
        """Every (key, cap) the reservation may count against, in decision order."""
        return [((c.name, None), c) for c in self.caps] + [
            ((c.name, item), c) for item, caps in self.items for c in caps]


@dataclass(frozen=True)
class CapOutcome:
    granted: bool
    cap: str = ""
    """When not granted: the first cap (in the programme's order) that had no room."""
    dropped: tuple[tuple[int, str], ...] = ()
    """Items dropped from the options, each with the cap that had no room."""


def _applies(cap: NudgeCap, kind: str, channel: str) -> bool:
    return cap.kind == kind and cap.channel in ("*", channel)


def reservation(programme: Programme, nudge: Nudge, channel: str) -> Reservation:
    """The caps `nudge` counts against on `channel`."""
    caps = programme.nudges.caps
    per_item = tuple(c for c in caps if _applies(c, ITEM_CAP, channel))
    return Reservation(nudge.kind, tuple(c for c in caps if _applies(c, nudge.kind, channel)),
                       tuple((o.item_id, per_item) for o in nudge.options) if per_item else ())


def cap_series(programme: Programme) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every (nudge kind, cap name) a cap can withhold a nudge for, and every one it can drop
    an item from (item caps, on the kinds that suggest items): the metric series to create."""
    withheld = [(c.kind, c.name) for c in programme.nudges.caps if c.kind in KINDS]
    dropped = [(kind, c.name) for c in programme.nudges.caps if c.kind == ITEM_CAP
               for kind in OPTION_KINDS]
    return withheld, dropped


def decide(reservations: Sequence[Reservation], counts: Mapping[CapKey, int]
           ) -> tuple[list[CapOutcome], list[CapKey]]:
    """Each reservation's outcome given the events `counts` holds in each cap's window, and
    the keys to record (one event each, repeated keys recorded as often), in order."""
    used = dict(counts)
    outcomes: list[CapOutcome] = []
    record: list[CapKey] = []

    def full(key: CapKey, cap: NudgeCap) -> bool:
        return used.get(key, 0) >= cap.max

    def take(key: CapKey) -> None:
        used[key] = used.get(key, 0) + 1
        record.append(key)

    for r in reservations:
        stop = next((c.name for c in r.caps if full((c.name, None), c)), None)
        if stop is not None:
            outcomes.append(CapOutcome(False, stop))
            continue
        dropped = []
        for item, caps in r.items:
            over = next((c.name for c in caps if full((c.name, item), c)), None)
            if over is not None:
                dropped.append((item, over))
                continue
            for c in caps:
                take((c.name, item))
        for c in r.caps:
            take((c.name, None))
        outcomes.append(CapOutcome(True, "", tuple(dropped)))
    return outcomes, record


@dataclass(frozen=True)
class Capped:
    """A nudge withheld, or an item dropped from a nudge's options, by the cap `cap`."""

    kind: str
    cap: str
    item_id: int | None = None


def apply(nudges: Sequence[Nudge], outcomes: Sequence[CapOutcome]
          ) -> tuple[list[Nudge], list[Capped], list[Capped]]:
    """(the nudges to deliver, without their dropped items; the nudges withheld; the items
    dropped from delivered nudges)."""
    delivered: list[Nudge] = []
    withheld: list[Capped] = []
    dropped: list[Capped] = []
    for nudge, outcome in zip(nudges, outcomes, strict=True):
        if not outcome.granted:
            withheld.append(Capped(nudge.kind, outcome.cap))
            continue
        gone = {item for item, _ in outcome.dropped}
        dropped.extend(Capped(nudge.kind, cap, item) for item, cap in outcome.dropped)
        delivered.append(dataclasses.replace(
            nudge, options=tuple(o for o in nudge.options if o.item_id not in gone))
            if gone else nudge)
    return delivered, withheld, dropped
