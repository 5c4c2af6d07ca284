"""Churn scoring with a registered model: one scorer for batch jobs and the online service."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsvc.config import Programme
from recsvc.core import segments
from recsvc.core.index import IndexFactors
from recsvc.data import schema
from recsvc.engine import LOCAL, Engine, id_ranges, worker_held
from recsvc.errors import DataMissing
from recsvc.models import inputs
from recsvc.models.attribution import PathAttribution
from recsvc.models.runtime import TREES, ClassicChurn, calibrated, weekly_btyd
from recsvc.progress import Stopwatch

F64 = npt.NDArray[np.float64]
SCORES_VIEW = "member_churn_scores"


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
            if getattr(native, "compiled", False):
                from recsvc.models.compiled import CompiledLeaves, attribution_file

                leaves = CompiledLeaves(native.model_file, booster,
                                        native.cache_dir).predict_leaf
                tables = attribution_file(native.cache_dir, native.sha256)
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
            raw = prior + np.asarray(self.booster.predict(X, raw_score=True,
                                                          num_threads=num_threads))
            contrib = None
            if contributions:
                assert self.attribution is not None  # built whenever the trees serve
                contrib = self.attribution.contributions(X, num_threads)
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
    and member read (`inputs.PropensityRows`), from the index factors the request computed.
    """

    def __init__(self, loaded: Any, programme: Programme) -> None:
        manifest = loaded.manifest
        self.version: str = manifest.version
        self.features: list[str] = list(manifest.features)
        self.booster = loaded.booster
        self.vocab: dict[str, list[str]] = manifest.extra["vocabularies"]
        self.platt: dict[str, float] = manifest.extra["calibration"]["platt"]
        self.programme = programme
        self._rows: tuple[object, inputs.PropensityRows] | None = None

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
        rows, values = self._compiled(catalogue, item_columns, n_items, member, encoded)
        return self.score_matrix(rows.rows(positions, member, values, balance, surface,
                                           factors))

    def score_item(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                   position: int, member: Mapping[str, Any], encoded: dict[str, F64],
                   balance: float, surface: str, factors: IndexFactors) -> float:
        """`score_items` for the one item at `position`, its factors in plain numbers."""
        rows, values = self._compiled(catalogue, item_columns, n_items, member, encoded)
        return float(self.score_matrix(rows.row(position, member, values, balance, surface,
                                                factors))[0])

    def prepare(self, catalogue: object, item_columns: Mapping[str, Any],
                n_items: int) -> inputs.PropensityRows:
        """The rows compiled for a catalogue load (`catalogue`, by identity), compiled now
        when they are not yet."""
        held = self._rows
        if held is None or held[0] is not catalogue:
            held = (catalogue, inputs.PropensityRows(self.features, self.vocab, item_columns,
                                                     n_items))
            self._rows = held  # one assignment: a concurrent reader sees old or new whole
        return held[1]

    def _compiled(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                  member: Mapping[str, Any], encoded: dict[str, F64],
                  ) -> tuple[inputs.PropensityRows, F64]:
        rows = self.prepare(catalogue, item_columns, n_items)
        values = encoded.get(self.version)
        if values is None:
            values = encoded[self.version] = rows.member(member)
        return rows, values


def _num(values: Any) -> F64:
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)


@dataclass(frozen=True)
class BatchResult:
    rows: int
    seconds: float
    scoring_seconds: float
    as_of: dt.datetime
    model_version: str
    out: Path | None


def features_as_of(data_dir: Path) -> dt.datetime:
    """The as-of instant of the computed feature snapshots."""
    path = Path(data_dir) / "features" / "_manifest.json"
    try:
        return dt.datetime.fromisoformat(json.loads(path.read_text())["as_of"])
    except (OSError, ValueError, KeyError):
        raise DataMissing(f"no features under {path.parent}: run `make features`") from None


