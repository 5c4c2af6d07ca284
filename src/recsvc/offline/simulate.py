"""A loyalty-programme simulator with known ground truth, for learning and judging models.

Members follow a buy-till-you-die process (BG/NBD-like): each has a latent purchase rate and,
after every order, a latent chance of dropping out for good, so churn is real and partly
predictable from behaviour. Orders earn points by the programme rules; points lapse at month
ends (FIFO by expiry); members are shown catalogue items on three surfaces and redeem with a
probability given by a *known* function (`redeem_logit`) of the index factors, the points about
to expire and latent traits. Of those traits, the appetite for redeeming also shows in where a
member browses: keener members are shown more items on the points centre (`_surfaces`). The
true probabilities go to a separate oracle directory that no training code reads.

A few members (0.3 % by default) are planted points abusers of three kinds, one per fraud rule
of recsvc.core.fraud: burst redeemers, balance drainers and earn-then-burn loopers. They act
through the ordinary tables (orders, ledger, exposures, redemptions, with the same balance,
stock and pricing rules), draw on a random stream of their own, and are written to the oracle
(`abusers`) so that the fraud flags can be judged.

Time runs day by day over all members at once (numpy vectors), because stock is shared between
members. Within a day, orders fall in [00:00, 12:00) and the visits with their exposures and
redemptions in [12:00, 24:00), in rounds, so every balance check sees every earlier event.
Output is flushed every month, so memory stays bounded by the member state, not the history.
Members and items are positions 0..n-1 inside the simulator; every table written numbers them
from 1 (id = position + 1, `_arrow`), since recsvc.v1 reads an id of 0 as "not set".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.config import Programme
from recsvc.core import index as idx
from recsvc.core import ledger, redemption
from recsvc.core.ledger import US
from recsvc.data import provenance, schema
from recsvc.data.columns import NULL_US
from recsvc.offline.population import (
    ABUSER_KINDS,
    AGE_BANDS,
    CATEGORIES,
    make_catalogue,
    make_members,
    plant_abusers,
    schedule_abuse,
)
from recsvc.progress import Stopwatch, progress

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEFAULT_START = dt.date(2025, 1, 1)
ID_COLUMNS = frozenset({"member_id", "item_id"})  # written as position + 1 (`_arrow`)
SURFACES = ("product_page", "points_centre", "cart")
SURFACE_P = (0.5, 0.3, 0.2)  # the mix of an average member (appetite 0)
# Members with a taste for redeeming open the points centre more often: the log-odds of an
# exposure being there rise by this much per unit of appetite (±1 sd moves the share from 30 %
# to about 16 % / 50 %), the other surfaces keep their ratio. It is the one trace of appetite a
# platform sees besides the redemptions themselves, as real ones see points-centre sessions.
POINTS_CENTRE_APPETITE = 1.2
SURFACE_EFFECT = np.array([0.0, 0.5, 0.2])
ROUNDS = 4  # exposures per visit at most
SECONDS_PER_DAY = 86_400
ABUSER_SHARE = 0.003  # share of members planted as points abusers
ABUSE_STREAM = 0xF4A0D  # the abusers' own random stream, so normal members draw as before
ABUSE_SLOT_S = 39_600  # abusers act in [11:00, 12:00): after the orders, before the visits


@dataclass(frozen=True)
class SimulationSummary:
    members: int
    items: int
    days: int
    rows: dict[str, int]
    seconds: float
    abusers: int = 0  # planted abusers that acted (oracle/abusers)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# --------------------------------------------------------------------------------------------
# The known redemption function (the oracle).
# --------------------------------------------------------------------------------------------
def redeem_logit(
    *,
    value_coeff: F64,
    demand: F64,
    behaviour: F64,
    discount: F64,
    expiring_share: F64,
    affordable: npt.NDArray[np.bool_],
    vacuum: npt.NDArray[np.bool_],
    price_sensitivity: F64,
    appetite: F64,
    category_pref: F64,
    surface_effect: F64,
) -> F64:
    """Log-odds that an exposure converts into a redemption.

    Increasing in value per point (steeper for price-sensitive members), demand match,
    behaviour and discount depth; points that are about to expire push members to redeem;
    unaffordable items (points + cash only) and vacuum-zone items are redeemed far less.
    """
    vc = np.maximum(value_coeff, 1e-4)
    return (
        -4.4
        + 1.7 * price_sensitivity * np.log(vc / 0.06)
        + 1.3 * demand
        + 1.6 * (behaviour - 0.5)
        + 2.0 * (1.0 - discount)
        + 1.1 * np.minimum(expiring_share, 1.0)
        + appetite
        + 2.5 * category_pref
        + surface_effect
        - 2.2 * (~affordable)
        - 1.5 * vacuum
    )


def _surfaces(rng: np.random.Generator, appetite: F64) -> I64:
    """The surface (index into SURFACES) of each exposure: SURFACE_P, with the points-centre
    share tilted by the member's appetite (POINTS_CENTRE_APPETITE)."""
    base = SURFACE_P[1]
    logit = np.log(base / (1.0 - base)) + POINTS_CENTRE_APPETITE * appetite
    p_centre = 1.0 / (1.0 + np.exp(-logit))
    p_page = (1.0 - p_centre) * SURFACE_P[0] / (SURFACE_P[0] + SURFACE_P[2])
    u = rng.random(len(appetite))
    return np.where(u < p_centre, 1, np.where(u < p_centre + p_page, 0, 2)).astype(np.int64)


