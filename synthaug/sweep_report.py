"""Statistics and outputs of a ratio sweep: per-ratio means with 95% CIs over seeds, the paired difference
of each ratio against real-only (paired t-test across seeds), trials.csv, summary.json, the plot and report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.data.io import atomic_path, atomic_write_text

LEVEL = 0.95


def mean_ci(values: Sequence[float | None], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Mean and t-based 95% CI over seeds, clipped to the metric's ``bounds``; None with fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if len(x) < 2:
        return {"mean": float(x.mean()), "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    low, high = max(bounds[0], float(x.mean() - half)), min(bounds[1], float(x.mean() + half))
    return {"mean": float(x.mean()), "low": low, "high": high, "n": len(x)}


def paired_difference(arm: dict[int, float | None], reference: dict[int, float | None]) -> dict[str, Any]:
    """arm - reference over the seeds both have: mean, 95% CI and the paired t-test p-value."""
    from scipy import stats

    seeds = sorted(s for s in arm if s in reference and arm[s] is not None and reference[s] is not None)
    diffs = [arm[s] - reference[s] for s in seeds]
    out = {**mean_ci(diffs, bounds=(-1.0, 1.0)), "seeds": seeds, "p": None}
    if len(diffs) >= 2 and np.std(diffs) > 0:
        out["p"] = float(stats.ttest_rel([arm[s] for s in seeds], [reference[s] for s in seeds]).pvalue)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input's order.

    ``None`` (no test possible) stays ``None`` and does not count as a comparison.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def summarise(study, settings) -> dict[str, Any]:  # noqa: ANN001 - optuna.Study, SweepSettings
    """Per ratio: validation and test metrics (mean, CI, per seed) and the paired difference vs real-only."""
    import optuna

    from synthaug.sweep import SYNTHETIC_ONLY, TEST_METRICS, ratio_label

    per_ratio: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        if t.user_attrs.get("duplicate") or "ratio" not in t.params:
            continue
        label = ratio_label(t.params["ratio"])
        if t.state != optuna.trial.TrialState.COMPLETE and label in per_ratio:
            continue
        seeds = t.user_attrs.get("seeds", [])
        per_ratio[label] = {"trial": t.number, "state": t.state.name, "params": t.params,
                            "val": mean_ci([s["val"] for s in seeds]),
                            "test": {m: mean_ci([s[f"test_{m}"] for s in seeds]) for m in TEST_METRICS},
                            "per_seed": seeds}
    reference = per_ratio.get("0")
    for label, row in per_ratio.items():
        row["vs_real_only"] = None
        if reference is not None and label != "0":
            row["vs_real_only"] = {m: paired_difference({s["seed"]: s[f"test_{m}"] for s in row["per_seed"]},
                                                        {s["seed"]: s[f"test_{m}"] for s in reference["per_seed"]})
                                   for m in TEST_METRICS}

    def order(label: str) -> float:
        return math.inf if label == SYNTHETIC_ONLY else float(label)

    ratios = sorted(per_ratio, key=order)
    metric = settings.metric if settings.metric in TEST_METRICS else "auroc"
    complete = [r for r in ratios if per_ratio[r]["state"] == "COMPLETE" and per_ratio[r]["val"]["mean"] is not None]
    best = max(complete, key=lambda r: per_ratio[r]["val"]["mean"]) if complete else None
    # Grid points still running in another worker, or left RUNNING by a worker that died less than the
    # storage's grace period ago (after it, the stale trial is failed and retried on the next run).
    unfinished = [ratio_label(r) for r in settings.ratios if settings.search == "grid"
                  and per_ratio.get(ratio_label(r), {}).get("state") not in ("COMPLETE", "PRUNED")]
    return {"metric": metric, "ratios": ratios, "per_ratio": per_ratio, "best_ratio": best, "unfinished": unfinished,
            "seeds": settings.seeds, "model": settings.model, "verdict": verdict(per_ratio, best, metric)}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def verdict(per_ratio: dict[str, Any], best: str | None, metric: str) -> str:
    """One honest sentence: the best ratio's paired test difference vs real-only, or that none beat it."""
    if best is None:
        return "no ratio finished; nothing to report"
    if "0" not in per_ratio:
        return f"best ratio {best} (validation {metric}); real-only (ratio 0) was not run, so no comparison"
    if best == "0":
        return f"no ratio beat real-only on validation {metric}"
    diff = per_ratio[best]["vs_real_only"][metric]
    n = len(diff["seeds"])
    if diff["mean"] is None:
        return f"best ratio {best}, but no seed of it and of real-only both finished: no comparison"
    ci = f"[{_fmt(diff['low'], True)}, {_fmt(diff['high'], True)}]" if diff["low"] is not None else "[CI n/a]"
    p = f"p={diff['p']:.3g}" if diff["p"] is not None else "p n/a"
    text = f"ratio {best}: test {metric} {_fmt(diff['mean'], True)} {ci} vs real-only ({p}, {n} seeds)"
    if diff["low"] is None or diff["low"] <= 0:
        text += "; the interval includes no gain, so this is not evidence that synthetic data helps"
    return text


