"""What a sweep searches and how each classifier trains: ``SweepSettings``, checked before any trial starts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from synthaug.apps.sweep.arms import Arm, enumerate_arms
from synthaug.errors import InputError
from synthaug.mix.ratio import Ratio
from synthaug.mix.schedule import arm_schedules, parse_schedule, parse_templates

DEFAULT_GRID: tuple[float | str, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, Ratio.synthetic_only().label)


TEST_METRICS = ("auroc", "balanced_accuracy", "accuracy", "ap", "sensitivity", "specificity")


@dataclass
class SweepSettings:
    """What the study searches and how each classifier trains (``classifiers.FitConfig`` fields)."""

    ratios: Sequence[float | str] = DEFAULT_GRID  # grid points; synthetic-only = no real training items
    search: str = "grid"  # grid | tpe (log-uniform ratio in [ratio_min, ratio_max], n_trials trials)
    ratio_min: float = 0.1
    ratio_max: float = 4.0
    n_trials: int = 10
    tune_lr: bool = False  # also search the learning rate (log 1e-5..1e-3)
    tune_epochs: bool = False  # also search the number of epochs (epochs/2..epochs)
    seeds: int = 5
    models: Sequence[str] = ("efficientnet-b0",)  # every arm trains with each (one table per classifier)
    schedules: Sequence[str] = ("constant",)  # templates crossed with the ratios: constant, decay, cosine, pretrain:K
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    patience: int | None = 10
    metric: str = "auroc"
    class_balance: str = "equal"
    augment: bool = True
    # Training items drawn per epoch, the same for every ratio, so that a gain is not just more optimiser steps
    # (ratio r makes an epoch (1 + r) times longer otherwise). None: twice the real training items. 0: no fixing.
    samples_per_epoch: int | None = None
    crop: tuple[int, int, int] | None = None  # centred box (voxels) the classifier sees; None: the whole volume
    prune: bool = True  # stop clearly bad ratios early (a pruned ratio has fewer seeds, so a wider CI)
    label_from: str = "requested"  # requested | predicted (the adapter's class), for the synthetic items
    storage: str | None = None  # default: sqlite:///<out>/study.db
    study_name: str = "synthaug-sweep"
    allow_leakage: bool = False
    device: str = "auto"

    def check(self) -> None:
        if self.seeds < 1:
            raise InputError(f"seeds must be >= 1, got {self.seeds}", where="--seeds", fix="train at least one seed")
        if self.search == "tpe" and self.n_trials < 1:
            raise InputError(f"trials must be >= 1, got {self.n_trials}", where="--trials", fix="run at least one trial")
        from classifiers import list_models

        if not self.models:
            raise InputError("no classifier given", where="--models", fix="e.g. --models tiny-cnn,resnet10")
        for model in self.models:
            if model not in list_models():
                raise InputError(f"unknown model {model!r}", where="--models", fix=f"choose from {', '.join(list_models())}")
        if self.search not in ("grid", "tpe"):
            raise InputError(f"unknown search {self.search!r}", where="--search", fix="use grid or tpe")
        for r in self.ratios:
            if not parse_schedule(r, where="--ratios").is_constant:
                raise InputError(f"ratio {r!r} is a schedule", where="--ratios",
                                 fix="give numbers or synthetic-only here, schedules with --schedules")
        self.ratios = tuple(dict.fromkeys(ratio_label(r) for r in self.ratios))
        self.schedules = tuple(parse_templates(self.schedules))
        if self.search == "tpe" and (len(self.models) > 1 or self.schedules != ("constant",)):
            raise InputError("a TPE search draws one constant ratio for one classifier", where="--search tpe",
                             fix="use --search grid to compare classifiers or schedules")
        if self.search == "grid" and not self.ratios:
            raise InputError("the ratio grid is empty", where="--ratios", fix="give at least one ratio")
        if self.search == "tpe" and not 0 < self.ratio_min < self.ratio_max < math.inf:
            raise InputError(f"ratio range {self.ratio_min}..{self.ratio_max} is not valid for a log search",
                             where="--ratio-range", fix="use 0 < min < max, e.g. 0.1..4")
        if self.search == "grid" and (self.tune_lr or self.tune_epochs):
            flag = "--tune-lr" if self.tune_lr else "--tune-epochs"
            raise InputError("a grid search runs each ratio once with fixed training settings", where=flag,
                             fix=f"add --search tpe to tune the learning rate or epochs too, or drop {flag}")
        if self.metric == "loss":
            raise InputError("the sweep ranks ratios by a metric where higher is better", where="--metric",
                             fix="use auroc, balanced_accuracy, accuracy or ap")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate must be > 0, got {self.lr}", where="--lr", fix="e.g. --lr 1e-4")
        from classifiers import ClassifierError

        try:  # the classifier's own checks (metric name, epochs, batch size), before any trial starts
            fit_config(self, seed=0, lr=self.lr, epochs=self.epochs, n_real=1)
        except ClassifierError as exc:
            raise InputError(str(exc), where="sweep settings", fix="see `synthaug sweep --help`") from exc

    def space(self) -> dict[str, Any]:
        """The search space, stored with the study so that a different one is refused."""
        return {"search": self.search, "ratios": [str(r) for r in self.ratios] if self.search == "grid" else
                [self.ratio_min, self.ratio_max], "tune_lr": self.tune_lr, "tune_epochs": self.tune_epochs,
                "seeds": self.seeds, "models": list(self.models), "schedules": list(self.schedules),
                "metric": self.metric, "class_balance": self.class_balance,
                "label_from": self.label_from, "samples_per_epoch": self.samples_per_epoch,
                "crop": list(self.crop) if self.crop else None, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "patience": self.patience, "augment": self.augment}


    def arms(self, sources: Sequence[str]) -> list[Arm]:
        """The grid's arms for these synthetic sources (by name)."""
        return enumerate_arms(self.models, sources, arm_schedules(self.schedules, self.ratios))


def ratio_label(ratio: float | str) -> str:
    """A constant ratio's label: ``0.5``, ``synthetic-only``."""
    return Ratio.parse(ratio, where="--ratios").label


def fit_config(settings: SweepSettings, seed: int, lr: float, epochs: int, n_real: int):
    from classifiers import FitConfig

    per_epoch = 2 * n_real if settings.samples_per_epoch is None else (settings.samples_per_epoch or None)
    return FitConfig(epochs=epochs, batch_size=settings.batch_size, lr=lr, patience=settings.patience,
                     metric=settings.metric, augment=settings.augment, seed=seed, device=settings.device,
                     samples_per_epoch=per_epoch)
