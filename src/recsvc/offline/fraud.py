"""`recsvc fraud-flags`: points-fraud flags per member (rules + isolation forest), published.

The batch job reads the points ledger up to an as-of instant, applies the rules of
recsvc.core.fraud (redemption bursts, balance drains, earn-then-burn loops; thresholds from the
programme's `[fraud]` section) member chunk by member chunk, trains a scikit-learn isolation
forest on the members' member-day aggregates of the same lookback and flags the most anomalous
`anomaly_contamination` share as `anomaly`. It writes the feature view `member_fraud_flags`
(fields `fraud_flags`, `anomaly_score`) to the offline store under `<data_dir>/scores/` and
materialises it online (feature service `fraud_v1`), where the service reads it to ask for a
second verification. With the simulator's oracle present it also reports precision and recall
of every flag against the planted abusers (`<data_dir>/reports/fraud/`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recsvc.cliargs import end_of_day
from recsvc.config import Fraud, Programme
from recsvc.core import fraud
from recsvc.core.ledger import DAY_US, epoch_us, instant
from recsvc.data import schema
from recsvc.data.columns import NULL_US, as_i64, as_us
from recsvc.engine import LOCAL, Engine
from recsvc.errors import DataMissing
from recsvc.progress import Stopwatch, progress

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

VIEW = "member_fraud_flags"
SERVICE = "fraud_v1"
CHUNK_MEMBERS = 50_000  # members per pass of the rules (bounds the member-day matrices)
PART_MEMBERS = 500_000  # members per range (a range's ledger rows are read at once)
SCORE_BLOCK = 250_000  # members per block the forest scores
FOREST_TREES = 100  # scikit-learn's default; 200 changed 2 of ~90 flags here, at twice the time
FOREST_SEED = 0  # the forest is part of the job's definition: same data, same flags
RULES = ("redemption_burst", "balance_drain", "earn_burn_loop")  # rule flags, contract order


@dataclass(frozen=True)
class MemberFlags:
    """Per member (ascending id): the rules' result, the aggregates and the forest's verdict.

    `anomaly_score`: the isolation forest's anomaly score s(x) in (0, 1] (Liu et al. 2008:
    about 0.5 for ordinary points, towards 1 for isolated ones); higher = more anomalous.
    """

    member: I64
    rules: fraud.RuleResult  # aligned with `member` (members without entries: nothing fired)
    aggregates: F64  # (members, len(fraud.DAY_FEATURES))
    anomaly_score: F64
    anomaly: B

    @property
    def flags(self) -> list[str]:
        r = self.rules
        return fraud.join_flags(r.burst, r.drain, r.loop, self.anomaly)


# --------------------------------------------------------------------------------------------
# The computation (no I/O).
# --------------------------------------------------------------------------------------------
def _aligned(result: fraud.RuleResult, members: I64) -> fraud.RuleResult:
    """The rule result for exactly `members` (sorted); members it lacks get nothing fired."""
    pos = np.minimum(np.searchsorted(result.member, members), max(len(result.member) - 1, 0))
    found = (result.member[pos] == members) if len(result.member) else np.zeros(len(members),
                                                                                 bool)

    def take(values: npt.NDArray[Any], empty: Any) -> npt.NDArray[Any]:
        out = np.full(len(members), empty, dtype=values.dtype)
        out[found] = values[pos[found]]
        return out

    return fraud.RuleResult(
        member=members, burst=take(result.burst, False), drain=take(result.drain, False),
        loop=take(result.loop, False), burst_count=take(result.burst_count, 0),
        burst_at_us=take(result.burst_at_us, fraud.NO_TIME),
        drain_share=take(result.drain_share, 0.0), drain_balance=take(result.drain_balance, 0),
        drain_at_us=take(result.drain_at_us, fraud.NO_TIME), loops=take(result.loops, 0))


def _concat(parts: list[fraud.RuleResult]) -> fraud.RuleResult:
    names = fraud.RuleResult.__dataclass_fields__
    return fraud.RuleResult(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


def anomaly_scores(aggregates: F64, contamination: float, seed: int = FOREST_SEED,
                   engine: Engine = LOCAL) -> tuple[F64, B]:
    """An isolation forest trained on the members' aggregates: (anomaly score s(x) in (0, 1],
    higher = more anomalous; True for the `contamination` share it flags). The forest learns
    from subsamples of every member (so here); scoring, most of the time, is by blocks of
    members on the engine."""
    from sklearn.ensemble import IsolationForest

    if len(aggregates) < 2:
        return np.full(len(aggregates), 0.5), np.zeros(len(aggregates), dtype=bool)
    forest = IsolationForest(n_estimators=FOREST_TREES, contamination=contamination,
                             random_state=seed, n_jobs=1)
    forest.fit(aggregates)
    blocks = [aggregates[a:a + SCORE_BLOCK] for a in range(0, len(aggregates), SCORE_BLOCK)]
    if engine.distributed:
        blocks = engine.client.scatter(blocks)  # each block sent once, to the worker using it
    raw = np.concatenate(engine.map(_forest_raw, blocks, forest=forest))
    return -raw, raw < forest.offset_  # exactly predict()'s outliers


def _forest_raw(block: F64, *, forest: Any) -> F64:
    """scikit-learn's score_samples of a block of members (once: predict() would score every
    member again)."""
    return np.asarray(forest.score_samples(block), dtype=np.float64)


def rule_pass(events: fraud.LedgerEvents, members: I64, rules: Fraud, as_of_us: int,
              on_members: Callable[[int], Any] | None = None,
              ) -> tuple[I64, fraud.RuleResult, F64]:
    """The rules and the member-day aggregates of `members` (any order; returned sorted) as of
    `as_of_us` (µs since the epoch), on chunks of CHUNK_MEMBERS members at a time (which
    bounds the member-day matrices). The entries are sorted once, as the rules read them
    (`fraud.in_order`), and each chunk is a slice of them the rules do not sort again."""
    members = np.unique(np.asarray(members, dtype=np.int64))
    events = fraud.in_order(events, as_of_us)
    parts, aggregates = [], []
    for a in range(0, len(members), CHUNK_MEMBERS):
        chunk = members[a:a + CHUNK_MEMBERS]
        lo = np.searchsorted(events.member, chunk[0], side="left")
        hi = np.searchsorted(events.member, chunk[-1], side="right")
        rows = lo + np.flatnonzero(np.isin(events.member[lo:hi], chunk))  # not later joiners
        sub = events.take(rows)
        parts.append(_aligned(fraud.evaluate_rules(sub, rules, as_of_us), chunk))
        aggregates.append(fraud.member_day_features(sub, as_of_us, rules.lookback_days, chunk))
        if on_members is not None:
            on_members(len(chunk))
    if not parts:
        empty = _aligned(fraud.evaluate_rules(events, rules, as_of_us), members)
        return members, empty, np.zeros((0, len(fraud.DAY_FEATURES)))
    return members, _concat(parts), np.concatenate(aggregates)


def compute_flags(events: fraud.LedgerEvents, members: I64, rules: Fraud, as_of_us: int,
                  on_members: Callable[[int], Any] | None = None) -> MemberFlags:
    """Flags of `members` (any order; returned sorted) as of `as_of_us` (µs since the epoch):
    the rules, then one isolation forest trained on every member's aggregates."""
    members, result, matrix = rule_pass(events, members, rules, as_of_us, on_members)
    score, anomaly = anomaly_scores(matrix, rules.anomaly_contamination)
    return MemberFlags(members, result, matrix, score, anomaly)


