"""The planted points abusers of a simulated programme: who they are, their schedules, and
what they do each day.

A few members (0.3 % by default) are planted abusers of three kinds, one per fraud rule of
recsvc.core.fraud: burst redeemers, balance drainers and earn-then-burn loopers. They act through
the simulator's ordinary booking (orders, ledger, exposures, redemptions, with the same balance,
stock and pricing rules), draw on a random stream of their own so that normal members draw as
they would without them, and are written to the oracle (`abusers`) so that the fraud flags can
be judged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from recsvc.core import ledger
from recsvc.core.ledger import US
from recsvc.data import schema
from recsvc.data.columns import NULL_US
from recsvc.offline.behaviour import SURFACES
from recsvc.offline.population import Members
from recsvc.offline.sim_tables import day_us, to_arrow

if TYPE_CHECKING:
    from recsvc.offline.simulate import Simulator

I64 = npt.NDArray[np.int64]

ABUSER_KINDS = ("redemption_burst", "balance_drain", "earn_burn_loop")
ABUSER_SHARE = 0.003  # share of members planted as points abusers
ABUSE_STREAM = 0xF4A0D  # the abusers' own random stream, so normal members draw as before
ABUSE_SLOT_S = 39_600  # abusers act in [11:00, 12:00): after the orders, before the visits


# --------------------------------------------------------------------------------------------
# Planted points abusers.
# --------------------------------------------------------------------------------------------
@dataclass
class Abusers:
    """The planted abusers and their schedules (day offsets; -1: nothing planned).

    Every kind repeats its episode until the end of the simulation, so an abuser is active in
    any window of a few weeks after its start:
    - redemption_burst: 5-8 redemptions of cheap items within 10-45 minutes, every 14-28 days,
      each burst funded by a large order 2-5 days before;
    - balance_drain: one points + cash redemption of an item priced above the balance, taking
      all of it, every 15-30 days, the balance first brought to 4,000-9,000 points by a large
      order 3-10 days before;
    - earn_burn_loop: an order, then within 5-40 minutes a redemption of an item priced about
      the points it earned, every 3-8 days.
    """

    member: I64
    kind: I64  # index into ABUSER_KINDS
    episode_day: I64
    fund_day: I64
    fund_target: I64  # balance a funding order tops up to, points
    from_us: I64  # the first abusive redemption (NULL_US: none yet)
    to_us: I64  # the last one

    @property
    def n(self) -> int:
        return len(self.member)


def plant_abusers(rng: np.random.Generator, m: Members, days: int, share: float) -> Abusers:
    """Choose about `share` of the members (alive, joined well before their start) as abusers,
    kinds in turn, each starting on a day in [days/2, days - 21); they never drop out."""
    first = days // 2
    candidates = np.flatnonzero(m.alive & (m.signup_day < first))
    n = min(round(share * m.n), len(candidates))
    member = np.sort(rng.choice(candidates, size=n, replace=False)) if n else candidates[:0]
    kind = rng.permutation(np.arange(n) % len(ABUSER_KINDS))
    start = rng.integers(first, max(first + 1, days - 21), n)
    m.dropout[member] = 0.0  # a fraudster keeps the account alive
    abusers = Abusers(member, kind, np.full(n, -1), np.full(n, -1), np.zeros(n, np.int64),
                      np.full(n, NULL_US), np.full(n, NULL_US))
    for i in range(n):
        schedule_abuse(rng, abusers, i, int(start[i]), first=True)
    return abusers


def schedule_abuse(rng: np.random.Generator, a: Abusers, i: int, day: int, first: bool) -> None:
    """Plan abuser i's next episode from `day` (its funding order first, where it needs one)."""
    kind = ABUSER_KINDS[a.kind[i]]
    if kind == "earn_burn_loop":
        a.episode_day[i] = day + (0 if first else int(rng.integers(3, 9)))
        return
    if kind == "redemption_burst":
        gap, lead, target = rng.integers(14, 29), rng.integers(2, 6), rng.integers(5000, 9001)
    else:
        gap, lead, target = rng.integers(15, 31), rng.integers(3, 11), rng.integers(4000, 9001)
    fund = day if first else day + int(gap) - int(lead)
    a.fund_day[i] = fund
    a.episode_day[i] = fund + int(lead)
    a.fund_target[i] = int(target)


