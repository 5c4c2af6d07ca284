"""RFM segments, risk bands and the action table: hand-made members and a property test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsvc.core import segments as seg
from recsvc.errors import InvalidArgument

NEVER = math.inf

# hand-set cut points so the cases below read on their own
T = seg.RfmThresholds(
    dormant_recency_days=120.0,
    new_tenure_days=60.0,
    low_frequency=1.0,
    loyal_recency_days=30.0,
    loyal_frequency=6.0,
    loyal_monetary=1000.0,
)


@pytest.mark.parametrize(
    ("recency", "frequency", "monetary", "tenure", "expected"),
    [
        # dormant: a buyer idle beyond the cut, or a member who never bought and is old enough
        (121.0, 10, 5000.0, 900.0, "dormant"),
        (200.0, 1, 20.0, 400.0, "dormant"),
        (NEVER, 0, 0.0, 121.0, "dormant"),
        (float("nan"), 0, float("nan"), 500.0, "dormant"),
        # loyal: high R, F and M, even when new
        (30.0, 6, 1000.0, 700.0, "loyal"),
        (2.0, 12, 8000.0, 40.0, "loyal"),
        # potential: new, never bought (not yet dormant), or low frequency
        (10.0, 3, 300.0, 20.0, "potential"),
        (NEVER, 0, 0.0, 90.0, "potential"),
        (NEVER, 0, 0.0, float("nan"), "potential"),
        (5.0, 1, 5000.0, 300.0, "potential"),
        # ordinary: the middle; any one of R, F, M short of loyal
        (31.0, 6, 1000.0, 700.0, "ordinary"),
        (10.0, 5, 1000.0, 700.0, "ordinary"),
        (10.0, 6, 999.0, 700.0, "ordinary"),
        (120.0, 2, 100.0, 365.0, "ordinary"),
    ],
)
def test_hand_made_members(
    recency: float, frequency: int, monetary: float, tenure: float, expected: str
) -> None:
    assert seg.segment(T, recency, frequency, monetary, tenure) == expected


def test_segment_is_vectorised_and_equals_member_by_member() -> None:
    rec = np.array([121.0, 30.0, 10.0, 31.0, NEVER])
    freq = np.array([10, 6, 3, 6, 0])
    mon = np.array([5000.0, 1000.0, 300.0, 1000.0, 0.0])
    ten = np.array([900.0, 700.0, 20.0, 700.0, 10.0])
    got = seg.segment(T, rec, freq, mon, ten)
    assert got.tolist() == ["dormant", "loyal", "potential", "ordinary", "potential"]
    one_by_one = [seg.segment(T, *row) for row in zip(rec, freq, mon, ten, strict=True)]
    assert got.tolist() == one_by_one


def test_thresholds_are_learned_by_quantiles_over_buyers() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    freq = rng.geometric(0.5, n).astype(float)  # most buy once or twice
    rec = rng.uniform(0, 365, n)
    mon = freq * rng.gamma(2.0, 40.0, n)
    # members who never bought must not move the cut points
    rec_all = np.concatenate([rec, np.full(5_000, np.nan)])
    freq_all = np.concatenate([freq, np.zeros(5_000)])
    mon_all = np.concatenate([mon, np.zeros(5_000)])
    t = seg.fit_rfm_thresholds(rec_all, freq_all, mon_all)
    assert t.n_buyers == n
    assert t.dormant_recency_days == pytest.approx(np.quantile(rec, 0.8))
    assert t.loyal_recency_days == pytest.approx(np.quantile(rec, 0.5))
    assert t.low_frequency == 1.0
    assert t.loyal_frequency == np.quantile(freq, 0.75)
    assert t.loyal_monetary == pytest.approx(np.quantile(mon, 0.75))
    names = seg.segment(t, rec, freq, mon, np.full(n, 400.0))
    shares = {s: float(np.mean(names == s)) for s in seg.SEGMENTS}
    assert shares["dormant"] == pytest.approx(0.2, abs=0.01)
    assert 0.02 < shares["loyal"] < 0.2
    assert all(shares[s] > 0 for s in seg.SEGMENTS)


def test_dormant_cut_has_a_floor_when_everyone_is_active() -> None:
    rec = np.linspace(0, 20, 100)
    t = seg.fit_rfm_thresholds(rec, np.full(100, 3.0), np.full(100, 50.0))
    assert t.dormant_recency_days == 60.0
    assert not np.any(seg.segment(t, rec, 3.0, 50.0, 365.0) == "dormant")


def test_thresholds_round_trip_through_json() -> None:
    t = seg.fit_rfm_thresholds([1.0, 50.0, 300.0], [1, 4, 9], [10.0, 200.0, 900.0])
    again = seg.RfmThresholds.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t
    with pytest.raises(InvalidArgument, match="unknown key"):
        seg.RfmThresholds.from_dict({**t.to_dict(), "surprise": 1})
    with pytest.raises(InvalidArgument, match="rule"):
        seg.RfmThresholds.from_dict({**t.to_dict(), "rule": "something-else"})


def test_fitting_needs_buyers_and_sane_inputs() -> None:
    with pytest.raises(InvalidArgument, match="no member with a purchase"):
        seg.fit_rfm_thresholds([np.nan, np.nan], [0, 0], [0, 0])
    with pytest.raises(InvalidArgument, match="recency_days"):
        seg.fit_rfm_thresholds([-1.0], [1], [1.0])
    with pytest.raises(InvalidArgument, match="high_quantile"):
        seg.fit_rfm_thresholds([1.0], [1], [1.0], high_quantile=1.5)


@pytest.mark.parametrize("field", ["recency_days", "frequency", "tenure_days"])
def test_negative_inputs_are_named(field: str) -> None:
    args = {"recency_days": 1.0, "frequency": 1.0, "monetary": 1.0, "tenure_days": 1.0}
    args[field] = -1.0
    with pytest.raises(InvalidArgument) as err:
        seg.segment(T, **args)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("prob", "expected"),
    [
        (0.0, "low"),
        (0.2999, "low"),
        (0.3, "medium"),
        (0.5999, "medium"),
        (0.6, "high"),
        (1, "high"),
    ],
)
def test_band_edges(prob: float, expected: str) -> None:
    assert seg.band(prob) == expected


def test_band_is_vectorised_with_configurable_cuts() -> None:
    got = seg.band(np.array([0.05, 0.15, 0.5]), cuts=(0.1, 0.2))
    assert got.tolist() == ["low", "medium", "high"]


@pytest.mark.parametrize("prob", [-0.01, 1.01, float("nan")])
def test_band_rejects_non_probabilities(prob: float) -> None:
    with pytest.raises(InvalidArgument) as err:
        seg.band(prob)
    assert err.value.field == "churn_probability"


@pytest.mark.parametrize("cuts", [(0.6, 0.3), (0.0, 0.5), (0.3, 1.2), (0.4, 0.4)])
def test_band_rejects_bad_cuts(cuts: tuple[float, float]) -> None:
    with pytest.raises(InvalidArgument, match="band_cuts"):
        seg.band(0.5, cuts=cuts)


@pytest.mark.parametrize("segment", seg.SEGMENTS)
@pytest.mark.parametrize("band", seg.BANDS)
def test_every_segment_and_band_has_an_action(segment: str, band: str) -> None:
    code, description = seg.recommended_action(segment, band)
    assert code.startswith(segment + "_")
    assert description.endswith(".")
    assert seg.ACTION_DESCRIPTIONS[code] == description


def test_actions_follow_spec_defaults_and_escalate_with_risk() -> None:
    low = {s: seg.recommended_action(s, "low") for s in seg.SEGMENTS}
    assert "acceleration" in low["loyal"].description and "perks" in low["loyal"].description
    assert "streak" in low["potential"].description and "invite" in low["potential"].description
    assert "expiry reminder" in low["dormant"].description.lower()
    assert "earning paths" in low["ordinary"].description
    assert "revival pack" in seg.recommended_action("dormant", "high").description.lower()
    assert "targeted redemption" in seg.recommended_action("dormant", "medium").description
    assert seg.recommended_action("loyal", "high").code == "loyal_retention_offer"
    assert len({a.code for a in seg.ACTIONS.values()}) == 12


def test_unknown_segment_or_band_is_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        seg.recommended_action("vip", "low")
    assert err.value.field == "segment"
    with pytest.raises(InvalidArgument) as err:
        seg.recommended_action("loyal", "extreme")
    assert err.value.field == "band"


def test_action_codes_vectorised() -> None:
    segs = np.array(["loyal", "dormant", "potential"])
    bands = np.array(["high", "medium", "low"])
    assert seg.recommended_action_codes(segs, bands).tolist() == [
        "loyal_retention_offer",
        "dormant_targeted_redemption",
        "potential_growth_tasks",
    ]
    with pytest.raises(InvalidArgument, match="band"):
        seg.recommended_action_codes(segs, np.array(["high", "high", "severe"]))


_days = st.one_of(st.floats(0, 5_000), st.just(math.inf), st.just(math.nan))
_counts = st.one_of(st.integers(0, 200).map(float), st.just(math.nan))
_money = st.one_of(st.floats(-1e4, 1e7), st.just(math.nan))


@given(
    n=st.integers(1, 30),
    data=st.data(),
    cuts=st.tuples(st.floats(0, 400), st.floats(0, 200), st.floats(0, 10), st.floats(0, 400)),
)
def test_every_member_gets_exactly_one_valid_segment(
    n: int, data: st.DataObject, cuts: tuple[float, float, float, float]
) -> None:
    rec = data.draw(arrays(np.float64, n, elements=_days))
    freq = data.draw(arrays(np.float64, n, elements=_counts))
    mon = data.draw(arrays(np.float64, n, elements=_money))
    ten = data.draw(arrays(np.float64, n, elements=_days))
    dormant_cut, new_cut, low_f, loyal_rec = cuts
    t = seg.RfmThresholds(dormant_cut, new_cut, low_f, loyal_rec, low_f + 1, 100.0)
    names = seg.segment(t, rec, freq, mon, ten)
    assert names.shape == (n,)
    assert set(names.tolist()) <= set(seg.SEGMENTS)
    # exactly one: the rules are a first-match chain, so check each member against it
    for i in range(n):
        buyer = freq[i] > 0 and math.isfinite(rec[i])
        if (buyer and rec[i] > dormant_cut) or (not buyer and ten[i] > dormant_cut):
            want = "dormant"
        elif (
            buyer
            and rec[i] <= loyal_rec
            and freq[i] >= low_f + 1
            and (0.0 if math.isnan(mon[i]) else mon[i]) >= 100.0
        ):
            want = "loyal"
        elif ten[i] <= new_cut or not buyer or freq[i] <= low_f:
            want = "potential"
        else:
            want = "ordinary"
        assert names[i] == want