def version_as_of(registry: Any, model: str, as_of: dt.datetime,
                  horizon_days: int | None = None) -> str | None:
    """The version of `model` that saw nothing after `as_of` (and, given `horizon_days`, whose
    churn probabilities are about that horizon): production if it qualifies, else the newest
    registered one that does, else None."""
    production = registry.production(model)

    def qualifies(version: str) -> bool:
        manifest = registry.manifest(model, version)
        return manifest.training_window.end <= as_of and (
            horizon_days is None or manifest.extra.get("horizon_days") == horizon_days)

    eligible = [v for v in reversed(registry.versions(model)) if qualifies(v)]
    if production in eligible:
        return str(production)
    return str(eligible[0]) if eligible else None


def model_as_of(ctx: Any, as_of: dt.datetime, horizon_days: int, say: Any = print) -> str:
    """A churn version at `horizon_days` that saw nothing after `as_of`: production if it
    qualifies, else the newest registered one that does, else one trained now (registered,
    not promoted)."""
    reg = ctx.registry
    version = version_as_of(reg, "churn", as_of, horizon_days)
    if version is not None:
        if version != reg.production("churn"):
            say(f"score-batch: the production churn model saw data after {as_of:%Y-%m-%d} or "
                f"answers another horizon; using {version}, trained on data up to then at "
                f"{horizon_days} days")
        return version
    say(f"score-batch: no churn model at {horizon_days} days trained on data up to "
        f"{as_of:%Y-%m-%d}; training one now (registered, not promoted)")
    from recsvc.models.training import TrainOptions, train_model  # scikit-learn: only here

    result = train_model("churn", Path(ctx.settings.data_dir), ctx.programme, ctx.history, reg,
                         TrainOptions(as_of=as_of, horizon_days=horizon_days),
                         data_fingerprint="as-of " + as_of.isoformat(), say=say)
    return result.manifest.version


def score_batch(ctx: Any, *, as_of: dt.datetime | None, out: Path | None,
                horizon_days: int | None = None, engine: Engine = LOCAL,
                say: Any = print) -> BatchResult:
    """Score every member who joined before `as_of` and publish the scores (offline + online):
    P(no order within `horizon_days`, default the programme's churn horizon). On a
    distributed `engine`, ranges of member ids are scored on its workers (each reads its
    members' point-in-time features itself) and the scores materialised by ranges too."""
    from recsvc.features import store as fstore

    watch = Stopwatch()
    data_dir = Path(ctx.settings.data_dir)
    as_of = as_of or features_as_of(data_dir)
    version = model_as_of(ctx, as_of, horizon_days or ctx.programme.churn.horizon_days, say)
    members = schema.read_table(data_dir, "members", ["member_id", "external_id", "signup_at"])
    frame = members.to_pandas()
    frame = frame[frame.signup_at < as_of]
    ids = frame.member_id.to_numpy()
    if engine.distributed and len(ids):
        ranges = id_ranges(int(ids.min()), int(ids.max()) + 1, 4 * engine.workers)
        say(f"score-batch: {len(ids):,} members as of {as_of:%Y-%m-%d %H:%M} UTC with churn "
            f"{version}, {len(ranges)} ranges on {engine.workers} Dask workers")
        parts = engine.map(score_part, ranges, settings=ctx.settings, version=version,
                           as_of=as_of, job=uuid.uuid4().hex)
        table = pa.concat_tables([part for part, _ in parts])
        scoring_seconds = sum(seconds for _, seconds in parts)  # the workers' together
        # in the members table's order, as the local engine writes them
        table = table.take(pd.Index(table["member_id"].to_numpy()).get_indexer(ids))
    else:
        scorer = _scorer(ctx, version)
        say(f"score-batch: {len(ids):,} members as of {as_of:%Y-%m-%d %H:%M} UTC with churn "
            f"{scorer.model_version}")
        table, scoring_seconds = _scores(ctx, scorer, ids, as_of)
    say(f"score-batch: scored {len(ids):,} members in {scoring_seconds:.2f} s "
        f"({len(ids) / max(scoring_seconds, 1e-9):,.0f} members/s, excluding I/O)")
    target = data_dir / "scores" / SCORES_VIEW
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".scores-{as_of:%Y%m%d}.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(target / f"scores-{as_of:%Y%m%d}.parquet")  # one file per as-of, replaced whole
    defs = fstore.load_definitions(data_dir, ctx.settings.feature_repo)
    fstore.apply_definitions(ctx.store, defs)
    done = fstore.materialize(ctx.store, as_of, [SCORES_VIEW], full=True, engine=engine,
                              settings=ctx.settings, say=say)
    say(f"score-batch: offline {target}; online {sum(r.rows for r in done):,} rows")
    if out is not None:
        ext = frame.external_id.to_numpy(dtype=object)
        customer = np.where(pd.isna(ext), frame.member_id.astype(str).to_numpy(), ext)
        csv = pd.DataFrame({
            "customer_id": customer,
            "churn_probability": np.round(table["churn_probability"].to_numpy(), 6),
            "band": table["churn_band"].to_numpy(zero_copy_only=False),
            "segment": table["segment"].to_numpy(zero_copy_only=False),
            "action": table["action"].to_numpy(zero_copy_only=False),
            "member_id": ids,
        })
        out.parent.mkdir(parents=True, exist_ok=True)
        csv.to_csv(out, index=False)
        say(f"score-batch: wrote {len(csv):,} rows to {out}")
    return BatchResult(len(ids), watch.seconds, scoring_seconds, as_of, version, out)


