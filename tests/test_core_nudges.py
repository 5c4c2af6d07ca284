"""Which nudges are due (expiry, urgent expiry, low balance, unlock) and how caps decide them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import Arm, load_programme, parse_programme
from recsvc.core.cart import NO_EXPIRY, PointsBalance
from recsvc.core.nudges import (
    CapOutcome,
    Capped,
    Nudge,
    Reservation,
    apply,
    cap_series,
    decide,
    due,
    reservation,
)
from recsvc.core.ranking import Catalogue, Member, Option, recommend
from recsvc.core.redemption import PointsCash, Reason

P = load_programme()
CONTROL = Arm(name="control", weight=1.0)
NOW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
ITEMS = Catalogue(
    item_id=np.array([201, 202, 203, 204, 205, 206], dtype=np.int64),
    category=np.array(["snacks", "books", "home", "home", "snacks", "snacks"], dtype=object),
    points_price=np.array([60, 300, 800, 5000, 50, 90], dtype=np.int64),
    market_price_minor=np.array([1000, 4000, 8000, 60000, 900, 1500], dtype=np.int64),
    perceived_discount=np.array([0.9, 0.85, 0.85, 0.8, 0.9, 0.9]),
    discount_coefficient=np.ones(6),
    stock=np.array([5, 5, 5, 5, 0, 5], dtype=np.int64),  # 205 is out of stock
)
MEMBER = Member(balance=1900, orders_90d=2, days_since_last_order=10)


def rank(member: Member, affordable_only: bool, limit: int) -> list[Option]:
    return recommend(P, CONTROL, member, ITEMS, limit=limit, affordable_only=affordable_only)


def day(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def kinds(nudges: Sequence[Nudge]) -> list[str]:
    return [n.kind for n in nudges]


def test_urgent_and_ordinary_expiry_split_the_points_most_urgent_first() -> None:
    points = PointsBalance((
        (day("2025-03-20 00:00"), 200),
        (day("2025-03-02 12:00"), 50),       # 1.5 days: urgent
        (day("2025-03-04 00:00"), 30),       # exactly 3 days: still urgent
        (day("2025-03-31 00:00"), 120),      # exactly 30 days: still a reminder
        (day("2025-04-15 00:00"), 500),      # beyond the reminder window
        (NO_EXPIRY, 1000),                   # never lapses
    ))
    got = due(P, dataclasses.replace(MEMBER, balance=points.total), points, NOW, rank)
    # most urgent first; 1,900 points are also 100 short of kitchenware (<= 20 % of 2,000)
    assert kinds(got) == ["expiry_urgent", "expiry", "unlock_close"]
    urgent, soon, unlock = got
    assert unlock.points == 100 and unlock.options == ()
    # the urgent reminder supersedes the ordinary one for the same points only
    assert (urgent.points, urgent.expires_at) == (80, day("2025-03-04 00:00"))
    assert (soon.points, soon.expires_at) == (320, day("2025-03-31 00:00"))
    assert urgent.message == "80 points expire in 3 days: use them before they lapse."
    assert soon.message == "320 points expire by 2025-03-31: use them before they lapse."
    # 80 points (under one 100-point step) pay outright for the 60-point item only; the
    # 50-point one is out of stock
    assert [(o.item_id, o.points_cash) for o in urgent.options] == [
        (201, (PointsCash(60, 0),))]
    assert urgent.options[0].expiring_points_used == 60
    # 320 points: the index with 320 as the demand ranks 202, 206, 203 (then 201, 204); the
    # 800-point item as 300 points + the cash for the other 500: 8,000 x 500 / 800 = 5,000
    assert [o.item_id for o in soon.options] == [202, 206, 203]
    assert soon.options[0].points_cash[0] == PointsCash(300, 0)  # outright, then partials
    assert soon.options[2].points_cash[0] == PointsCash(300, 5_000)
    assert all(Reason.USES_EXPIRING_POINTS in o.reasons for o in soon.options)
    # exactly the core ranking's options for a member spending those 320 points
    want = recommend(P, CONTROL, dataclasses.replace(MEMBER, balance=320, expiring_points=320),
                     ITEMS, limit=3)
    assert list(soon.options) == want


def test_only_urgent_points_give_one_urgent_nudge() -> None:
    points = PointsBalance(((day("2025-03-03 00:00"), 400), (NO_EXPIRY, 600)))
    got = due(P, dataclasses.replace(MEMBER, balance=1000), points, NOW, rank)
    assert kinds(got) == ["expiry_urgent"]
    assert got[0].points == 400 and got[0].message.startswith("400 points expire in 2 days")


def test_lapsed_and_undated_points_are_not_expiring() -> None:
    points = PointsBalance(((NOW, 70), (day("2025-02-01 00:00"), 10), (NO_EXPIRY, 1000)))
    assert due(P, dataclasses.replace(MEMBER, balance=1000), points, NOW, rank) == []


def test_low_balance_offers_what_the_balance_still_buys() -> None:
    points = PointsBalance(((NO_EXPIRY, 60),))
    got = due(P, dataclasses.replace(MEMBER, balance=60), points, NOW, rank)
    assert kinds(got) == ["low_balance"]
    assert got[0].points == 60 and got[0].expires_at is None
    assert [(o.item_id, o.points_cash) for o in got[0].options] == [(201, (PointsCash(60, 0),))]
    assert got[0].message == ("You have 60 points left: use them, or earn more with your next "
                              "order.")
    # the line is strict, and no points means nothing left to buy (nor a cold start to nudge)
    for balance in (0, 100):
        assert due(P, dataclasses.replace(MEMBER, balance=balance),
                   PointsBalance(((NO_EXPIRY, balance),)), NOW, rank) == []
    # points lapsing soon and a low balance: both reminders, the expiry first
    soon = PointsBalance(((day("2025-03-10 00:00"), 60),))
    both = due(P, dataclasses.replace(MEMBER, balance=60), soon, NOW, rank)
    assert kinds(both) == ["expiry", "low_balance"]


def test_an_unlock_close_by_gives_the_spend_that_reaches_it() -> None:
    def unlocks(balance: int, tier_multiplier: float = 1.0) -> list[tuple[object, ...]]:
        member = dataclasses.replace(MEMBER, balance=balance, tier_multiplier=tier_multiplier)
        return [(n.kind, n.points, n.unlock.category, n.unlock.spend_to_unlock_minor, n.message)
                for n in due(P, member, PointsBalance(((NO_EXPIRY, balance),)), NOW, rank)
                if n.unlock is not None]

    assert unlocks(1599) == []  # a gap of 401 > 20 % of 2,000
    assert unlocks(1600) == [("unlock_close", 400, "kitchenware", 40_000,
                              "400 more points unlock kitchenware: spend 400.00 to get there.")]
    assert unlocks(1999)[0][1:4] == (1, "kitchenware", 100)
    assert unlocks(2000) == []  # open already; furniture is 3,000 away (> 1,000)
    assert unlocks(4000)[0][1:3] == (1000, "furniture")
    # gold earns 1.2 points per unit: 400 points take ceil(400 / 1.2) = 334 units
    assert unlocks(1600, 1.2)[0][3] == 33_400


def test_caps_that_apply_follow_kind_and_channel() -> None:
    p = parse_programme({"nudges": {"caps": [
        {"name": "expiry_push", "kind": "expiry", "channel": "push", "max": 1,
         "window_hours": 24},
        {"name": "expiry_any", "kind": "expiry", "max": 2, "window_hours": 168},
        {"name": "item_push", "kind": "item", "channel": "push", "max": 3, "window_hours": 24},
        {"name": "unlock_any", "kind": "unlock_close", "max": 1, "window_hours": 168},
    ]}})
    points = PointsBalance(((day("2025-03-20 00:00"), 320),))
    nudge = due(p, dataclasses.replace(MEMBER, balance=320), points, NOW, rank)[0]
    push = reservation(p, nudge, "push")
    assert [c.name for c in push.caps] == ["expiry_push", "expiry_any"]
    assert [(item, [c.name for c in caps]) for item, caps in push.items] == [
        (202, ["item_push"]), (206, ["item_push"]), (203, ["item_push"])]
    email = reservation(p, nudge, "email")
    assert [c.name for c in email.caps] == ["expiry_any"] and email.items == ()
    withheld, dropped = cap_series(p)
    assert withheld == [("expiry", "expiry_push"), ("expiry", "expiry_any"),
                        ("unlock_close", "unlock_any")]
    assert dropped == [("expiry_urgent", "item_push"), ("expiry", "item_push"),
                       ("low_balance", "item_push")]


def _caps() -> tuple[Reservation, Reservation, Reservation]:
    caps = {c.name: c for c in P.nudges.caps}
    item = (caps["same_item_daily"],)
    urgent = Reservation("expiry_urgent", (caps["urgent_daily"],), ((7, item), (8, item)))
    expiry = Reservation("expiry", (caps["expiry_weekly"],), ((8, item), (9, item)))
    unlock = Reservation("unlock_close", (caps["unlock_weekly"],), ())
    return urgent, expiry, unlock


def test_decide_grants_all_or_nothing_and_drops_items_over_their_cap() -> None:
    urgent, expiry, unlock = _caps()
    outcomes, record = decide([urgent, expiry, unlock], {
        ("expiry_weekly", None): 0, ("urgent_daily", None): 0, ("unlock_weekly", None): 1,
        ("same_item_daily", 7): 3, ("same_item_daily", 8): 2})
    assert outcomes == [
        CapOutcome(True, "", ((7, "same_item_daily"),)),   # item 7 shown 3 times today
        CapOutcome(True, "", ((8, "same_item_daily"),)),   # the urgent nudge took item 8's last
        CapOutcome(False, "unlock_weekly"),
    ]
    assert record == [("same_item_daily", 8), ("urgent_daily", None),
                      ("same_item_daily", 9), ("expiry_weekly", None)]
    # a second call with those counts: the kind caps are full, nothing is recorded
    counts = {("urgent_daily", None): 1, ("expiry_weekly", None): 1}
    again, nothing = decide([urgent, expiry], counts)
    assert again == [CapOutcome(False, "urgent_daily"), CapOutcome(False, "expiry_weekly")]
    assert nothing == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=3, max_size=3),
       st.lists(st.integers(0, 4), min_size=3, max_size=3),
       st.lists(st.sampled_from([0, 1, 2]), min_size=0, max_size=6))
def test_decide_never_takes_a_cap_past_its_max(kind_counts: list[int], item_counts: list[int],
                                                order: list[int]) -> None:
    reservations = [_caps()[i] for i in order]
    names = ("urgent_daily", "expiry_weekly", "unlock_weekly")
    counts: dict[tuple[str, int | None], int] = {(n, None): c for n, c in
                                                 zip(names, kind_counts, strict=True)}
    counts |= {("same_item_daily", i): c for i, c in zip((7, 8, 9), item_counts, strict=True)}
    maxima = {c.name: c.max for c in P.nudges.caps}
    _, record = decide(reservations, counts)
    for key in set(record):
        assert counts.get(key, 0) + record.count(key) <= maxima[key[0]]


def test_apply_withholds_and_drops_items() -> None:
    points = PointsBalance(((day("2025-03-02 00:00"), 80), (day("2025-03-20 00:00"), 320)))
    urgent, soon = due(P, dataclasses.replace(MEMBER, balance=400), points, NOW, rank)
    delivered, withheld, dropped = apply(
        [urgent, soon], [CapOutcome(False, "urgent_daily"),
                         CapOutcome(True, "", ((206, "same_item_daily"),))])
    assert withheld == [Capped("expiry_urgent", "urgent_daily")]
    assert dropped == [Capped("expiry", "same_item_daily", 206)]
    assert [n.kind for n in delivered] == ["expiry"]
    assert [o.item_id for o in delivered[0].options] == [202, 203]
    assert delivered[0].points == 320  # the nudge stays; only the item goes