def season(days: I64 | int, programme: Programme, start: dt.date) -> F64:
    """Purchase-rate multiplier for day offsets from `start`: a yearly wave and campaign days."""
    d = np.atleast_1d(np.asarray(days, dtype=np.int64))
    ordinal = start.toordinal() + d
    doy = np.array([dt.date.fromordinal(int(o)).timetuple().tm_yday for o in ordinal])
    wave = 1.0 + 0.25 * np.sin(2 * np.pi * (doy - 220) / 365.25)
    mmdd = [dt.date.fromordinal(int(o)).strftime("%m-%d") for o in ordinal]
    campaign = np.array([m in programme.earning.double_points_days for m in mmdd])
    return wave * np.where(campaign, 1.8, 1.0)


# --------------------------------------------------------------------------------------------
# The simulation.
# --------------------------------------------------------------------------------------------
class _Buffers:
    """Columns accumulated between flushes, per table."""

    def __init__(self) -> None:
        self.cols: dict[str, dict[str, list[Any]]] = {}

    def add(self, table: str, **columns: Any) -> None:
        tab = self.cols.setdefault(table, {})
        for name, values in columns.items():
            tab.setdefault(name, []).append(np.asarray(values))

    def rows(self, table: str) -> int:
        tab = self.cols.get(table)
        return 0 if not tab else sum(len(v) for v in next(iter(tab.values())))

    def take(self, table: str) -> dict[str, Any]:
        tab = self.cols.pop(table, {})
        return {k: np.concatenate(v) for k, v in tab.items()}


def _ts(day0: dt.date, day: int, seconds: F64 | I64) -> I64:
    base = (day0.toordinal() - dt.date(1970, 1, 1).toordinal() + day) * SECONDS_PER_DAY
    return ((base + np.asarray(seconds, dtype=np.float64)) * US).astype(np.int64)


