"""Offline evaluation: binary-classifier metrics, scorer comparison, PNG plots, a Markdown report.

Every scorer (the model, its baselines, the simulator's oracle) is judged on the same labels.
Rank metrics (ROC-AUC, PR-AUC, top-decile lift, gains) apply to any score; probability metrics
(log loss, Brier score, calibration) only to scorers whose scores are probabilities. Ties are
treated as broken at random, so a constant scorer has AUC 0.5 and lift 1 exactly.

Plots use matplotlib's object API (`Figure`, Agg canvas) rather than pyplot: no global state, no
backend switch imposed on the caller, safe in threads and under pytest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

ArrayLike = Any
FloatArray = npt.NDArray[np.float64]

PRIMARY_METRIC = "roc_auc"
METRIC_LABELS: dict[str, str] = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "log_loss": "log loss",
    "brier": "Brier",
    "top_decile_lift": "top-decile lift",
}
ROLES = ("model", "baseline", "oracle")
BOOTSTRAP_RESAMPLES = 200
INTERVAL = 0.95


def _labels(y_true: ArrayLike) -> npt.NDArray[np.int64]:
    y = np.ravel(np.asarray(y_true))
    if y.size == 0:
        raise ValueError("y_true is empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold binary labels 0/1")
    return y.astype(np.int64)


def _scores(scores: ArrayLike, n: int, name: str = "scores") -> FloatArray:
    s = np.ravel(np.asarray(scores, dtype=np.float64))
    if s.shape != (n,):
        raise ValueError(f"{name}: {s.size} scores for {n} labels")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores must be finite")
    return s


def _both_classes(y: npt.NDArray[np.int64]) -> bool:
    return 0 < int(y.sum()) < y.size


def top_decile_lift(y_true: ArrayLike, scores: ArrayLike, fraction: float = 0.1) -> float | None:
    """Positive rate among the top `fraction` by score, over the overall positive rate.

    Members tied at the cut are counted pro rata (their expected share under random
    tie-breaking). None when there are no positives.
    """
    y = _labels(y_true)
    s = _scores(scores, y.size)
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    positives = int(y.sum())
    if positives == 0:
        return None
    k = max(1, round(fraction * y.size))
    cut = np.sort(s)[::-1][k - 1]
    above, tied = s > cut, s == cut
    expected = y[above].sum() + (k - above.sum()) * y[tied].sum() / tied.sum()
    return float((expected / k) / (positives / y.size))


def gains_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Cumulative gains: (share of members targeted, share of positives captured), from (0, 0).

    One point per distinct score, highest first; straight lines between points are what random
    tie-breaking gives on average.
    """
    y = _labels(y_true)
    s = _scores(scores, y.size)
    values, inverse = np.unique(-s, return_inverse=True)
    count = np.bincount(inverse, minlength=values.size)
    pos = np.bincount(inverse, weights=y, minlength=values.size)
    targeted = np.concatenate([[0.0], np.cumsum(count) / y.size])
    total = max(float(y.sum()), 1.0)
    captured = np.concatenate([[0.0], np.cumsum(pos) / total])
    return targeted, captured


