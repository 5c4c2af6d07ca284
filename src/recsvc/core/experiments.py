"""Experiment arms: a member's arm is a stable, weighted hash of the salt and the member id."""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from recsvc.config import Arm, Experiments, IndexRules


class ArmAssigner:
    """Assigns members to arms; the same member always gets the same arm for the same salt."""

    def __init__(self, experiments: Experiments) -> None:
        self.salt = experiments.salt.encode()
        self.arms = experiments.arms
        total = sum(a.weight for a in self.arms)
        self._cuts = list(accumulate(a.weight / total for a in self.arms))
        self._by_name = {a.name: a for a in self.arms}

    def point(self, member_id: int) -> float:
        """The member's position in [0, 1): the first 8 bytes of BLAKE2b(salt, member id)."""
        digest = hashlib.blake2b(self.salt + b":" + str(member_id).encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") / 2**64

    def arm(self, member_id: int) -> Arm:
        i = bisect_right(self._cuts, self.point(member_id))
        return self.arms[min(i, len(self.arms) - 1)]

    def named(self, name: str) -> Arm | None:
        """An arm forced by name (previews and tests), or None when there is no such arm."""
        return self._by_name.get(name)


def hint_threshold(arm: Arm, rules: IndexRules) -> float:
    """The arm's threshold for the hint rule, else the programme's."""
    return rules.hint_threshold if arm.hint_threshold is None else arm.hint_threshold