# --------------------------------------------------------------------------------------------
# Judging the flags against the simulator's planted abusers.
# --------------------------------------------------------------------------------------------
def active_abusers(abusers: pa.Table, as_of_us: int, lookback_days: int) -> pa.Table:
    """Planted abusers who abused within the lookback before the as-of instant (their
    abusive redemptions span [from_ts, to_ts]): what the flags as of then can see."""
    start = as_of_us - lookback_days * DAY_US
    frm = as_us(abusers["from_ts"])
    to = as_us(abusers["to_ts"])
    return abusers.filter(pa.array((frm < as_of_us) & (to >= start)))


def _rate(hit: int, total: int) -> float | None:
    return None if total == 0 else hit / total


def judge(flags: MemberFlags, abusers: pa.Table) -> dict[str, Any]:
    """Precision and recall of each flag and of any flag, against `abusers` (the active ones).

    A rule's recall counts the abusers of its own kind; its precision counts every planted
    abuser it flags as a hit (a burst redeemer caught by the drain rule is still an abuser).
    The anomaly flag and "any flag" are judged against every abuser."""
    ids = abusers["member_id"].to_numpy()
    kinds = abusers["kind"].to_numpy(zero_copy_only=False)
    every = set(ids.tolist())
    r = flags.rules
    raised = {"redemption_burst": r.burst, "balance_drain": r.drain, "earn_burn_loop": r.loop,
              "anomaly": flags.anomaly, "any_rule": r.any, "any": r.any | flags.anomaly}
    out: dict[str, Any] = {"abusers": len(every),
                           "abusers_by_kind": {k: int((kinds == k).sum()) for k in RULES},
                           "members": len(flags.member), "flags": {}}
    for name, on in raised.items():
        flagged = set(flags.member[on].tolist())
        truth = set(ids[kinds == name].tolist()) if name in RULES else every
        out["flags"][name] = {
            "flagged": len(flagged), "true_positives": len(flagged & every),
            "precision": _rate(len(flagged & every), len(flagged)),
            "recall": _rate(len(flagged & truth), len(truth)), "of": len(truth)}
    return out


