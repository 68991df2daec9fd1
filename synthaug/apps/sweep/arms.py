"""The arms of a sweep: classifier x synthetic source x ratio schedule, each named for what it controls.

An arm is one training recipe the study compares with real-only. ``0`` (real only) is one arm per
classifier, whatever the sources; every other schedule is crossed with every synthetic source. Sources
are named by the settings that tell them apart (from ``cache.json``, or the generator's settings for
a bundle), e.g. ``class_guidance=1`` and ``class_guidance=4``; a single source by its folder name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthaug.mix.ratio import Ratio

REAL_ONLY = Ratio.real_only().label  # "0"


@dataclass(frozen=True)
class Arm:
    model: str
    synthetic: str  # the source's name; "" for real only
    schedule: str  # a schedule label (synthaug.mix.schedule)

    @property
    def key(self) -> str:
        """The arm's id in the study (Optuna's grid value)."""
        return f"{self.model}|{self.synthetic}|{self.schedule}"

    @classmethod
    def from_key(cls, key: str) -> Arm:
        model, synthetic, schedule = key.split("|")
        return cls(model, synthetic, schedule)

    @property
    def is_real_only(self) -> bool:
        return self.schedule == REAL_ONLY

    def label(self, several_sources: bool) -> str:
        """The arm's name within its classifier's table."""
        if self.is_real_only or not several_sources:
            return self.schedule
        return f"{self.schedule} · {self.synthetic}"

    @property
    def role(self) -> str:
        """What the arm controls, in words (the report's "role" column)."""
        if self.is_real_only:
            return "real only: the count-matched real control"
        kind, _, arg = self.schedule.partition(":")
        if kind == "pretrain":
            return f"pretrain on synthetic for {arg} epoch{'s' if arg != '1' else ''}, then fine-tune on real"
        if kind in ("linear", "cosine"):
            return f"synthetic:real {arg} decaying ({kind}) to 0 over the run"
        if Ratio.parse(self.schedule).is_synthetic_only:
            return "synthetic only: CAS (train on synthetic, test on real)"
        return f"real + synthetic at {self.schedule}:1"

    def axes(self) -> tuple[str, str]:
        """(row, column) of the heatmap: the schedule's kind and the ratio it starts from."""
        kind, _, arg = self.schedule.partition(":")
        if kind == "pretrain":
            return self.schedule, "-"
        if kind in ("linear", "cosine"):
            return kind, arg
        return "constant", self.schedule


def enumerate_arms(models: Sequence[str], sources: Sequence[str], schedules: Sequence[str]) -> list[Arm]:
    """Every arm of a grid, real-only first per classifier, without repeats."""
    arms: list[Arm] = []
    for model in models:
        for schedule in schedules:
            if schedule == REAL_ONLY:
                arms.append(Arm(model, "", REAL_ONLY))
            else:
                arms += [Arm(model, source, schedule) for source in sources]
    return list(dict.fromkeys(arms))


def arm_order(arm: Arm) -> tuple:
    """Sort key within a classifier: constant ratios ascending, synthetic-only, decays, pretraining."""
    kind, _, arg = arm.schedule.partition(":")
    rank = {"linear": 2, "cosine": 3, "pretrain": 4}.get(kind, 0)
    if rank == 0:
        ratio = Ratio.parse(arm.schedule)
        return (1 if ratio.is_synthetic_only else 0, ratio.value, arm.synthetic)
    return (rank, float(arg), arm.synthetic)


def describe_source(source: Any) -> dict[str, Any]:  # SyntheticCache | CCELLAGenerator
    """The settings that made a source's volumes (what names it among several)."""
    from synthaug.mix.cache import SyntheticCache

    if isinstance(source, SyntheticCache):
        meta = source.meta
        described = {**meta["generator"], "report_source": meta.get("report_source"),
                     "bundle": str(meta["bundle_fingerprint"])[:12], "seed": meta.get("seed")}
        filt = meta.get("filter")
        described["filter"] = f"{filt['model']}@{filt['confidence']:g}" if filt else None
        return described
    return {**source.settings(), "report_source": source.report_source, "bundle": source.fingerprint[:12],
            "seed": None, "filter": None}


def source_names(paths: Sequence[str | Path], described: Sequence[dict[str, Any]]) -> list[str]:
    """A short, unique name per source: the settings that differ between them, else the folder names."""
    if len(paths) == 1:
        return [_clean(Path(paths[0]).name or "synthetic")]
    keys = [k for k in described[0] if len({str(d.get(k)) for d in described}) > 1]
    names = [",".join(f"{k}={d.get(k)}" for k in keys) for d in described] if keys else \
        [Path(p).name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    return [_clean(n) for n in names]


def _clean(name: str) -> str:
    return name.replace("|", "/") or "synthetic"
