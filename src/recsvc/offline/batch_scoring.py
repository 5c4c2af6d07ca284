"""score-batch: every member's churn score as of a date, published offline and online; and the
model versions a point-in-time job may use (`version_as_of`, `model_as_of`)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsvc.data import schema
from recsvc.engine import LOCAL, Engine, id_ranges, worker_held
from recsvc.errors import DataMissing
from recsvc.ml import inputs
from recsvc.ml.scoring import ChurnScorer
from recsvc.progress import Stopwatch

SCORES_VIEW = "member_churn_scores"
LOCAL_RANGE = 500_000  # members whose features one process reads and scores at once


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
    from recsvc.offline.training import TrainOptions, train_model  # scikit-learn: only here

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
    from recsvc.adapters import feast as fstore
    from recsvc.adapters import materialise

    watch = Stopwatch()
    data_dir = Path(ctx.settings.data_dir)
    as_of = as_of or features_as_of(data_dir)
    version = model_as_of(ctx, as_of, horizon_days or ctx.programme.churn.horizon_days, say)
    members = schema.read_table(data_dir, "members", ["member_id", "external_id", "signup_at"])
    frame = members.to_pandas()
    frame = frame[frame.signup_at < as_of]
    ids = frame.member_id.to_numpy()
    if engine.distributed and len(ids):
        ranges = _ranges(ids, 4 * engine.workers)
        say(f"score-batch: {len(ids):,} members as of {as_of:%Y-%m-%d %H:%M} UTC with churn "
            f"{version}, {len(ranges)} ranges on {engine.workers} Dask workers")
        parts = engine.map(score_part, ranges, settings=ctx.settings, version=version,
                           as_of=as_of, job=uuid.uuid4().hex)
    else:
        scorer = _scorer(ctx, version)
        say(f"score-batch: {len(ids):,} members as of {as_of:%Y-%m-%d %H:%M} UTC with churn "
            f"{scorer.model_version}")
        # by ranges of members, so the features held at once stay bounded at any population
        parts = [_scores(ctx, scorer, ids[(ids >= low) & (ids < high)], as_of)
                 for low, high in _ranges(ids, -(-len(ids) // LOCAL_RANGE))]
    table = pa.concat_tables([part for part, _ in parts])
    scoring_seconds = sum(seconds for _, seconds in parts)  # on Dask, the workers' together
    # in the members table's order (the parts come by id range)
    table = table.take(pd.Index(table["member_id"].to_numpy()).get_indexer(ids))
    say(f"score-batch: scored {len(ids):,} members in {scoring_seconds:.2f} s "
        f"({len(ids) / max(scoring_seconds, 1e-9):,.0f} members/s, excluding I/O)")
    target = data_dir / "scores" / SCORES_VIEW
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".scores-{as_of:%Y%m%d}.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(target / f"scores-{as_of:%Y%m%d}.parquet")  # one file per as-of, replaced whole
    defs = fstore.load_definitions(data_dir, ctx.settings.feature_repo)
    fstore.apply_definitions(ctx.store, defs)
    done = materialise.materialize(ctx.store, as_of, [SCORES_VIEW], full=True, engine=engine,
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


def _ranges(ids: npt.NDArray[np.int64], parts: int) -> list[tuple[int, int]]:
    """Up to `parts` [low, high) ranges of member ids of equal width covering `ids` (as many
    members each where ids are dense, as the simulator and the importer number them)."""
    if not len(ids):
        return [(0, 0)]
    return id_ranges(int(ids.min()), int(ids.max()) + 1, parts)


def _scorer(ctx: Any, version: str) -> ChurnScorer:
    return ChurnScorer(ctx.registry.load("churn", version, known_features=ctx.known_features))


def _scores(ctx: Any, scorer: ChurnScorer, ids: npt.NDArray[np.int64],
            as_of: dt.datetime) -> tuple[pa.Table, float]:
    """The scores table of these members as of `as_of` (their features at that instant, read
    from the offline snapshots as Feast's point-in-time join would give them), and the seconds
    the scoring itself took."""
    from recsvc.adapters.materialise import features_at

    entity = pd.DataFrame({"member_id": ids, "event_timestamp": pd.Timestamp(as_of)})
    feats = inputs.with_features(
        lambda service, frame: features_at(ctx.store, service, frame, as_of), "churn_v1", entity)
    step = Stopwatch()
    # the instant every row shares is no model input (as a column of objects it cost more
    # than the features read)
    scores = scorer.score(inputs.frame_columns(feats.drop(columns="event_timestamp")),
                          num_threads=0)
    seconds = step.seconds
    return pa.table({
        "member_id": pa.array(ids, pa.int64()),
        "ts": pa.repeat(pa.scalar(as_of, schema.TS), len(ids)),
        "churn_probability": pa.array(scores.probability, pa.float64()),
        "churn_band": pa.array(scores.band.astype(object), pa.string()),
        "segment": pa.array(scores.segment.astype(object), pa.string()),
        "action": pa.array(scores.action.astype(object), pa.string()),
        "model_version": pa.repeat(pa.scalar(scorer.model_version, pa.string()), len(ids)),
    }), seconds


def score_part(ids: tuple[int, int], *, settings: Any, version: str, as_of: dt.datetime,
               job: str) -> tuple[pa.Table, float]:
    """A worker's share of score-batch: the members with an id in [low, high) who joined
    before `as_of`, scored with churn `version` (and the scoring's own seconds). The worker
    opens the feature store and the registry once a job (`job`: the caller's token) and loads
    the model once."""
    from recsvc.adapters.context import open_context

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
