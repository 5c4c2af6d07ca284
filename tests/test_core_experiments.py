"""Experiment arms: stable, weighted assignment and per-arm overrides."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsvc.config import load_programme, parse_programme
from recsvc.core.experiments import ArmAssigner, hint_threshold
from recsvc.errors import ConfigError

P = load_programme()


def test_default_programme_runs_two_arms_half_and_half() -> None:
    assigner = ArmAssigner(P.experiments)
    counts = {a.name: 0 for a in P.experiments.arms}
    for member in range(20_000):
        counts[assigner.arm(member).name] += 1
    assert set(counts) == {"control", "propensity_heavy"}
    assert all(abs(n / 20_000 - 0.5) < 0.02 for n in counts.values())


@given(member=st.integers(-(2**63), 2**63 - 1))
def test_assignment_is_stable_and_salted(member: int) -> None:
    a, b = ArmAssigner(P.experiments), ArmAssigner(P.experiments)
    assert a.arm(member) == b.arm(member)
    assert 0.0 <= a.point(member) < 1.0


def test_weights_and_overrides() -> None:
    prog = parse_programme({"experiments": {"salt": "s2", "arms": [
        {"name": "a", "weight": 9}, {"name": "b", "weight": 1, "hint_threshold": 0.08}]}})
    assigner = ArmAssigner(prog.experiments)
    share_b = sum(assigner.arm(m).name == "b" for m in range(20_000)) / 20_000
    assert abs(share_b - 0.1) < 0.01
    b = assigner.named("b")
    assert b is not None and hint_threshold(b, prog.index) == 0.08
    a = assigner.named("a")
    assert a is not None and hint_threshold(a, prog.index) == prog.index.hint_threshold
    assert assigner.named("zzz") is None
    # another salt reshuffles members
    other = ArmAssigner(parse_programme({"experiments": {"salt": "s3", "arms": [
        {"name": "a", "weight": 9}, {"name": "b", "weight": 1}]}}).experiments)
    assert any(assigner.arm(m).name != other.arm(m).name for m in range(200))


@pytest.mark.parametrize("arms", [
    [], [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}],
    [{"name": "a", "weight": 0}], [{"name": "Bad Name", "weight": 1}]])
def test_bad_arms_fail_at_load(arms: list) -> None:
    with pytest.raises(ConfigError, match="experiments"):
        parse_programme({"experiments": {"arms": arms}})
