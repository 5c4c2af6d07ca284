"""An evaluation as a report: PNG plots (ROC, calibration, importance, gains) and the Markdown
and JSON a registered model keeps beside it (`write_report`). The metrics themselves are
`recsvc.offline.evaluation`.

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
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from recsvc.offline.evaluation import (
    METRIC_LABELS,
    ROLES,
    ArrayLike,
    binary_labels,
    both_classes,
    evaluate,
    gains_curve,
    scores_of,
)

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
    y = binary_labels(y_true)
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="chance (0.500)")
    if both_classes(y):
        for name, raw in scorers.items():
            s = scores_of(raw, y.size, name)
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
    y = binary_labels(y_true)
    prevalence = float(y.mean())
    fig = Figure(figsize=(11.0, 4.5))
    gain_ax, lift_ax = fig.subplots(1, 2)
    gain_ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="chance")
    lift_ax.axhline(1.0, color="grey", linewidth=0.8)
    for name, raw in scorers.items():
        targeted, captured = gains_curve(y, scores_of(raw, y.size, name))
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
