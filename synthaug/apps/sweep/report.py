"""Statistics and outputs of a sweep: per-arm means with 95% CIs over seeds; each arm's paired difference
from its classifier's real-only arm (paired t-test across seeds, effect size, Holm-corrected across every
arm of the study); trials.csv, summary.json, the ratio plot, the heatmap and report.md (a table per classifier).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.apps.sweep.statistics import holm, mean_ci, paired_difference
from synthaug.data.io import atomic_path, atomic_write_text
from synthaug.markdown import markdown_table


def summarise(study, settings, described: dict[str, dict] | None = None) -> dict[str, Any]:
    """Per arm: validation and test metrics (mean, CI, per seed) and the paired difference from real-only."""
    import optuna

    from synthaug.apps.sweep.arms import Arm, arm_order
    from synthaug.apps.sweep.settings import TEST_METRICS

    per_arm: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        key = t.user_attrs.get("arm")
        if t.user_attrs.get("duplicate") or key is None:
            continue
        if t.state != optuna.trial.TrialState.COMPLETE and key in per_arm:
            continue
        arm, seeds = Arm.from_key(key), t.user_attrs.get("seeds", [])
        per_arm[key] = {"trial": t.number, "state": t.state.name, "params": t.params, "model": arm.model,
                        "synthetic": arm.synthetic, "schedule": arm.schedule, "role": arm.role,
                        "val": mean_ci([s["val"] for s in seeds]),
                        "test": {m: mean_ci([s[f"test_{m}"] for s in seeds]) for m in TEST_METRICS},
                        "per_seed": seeds, "vs_real_only": None}
    metric = settings.metric if settings.metric in TEST_METRICS else "auroc"
    for row in per_arm.values():
        reference = per_arm.get(Arm(row["model"], "", "0").key)
        if reference is not None and reference is not row:
            row["vs_real_only"] = {m: paired_difference({s["seed"]: s[f"test_{m}"] for s in row["per_seed"]},
                                                        {s["seed"]: s[f"test_{m}"] for s in reference["per_seed"]})
                                   for m in TEST_METRICS}
    compared = [row["vs_real_only"][metric] for row in per_arm.values() if row["vs_real_only"]]
    for diff, adjusted in zip(compared, holm([d["p"] for d in compared])):
        diff["p_holm"] = adjusted  # across every arm of the study, on the summary's metric
    comparisons = sum(d["p"] is not None for d in compared)
    several = len({row["synthetic"] for row in per_arm.values() if row["synthetic"]}) > 1
    per_model = {}
    for model in settings.models:
        keys = sorted((k for k, r in per_arm.items() if r["model"] == model), key=lambda k: arm_order(Arm.from_key(k)))
        done = [k for k in keys if per_arm[k]["state"] == "COMPLETE" and per_arm[k]["val"]["mean"] is not None]
        best = max(done, key=lambda k: per_arm[k]["val"]["mean"]) if done else None
        per_model[model] = {"arms": keys, "labels": {k: Arm.from_key(k).label(several) for k in keys},
                            "best_arm": best,
                            "verdict": verdict(per_arm, best, metric, model, several, comparisons)}
    # Grid arms still running in another worker, or left RUNNING by a worker that died less than the
    # storage's grace period ago (after it, the stale trial is failed and retried on the next run).
    sources = list(described or {})
    unfinished = [arm.key for arm in settings.arms(sources) if settings.search == "grid"
                  and per_arm.get(arm.key, {}).get("state") not in ("COMPLETE", "PRUNED")] if sources else []
    return {"metric": metric, "seeds": settings.seeds, "models": list(settings.models), "sources": described or {},
            "several_sources": several, "equal_steps": settings.samples_per_epoch != 0, "per_arm": per_arm, "per_model": per_model, "comparisons": comparisons,
            "unfinished": unfinished, "verdict": "; ".join(m["verdict"] for m in per_model.values())}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def verdict(per_arm: dict[str, Any], best: str | None, metric: str, model: str, several: bool,
            comparisons: int) -> str:
    """One honest sentence per classifier: the best arm on validation only when its gain over real-only
    on test survives the Holm correction across every comparison of the study."""
    from synthaug.apps.sweep.arms import Arm

    if best is None:
        return f"{model}: no arm finished; nothing to report"
    reference = Arm(model, "", "0").key
    if reference not in per_arm:
        return f"{model}: best arm {Arm.from_key(best).label(several)} (validation {metric}); real-only (ratio 0) " \
               "was not run, so no comparison"
    if best == reference:
        return f"{model}: no arm beat real-only on validation {metric}"
    diff = per_arm[best]["vs_real_only"][metric]
    if diff["mean"] is None:
        return f"{model}: no seed of the best arm and of real-only both finished: no comparison"
    if diff.get("p_holm") is not None and diff["p_holm"] < 0.05 and diff["mean"] > 0:
        ci = f"[{_fmt(diff['low'], True)}, {_fmt(diff['high'], True)}]" if diff["low"] is not None else "[CI n/a]"
        return (f"{model}: {Arm.from_key(best).label(several)} ({per_arm[best]['role']}) beats real-only by "
                f"{_fmt(diff['mean'], True)} {ci} test {metric} (paired p={diff['p']:.3g}, Holm p={diff['p_holm']:.3g} "
                f"over {comparisons} comparisons, effect size d={diff['effect_size']:.2f}, {len(diff['seeds'])} seeds)")
    return (f"{model}: no arm's test {metric} gain over real-only survives the Holm correction over {comparisons} "
            "comparisons, so this is not evidence that synthetic data helps")


def write_plot(summary: dict[str, Any], path: Path) -> None:
    """Test metric vs constant ratio: one line per classifier and source, real-only as each line's first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthaug.apps.sweep.arms import Arm

    metric, per_arm = summary["metric"], summary["per_arm"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    labels: list[str] = []
    for model, info in summary["per_model"].items():
        arms = [Arm.from_key(k) for k in info["arms"]]
        sources = sorted({a.synthetic for a in arms if a.synthetic}) or [""]
        for source in sources:
            line = [a for a in arms if a.axes()[0] == "constant" and (a.is_real_only or a.synthetic == source)]
            for a in line:
                if a.schedule not in labels:
                    labels.append(a.schedule)
            x = [labels.index(a.schedule) for a in line]
            rows = [per_arm[a.key]["test"][metric] for a in line]
            means = np.array([r["mean"] if r["mean"] is not None else np.nan for r in rows])
            low = np.array([r["low"] if r["low"] is not None else np.nan for r in rows])
            high = np.array([r["high"] if r["high"] is not None else np.nan for r in rows])
            name = model + (f" · {source}" if summary["several_sources"] else "")
            ax.errorbar(x, means, yerr=[np.nan_to_num(means - low), np.nan_to_num(high - means)], fmt="o-",
                        capsize=4, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("synthetic : real ratio (0 = real only)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric} vs synthetic ratio (mean, 95% CI over {summary['seeds']} seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def heatmap_grid(summary: dict[str, Any], model: str) -> tuple[list[str], list[str], np.ndarray]:
    """(rows, columns, mean paired difference from real-only): rows are schedule kinds (and sources), columns
    the ratio each arm starts from."""
    from synthaug.apps.sweep.arms import Arm

    metric, cells = summary["metric"], {}
    for key in summary["per_model"][model]["arms"]:
        arm, row = Arm.from_key(key), summary["per_arm"][key]
        if arm.is_real_only or not row["vs_real_only"]:
            continue
        kind, column = arm.axes()
        name = kind + (f" · {arm.synthetic}" if summary["several_sources"] else "")
        mean = row["vs_real_only"][metric]["mean"]
        cells[(name, column)] = np.nan if mean is None else mean
    rows = list(dict.fromkeys(r for r, _ in cells))
    columns = list(dict.fromkeys(c for _, c in cells))
    grid = np.full((len(rows), len(columns)), np.nan)
    for (r, c), value in cells.items():
        grid[rows.index(r), columns.index(c)] = value
    return rows, columns, grid


def write_heatmap(summary: dict[str, Any], path: Path) -> bool:
    """Paired difference from real-only (test metric) per schedule/source x ratio, a panel per classifier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, *heatmap_grid(summary, m)) for m in summary["per_model"]]
    panels = [p for p in panels if p[1] and p[2]]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 1.2 + 0.5 * max(len(p[1]) for p in panels)),
                             squeeze=False)
    finite = np.concatenate([p[3][np.isfinite(p[3])] for p in panels])
    span = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-3)
    for ax, (model, rows, columns, grid) in zip(axes[0], panels):
        image = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(rows)), rows)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("ratio (start of a decay)")
        ax.set_title(f"{model}: test {summary['metric']} - real only", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:  # matplotlib Figure
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


HEADER = ["arm", "role", "state", "val (selection)", "test balanced acc", "test AUROC", "diff vs real-only",
          "p (paired t)", "Holm p", "effect size d"]


def table_rows(summary: dict[str, Any], model: str) -> list[list[str]]:
    """One classifier's arms: HEADER's columns (the difference, p-values and effect size on the summary's metric)."""
    rows = []
    info = summary["per_model"][model]

    def ci(m: dict[str, Any]) -> str:
        return f"{_fmt(m['mean'])} [{_fmt(m['low'])}, {_fmt(m['high'])}]" if m["low"] is not None else _fmt(m["mean"])

    for key in info["arms"]:
        row = summary["per_arm"][key]
        diff = row["vs_real_only"][summary["metric"]] if row["vs_real_only"] else None
        rows.append([info["labels"][key], row["role"], row["state"].lower(), ci(row["val"]),
                     ci(row["test"]["balanced_accuracy"]), ci(row["test"]["auroc"]),
                     "-" if diff is None else f"{_fmt(diff['mean'], True)} [{_fmt(diff['low'], True)}, "
                                              f"{_fmt(diff['high'], True)}]",
                     "-" if diff is None or diff["p"] is None else f"{diff['p']:.3g}",
                     "-" if diff is None or diff.get("p_holm") is None else f"{diff['p_holm']:.3g}",
                     "-" if diff is None or diff.get("effect_size") is None else f"{diff['effect_size']:+.2f}"])
    return rows


def write_report(summary: dict[str, Any], path: Path, heatmap: bool) -> None:
    metric = summary["metric"]
    control = ("Real only is the count-matched real control: every arm trains the same number of items per epoch "
               "(equal optimiser steps)." if summary["equal_steps"] else
               "Arms train one pass over their own set per epoch (--samples-per-epoch 0), so a mixed arm also gets "
               "more optimiser steps than real only.")
    lines = ["# Synthetic-data sweep", "",
             f"Each arm trains {summary['seeds']} seed(s) per classifier; numbers are means with t-based 95% CIs over "
             f"seeds. The difference from real-only is paired by seed (test {metric}); its p-values are Holm-corrected "
             f"across all {summary['comparisons']} comparisons of the study; the effect size is Cohen's d_z of the "
             f"paired differences. {control} Synthetic only is the CAS (train on synthetic, test on real).", ""]
    if summary["sources"] and summary["several_sources"]:
        lines += ["Synthetic sources:", ""] + [f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in d.items())
                                                for name, d in summary["sources"].items()] + [""]
    for model, info in summary["per_model"].items():
        lines += [f"## {model}", "", *markdown_table(HEADER, table_rows(summary, model))]
        best = info["best_arm"]
        lines += ["", f"Best arm on validation: **{info['labels'][best] if best else 'none'}**.", ""]
    lines += [f"**Result:** {summary['verdict']}.", "", "![ratio vs metric](ratio_vs_metric.png)", ""]
    if heatmap:
        lines += ["![paired difference per schedule and ratio](arms_heatmap.png)", ""]
    atomic_write_text(path, "\n".join(lines))


def write_trials_csv(study, path: Path) -> None:
    """One row per trial and seed: the trial, its arm and params, the seed's validation and test metrics."""
    import csv
    import io

    from synthaug.apps.sweep.settings import TEST_METRICS

    columns = ["trial", "state", "arm", "model", "synthetic", "schedule", "lr", "epochs", "value", "duplicate",
               "seed", "val", "best_epoch", "threshold", "train_items", "real_items_seen", "synthetic_items_seen",
               *[f"test_{m}" for m in TEST_METRICS]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for t in study.trials:
        base = {"trial": t.number, "state": t.state.name, "lr": t.params.get("lr"), "epochs": t.params.get("epochs"),
                "value": t.value, "duplicate": bool(t.user_attrs.get("duplicate")),
                **{k: t.user_attrs.get(k) for k in ("arm", "model", "synthetic", "schedule")}}
        for seed in t.user_attrs.get("seeds") or [{}]:
            writer.writerow({**base, **seed})
    atomic_write_text(path, buffer.getvalue())


def write_outputs(study, settings, out: Path, described: dict[str, dict] | None = None) -> dict[str, Any]:
    """trials.csv, summary.json, ratio_vs_metric.png, arms_heatmap.png and report.md in ``out``; returns the summary."""
    summary = summarise(study, settings, described)
    write_trials_csv(study, out / "trials.csv")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    if summary["per_arm"]:
        write_plot(summary, out / "ratio_vs_metric.png")
    heatmap = bool(summary["per_arm"]) and write_heatmap(summary, out / "arms_heatmap.png")
    write_report(summary, out / "report.md", heatmap)
    return summary