def calibration(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Reliability curve over quantile bins: mean predicted vs observed rate per bin.

    Quantile bins hold equal numbers of members, so the sparse high-probability tail of an
    imbalanced problem does not get bins of a handful of members.
    """
    y = _labels(y_true)
    p = _scores(prob, y.size)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("calibration needs probabilities in [0, 1]")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    return {
        "strategy": "quantile",
        "n_bins": n_bins,
        "prob_pred": [float(v) for v in prob_pred],
        "prob_true": [float(v) for v in prob_true],
    }


def binary_metrics(
    y_true: ArrayLike, scores: ArrayLike, *, probabilistic: bool = True
) -> dict[str, float | None]:
    """ROC-AUC, PR-AUC (average precision), top-decile lift and, for probabilities, log loss
    and Brier score. A metric that is undefined on these labels (one class only) is None."""
    y = _labels(y_true)
    s = _scores(scores, y.size)
    both = _both_classes(y)
    out: dict[str, float | None] = {
        "roc_auc": float(roc_auc_score(y, s)) if both else None,
        "pr_auc": float(average_precision_score(y, s)) if both else None,
        "log_loss": None,
        "brier": None,
        "top_decile_lift": top_decile_lift(y, s),
    }
    if probabilistic:
        if np.any((s < 0) | (s > 1)):
            raise ValueError("log loss and Brier score need probabilities in [0, 1]")
        out["log_loss"] = float(log_loss(y, s, labels=[0, 1]))
        out["brier"] = float(brier_score_loss(y, s, pos_label=1))
    return out


def bootstrap_auc(
    y_true: ArrayLike, scorers: Mapping[str, ArrayLike], *,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> dict[str, FloatArray]:
    """Each scorer's ROC-AUC on `resamples` bootstrap resamples of the rows (drawn with
    replacement, as many as there are), the same resamples for every scorer: paired, so a
    difference between two scorers has an interval too.

    A resample is the rows' counts; the AUC is P(positive scored above negative) + half the
    ties, summed over each scorer's distinct scores (sorted once), so a resample costs
    O(rows), not a sort. Equal to sklearn's roc_auc_score on the resampled rows (tested)."""
    y = _labels(y_true)
    n = y.size
    groups: dict[str, tuple[npt.NDArray[np.intp], int]] = {}
    for name, raw in scorers.items():
        s = _scores(raw, n, name)
        order = np.argsort(s, kind="stable")
        ordered = s[order]
        group = np.empty(n, dtype=np.intp)
        group[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
        groups[name] = (group, int(group.max()) + 1 if n else 0)
    out = {name: np.full(resamples, np.nan) for name in scorers}
    rng = np.random.default_rng(seed)
    positive = y == 1
    for b in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        pos = np.where(positive, counts, 0.0)
        neg = counts - pos
        pairs = pos.sum() * neg.sum()
        if pairs == 0:
            continue
        for name, (group, k) in groups.items():
            pos_w = np.bincount(group, weights=pos, minlength=k)
            neg_w = np.bincount(group, weights=neg, minlength=k)
            below = np.cumsum(neg_w) - neg_w
            out[name][b] = float(pos_w @ (below + 0.5 * neg_w)) / pairs
    return out


def interval(samples: FloatArray, level: float = INTERVAL) -> list[float] | None:
    """The central `level` percentile interval of bootstrap samples (None without any)."""
    ok = samples[np.isfinite(samples)]
    if not ok.size:
        return None
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(ok, [tail, 100 - tail])]


