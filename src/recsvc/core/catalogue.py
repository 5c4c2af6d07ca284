"""The catalogue's similarity: alternates for out-of-stock items (SPEC §3); the inventory rules
are `recsvc.core.inventory`.

Pure numpy over the catalogue as parallel arrays (one entry per item); no I/O. The service uses
`alternates` on the hint path, `recsvc catalogue-report` for the popular items out of stock.

Similarity of an in-stock item j to the out-of-stock item i it may replace, in [0, 1]:

    s = (0.40 [same category] + 0.20 [same points class]
         + 0.25 (½ [same gift band] + ½ closeness) + 0.15 propensity_j) / 1.00
    closeness = max(0, 1 - |ln(points_price_j / points_price_i)| / ln 4)

closeness is 1 at the same points price, ½ at twice or half of it, 0 from four times apart.
Without a propensity (no model answering; the catalogue report) its term is left out and the
rest divided by 0.85, so s stays in [0, 1]. Alternates are the most similar, ties to the lower
item id, never the item itself and never out of stock. Reasons: SAME_CATEGORY,
SAME_POINTS_CLASS, SIMILAR_POINTS_PRICE (same gift band and within a factor of 2),
HIGH_PROPENSITY (propensity >= recsvc.core.redemption.HIGH_PROPENSITY).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core.redemption import HIGH_PROPENSITY, Reason

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Obj = npt.NDArray[np.object_]

PRICE_SPAN = 4.0
"""Points prices this many times apart have no price closeness left."""
SIMILAR_PRICE_RATIO = 2.0
"""Within this factor (and in the same gift band) an alternate's price is "similar"."""
SHORTLIST = 50
"""Most candidates per item scored by the propensity model (the similarity's best)."""
BLOCK_CELLS = 1 << 16


@dataclass(frozen=True)
class Weights:
    """How much each likeness counts in the similarity (they sum to 1)."""

    category: float = 0.40
    points_class: float = 0.20
    price: float = 0.25
    propensity: float = 0.15


SIMILARITY = Weights()


class Alternate(NamedTuple):
    """An in-stock item offered in place of an out-of-stock one."""

    position: int  # in the catalogue arrays
    item_id: int
    points_price: int
    category: str
    similarity: float
    propensity: float | None
    reasons: tuple[Reason, ...]


Propensity = Callable[[I64], F64]
"""Scores catalogue positions: the member's P(redeem) for the items there."""


def gift_band(programme: Programme, points_price: Any) -> I64:
    """0 low (< gifts.low_below points), 1 mid, 2 high (> gifts.high_above), SPEC §3."""
    p = np.asarray(points_price, dtype=np.int64)
    g = programme.gifts
    return np.where(p < g.low_below, 0, np.where(p > g.high_above, 2, 1)).astype(np.int64)


def _log_price(points_price: Any) -> F64:
    """ln of each points price; NaN where it is not > 0 (no closeness to anything)."""
    p = np.asarray(points_price, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), np.nan)


def _closeness(log_ratio: F64) -> F64:
    # fmax, not maximum: a NaN (a price not > 0) gives 0
    return np.fmax(1.0 - np.abs(log_ratio) / math.log(PRICE_SPAN), 0.0)


def price_closeness(points_price: Any, other: Any) -> F64:
    """1 - |ln(a / b)| / ln(PRICE_SPAN), clipped to [0, 1]; 0 where a price is not > 0."""
    return _closeness(_log_price(points_price) - _log_price(other))


def _codes(values: Obj) -> I64:
    """The same small integer for equal values (comparing integers is 100 times cheaper)."""
    seen: dict[Any, int] = {}
    return np.fromiter((seen.setdefault(v, len(seen)) for v in values.tolist()),
                       dtype=np.int64, count=len(values))