def write_plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, ratios = summary["metric"], summary["ratios"]
    rows = [summary["per_ratio"][r]["test"][metric] for r in ratios]
    x = np.arange(len(ratios))
    means = np.array([r["mean"] if r["mean"] is not None else np.nan for r in rows])
    low = np.array([r["low"] if r["low"] is not None else np.nan for r in rows])
    high = np.array([r["high"] if r["high"] is not None else np.nan for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(x, means, yerr=[np.nan_to_num(means - low), np.nan_to_num(high - means)], fmt="o-", capsize=4,
                label=f"test {metric}, mean and 95% CI over {summary['seeds']} seeds")
    if "0" in summary["per_ratio"] and summary["per_ratio"]["0"]["test"][metric]["mean"] is not None:
        ax.axhline(summary["per_ratio"]["0"]["test"][metric]["mean"], ls="--", color="grey", label="real only")
    ax.set_xticks(x, ratios)
    ax.set_xlabel("synthetic : real ratio")
    ax.set_ylabel(metric)
    ax.set_title(f"{summary['model']}: {metric} vs synthetic ratio")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Ratio | val | test balanced accuracy | test AUROC | diff vs real-only (the summary's metric) | p."""
    rows = []
    metric = summary["metric"]
    for r in summary["ratios"]:
        row = summary["per_ratio"][r]

        def ci(m: dict[str, Any]) -> str:
            return f"{_fmt(m['mean'])} [{_fmt(m['low'])}, {_fmt(m['high'])}]" if m["low"] is not None \
                else _fmt(m["mean"])

        diff = row["vs_real_only"][metric] if row["vs_real_only"] else None
        rows.append([r, row["state"].lower(), ci(row["val"]), ci(row["test"]["balanced_accuracy"]),
                     ci(row["test"]["auroc"]),
                     "-" if diff is None else f"{_fmt(diff['mean'], True)} [{_fmt(diff['low'], True)}, "
                                              f"{_fmt(diff['high'], True)}]",
                     "-" if diff is None or diff["p"] is None else f"{diff['p']:.3g}"])
    return rows


HEADER = ["ratio", "state", "val (selection)", "test balanced acc", "test AUROC", "diff vs real-only", "p (paired t)"]


def write_report(summary: dict[str, Any], path: Path) -> None:
    lines = [f"# Synthetic-ratio sweep: {summary['model']}", "",
             f"Each ratio trains {summary['seeds']} seeds; numbers are means with t-based 95% CIs over seeds; the "
             f"difference vs real-only is paired by seed (test {summary['metric']}).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", f"Best ratio on validation: **{summary['best_ratio']}**.", "", f"**Result:** {summary['verdict']}.",
              "", "![ratio vs metric](ratio_vs_metric.png)", ""]
    atomic_write_text(path, "\n".join(lines))


def write_trials_csv(study, path: Path) -> None:  # noqa: ANN001
    """One row per trial and seed: trial, state, ratio, params, the seed's validation and test metrics."""
    import csv
    import io

    from synthaug.sweep import TEST_METRICS

    columns = ["trial", "state", "ratio", "lr", "epochs", "value", "duplicate", "seed", "val", "best_epoch",
               "threshold", "train_items", *[f"test_{m}" for m in TEST_METRICS]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for t in study.trials:
        base = {"trial": t.number, "state": t.state.name, "ratio": t.params.get("ratio"), "lr": t.params.get("lr"),
                "epochs": t.params.get("epochs"), "value": t.value, "duplicate": bool(t.user_attrs.get("duplicate"))}
        for seed in t.user_attrs.get("seeds") or [{}]:
            writer.writerow({**base, **seed})
    atomic_write_text(path, buffer.getvalue())


def write_outputs(study, settings, out: Path) -> dict[str, Any]:  # noqa: ANN001
    """trials.csv, summary.json, ratio_vs_metric.png and report.md in ``out``; returns the summary."""
    summary = summarise(study, settings)
    write_trials_csv(study, out / "trials.csv")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    if summary["ratios"]:
        write_plot(summary, out / "ratio_vs_metric.png")
    write_report(summary, out / "report.md")
    return summary