def evaluate(
    y_true: ArrayLike,
    scorers: Mapping[str, ArrayLike],
    *,
    baselines: Collection[str] = (),
    oracle: str | None = None,
    probabilistic: Collection[str] | None = None,
    n_bins: int = 10,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Every scorer's metrics on the same labels, as a JSON-able dict.

    `scorers` maps a name to scores, higher meaning more likely positive (negate a score such
    as "days since last order" if it runs the other way); names in `baselines` are baselines,
    `oracle` names the oracle, the rest are models. `probabilistic` names the scorers whose
    scores are probabilities; by default, every scorer whose scores all lie in [0, 1] (name
    rank-only baselines with such scores explicitly). The result holds per-scorer metrics and
    a calibration curve, the best baseline by ROC-AUC, and for each model its ROC-AUC margin
    over that baseline and its gap to the oracle. With `resamples`, each ROC-AUC gets a 95 %
    bootstrap interval (`roc_auc_ci`) and each model's margin over the best baseline one too
    (`vs_best_baseline_ci`, from the same resamples).
    """
    y = _labels(y_true)
    if not scorers:
        raise ValueError("no scorers to evaluate")
    unknown = (set(baselines) | ({oracle} if oracle else set())) - set(scorers)
    if unknown:
        raise ValueError(f"baselines/oracle not among the scorers: {sorted(unknown)}")
    result_scorers: dict[str, Any] = {}
    for name, raw in scorers.items():
        s = _scores(raw, y.size, name)
        is_prob = (
            name in probabilistic
            if probabilistic is not None
            else bool(np.all((s >= 0) & (s <= 1)))
        )
        role = "oracle" if name == oracle else "baseline" if name in baselines else "model"
        entry: dict[str, Any] = {"role": role, "probabilistic": is_prob}
        entry.update(binary_metrics(y, s, probabilistic=is_prob))
        entry["calibration"] = calibration(y, s, n_bins) if is_prob else None
        result_scorers[name] = entry

    samples = bootstrap_auc(y, scorers, resamples=resamples) if resamples else {}
    for name, entry in result_scorers.items():
        entry["roc_auc_ci"] = interval(samples[name]) if samples else None

    def auc(name: str) -> float | None:
        value = result_scorers[name][PRIMARY_METRIC]
        return None if value is None else float(value)

    ranked = [b for b in baselines if auc(b) is not None]
    best = max(ranked, key=lambda b: auc(b) or 0.0) if ranked else None
    comparison: dict[str, dict[str, float | list[float] | None]] = {}
    for name, entry in result_scorers.items():
        if entry["role"] != "model":
            continue
        mine = auc(name)
        best_auc = auc(best) if best else None
        oracle_auc = auc(oracle) if oracle else None
        comparison[name] = {
            "vs_best_baseline": None if mine is None or best_auc is None else mine - best_auc,
            "vs_best_baseline_ci": interval(samples[name] - samples[best])
            if samples and best else None,
            "gap_to_oracle": None if mine is None or oracle_auc is None else oracle_auc - mine,
        }
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()),
        "primary_metric": PRIMARY_METRIC,
        "scorers": result_scorers,
        "best_baseline": best,
        "comparison": comparison,
    }


# -- plots ------------------------------------------------------------------------------------


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    return out


def _style(role: str) -> dict[str, Any]:
    if role == "oracle":
        return {"linestyle": ":", "linewidth": 1.5, "color": "black"}
    if role == "baseline":
        return {"linestyle": "--", "linewidth": 1.2}
    return {"linestyle": "-", "linewidth": 2.2}


def plot_roc(
    y_true: ArrayLike,
    scorers: Mapping[str, ArrayLike],
    path: str | os.PathLike[str],
    *,
    roles: Mapping[str, str] | None = None,
    title: str = "ROC curves",
) -> Path:
    """ROC curves of all scorers on one chart, AUC in the legend."""
    y = _labels(y_true)
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="chance (0.500)")
    if _both_classes(y):
        for name, raw in scorers.items():
            s = _scores(raw, y.size, name)
            fpr, tpr, _ = roc_curve(y, s)
            style = _style((roles or {}).get(name, "model"))
            ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(y, s):.3f})", **style)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_calibration(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str = "Calibration (quantile bins)",
) -> Path:
    """Reliability diagram from `calibration(...)` results (e.g. evaluate()'s per scorer)."""
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfectly calibrated")
    top = 0.0
    for name, curve in curves.items():
        pred, true = curve["prob_pred"], curve["prob_true"]
        ax.plot(pred, true, marker="o", markersize=3, label=name)
        top = max(top, *pred, *true)
    # zoom to the populated range: churn/propensity probabilities often stay well under 1
    limit = min(1.0, max(0.05, top * 1.1))
    ax.set_xlim(0, limit)
    ax.set_ylim(0, limit)
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title=title)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_importance(
    names: Sequence[str],
    values: Sequence[float],
    path: str | os.PathLike[str],
    *,
    top: int = 20,
    title: str = "Gain importance",
) -> Path:
    """Horizontal bar chart of the `top` features by value, largest on top."""
    if len(names) != len(values):
        raise ValueError("names and values differ in length")
    order = np.argsort(np.asarray(values, dtype=np.float64))[::-1][:top][::-1]
    fig = Figure(figsize=(6.5, 0.3 * max(len(order), 3) + 1.2))
    ax = fig.subplots()
    ax.barh([names[i] for i in order], [float(values[i]) for i in order], color="#3b75af")
    ax.set(xlabel="total gain", title=title)
    return _save(fig, path)


def plot_gains(
    y_true: ArrayLike,
    scorers: Mapping[str, ArrayLike],
    path: str | os.PathLike[str],
    *,
    roles: Mapping[str, str] | None = None,
    title: str = "Cumulative gains and lift",
) -> Path:
    """Cumulative gains (left) and lift (right) against the share of members targeted."""
    y = _labels(y_true)
    prevalence = float(y.mean())
    fig = Figure(figsize=(11.0, 4.5))
    gain_ax, lift_ax = fig.subplots(1, 2)
    gain_ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="chance")
    lift_ax.axhline(1.0, color="grey", linewidth=0.8)
    for name, raw in scorers.items():
        targeted, captured = gains_curve(y, _scores(raw, y.size, name))
        style = _style((roles or {}).get(name, "model"))
        gain_ax.plot(targeted, captured, label=name, **style)
        share = np.linspace(0.01, 1.0, 100)
        if prevalence > 0:
            lift_ax.plot(share, np.interp(share, targeted, captured) / share, label=name, **style)
    gain_ax.set(xlabel="share of members targeted", ylabel="share of positives captured")
    gain_ax.set_xlim(0, 1)
    gain_ax.set_ylim(0, 1)
    gain_ax.legend(loc="lower right", fontsize="small")
    lift_ax.set(xlabel="share of members targeted", ylabel="lift")
    lift_ax.set_xlim(0, 1)
    fig.suptitle(title)
    return _save(fig, path)