def _scorer(ctx: Any, version: str) -> ChurnScorer:
    return ChurnScorer(ctx.registry.load("churn", version, known_features=ctx.known_features))


def _scores(ctx: Any, scorer: ChurnScorer, ids: npt.NDArray[np.int64],
            as_of: dt.datetime) -> tuple[pa.Table, float]:
    """The scores table of these members as of `as_of` (their point-in-time features read
    through the context's offline store), and the seconds the scoring itself took."""
    entity = pd.DataFrame({"member_id": ids, "event_timestamp": pd.Timestamp(as_of)})
    feats = inputs.with_features(ctx.history, "churn_v1", entity)
    step = Stopwatch()
    scores = scorer.score(inputs.frame_columns(feats), num_threads=0)
    seconds = step.seconds
    return pa.table({
        "member_id": pa.array(ids, pa.int64()),
        "ts": pa.array([as_of] * len(ids), schema.TS),
        "churn_probability": pa.array(scores.probability, pa.float64()),
        "churn_band": pa.array(scores.band.astype(object), pa.string()),
        "segment": pa.array(scores.segment.astype(object), pa.string()),
        "action": pa.array(scores.action.astype(object), pa.string()),
        "model_version": pa.array([scorer.model_version] * len(ids), pa.string()),
    }), seconds


def score_part(ids: tuple[int, int], *, settings: Any, version: str, as_of: dt.datetime,
               job: str) -> tuple[pa.Table, float]:
    """A worker's share of score-batch: the members with an id in [low, high) who joined
    before `as_of`, scored with churn `version` (and the scoring's own seconds). The worker
    opens the feature store and the registry once a job (`job`: the caller's token) and loads
    the model once."""
    from recsvc.models.jobs import open_context

    ctx, scorers = worker_held("score-batch", settings, job,
                               lambda: (open_context(settings), dict[str, ChurnScorer]()))
    if version not in scorers:
        scorers[version] = _scorer(ctx, version)
    scorer = scorers[version]
    low, high = ids
    members = schema.read_table(Path(settings.data_dir), "members", ["member_id", "signup_at"],
                                (pc.field("member_id") >= low) & (pc.field("member_id") < high))
    frame = members.to_pandas()
    return _scores(ctx, scorer, frame.member_id[frame.signup_at < as_of].to_numpy(), as_of)