class Simulator:
    def __init__(
        self,
        programme: Programme,
        *,
        members: int,
        days: int,
        seed: int,
        start: dt.date = DEFAULT_START,
        items: int | None = None,
        abusers: float = ABUSER_SHARE,
    ) -> None:
        if members <= 0 or days <= 0:
            raise ValueError("members and days must be positive")
        if not 0 <= abusers <= 0.5:
            raise ValueError("abusers must be a share of the members within [0, 0.5]")
        self.p = programme
        self.days = days
        self.start = start
        n_items = items if items is not None else int(min(3000, max(300, members // 10)))
        # kept beside the tables (recsvc.data.provenance), so a later size can be compared
        self.record = {"members": members, "days": days, "seed": seed,
                       "start": start.isoformat(), "items": n_items, "abusers": abusers}
        self.rng = np.random.default_rng(seed)
        self.m = make_members(self.rng, members, days)
        self.cat = make_catalogue(self.rng, n_items, programme, members)
        self.base_month = ledger.month_index(start) - 1
        horizon = (
            ledger.month_index(start + dt.timedelta(days=days))
            + programme.expiry.high_value_months
            + 2
        )
        self.buckets = np.zeros((members, horizon - self.base_month), dtype=np.int64)
        self.expiry_us_by_col = np.array(
            [
                int(ledger.expiry_instant(self.base_month + col).timestamp()) * US
                for col in range(self.buckets.shape[1])
            ],
            dtype=np.int64,
        )
        self.tier_names = programme.tiers.order
        self.tier_mult = np.array([programme.earning.tier_multipliers[t] for t in self.tier_names])
        self.tier_months = np.array(
            [ledger.expiry_months_for_tier(programme, t) for t in self.tier_names]
        )
        cat_mult = [ledger.category_multiplier(programme, c) for c in CATEGORIES]
        self.cat_mult = np.array(cat_mult)
        self.orders_ring = np.zeros((members, 90), dtype=np.int16)
        self.ids = dict.fromkeys(("order", "entry", "exposure", "redemption"), 0)
        self.buf = _Buffers()
        self.season = season(np.arange(days + 100), programme, start)
        # drawn after everything above, from a stream of their own
        self.abuse_rng = np.random.default_rng([seed, ABUSE_STREAM])
        self.abusers = plant_abusers(self.abuse_rng, self.m, days, abusers)
        self.last_order_us = np.full(members, NULL_US)  # each member's latest order instant

    def _next_ids(self, kind: str, n: int) -> I64:
        first = self.ids[kind]
        self.ids[kind] = first + n
        return np.arange(first, first + n, dtype=np.int64)

    def _ledger(
        self,
        member: I64,
        ts: I64,
        kind: str,
        points: I64,
        expires_at: I64 | None = None,
        ref: I64 | None = None,
    ) -> None:
        n = len(member)
        if n == 0:
            return
        self.buf.add(
            "ledger",
            entry_id=self._next_ids("entry", n),
            member_id=member,
            ts=ts,
            kind=np.full(n, kind, dtype=object),
            points=points,
            expires_at=expires_at if expires_at is not None else np.full(n, NULL_US),
            ref_id=ref if ref is not None else np.full(n, NULL_US),
        )

    def _expiry_us(self, bucket_col: I64) -> I64:
        return self.expiry_us_by_col[bucket_col]

    # -- opening balances -------------------------------------------------------------------
    def _open(self) -> None:
        m = self.m
        who = np.flatnonzero(m.signup_day < 0)
        if len(who) == 0:
            return
        monthly = m.rate[who] * 30 * (m.aov_minor[who] / 100) * self.p.earning.points_per_unit
        ts = _ts(self.start, 0, np.zeros(len(who)))
        start_month = ledger.month_index(self.start)
        for back in range(1, self.p.expiry.ordinary_months + 1):
            had = -m.signup_day[who] > back * 30
            pts = np.floor(monthly * self.rng.gamma(1.0, 0.6, len(who))).astype(np.int64) * had
            keep = pts > 0
            col = np.full(
                keep.sum(), start_month - back + self.p.expiry.ordinary_months - self.base_month
            )
            mem = who[keep]
            self.buckets[mem, col] += pts[keep]
            self._ledger(mem, ts[keep], "opening", pts[keep], self._expiry_us(col))

    # -- one day ----------------------------------------------------------------------------
    def _expire(self, day: int, date: dt.date) -> None:
        if date.day != 1:
            return
        col = ledger.month_index(date) - 1 - self.base_month
        lapsed = np.flatnonzero(self.buckets[:, col] > 0)
        if len(lapsed):
            pts = self.buckets[lapsed, col].copy()
            self.buckets[lapsed, col] = 0
            self._ledger(lapsed, _ts(self.start, day, np.zeros(len(lapsed))), "expire", -pts)

    def _orders(self, day: int, date: dt.date) -> None:
        m, rng = self.m, self.rng
        active = np.flatnonzero(m.alive & (m.signup_day <= day))
        count = rng.poisson(m.rate[active] * self.season[day])
        self.orders_ring[:, day % 90] = 0
        for k in range(1, int(count.max(initial=0)) + 1):  # k-th order of the day, in time order
            who = active[count >= k]
            n = len(who)
            secs = (k - 1 + rng.random(n)) * (43_200 / (count[count >= k] + 1))
            ts = _ts(self.start, day, secs)
            cat = (m.cat_pref[who].cumsum(1) > rng.random((n, 1))).argmax(1)
            amount = np.round(m.aov_minor[who] * np.exp(rng.normal(0, 0.5, n))).astype(np.int64)
            qty = 1 + rng.poisson(0.6, n)
            self._book_orders(who, ts, amount, qty, cat, day, date)
            # buy till you die: after each order a member may drop out for good
            m.alive[who] &= rng.random(n) >= m.dropout[who]

    def _book_orders(self, who: I64, ts: I64, amount: I64, qty: I64, cat: I64, day: int,
                     date: dt.date) -> I64:
        """Orders of distinct members: written, earning points by the rules (tier, category,
        campaign) into the expiry bucket of their tier; the points each earned."""
        m = self.m
        tier = ledger.tier_for_spend(self.p, m.cum_spend[who])
        pts = ledger.points_earned(self.p, amount, self.tier_mult[tier], self.cat_mult[cat],
                                   ledger.campaign_multiplier(self.p, date))
        oid = self._next_ids("order", len(who))
        self.buf.add("orders", order_id=oid, member_id=who, ts=ts, amount_minor=amount,
                     quantity=qty, category=np.array(CATEGORIES, dtype=object)[cat],
                     points_earned=pts)
        col = ledger.month_index(date) + self.tier_months[tier] - self.base_month
        earned = pts > 0
        np.add.at(self.buckets, (who[earned], col[earned]), pts[earned])
        self._ledger(who[earned], ts[earned], "earn", pts[earned], self._expiry_us(col[earned]),
                     oid[earned])
        m.cum_spend[who] += amount
        m.last_order_day[who] = day
        self.last_order_us[who] = ts
        self.orders_ring[who, day % 90] += 1
        return pts

    def _visits(self, day: int, date: dt.date) -> None:
        m, c, rng = self.m, self.cat, self.rng
        joined = m.signup_day <= day
        p_visit = np.clip((m.rate * 2.5 + 0.01) * (0.5 + m.engagement), 0, 0.9)
        p_visit = np.where(m.alive, p_visit, p_visit * 0.15)  # lapsed members still drop by
        visitors = np.flatnonzero(joined & (rng.random(m.n) < p_visit))
        if len(visitors) == 0:
            return
        n_exp = rng.integers(1, ROUNDS + 1, len(visitors))
        orders_90d = self.orders_ring[visitors].sum(1)
        since = day - m.last_order_day[visitors]
        young = m.age[visitors] == 0
        high = m.cum_spend[visitors] > 0
        month = ledger.month_index(date)
        soon = month + 1 - self.base_month  # buckets lapsing within about 30 days
        for r in range(ROUNDS):
            sel = n_exp > r
            who = visitors[sel]
            n = len(who)
            in_stock = np.flatnonzero(c.stock > 0)  # sold-out items are not shown again
            if n == 0 or len(in_stock) == 0:
                break
            weights = c.popularity[in_stock] / c.popularity[in_stock].sum()
            item = in_stock[rng.choice(len(in_stock), size=n, p=weights)]
            surface = _surfaces(rng, m.appetite[who])
            balance = self.buckets[who].sum(1)
            expiring = self.buckets[who, soon - 1 : soon + 1].sum(1)
            f = idx.index_factors(
                self.p.index,
                market_price=c.price_minor[item] / self.p.currency.minor_per_unit,
                perceived_discount=c.perceived_discount[item],
                points_price=c.points_price[item],
                item_discount=c.discount[item],
                balance=balance,
                orders_90d=orders_90d[sel],
                days_since_last_order=since[sel],
                young=young[sel],
                high_spender=high[sel] & idx.high_spender(
                    self.p.index, m.aov_minor[who], self.p.currency.minor_per_unit),
            )
            logit = redeem_logit(
                value_coeff=f.value_coefficient,
                demand=f.demand_match,
                behaviour=f.behaviour_weight,
                discount=f.discount_coefficient,
                expiring_share=expiring / c.points_price[item],
                affordable=balance >= c.points_price[item],
                vacuum=f.vacuum,
                price_sensitivity=m.price_sensitivity[who],
                appetite=m.appetite[who],
                category_pref=m.cat_pref[who, c.category[item]],
                surface_effect=SURFACE_EFFECT[surface],
            )
            prob = 1.0 / (1.0 + np.exp(-logit))
            prob = np.where(balance >= self.p.burning.min_points_step, prob, 0.0)
            redeem = rng.random(n) < prob
            secs = 43_200 + (r + rng.random(n)) * (43_200 / ROUNDS)
            ts = _ts(self.start, day, secs)
            if redeem.any():
                # stock is shared: in time order, redemptions past the last unit miss, and an
                # item is not shown any more once its last unit has gone
                order = np.flatnonzero(redeem)
                order = order[np.argsort(ts[order], kind="stable")]
                rank = _rank_within(item[order])
                left = c.stock[item[order]]
                redeem[order[rank >= left]] = False
                last = order[rank == left - 1]
                gone_at = np.full(c.n, np.iinfo(np.int64).max)
                gone_at[item[last]] = ts[last]
                keep = ts <= gone_at[item]
                if not keep.all():
                    who, item, surface = who[keep], item[keep], surface[keep]
                    balance, ts, redeem, prob = balance[keep], ts[keep], redeem[keep], prob[keep]
                    n = len(who)
            eid = self._next_ids("exposure", n)
            rid = np.full(n, NULL_US)
            rw = np.flatnonzero(redeem)
            if len(rw):
                rid[rw] = self._book_redemptions(who[rw], item[rw], ts[rw], balance[rw], eid[rw],
                                                 day)
            self._book_exposures(eid, who, item, ts, surface, balance, redeem, rid, prob)

    def _book_redemptions(self, who: I64, item: I64, ts: I64, balance: I64, eid: I64,
                          day: int) -> I64:
        """Redemptions of shown items by distinct members: as many whole steps of points as
        the price takes and the balance holds, burned FIFO by expiry, the rest in cash; the
        redemption ids."""
        c, m, step = self.cat, self.m, self.p.burning.min_points_step
        rid = self._next_ids("redemption", len(who))
        burn = np.minimum(c.points_price[item], balance // step * step)
        cash_price = np.round(c.price_minor[item] * c.discount[item]).astype(np.int64)
        cash = redemption.cash_for_remainder(c.points_price[item], cash_price, burn)
        self.buckets[who], _ = ledger.burn_fifo(self.buckets[who], burn)
        np.subtract.at(c.stock, item, 1)
        m.last_redeem_day[who] = day
        # members who redeem stay longer: their dropout chance shrinks
        m.dropout[who] *= 0.85
        self.buf.add("redemptions", redemption_id=rid, member_id=who, item_id=item,
                     exposure_id=eid, ts=ts, points=burn, cash_minor=cash)
        self._ledger(who, ts, "burn", -burn, ref=rid)
        return rid

    def _book_exposures(self, eid: I64, who: I64, item: I64, ts: I64, surface: I64,
                        balance: I64, redeemed: npt.NDArray[np.bool_], rid: I64,
                        prob: F64) -> None:
        """Items shown, with their outcome, and (to the oracle) their true P(redeem)."""
        self.buf.add("exposures", exposure_id=eid, member_id=who, item_id=item, ts=ts,
                     surface=np.array(SURFACES, dtype=object)[surface], balance=balance,
                     redeemed=redeemed, redemption_id=rid)
        self.buf.add("oracle_exposures", exposure_id=eid, p_redeem_7d=prob)

    # -- planted abusers ---------------------------------------------------------------------
    def _abuse(self, day: int, date: dt.date) -> None:
        """Today's abusive orders and redemptions, all in [11:00, 12:00) and carried out in
        time order, so every balance and stock check sees every earlier event."""
        a, rng = self.abusers, self.abuse_rng
        due = np.flatnonzero((a.fund_day == day) | (a.episode_day == day))
        if len(due) == 0:
            return
        slot = int(_ts(self.start, day, np.array([ABUSE_SLOT_S]))[0])
        minute = 60 * US
        actions: list[tuple[int, int, str, int]] = []  # (instant, abuser, action, argument)
        for i in (int(i) for i in due):
            member = a.member[i]
            if self.last_order_us[member] >= slot:  # a late order of its own: act tomorrow
                if a.fund_day[i] == day:
                    a.fund_day[i] += 1
                a.episode_day[i] += 1
                continue
            t0 = slot + int(rng.integers(0, 10 * minute))
            kind = ABUSER_KINDS[a.kind[i]]
            balance = int(self.buckets[member].sum())
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
                    earned[i] = self._abuse_order(member, ts, day, date, arg)
                continue
            item = self._abuse_item(member, action, arg if action == "burst" else earned.get(i, 0))
            if item is None:
                if action == "drain":  # nothing to drain into today: try again tomorrow
                    a.episode_day[i] = day + 1
                continue
            self._abuse_redeem(member, item, ts, day)
            a.from_us[i] = ts if a.from_us[i] == NULL_US else a.from_us[i]
            a.to_us[i] = ts
        for i in (int(i) for i in due):
            if a.episode_day[i] == day:
                schedule_abuse(rng, a, i, day, first=False)

    def _abuse_order(self, member: int, ts: int, day: int, date: dt.date, points: int) -> int:
        """An order of the abuser earning about `points`, by the programme rules; the points
        it earned."""
        m = self.m
        cat = np.array([int((m.cat_pref[member].cumsum() > self.abuse_rng.random()).argmax())])
        tier = ledger.tier_for_spend(self.p, m.cum_spend[[member]])
        campaign = ledger.campaign_multiplier(self.p, date)
        rate = float(self.tier_mult[tier][0] * self.cat_mult[cat][0] * campaign
                     * self.p.earning.points_per_unit)
        if rate <= 0:
            return 0
        amount = np.array([int(np.ceil(points / rate * self.p.currency.minor_per_unit))])
        pts = self._book_orders(np.array([member]), np.array([ts]), amount,
                                np.ones(1, np.int64), cat, day, date)
        return int(pts[0])

    def _abuse_item(self, member: int, action: str, arg: int) -> int | None:
        """The item an abusive redemption takes (in stock), or None when none fits.

        burst: priced at most `arg` points (the burst's budget per item); drain: priced at
        least the balance (points + cash takes all of it), else at least 90 % of it; loop:
        affordable and priced within half to one and a half times the `arg` points just earned,
        else the cheapest affordable one."""
        c = self.cat
        balance = int(self.buckets[member].sum())
        if balance < self.p.burning.min_points_step:
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
        return int(pool[self.abuse_rng.choice(len(pool), p=weights)])

    def _abuse_redeem(self, member: int, item: int, ts: int, day: int) -> None:
        """A redemption as the visits make them, of an item shown on the points centre; its
        exposure's true P(redeem) is 1."""
        who, ri, when = np.array([member]), np.array([item]), np.array([ts])
        balance = self.buckets[who].sum(1)
        eid = self._next_ids("exposure", 1)
        rid = self._book_redemptions(who, ri, when, balance, eid, day)
        self._book_exposures(eid, who, ri, when, np.array([SURFACES.index("points_centre")]),
                             balance, np.ones(1, bool), rid, np.ones(1))

    def _write_abusers(self, oracle: schema.TableSetWriter) -> int:
        a = self.abusers
        acted = a.from_us != NULL_US
        oracle.write("abusers", _arrow(dict(
            member_id=a.member[acted],
            kind=np.array(ABUSER_KINDS, dtype=object)[a.kind[acted]],
            from_ts=a.from_us[acted],
            to_ts=a.to_us[acted],
        ), schema.ORACLE_ABUSERS))
        return int(acted.sum())

    def _catalogue_day(self, day: int, date: dt.date) -> None:
        c, rng = self.cat, self.rng
        c.promo_left = np.maximum(c.promo_left - 1, 0)
        c.discount = np.where(c.promo_left > 0, c.discount, 1.0)
        start = (c.promo_left == 0) & (rng.random(c.n) < 1 / 45)
        c.promo_left[start] = 7
        c.discount[start] = rng.choice([0.7, 0.8, 0.9], size=int(start.sum()))
        replenished = np.zeros(c.n, dtype=np.int64)
        if date.weekday() == 0:
            refill = c.replenish & (c.stock < c.target_stock)
            replenished[refill] = c.target_stock[refill] - c.stock[refill]
            c.stock += replenished
        self._replenished = replenished

    def _item_days(self, day: int) -> None:
        c = self.cat
        ts = _ts(self.start, day + 1, np.zeros(c.n))
        self.buf.add(
            "item_days",
            item_id=np.arange(c.n, dtype=np.int64),
            ts=ts,
            discount_coefficient=c.discount.copy(),
            stock=c.stock.copy(),
            replenished=self._replenished,
        )

    def _oracle_churn(self, day: int, date: dt.date) -> None:
        if date.day != 1 or day == 0:
            return
        m = self.m
        who = np.flatnonzero(m.signup_day < day)
        expected = m.rate[who] * season(np.arange(day, day + 90), self.p, self.start).sum()
        p_none = np.where(m.alive[who], np.exp(-expected), 1.0)
        self.buf.add(
            "oracle_churn",
            member_id=who,
            ts=_ts(self.start, day, np.zeros(len(who))),
            p_no_order_90d=p_none,
            alive=m.alive[who].copy(),
        )

    def run(self, data_dir: Path, show_progress: bool = True) -> SimulationSummary:
        watch = Stopwatch()
        rows: dict[str, int] = {}
        oracle_schemas = {"exposures": schema.ORACLE_EXPOSURES, "churn": schema.ORACLE_CHURN,
                          "abusers": schema.ORACLE_ABUSERS}
        with (
            schema.atomic_tables(schema.tables_dir(data_dir)) as out,
            schema.atomic_tables(schema.oracle_dir(data_dir), oracle_schemas) as oracle,
        ):

            def flush() -> None:
                for name in ("orders", "ledger", "redemptions", "exposures", "item_days"):
                    if self.buf.rows(name):
                        cols = self.buf.take(name)
                        rows[name] = rows.get(name, 0) + len(next(iter(cols.values())))
                        out.write(name, _arrow(cols, schema.TABLES[name]))
                for name, target in (("oracle_exposures", "exposures"), ("oracle_churn", "churn")):
                    if self.buf.rows(name):
                        oracle.write(target, _arrow(self.buf.take(name), oracle_schemas[target]))

            self._write_items(out)
            self._open()
            with progress("simulate", self.days, unit="days") as bar:
                for day in range(self.days):
                    date = self.start + dt.timedelta(days=day)
                    self._expire(day, date)
                    self._oracle_churn(day, date)
                    self._catalogue_day(day, date)
                    self._orders(day, date)
                    self._abuse(day, date)
                    self._visits(day, date)
                    self._item_days(day)
                    if (date + dt.timedelta(days=1)).day == 1 or day == self.days - 1:
                        flush()
                    bar.update(1)
            self._write_members(out)
            acted = self._write_abusers(oracle)
            provenance.write_record(out.staging, self.record)
        rows["members"] = self.m.n
        rows["items"] = self.cat.n
        return SimulationSummary(self.m.n, self.cat.n, self.days, rows, watch.seconds, acted)

    def _write_items(self, out: schema.TableSetWriter) -> None:
        c = self.cat
        names = [f"{CATEGORIES[k]}-{i:05d}" for i, k in enumerate(c.category, start=1)]
        created = _ts(self.start, -365, np.zeros(c.n))
        out.write(
            "items",
            _arrow(
                dict(
                    item_id=np.arange(c.n, dtype=np.int64),
                    name=np.array(names, dtype=object),
                    category=np.array(CATEGORIES, dtype=object)[c.category],
                    points_class=c.points_class.astype(object),
                    market_price_minor=c.price_minor,
                    points_price=c.points_price,
                    perceived_discount=c.perceived_discount,
                    created_at=created,
                ),
                schema.ITEMS,
            ),
        )

    def _write_members(self, out: schema.TableSetWriter) -> None:
        m = self.m
        out.write(
            "members",
            _arrow(
                dict(
                    member_id=np.arange(m.n, dtype=np.int64),
                    external_id=np.full(m.n, None, dtype=object),
                    signup_at=_ts(self.start, 0, m.signup_day * SECONDS_PER_DAY),
                    age_band=np.array(AGE_BANDS, dtype=object)[m.age],
                    source=np.full(m.n, "simulated", dtype=object),
                ),
                schema.MEMBERS,
            ),
        )


def _rank_within(keys: I64) -> I64:
    """0-based occurrence number of each key among equal keys, in array order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    run = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys)) - run
    return ranks


def _arrow(cols: dict[str, Any], sch: pa.Schema) -> pa.Table:
    """The columns as a table of `sch`; every table the simulator writes passes here, and here
    (only) a member's or an item's position becomes its id, position + 1."""
    arrays = []
    for f in sch:
        values = cols[f.name]
        if pa.types.is_timestamp(f.type) or pa.types.is_integer(f.type):
            ints = values.astype(np.int64)
            if f.name in ID_COLUMNS:
                ints = ints + 1
            arr = pa.array(ints, type=pa.int64(), mask=ints == NULL_US)
            arrays.append(arr.cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=sch)


def run_simulation(
    data_dir: Path,
    *,
    members: int,
    days: int,
    seed: int,
    programme: Programme,
    start: dt.date = DEFAULT_START,
    items: int | None = None,
    show_progress: bool = True,
    abusers: float = ABUSER_SHARE,
) -> SimulationSummary:
    """Simulate a programme and write its tables (and the oracle) under `data_dir`;
    `abusers` is the share of members planted as points abusers."""
    sim = Simulator(programme, members=members, days=days, seed=seed, start=start, items=items,
                    abusers=abusers)
    return sim.run(Path(data_dir), show_progress)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


__all__ = ["SimulationSummary", "Simulator", "redeem_logit", "run_simulation"]
