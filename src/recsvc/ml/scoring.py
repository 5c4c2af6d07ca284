"""The churn and propensity scorers over a registered model: one of each for the batch jobs and
the online service (`recsvc.offline.batch_scoring` runs them over every member)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core import segments
from recsvc.core.index import IndexFactors
from recsvc.ml import inputs
from recsvc.ml.attribution import PathAttribution
from recsvc.ml.propensity_rows import PropensityRows
from recsvc.ml.runtime import TREES, ClassicChurn, calibrated, weekly_btyd

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ChurnScores:
    probability: F64
    band: npt.NDArray[np.str_]
    segment: npt.NDArray[np.str_]
    action: npt.NDArray[np.str_]
    contributions: F64 | None  # (rows, inputs): per-prediction drivers in log-odds
    inputs: tuple[str, ...] = ()  # the contributions' columns


class ChurnScorer:
    """Scores members from their churn_v1 features with a loaded registry version: with what
    won its training's competition (`extra["served"]`): the trees boosted from BG/NBD's
    log-odds (versions from before the competition), the trees alone, or a classic model.
    `model_version`, which answers carry, names the version and, when its trees do not
    serve, the classic scorer that does ("v0003/pareto_nbd_p_no_purchase")."""

    def __init__(self, loaded: Any) -> None:
        manifest = loaded.manifest
        extra = manifest.extra
        self.version: str = manifest.version
        self.served: str = str(extra.get("served", "lightgbm"))
        self.model_version = (self.version if self.served in TREES
                              else f"{self.version}/{self.served}")
        self.classic = None if self.served in TREES else ClassicChurn(extra)
        self.features: list[str] = list(manifest.features)
        # the derived inputs the trees read, and BG/NBD's expectation their prior is made of
        self.derived = [n for n in inputs.CHURN_DERIVED
                        if n in self.features or n == "bgnbd_expected_purchases"]
        self.booster = loaded.booster
        # the drivers, when the trees serve; a compiled model keeps LightGBM's booster beside
        # its native code, and its leaves are compiled too, its attribution tables kept beside
        native = loaded.booster
        booster = getattr(native, "booster", native)
        self.attribution: PathAttribution | None = None
        if self.classic is None:
            leaves, tables = None, None
            if getattr(native, "compiled", False):  # adapters.compiled.CompiledModel
                leaves, tables = native.attribution_parts()
            self.attribution = PathAttribution(booster, leaves=leaves, cache=tables)
        self.vocab: dict[str, list[str]] = extra["vocabularies"]
        self.platt: dict[str, float] = extra["calibration"]["platt"]
        self.btyd = weekly_btyd(extra)
        self.horizon = float(extra["horizon_days"])
        self.prior_fallback = float(extra["prior_fallback"])
        self.rfm = segments.RfmThresholds.from_dict(extra["rfm_thresholds"])
        cuts = extra.get("band_cuts", segments.DEFAULT_BAND_CUTS)
        self.band_cuts: tuple[float, float] = (float(cuts[0]), float(cuts[1]))

    def matrix(self, cols: Mapping[str, Any]) -> tuple[F64, F64]:
        """The model matrix and the prior margin the trees correct (0: trees boosted from a
        constant)."""
        derived = inputs.churn_inputs(cols, self.btyd, self.horizon, self.derived)
        X = inputs.matrix({**cols, **derived}, self.features, self.vocab)
        if self.served == "lightgbm_plain":
            return X, np.zeros(len(X))
        return X, inputs.churn_prior_margin(derived, self.prior_fallback)

    def score(self, cols: Mapping[str, Any], *, contributions: bool = False,
              num_threads: int = 1) -> ChurnScores:
        names: tuple[str, ...]
        if self.classic is not None:
            raw, contrib = self.classic.margin(self.served, cols)
            names = inputs.RFM_INPUTS if contrib is not None else ()
        else:
            X, prior = self.matrix(cols)
            contrib = None
            if contributions:
                assert self.attribution is not None  # built whenever the trees serve
                contrib = self.attribution.contributions(X, num_threads)
                # the trees' margin is what their path contributions and the roots add up to
                # (tests/test_attribution.py, to 1e-9): one pass over the trees, not two
                raw = prior + (self.attribution.bias + contrib.sum(axis=1))
            else:
                raw = prior + np.asarray(self.booster.predict(X, raw_score=True,
                                                              num_threads=num_threads))
            names = tuple(self.features)
        prob = calibrated(raw, self.platt)
        band = np.asarray(segments.band(prob, self.band_cuts), dtype=str).reshape(-1)
        seg = np.asarray(segments.segment(
            self.rfm, cols["days_since_last_order"], _num(cols["orders_365d"]),
            _num(cols["spend_365d_minor"]), _num(cols["tenure_days"])), dtype=str).reshape(-1)
        action = segments.recommended_action_codes(seg, band)
        return ChurnScores(prob, band, seg, action, contrib if contributions else None, names)


class PropensityScorer:
    """P(redeem within 7 days) for (member, item) rows from propensity_v1 features.

    `score(cols)` takes the member's and the items' features by name, `points_balance` being
    the live balance when the caller passed one (as in training, where it is the balance at
    exposure), and `surface` per row; the index factors are derived here exactly as in
    training. The service calls `score_items` instead: rows compiled once per catalogue load
    and member read (`PropensityRows`), from the index factors the request computed.
    """

    def __init__(self, loaded: Any, programme: Programme) -> None:
        manifest = loaded.manifest
        self.version: str = manifest.version
        self.features: list[str] = list(manifest.features)
        self.booster = loaded.booster
        self.vocab: dict[str, list[str]] = manifest.extra["vocabularies"]
        self.platt: dict[str, float] = manifest.extra["calibration"]["platt"]
        self.programme = programme
        self._rows: tuple[object, PropensityRows] | None = None

    def score(self, cols: Mapping[str, Any], num_threads: int = 1) -> F64:
        n = len(next(iter(cols.values())))
        full = dict(cols)
        for name in inputs.RAW_PROPENSITY:  # a cold-start member has no features at all
            if name not in full:
                text = name in inputs.CATEGORICAL or name in inputs.NOT_INPUTS
                full[name] = np.full(n, None, dtype=object) if text else np.full(n, np.nan)
        full.update(inputs.index_inputs(full, self.programme))
        return self.score_matrix(inputs.matrix(full, self.features, self.vocab), num_threads)

    def score_matrix(self, X: F64, num_threads: int = 1) -> F64:
        raw = np.asarray(self.booster.predict(X, raw_score=True, num_threads=num_threads))
        return calibrated(raw, self.platt)

    def score_items(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                    positions: npt.NDArray[np.intp], member: Mapping[str, Any],
                    encoded: dict[str, F64], balance: float, surface: str,
                    factors: IndexFactors) -> F64:
        """P(redeem) of one member for the catalogue items at `positions`, from rows compiled
        once per catalogue load (`catalogue`: that load, by identity; `item_columns`: its
        features) and the member's features (`member`), encoded once per member read into
        `encoded` (by model version), with the member's index factors for those items."""
        rows, template = self._compiled(catalogue, item_columns, n_items, member, encoded)
        return self.score_matrix(rows.rows(positions, member, template, balance, surface,
                                           factors))

    def score_item(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                   position: int, member: Mapping[str, Any], encoded: dict[str, F64],
                   balance: float, surface: str, factors: IndexFactors) -> float:
        """`score_items` for the one item at `position`, its factors in plain numbers."""
        rows, template = self._compiled(catalogue, item_columns, n_items, member, encoded)
        x = rows.row(position, member, template, balance, surface, factors)
        one = getattr(self.booster, "predict_one", None)  # adapters.compiled.CompiledModel
        if one is None:
            return float(self.score_matrix(x.reshape(1, -1))[0])
        return float(calibrated(one(x), self.platt))

    def prepare(self, catalogue: object, item_columns: Mapping[str, Any],
                n_items: int) -> PropensityRows:
        """The rows compiled for a catalogue load (`catalogue`, by identity), compiled now
        when they are not yet."""
        held = self._rows
        if held is None or held[0] is not catalogue:
            held = (catalogue, PropensityRows(self.features, self.vocab, item_columns,
                                                     n_items))
            self._rows = held  # one assignment: a concurrent reader sees old or new whole
        return held[1]

    def _compiled(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                  member: Mapping[str, Any], encoded: dict[str, F64],
                  ) -> tuple[PropensityRows, F64]:
        rows = self.prepare(catalogue, item_columns, n_items)
        template = encoded.get(self.version)
        if template is None:
            template = encoded[self.version] = rows.template(rows.member(member))
        return rows, template


def _num(values: Any) -> F64:
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
