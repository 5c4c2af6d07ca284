"""How the feature views' columns are named: "<view>__<feature>" for a view's feature, the bare
name for a join key. Feast writes its offline reads this way; the model inputs, the online
readers and the answers all read columns by it."""

from __future__ import annotations


def feature_name(column: str) -> str:
    """A column's feature name: "member_points__points_balance" -> "points_balance"; a join
    key (a column without a view) is its own name."""
    return column.split("__", 1)[-1]


def is_feature(column: str) -> bool:
    """Whether a column is a view's feature ("<view>__<feature>") rather than a join key."""
    return "__" in column
