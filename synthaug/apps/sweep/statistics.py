"""The statistics of a sweep: a mean with its t-based 95% CI over seeds, the paired difference between two arms
(paired t-test, Cohen's d_z) and the Holm-Bonferroni correction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

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
    out = {**mean_ci(diffs, bounds=(-1.0, 1.0)), "seeds": seeds, "p": None, "effect_size": None}
    if len(diffs) >= 2 and np.std(diffs) > 0:
        out["p"] = float(stats.ttest_rel([arm[s] for s in seeds], [reference[s] for s in seeds]).pvalue)
        out["effect_size"] = float(np.mean(diffs) / np.std(diffs, ddof=1))  # Cohen's d_z of the paired differences
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
