"""A loyalty-programme simulator with known ground truth, for learning and judging models.

Members follow a buy-till-you-die process (BG/NBD-like): each has a latent purchase rate and,
after every order, a latent chance of dropping out for good, so churn is real and partly
predictable from behaviour. Orders earn points by the programme rules; points lapse at month
ends (FIFO by expiry); members are shown catalogue items on three surfaces and redeem with a
probability given by a *known* function of the index factors, the points about to expire and
latent traits (`recsvc.offline.behaviour`, the ground truth). The true probabilities go to a
separate oracle directory that no training code reads. A few members are planted points abusers
(`recsvc.offline.abuse`), acting through the same booking as everyone else.

Time runs day by day over all members at once (numpy vectors), because stock is shared between
members. Within a day, orders fall in [00:00, 12:00), the abusers act in [11:00, 12:00), and
the visits with their exposures and redemptions in [12:00, 24:00), in rounds, so every balance
check sees every earlier event. Output is flushed every month (`recsvc.offline.sim_tables`), so
memory stays bounded by the member state, not the history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core import index as idx
from recsvc.core import ledger, redemption
from recsvc.core.ledger import US
from recsvc.data import provenance, schema
from recsvc.data.columns import NULL_US
from recsvc.offline.abuse import ABUSER_SHARE, AbuseActor
from recsvc.offline.behaviour import SURFACE_EFFECT, SURFACES, redeem_logit, season, surfaces
from recsvc.offline.population import CATEGORIES, make_catalogue, make_members
from recsvc.offline.sim_tables import Buffers, day_us, to_arrow, write_items, write_members
from recsvc.progress import Stopwatch, progress

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEFAULT_START = dt.date(2025, 1, 1)
ROUNDS = 4  # exposures per visit at most


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
# The simulation.
# --------------------------------------------------------------------------------------------
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
        self.buf = Buffers()
        self.season = season(np.arange(days + 100), programme, start)
        self.last_order_us = np.full(members, NULL_US)  # each member's latest order instant
        # drawn after everything above, from a stream of their own
        self.abuse = AbuseActor(self, seed, abusers)

    def next_ids(self, kind: str, n: int) -> I64:
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
            entry_id=self.next_ids("entry", n),
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
        ts = day_us(self.start, 0, np.zeros(len(who)))
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
            self._ledger(lapsed, day_us(self.start, day, np.zeros(len(lapsed))), "expire", -pts)

    def _orders(self, day: int, date: dt.date) -> None:
        m, rng = self.m, self.rng
        active = np.flatnonzero(m.alive & (m.signup_day <= day))
        count = rng.poisson(m.rate[active] * self.season[day])
        self.orders_ring[:, day % 90] = 0
        for k in range(1, int(count.max(initial=0)) + 1):  # k-th order of the day, in time order
            who = active[count >= k]
            n = len(who)
            secs = (k - 1 + rng.random(n)) * (43_200 / (count[count >= k] + 1))
            ts = day_us(self.start, day, secs)
            cat = (m.cat_pref[who].cumsum(1) > rng.random((n, 1))).argmax(1)
            amount = np.round(m.aov_minor[who] * np.exp(rng.normal(0, 0.5, n))).astype(np.int64)
            qty = 1 + rng.poisson(0.6, n)
            self.book_orders(who, ts, amount, qty, cat, day, date)
            # buy till you die: after each order a member may drop out for good
            m.alive[who] &= rng.random(n) >= m.dropout[who]

    def book_orders(self, who: I64, ts: I64, amount: I64, qty: I64, cat: I64, day: int,
                     date: dt.date) -> I64:
        """Orders of distinct members: written, earning points by the rules (tier, category,
        campaign) into the expiry bucket of their tier; the points each earned."""
        m = self.m
        tier = ledger.tier_for_spend(self.p, m.cum_spend[who])
        pts = ledger.points_earned(self.p, amount, self.tier_mult[tier], self.cat_mult[cat],
                                   ledger.campaign_multiplier(self.p, date))
        oid = self.next_ids("order", len(who))
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
            surface = surfaces(rng, m.appetite[who])
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
            ts = day_us(self.start, day, secs)
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
            eid = self.next_ids("exposure", n)
            rid = np.full(n, NULL_US)
            rw = np.flatnonzero(redeem)
            if len(rw):
                rid[rw] = self.book_redemptions(who[rw], item[rw], ts[rw], balance[rw], eid[rw],
                                                 day)
            self.book_exposures(eid, who, item, ts, surface, balance, redeem, rid, prob)

    def book_redemptions(self, who: I64, item: I64, ts: I64, balance: I64, eid: I64,
                          day: int) -> I64:
        """Redemptions of shown items by distinct members: as many whole steps of points as
        the price takes and the balance holds, burned FIFO by expiry, the rest in cash; the
        redemption ids."""
        c, m, step = self.cat, self.m, self.p.burning.min_points_step
        rid = self.next_ids("redemption", len(who))
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

    def book_exposures(self, eid: I64, who: I64, item: I64, ts: I64, surface: I64,
                        balance: I64, redeemed: npt.NDArray[np.bool_], rid: I64,
                        prob: F64) -> None:
        """Items shown, with their outcome, and (to the oracle) their true P(redeem)."""
        self.buf.add("exposures", exposure_id=eid, member_id=who, item_id=item, ts=ts,
                     surface=np.array(SURFACES, dtype=object)[surface], balance=balance,
                     redeemed=redeemed, redemption_id=rid)
        self.buf.add("oracle_exposures", exposure_id=eid, p_redeem_7d=prob)

    def _item_days(self, day: int) -> None:
        c = self.cat
        ts = day_us(self.start, day + 1, np.zeros(c.n))
        self.buf.add(
            "item_days",
            item_id=np.arange(c.n, dtype=np.int64),
            ts=ts,
            discount_coefficient=c.discount.copy(),
            stock=c.stock.copy(),
            replenished=c.replenished,
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
            ts=day_us(self.start, day, np.zeros(len(who))),
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
                        out.write(name, to_arrow(cols, schema.TABLES[name]))
                for name, target in (("oracle_exposures", "exposures"), ("oracle_churn", "churn")):
                    if self.buf.rows(name):
                        oracle.write(target, to_arrow(self.buf.take(name), oracle_schemas[target]))

            write_items(out, self.cat, self.start)
            self._open()
            with progress("simulate", self.days, unit="days") as bar:
                for day in range(self.days):
                    date = self.start + dt.timedelta(days=day)
                    self._expire(day, date)
                    self._oracle_churn(day, date)
                    self.cat.new_day(self.rng, date)
                    self._orders(day, date)
                    self.abuse.act(day, date)
                    self._visits(day, date)
                    self._item_days(day)
                    if (date + dt.timedelta(days=1)).day == 1 or day == self.days - 1:
                        flush()
                    bar.update(1)
            write_members(out, self.m, self.start)
            acted = self.abuse.write(oracle)
            provenance.write_record(out.staging, self.record)
        rows["members"] = self.m.n
        rows["items"] = self.cat.n
        return SimulationSummary(self.m.n, self.cat.n, self.days, rows, watch.seconds, acted)


def _rank_within(keys: I64) -> I64:
    """0-based occurrence number of each key among equal keys, in array order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    run = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys)) - run
    return ranks


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


__all__ = ["ABUSER_SHARE", "DEFAULT_START", "SimulationSummary", "Simulator", "run_simulation"]