# --------------------------------------------------------------------------------------------
# The abusers at work.
# --------------------------------------------------------------------------------------------
class AbuseActor:
    """The planted abusers of a simulation, acting each day through its booking."""

    def __init__(self, sim: Simulator, seed: int, share: float) -> None:
        self.sim = sim
        self.rng = np.random.default_rng([seed, ABUSE_STREAM])
        self.abusers = plant_abusers(self.rng, sim.m, sim.days, share)

    def act(self, day: int, date: dt.date) -> None:
        """Today's abusive orders and redemptions, all in [11:00, 12:00) and carried out in
        time order, so every balance and stock check sees every earlier event."""
        a, rng, s = self.abusers, self.rng, self.sim
        due = np.flatnonzero((a.fund_day == day) | (a.episode_day == day))
        if len(due) == 0:
            return
        slot = int(day_us(s.start, day, np.array([ABUSE_SLOT_S]))[0])
        minute = 60 * US
        actions: list[tuple[int, int, str, int]] = []  # (instant, abuser, action, argument)
        for i in (int(i) for i in due):
            member = a.member[i]
            if s.last_order_us[member] >= slot:  # a late order of its own: act tomorrow
                if a.fund_day[i] == day:
                    a.fund_day[i] += 1
                a.episode_day[i] += 1
                continue
            t0 = slot + int(rng.integers(0, 10 * minute))
            kind = ABUSER_KINDS[a.kind[i]]
            balance = int(s.buckets[member].sum())
            if a.fund_day[i] == day:
                actions.append((t0, i, "order", max(int(a.fund_target[i]) - balance, 0)))
            if a.episode_day[i] != day:
                continue
            if kind == "earn_burn_loop":
                actions.append((t0, i, "order", int(rng.integers(300, 1501))))
                actions.append((t0 + int(rng.integers(5, 41)) * minute, i, "loop", 0))
            elif kind == "redemption_burst":
                k = int(rng.integers(5, 9))
                offsets = np.sort(rng.integers(0, int(rng.integers(10, 46)) * minute + 1, k))
                actions += [(t0 + int(o), i, "burst", balance // k) for o in offsets]
            else:
                actions.append((t0 + int(rng.integers(0, 40 * minute)), i, "drain", 0))
        earned: dict[int, int] = {}
        for ts, i, action, arg in sorted(actions):
            member = int(a.member[i])
            if action == "order":
                if arg > 0:
                    earned[i] = self._order(member, ts, day, date, arg)
                continue
            item = self._item(member, action, arg if action == "burst" else earned.get(i, 0))
            if item is None:
                if action == "drain":  # nothing to drain into today: try again tomorrow
                    a.episode_day[i] = day + 1
                continue
            self._redeem(member, item, ts, day)
            a.from_us[i] = ts if a.from_us[i] == NULL_US else a.from_us[i]
            a.to_us[i] = ts
        for i in (int(i) for i in due):
            if a.episode_day[i] == day:
                schedule_abuse(rng, a, i, day, first=False)

    def _order(self, member: int, ts: int, day: int, date: dt.date, points: int) -> int:
        """An order of the abuser earning about `points`, by the programme rules; the points
        it earned."""
        s = self.sim
        m = s.m
        cat = np.array([int((m.cat_pref[member].cumsum() > self.rng.random()).argmax())])
        tier = ledger.tier_for_spend(s.p, m.cum_spend[[member]])
        campaign = ledger.campaign_multiplier(s.p, date)
        rate = float(s.tier_mult[tier][0] * s.cat_mult[cat][0] * campaign
                     * s.p.earning.points_per_unit)
        if rate <= 0:
            return 0
        amount = np.array([int(np.ceil(points / rate * s.p.currency.minor_per_unit))])
        pts = s.book_orders(np.array([member]), np.array([ts]), amount,
                            np.ones(1, np.int64), cat, day, date)
        return int(pts[0])

    def _item(self, member: int, action: str, arg: int) -> int | None:
        """The item an abusive redemption takes (in stock), or None when none fits.

        burst: priced at most `arg` points (the burst's budget per item); drain: priced at
        least the balance (points + cash takes all of it), else at least 90 % of it; loop:
        affordable and priced within half to one and a half times the `arg` points just earned,
        else the cheapest affordable one."""
        s = self.sim
        c = s.cat
        balance = int(s.buckets[member].sum())
        if balance < s.p.burning.min_points_step:
            return None
        price = c.points_price
        stocked = c.stock > 0
        if action == "burst":
            fits = stocked & (price <= min(arg, balance))
        elif action == "drain":
            fits = stocked & (price >= balance)
            if not fits.any():
                fits = stocked & (price >= 0.9 * balance) & (price <= balance)
        else:
            fits = stocked & (price <= balance) & (price >= arg // 2) & (price <= arg * 3 // 2)
            if not fits.any():
                cheap = np.flatnonzero(stocked & (price <= balance))
                return int(cheap[np.argmin(price[cheap])]) if len(cheap) else None
        pool = np.flatnonzero(fits)
        if len(pool) == 0:
            return None
        weights = c.popularity[pool] / c.popularity[pool].sum()
        return int(pool[self.rng.choice(len(pool), p=weights)])

    def _redeem(self, member: int, item: int, ts: int, day: int) -> None:
        """A redemption as the visits make them, of an item shown on the points centre; its
        exposure's true P(redeem) is 1."""
        s = self.sim
        who, ri, when = np.array([member]), np.array([item]), np.array([ts])
        balance = s.buckets[who].sum(1)
        eid = s.next_ids("exposure", 1)
        rid = s.book_redemptions(who, ri, when, balance, eid, day)
        s.book_exposures(eid, who, ri, when, np.array([SURFACES.index("points_centre")]),
                         balance, np.ones(1, bool), rid, np.ones(1))

    def write(self, oracle: schema.TableSetWriter) -> int:
        """The abusers that acted, with their kind and span, to the oracle; how many."""
        a = self.abusers
        acted = a.from_us != NULL_US
        oracle.write("abusers", to_arrow(dict(
            member_id=a.member[acted],
            kind=np.array(ABUSER_KINDS, dtype=object)[a.kind[acted]],
            from_ts=a.from_us[acted],
            to_ts=a.to_us[acted],
        ), schema.ORACLE_ABUSERS))
        return int(acted.sum())


__all__ = ["ABUSER_KINDS", "ABUSER_SHARE", "AbuseActor", "Abusers", "plant_abusers",
           "schedule_abuse"]