def report_markdown(report: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    kinds = ", ".join(f"{k} {v}" for k, v in report["abusers_by_kind"].items())
    lines = [f"# Points-fraud flags as of {report['as_of']}", "",
             f"{report['members']:,} members; {report['abusers']} planted abusers active in the "
             f"{report['lookback_days']}-day lookback ({kinds}).",
             "", "| flag | flagged | abusers among them | precision | recall | recall of |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in report["flags"].items():
        lines.append(f"| {name} | {f['flagged']} | {f['true_positives']} | {pct(f['precision'])}"
                     f" | {pct(f['recall'])} | {f['of']} |")
    lines += ["", "A rule's recall counts the abusers of its kind; precision counts any planted "
              "abuser as a hit. The drain rule cannot check a change of device or address (the "
              "data has none), so ordinary members who pay an item mostly with a large balance "
              "are among its flags.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The job.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FraudRun:
    rows: int  # members written
    entries: int  # ledger entries read
    as_of: dt.datetime
    seconds: float
    flagged: dict[str, int]
    offline: Path
    online_rows: int
    report: dict[str, Any] | None = None
    report_paths: list[Path] = field(default_factory=list)


def read_events(data_dir: Path, where: pc.Expression | None = None) -> fraud.LedgerEvents:
    """The ledger (the rows `where` keeps, or all) as core events, in ledger order (rows
    without a member or an instant, which the tables never hold, are not entries the rules can
    place: left out)."""
    table = schema.read_table(data_dir, "ledger", ["entry_id", "member_id", "ts", "kind",
                                                   "points"], where).sort_by("entry_id")
    table = _placeable(table)
    return fraud.LedgerEvents(
        as_i64(table["member_id"]), as_us(table["ts"]),
        fraud.kind_codes(table["kind"].to_numpy(zero_copy_only=False)),
        as_i64(table["points"]))


def read_abusers(data_dir: Path) -> pa.Table | None:
    """The simulator's planted abusers, or None when the data has no such oracle."""
    path = schema.oracle_dir(data_dir) / "abusers"
    if not path.is_dir():
        return None
    return pads.dataset(path, schema=schema.ORACLE_ABUSERS, format="parquet").to_table()


def ledger_instants(data_dir: Path) -> I64:
    """The instant (µs) of every ledger entry the rules can place (with a member and an
    instant), for the as-of default and the counts the job reports."""
    return as_us(_placeable(schema.read_table(data_dir, "ledger", ["member_id", "ts"]))["ts"])


def _placeable(table: pa.Table) -> pa.Table:
    """The ledger rows with a member and an instant (the only ones the rules can place)."""
    return table.filter(pc.and_(pc.is_valid(table["member_id"]), pc.is_valid(table["ts"])))


def default_as_of(instants: I64) -> dt.datetime:
    """The end of the UTC day of the latest ledger entry."""
    if len(instants) == 0:
        raise DataMissing("the ledger is empty: nothing to flag")
    last = instant(int(instants.max()))
    return end_of_day(last.date())


def rule_part(members: I64, *, data_dir: Path, rules: Fraud, as_of_us: int
              ) -> tuple[I64, fraud.RuleResult, F64]:
    """`rule_pass` over one range of members (ascending ids), their ledger rows read here."""
    member = pc.field("member_id")
    where = ((member >= int(members[0])) & (member <= int(members[-1])) if len(members)
             else pc.scalar(False))  # nobody to flag: no rows
    return rule_pass(read_events(data_dir, where), members, rules, as_of_us)


def run_fraud_flags(settings: Any, programme: Programme, *, as_of: dt.datetime | None = None,
                    out: Path | None = None, engine: Engine = LOCAL,
                    say: Callable[[str], None] = print) -> FraudRun:
    """Flag every member who joined before `as_of` and publish the flags (offline + online).

    The rules run by ranges of members (each reading its members' ledger rows) on the
    `engine`, as does the forest's scoring; the forest learns here, from every member."""
    from recsvc.adapters import feast as fstore
    from recsvc.adapters import materialise, online_write

    watch = Stopwatch()
    data_dir = Path(settings.data_dir)
    instants = ledger_instants(data_dir)
    as_of = as_of or default_as_of(instants)
    as_of_us = epoch_us(as_of)
    joined = schema.read_table(data_dir, "members", ["member_id", "signup_at"])
    signup = as_us(joined["signup_at"])
    # a member whose signup is unknown is not flagged
    members = np.unique(as_i64(joined["member_id"])[(signup != NULL_US) & (signup < as_of_us)])
    rules = programme.fraud
    say(f"fraud-flags: {len(members):,} members, {int((instants < as_of_us).sum()):,} ledger "
        f"entries before {as_of:%Y-%m-%d %H:%M} UTC; rules over the last {rules.lookback_days} "
        "days")
    step = Stopwatch()
    parts = engine.parts(len(members), PART_MEMBERS)
    ranges = [r for r in np.array_split(members, parts) if len(r)] or [members]
    with progress("fraud rules", len(members), unit="members") as bar:
        passes = engine.map(rule_part, ranges, on_done=lambda r: bar.update(len(r[0])),
                            data_dir=data_dir, rules=rules, as_of_us=as_of_us)
    members = np.concatenate([m for m, _, _ in passes])
    result = _concat([r for _, r, _ in passes])
    matrix = np.concatenate([a for _, _, a in passes])
    say(step.summary("fraud-flags: rules and member-day aggregates", len(instants),
                     "ledger entries"))
    step = Stopwatch()
    score, anomaly = anomaly_scores(matrix, rules.anomaly_contamination, engine=engine)
    say(step.summary(f"fraud-flags: isolation forest ({FOREST_TREES} trees, contamination "
                     f"{rules.anomaly_contamination:g}) trained and scored", len(members),
                     "members"))
    flags = MemberFlags(members, result, matrix, score, anomaly)
    names = flags.flags
    flagged = {name: sum(name in f.split(",") for f in names) for name in fraud.FLAG_NAMES}
    say("fraud-flags: flagged " + ", ".join(f"{k} {v:,}" for k, v in flagged.items()))

    table = pa.table({
        "member_id": pa.array(flags.member, pa.int64()),
        "ts": pa.array(np.full(len(flags.member), as_of_us), pa.int64()).cast(schema.TS),
        "fraud_flags": pa.array(names, pa.string()),
        "anomaly_score": pa.array(flags.anomaly_score, pa.float64()),
    })
    target = data_dir / "scores" / VIEW
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".flags-{as_of:%Y%m%d}.parquet.tmp"
    pq.write_table(table, tmp)
    offline = target / f"flags-{as_of:%Y%m%d}.parquet"
    tmp.replace(offline)  # one file per as-of, replaced whole
    feast_store = fstore.open_store(settings)
    fstore.apply_definitions(feast_store, fstore.load_definitions(data_dir,
                                                                 settings.feature_repo))
    with fstore.feast_errors("read the materialisation state"):
        last_end = feast_store.get_feature_view(VIEW, allow_registry_cache=False) \
            .most_recent_end_time
    if last_end is not None and last_end >= as_of:
        # not newer than what is online: Redis would keep the newer values, SQLite would not
        online_write.clear_online(feast_store, [VIEW])
    done = materialise.materialize(feast_store, as_of, [VIEW], full=True, engine=engine,
                              settings=settings, say=say)
    online_rows = sum(r.rows for r in done)
    say(f"fraud-flags: offline {offline}; online {online_rows:,} rows")
    if out is not None:
        _write_csv(out, flags, names)
        say(f"fraud-flags: wrote {len(names):,} rows to {out}")

    report, paths = None, []
    abusers = read_abusers(data_dir)
    if abusers is not None:
        active = active_abusers(abusers, as_of_us, rules.lookback_days)
        report = {"as_of": as_of.isoformat(), "lookback_days": rules.lookback_days,
                  "rules": rules.model_dump(), **judge(flags, active)}
        paths = _write_report(data_dir, as_of, report)
        for name, f in report["flags"].items():
            say(f"fraud-flags: {name:17s} flagged {f['flagged']:>6,}  precision "
                f"{_fmt(f['precision'])}  recall {_fmt(f['recall'])} of {f['of']}")
        say(f"fraud-flags: report {paths[0]}")
    seconds = watch.seconds
    say(f"fraud-flags: {len(flags.member):,} members in {seconds:.1f} s "
        f"({len(instants) / max(seconds, 1e-9):,.0f} ledger entries/s)")
    return FraudRun(len(flags.member), len(instants), as_of, seconds, flagged, offline,
                    online_rows, report, paths)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.1%}"


def _write_csv(out: Path, flags: MemberFlags, names: list[str]) -> None:
    import pandas as pd

    r = flags.rules
    frame = pd.DataFrame({
        "member_id": flags.member, "fraud_flags": names,
        "anomaly_score": np.round(flags.anomaly_score, 6),
        "burst_count": r.burst_count, "drain_share": np.round(r.drain_share, 6),
        "drain_balance": r.drain_balance, "loops": r.loops,
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)


def _write_report(data_dir: Path, as_of: dt.datetime, report: dict[str, Any]) -> list[Path]:
    folder = data_dir / "reports" / "fraud"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"fraud-{as_of:%Y%m%d}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(report_markdown(report), encoding="utf-8")
    js.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    return [md, js]


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
