"""Programme rules: the packaged defaults are the SPEC's, and bad values fail naming the key."""

from __future__ import annotations

import pytest

from recsvc.config import load_programme, parse_programme
from recsvc.errors import ConfigError


def test_packaged_defaults_are_the_spec_defaults() -> None:
    p = load_programme()
    assert p.earning.points_per_unit == 1
    assert p.earning.tier_multipliers["diamond"] == 1.5
    assert p.burning.points_per_unit == 100  # 1,000 points = 10 units
    assert [(c.min_order_units, c.max_points) for c in p.burning.deduction_caps] == [
        (100, 1000),
        (200, 3000),
    ]
    assert (p.expiry.ordinary_months, p.expiry.high_value_months) == (12, 24)
    assert (p.gifts.low_below, p.gifts.high_above) == (100, 500)
    assert p.unlocks == {"kitchenware": 2000, "furniture": 5000}
    assert p.index.hint_threshold == 0.06
    assert p.index.vacuum_threshold == 0.03
    assert p.index.points_class_coefficients == {"base": 0.05, "growth": 0.075, "luxury": 0.10}
    assert p.minor_per_point == 1.0


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"burning": {"max_order_share": 1.5}}, "burning.max_order_share"),
        ({"burning": {"points_per_unit": 0}}, "burning.points_per_unit"),
        ({"index": {"hint_threshold": "high"}}, "index.hint_threshold"),
        ({"index": {"unknown_knob": 1}}, "index.unknown_knob"),
        ({"earning": {"double_points_days": ["13-40"]}}, "earning"),
        ({"tiers": {"order": ["a", "b"], "min_spend_units": [0, 0]}}, "tiers"),
        (
            {
                "burning": {
                    "deduction_caps": [
                        {"min_order_units": 200, "max_points": 1},
                        {"min_order_units": 100, "max_points": 2},
                    ]
                }
            },
            "burning",
        ),
        ({"expiry": {"high_value_tiers": ["platinum"]}}, "expiry.high_value_tiers"),
    ],
)
def test_bad_values_fail_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_programme(data, "rules.toml")
    assert f"rules.toml: {key}" in str(err.value) or key in str(err.value)


def test_file_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("[burning]\nmin_points_step = -5\n")
    with pytest.raises(ConfigError, match=r"p.toml: burning.min_points_step"):
        load_programme(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[burning\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_programme(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_programme(tmp_path / "missing.toml")