# -- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    """Where `write_report` put things."""

    directory: Path
    markdown: Path
    metrics_json: Path
    plots: dict[str, Path] = field(default_factory=dict)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_table(evaluation: Mapping[str, Any]) -> str:
    """The scorers side by side as a Markdown table: models first, then baselines, then oracle."""
    scorers: Mapping[str, Any] = evaluation["scorers"]
    order = sorted(scorers, key=lambda n: ROLES.index(scorers[n]["role"]))
    labels = dict(METRIC_LABELS)
    if any(scorers[n].get("roc_auc_ci") for n in scorers):
        labels["roc_auc"] += " (95 % bootstrap interval)"
    head = "| scorer | role | " + " | ".join(labels.values()) + " |"
    rule = "|---|---|" + "---:|" * len(METRIC_LABELS)
    rows = [head, rule]
    for name in order:
        entry = scorers[name]
        cells = [_fmt(entry[key], 2 if key == "top_decile_lift" else 4) for key in METRIC_LABELS]
        if entry.get("roc_auc_ci"):  # the interval beside the AUC
            lo, hi = entry["roc_auc_ci"]
            cells[list(METRIC_LABELS).index("roc_auc")] += f" ({lo:.4f}–{hi:.4f})"
        label = f"**{name}**" if entry["role"] == "model" else name
        rows.append(f"| {label} | {entry['role']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _comparison_lines(evaluation: Mapping[str, Any]) -> list[str]:
    lines = []
    best = evaluation.get("best_baseline")
    for name, comp in evaluation["comparison"].items():
        if comp["vs_best_baseline"] is not None:
            verdict = "beats" if comp["vs_best_baseline"] > 0 else "does not beat"
            ci = comp.get("vs_best_baseline_ci")
            lines.append(
                f"- **{name}** {verdict} the best baseline ({best}) by "
                f"{comp['vs_best_baseline']:+.4f} ROC-AUC"
                + (f" (95 % bootstrap interval {ci[0]:+.4f} to {ci[1]:+.4f})." if ci else ".")
            )
        if comp["gap_to_oracle"] is not None:
            lines.append(f"- **{name}** is {comp['gap_to_oracle']:.4f} ROC-AUC below the oracle.")
    return lines


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_report(
    out_dir: str | os.PathLike[str],
    y_true: ArrayLike,
    scorers: Mapping[str, ArrayLike],
    *,
    title: str,
    baselines: Collection[str] = (),
    oracle: str | None = None,
    probabilistic: Collection[str] | None = None,
    training_window: tuple[str, str] | None = None,
    data_sizes: Mapping[str, int] | None = None,
    importance: Mapping[str, float] | None = None,
    drivers: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    n_bins: int = 10,
    top_features: int = 20,
) -> ReportFiles:
    """Evaluate the scorers and write ``report.md``, ``metrics.json`` and PNG plots to out_dir.

    `training_window` is (start, end) as ISO strings; `data_sizes` e.g. rows per split;
    `importance` is gain importance per feature; `drivers` the mean absolute per-prediction
    contribution (LightGBM ``pred_contrib``) per feature. `extra` is copied into the JSON.
    The JSON holds everything the Markdown shows, plus the calibration curves.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(
        y_true,
        scorers,
        baselines=baselines,
        oracle=oracle,
        probabilistic=probabilistic,
        n_bins=n_bins,
    )
    roles = {name: entry["role"] for name, entry in evaluation["scorers"].items()}
    plots = {
        "roc": plot_roc(y_true, scorers, out / "roc.png", roles=roles),
        "gains": plot_gains(y_true, scorers, out / "gains.png", roles=roles),
    }
    curves = {
        name: entry["calibration"]
        for name, entry in evaluation["scorers"].items()
        if entry["calibration"] is not None
    }
    if curves:
        plots["calibration"] = plot_calibration(curves, out / "calibration.png")
    if importance:
        plots["importance"] = plot_importance(
            list(importance), list(importance.values()), out / "importance.png", top=top_features
        )

    md = [f"# {title}", ""]
    if training_window:
        md.append(f"- Training window: {training_window[0]} → {training_window[1]}")
    if data_sizes:
        md.append("- Data: " + ", ".join(f"{k} {v:,}" for k, v in data_sizes.items()))
    md.append(
        f"- Evaluated on {evaluation['n']:,} rows, {evaluation['positives']:,} positive "
        f"({evaluation['prevalence']:.2%})"
    )
    md += ["", "## Metrics", "", metrics_table(evaluation), ""]
    md += _comparison_lines(evaluation)
    md += ["", "## Plots", ""]
    captions = {
        "roc": "ROC curves",
        "gains": "Cumulative gains and lift",
        "calibration": "Calibration",
        "importance": "Gain importance",
    }
    md += [f"![{captions[k]}]({p.name})" for k, p in plots.items()]
    if importance or drivers:
        md += ["", "## Top drivers", "", *_drivers_table(importance, drivers, top_features)]
    if notes:
        md += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    markdown = out / "report.md"
    markdown.write_text("\n".join(md) + "\n", encoding="utf-8")

    payload = {
        "title": title,
        "training_window": (
            {"start": training_window[0], "end": training_window[1]} if training_window else None
        ),
        "data_sizes": dict(data_sizes or {}),
        "evaluation": evaluation,
        "importance": dict(importance or {}),
        "drivers": dict(drivers or {}),
        "plots": {k: p.name for k, p in plots.items()},
        "extra": dict(extra or {}),
    }
    metrics_json = out / "metrics.json"
    metrics_json.write_text(
        json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return ReportFiles(out, markdown, metrics_json, plots)


def _drivers_table(
    importance: Mapping[str, float] | None, drivers: Mapping[str, float] | None, top: int
) -> list[str]:
    gain = dict(importance or {})
    contrib = dict(drivers or {})
    total = sum(gain.values()) or 1.0
    # rank by gain when given (the model's own view), else by mean |contribution|
    key = gain if gain else contrib
    names = sorted(set(gain) | set(contrib), key=lambda n: -key.get(n, 0.0))[:top]
    rows = ["| feature | gain | gain share | mean abs. contribution |", "|---|---:|---:|---:|"]
    for n in names:
        g = gain.get(n)
        rows.append(
            f"| {n} | {_fmt(g, 1)} | {_fmt(None if g is None else g / total, 3)} | "
            f"{_fmt(contrib.get(n))} |"
        )
    return rows