@dataclass(frozen=True)
class Attributes:
    """What the similarity looks at, one entry per catalogue item, prepared once per catalogue
    load (the service builds it when it loads the items, not per request)."""

    item_id: I64
    category: Obj
    points_class: Obj
    points_price: I64
    stock: I64
    category_code: I64
    class_code: I64
    log_price: F64
    _bands: dict[tuple[int, int], I64] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)
    """gift_band of the items per (gifts.low_below, gifts.high_above), its only other inputs."""
    _near: dict[tuple[Any, ...], dict[int, tuple[I64, F64]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """Per (weights, count, margin, gift bands): each target's candidates and their similarity
    without propensity, which depend on the catalogue load alone, not on the member."""

    @classmethod
    def build(cls, item_id: Any, category: Any, points_class: Any, points_price: Any,
              stock: Any) -> Attributes:
        cats = np.asarray(category, dtype=object)
        classes = np.asarray(points_class, dtype=object)
        prices = np.asarray(points_price, dtype=np.int64)
        return cls(np.asarray(item_id, dtype=np.int64), cats, classes, prices,
                   np.asarray(stock, dtype=np.int64), _codes(cats), _codes(classes),
                   _log_price(prices))

    def __len__(self) -> int:
        return len(self.item_id)

    def gift_band(self, programme: Programme) -> I64:
        """`gift_band` of every item (read-only), worked out once per catalogue load and gift
        thresholds rather than on every `alternates` call."""
        g = programme.gifts
        key = (g.low_below, g.high_above)
        band = self._bands.get(key)
        if band is None:  # two threads may both work it out: the same array either way
            band = gift_band(programme, self.points_price)
            band.flags.writeable = False
            self._bands[key] = band
        return band


def alternates(
    programme: Programme,
    items: Attributes,
    targets: Any,
    *,
    propensity: F64 | Propensity | None = None,
    count: int | None = None,
    shortlist: int = SHORTLIST,
    weights: Weights = SIMILARITY,
) -> list[tuple[Alternate, ...]]:
    """For each catalogue position in `targets`, the `count` (default inventory.alternates)
    in-stock items most similar to it, most similar first (ties: lower item id first); fewer
    only when fewer other items are in stock.

    `propensity` is one probability per catalogue item, or a function scoring positions (only
    the similarity's best are scored: every item whose similarity without propensity is within
    the propensity weight of the count-th best, at most `shortlist` of them); None leaves the
    propensity out of the similarity.
    """
    count = programme.inventory.alternates if count is None else count
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    n = len(items)
    if len(t) == 0 or count <= 0 or n == 0:
        return [() for _ in t]
    w = weights
    band = items.gift_band(programme)
    margin = 0.0 if propensity is None else w.propensity
    g = programme.gifts
    memo = items._near.setdefault((w, count, margin, g.low_below, g.high_above), {})
    todo = np.asarray([x for x in dict.fromkeys(t.tolist()) if x not in memo], dtype=np.int64)
    # targets a block at a time: a (100 x 3,000) matrix is fresh memory the kernel has to map
    # (milliseconds); a block of ~64k cells is reused from the allocator's cache
    step = max(1, BLOCK_CELLS // n)
    for a in range(0, len(todo), step):
        block = todo[a:a + step]
        r, c, v = _near(items, band, block, w, count, margin)
        cuts = np.searchsorted(r, np.arange(len(block) + 1))  # rows come out in order
        for j, target in enumerate(block.tolist()):
            memo[target] = (c[cuts[j]:cuts[j + 1]], v[cuts[j]:cuts[j + 1]])
    found = [memo[x] for x in t.tolist()]
    rows = np.repeat(np.arange(len(t)), [len(c) for c, _ in found])
    cols = np.concatenate([c for c, _ in found])
    similarity = np.concatenate([v for _, v in found])
    prob: F64 | None = None
    if propensity is not None:
        rows, cols, similarity = _first(rows, cols, similarity, items.item_id,
                                        max(shortlist, count))
        prob = np.full(n, np.nan)
        union = np.unique(cols)
        if len(union):
            got = propensity(union) if callable(propensity) else propensity[union]
            prob[union] = np.asarray(got, dtype=np.float64)
        similarity = similarity + w.propensity * np.clip(np.nan_to_num(prob[cols]), 0.0, 1.0)
    else:
        similarity = similarity / (1.0 - w.propensity)
    rows, cols, similarity = _first(rows, cols, similarity, items.item_id, count)
    target = t[rows]
    same_cat = items.category_code[target] == items.category_code[cols]
    same_cls = items.class_code[target] == items.class_code[cols]
    similar_price = (band[target] == band[cols]) & (
        _closeness(items.log_price[cols] - items.log_price[target]) >= _SIMILAR_CLOSENESS)
    p_of = prob[cols] if prob is not None else np.full(len(cols), np.nan)
    out: list[list[Alternate]] = [[] for _ in t]
    for r, j, sim, p, cat, cls, price in zip(
            rows.tolist(), cols.tolist(), similarity.tolist(), p_of.tolist(), same_cat.tolist(),
            same_cls.tolist(), similar_price.tolist(), strict=True):
        has_p = not math.isnan(p)
        reasons = tuple(reason for reason, on in (
            (Reason.SAME_CATEGORY, cat), (Reason.SAME_POINTS_CLASS, cls),
            (Reason.SIMILAR_POINTS_PRICE, price),
            (Reason.HIGH_PROPENSITY, has_p and p >= HIGH_PROPENSITY)) if on)
        out[r].append(Alternate(j, int(items.item_id[j]), int(items.points_price[j]),
                                str(items.category[j]), min(max(sim, 0.0), 1.0),
                                p if has_p else None, reasons))
    return [tuple(a) for a in out]


def _near(items: Attributes, band: I64, t: I64, w: Weights, count: int,
          margin: float) -> tuple[I64, I64, F64]:
    """(row, catalogue position, similarity without propensity) of the items in stock, other
    than the target, at most `margin` below the count-th best of each target's row."""
    n = len(items)
    log_price = items.log_price
    base = np.subtract(log_price[None, :], log_price[t][:, None])  # one row per target
    np.abs(base, out=base)  # in place: no temporary the size of the matrix per term
    base *= -0.5 * w.price / math.log(PRICE_SPAN)
    base += 0.5 * w.price
    np.fmax(base, 0.0, out=base)  # the closeness term (NaN, a price not > 0: 0)
    for codes, weight in ((items.category_code, w.category), (items.class_code, w.points_class),
                          (band, 0.5 * w.price)):
        np.add(base, weight, out=base, where=codes[t][:, None] == codes[None, :])
    base[:, items.stock <= 0] = -np.inf
    base[np.arange(len(t)), t] = -np.inf  # never the item itself
    # the count-th best, repeats counted: take the best away count - 1 times (O(n) a row;
    # np.partition is ten times slower on rows with this many ties)
    work = base.copy()
    every = np.arange(len(t))
    for _ in range(min(count, n) - 1):
        work[every, work.argmax(axis=1)] = -np.inf
    kth = work.max(axis=1)
    floor = np.where(np.isfinite(kth), kth - margin, -1.0)  # -1: every item in stock
    rows, cols = np.nonzero(base >= floor[:, None])
    return rows, cols, base[rows, cols]


def _first(rows: I64, cols: I64, score: F64, item_id: I64,
           count: int) -> tuple[I64, I64, F64]:
    """Per row, the `count` best (highest score, then lowest item id), in that order."""
    order = np.lexsort((item_id[cols], -score, rows))
    rows, cols, score = rows[order], cols[order], score[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < count
    return rows[keep], cols[keep], score[keep]


_SIMILAR_CLOSENESS = 1.0 - math.log(SIMILAR_PRICE_RATIO) / math.log(PRICE_SPAN) - 1e-12
