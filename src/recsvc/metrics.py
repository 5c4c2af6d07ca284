"""Every Prometheus metric recsvc exports, defined in one place (`recsvc_` prefix, base units).

Each family is created on a registry passed in, so tests and jobs own theirs. Batch jobs have
no endpoint to scrape: they write their metrics in the text exposition format to a file that
node_exporter's textfile collector (or a Pushgateway relay) publishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import write_to_textfile

JOB_OUTCOMES = ("succeeded", "promoted", "refused", "failed")

# Sub-millisecond resolution where product-page hints live, up to a second for batches.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


M = TypeVar("M", Counter, Gauge, Histogram)


def remembered(metric: M) -> M:
    """`metric` whose `labels(...)` answers from a dict after the first call with the same
    values: prometheus-client checks the values and takes a lock on every call, and a hint asks
    for four series. A series stays the same object while the metric is not cleared, and
    recsvc never clears or removes one. Positional label values only."""
    children: dict[tuple[str, ...], Any] = {}
    labels = metric.labels

    def cached(*values: str) -> Any:
        child = children.get(values)
        if child is None:
            child = children[values] = labels(*values)
        return child

    metric.labels = cached  # type: ignore[method-assign]
    return metric


class ServiceMetrics:
    """The gRPC service's metrics, registered on the registry passed in (one per test); the
    families asked on every call remember their series (`remembered`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = remembered(Counter("recsvc_requests_total",
                                           "RPCs answered, by RPC and status code.",
                                           ["rpc", "code"], registry=registry))
        self.latency = remembered(Histogram("recsvc_request_duration_seconds",
                                            "RPC latency, server side.", ["rpc"],
                                            buckets=LATENCY_BUCKETS, registry=registry))
        self.feature_read = Histogram("recsvc_feature_read_duration_seconds",
                                      "Online feature reads.", ["service"],
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.predict = remembered(Histogram("recsvc_model_predict_duration_seconds",
                                            "Model scoring.", ["model"],
                                            buckets=LATENCY_BUCKETS, registry=registry))
        self.degraded = Counter("recsvc_degraded_answers_total",
                                "Answers given from safe defaults, by RPC and reason.",
                                ["rpc", "reason"], registry=registry)
        # with several workers: 1 when any live worker serves the version
        self.model_info = Gauge("recsvc_model_info", "1 for the model version being served.",
                                ["model", "version"], registry=registry,
                                multiprocess_mode="livemax")
        self.model_created = Gauge("recsvc_model_created_timestamp_seconds",
                                   "When the model version being served was trained.", ["model"],
                                   registry=registry, multiprocess_mode="livemax")
        self.hints = remembered(Counter(
            "recsvc_hints_total",
            "Hints answered, by experiment arm and whether points were better.",
            ["arm", "points_better"], registry=registry))
        self.cart_points = Counter("recsvc_cart_points_recommended_total",
                                   "Points the cart splits told members to use, by experiment "
                                   "arm and the rule that bound.", ["arm", "binding_rule"],
                                   registry=registry)
        self.verification = Counter("recsvc_verification_required_total",
                                    "Answers that asked for a second verification (a member "
                                    "with points-fraud flags), by RPC and flag.",
                                    ["rpc", "flag"], registry=registry)
        self.model_reloads = Counter("recsvc_model_reloads_total",
                                     "Model reload attempts, by outcome.", ["model", "outcome"],
                                     registry=registry)
        # dry runs (previews) count in neither: nothing was delivered or withheld
        self.nudges = Counter("recsvc_nudges_total",
                              "Nudges delivered, by kind, channel and experiment arm.",
                              ["kind", "channel", "arm"], registry=registry)
        self.nudges_capped = Counter("recsvc_nudges_capped_total",
                                     "Nudges due but withheld by a frequency cap, by kind and "
                                     "the cap (its name in the programme).", ["kind", "cap"],
                                     registry=registry)
        self.nudge_options_capped = Counter(
            "recsvc_nudge_options_capped_total",
            "Items dropped from a delivered nudge's options by an item frequency cap, by nudge "
            "kind and the cap.", ["kind", "cap"], registry=registry)

        self.feature_cache = Counter(
            "recsvc_feature_cache_lookups_total",
            "Entity rows the online reader looked up in its cache, by result (hit: answered "
            "from memory; miss: read from the store).", ["result"], registry=registry)
        self.feature_cache_rows = Gauge(
            "recsvc_feature_cache_rows", "Entity rows the online reader's cache holds.",
            registry=registry, multiprocess_mode="livesum")
        for result in ("hit", "miss"):
            self.feature_cache.labels(result)
        self._cache_seen = (0, 0)

    def publish_cache(self, hits: int, misses: int, rows: int) -> None:
        """The online reader's cache counts since it opened (published as increments)."""
        seen_hits, seen_misses = self._cache_seen
        self.feature_cache.labels("hit").inc(max(hits - seen_hits, 0))
        self.feature_cache.labels("miss").inc(max(misses - seen_misses, 0))
        self._cache_seen = (hits, misses)
        self.feature_cache_rows.set(rows)

    def prime_nudges(self, kinds: Sequence[str], channels: Sequence[str], arms: Sequence[str],
                     capped: Sequence[tuple[str, str]],
                     options_capped: Sequence[tuple[str, str]]) -> None:
        """Every nudge series at 0 from the start; the capped ones as (kind, cap name)."""
        for kind in kinds:
            for channel in channels:
                for arm in arms:
                    self.nudges.labels(kind, channel, arm)
        for kind, cap in capped:
            self.nudges_capped.labels(kind, cap)
        for kind, cap in options_capped:
            self.nudge_options_capped.labels(kind, cap)


def write_job_metrics(
    path: Path,
    job: str,
    *,
    outcome: str,
    started: float,
    finished: float | None = None,
    rows: int | None = None,
    models: Mapping[str, tuple[str, Mapping[str, float]]] | None = None,
    previous_success: float | None = None,
) -> None:
    """Write one batch job's run to a textfile: outcome, timestamps, duration, model metrics.

    `models` maps a model name to (version, validation metrics). The last success timestamp
    is carried over from `previous_success` when this run did not succeed, so an alert on a
    stale success keeps counting from the real one.
    """
    if outcome not in JOB_OUTCOMES:
        raise ValueError(f"outcome must be one of {JOB_OUTCOMES}")
    finished = time.time() if finished is None else finished
    reg = CollectorRegistry()
    labels = ["job"]
    Gauge("recsvc_job_last_run_timestamp_seconds", "When the job last finished.", labels,
          registry=reg).labels(job).set(finished)
    Gauge("recsvc_job_duration_seconds", "How long the last run took.", labels,
          registry=reg).labels(job).set(finished - started)
    outcomes = Gauge("recsvc_job_last_outcome", "1 for the outcome of the last run, else 0.",
                     [*labels, "outcome"], registry=reg)
    for name in JOB_OUTCOMES:
        outcomes.labels(job, name).set(1.0 if name == outcome else 0.0)
    success = finished if outcome in ("succeeded", "promoted") else previous_success
    if success is not None:
        Gauge("recsvc_job_last_success_timestamp_seconds", "When the job last succeeded.",
              labels, registry=reg).labels(job).set(success)
    if rows is not None:
        Gauge("recsvc_job_rows", "Rows the last run processed.", labels,
              registry=reg).labels(job).set(rows)
    if models:
        metric = Gauge("recsvc_job_model_validation_metric",
                       "Validation metrics of the models the last run trained.",
                       [*labels, "model", "version", "metric"], registry=reg)
        for model, (version, values) in models.items():
            for name, value in values.items():
                metric.labels(job, model, version, name).set(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)


@dataclass
class JobRun:
    """What a job reports about its run; set `outcome` (and rows, models) before it ends."""

    outcome: str = "succeeded"
    rows: int | None = None
    models: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)


@contextmanager
def recorded_job(path: Path, job: str) -> Iterator[JobRun]:
    """Time a job and write its textfile when it ends: `failed` if it raised, else its outcome."""
    started = time.time()
    previous = read_last_success(path, job)
    run = JobRun()
    try:
        yield run
    except BaseException:
        write_job_metrics(path, job, outcome="failed", started=started,
                          previous_success=previous)
        raise
    write_job_metrics(path, job, outcome=run.outcome, started=started, rows=run.rows,
                      models=run.models, previous_success=previous)


def read_last_success(path: Path, job: str) -> float | None:
    """The last success timestamp recorded in a job's textfile, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    prefix = f'recsvc_job_last_success_timestamp_seconds{{job="{job}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None
