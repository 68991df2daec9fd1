"""One trial of the study: an arm trained over the seeds, each seed's loaded items recorded."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthaug.apps.sweep.arms import Arm
from synthaug.apps.sweep.inputs import SweepData
from synthaug.apps.sweep.settings import TEST_METRICS, SweepSettings, fit_config, ratio_label
from synthaug.progress import Progress


class SeenItems:
    """A training set's transform that notes which items it loaded (the arms' item sets, recorded): real
    items by case id, synthetic ones by file (ids repeat across caches)."""

    def __init__(self, load: Callable[[dict], dict]) -> None:
        self.load, self.real, self.synthetic = load, set(), set()
        self.loads = 0

    def __call__(self, item: dict) -> dict:
        if item.get("is_synthetic"):
            self.synthetic.add(str(item["image"]))
        else:
            self.real.add(str(item.get("case_id")))
        self.loads += 1
        return self.load(item)

    def write(self, path: Path, arm: Arm, seed: int) -> None:
        from synthaug.data.io import atomic_write_text

        atomic_write_text(path, json.dumps({"arm": arm.key, "seed": seed, "loads": self.loads,
                                            "real": sorted(self.real), "synthetic": sorted(self.synthetic)}) + "\n")


def items_file(out: Path, arm: Arm, seed: int) -> Path:
    """Where a trial writes the items one seed of ``arm`` loaded."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in arm.key)
    return out / "items" / safe / f"seed{seed}.json"


def _arm_of(trial, data: SweepData, settings: SweepSettings) -> Arm:  # optuna.Trial
    if settings.search == "grid":
        return Arm.from_key(trial.suggest_categorical("arm", [a.key for a in settings.arms(list(data.sources))]))
    label = ratio_label(trial.suggest_float("ratio", settings.ratio_min, settings.ratio_max, log=True))
    return Arm(settings.models[0], next(iter(data.sources)), label)


def train_set(arm: Arm, data: SweepData, settings: SweepSettings, seed: int, epochs: int):
    """The arm's ``SyntheticMixDataset`` for one seed (real only: no source)."""
    from synthaug.mix.dataset import SyntheticMixDataset

    # pool_size=0: a bundle source gives each arm a fixed pool (its quota), like a cache of that size,
    # instead of new volumes every epoch (epochs x quota generated volumes per trial).
    return SyntheticMixDataset(data.real_train, None if arm.is_real_only else data.sources[arm.synthetic],
                               ratio=arm.schedule, epochs=epochs, class_balance=settings.class_balance,
                               transform=SeenItems(data.load), seed=seed, cache_dir=data.cache_dir,
                               label_from=settings.label_from, pool_size=0,
                               keep_keys=data.load.keys[1:])  # the further sequences (adc, hbv), in every arm


def objective_for(data: SweepData, settings: SweepSettings,
                  progress: Progress | None = None) -> Callable:
    """The Optuna objective: mean best validation metric over the seeds of one arm."""
    import optuna

    from classifiers import build_model, evaluate, fit

    several = len(data.sources) > 1

    def objective(trial: optuna.Trial) -> float:
        arm = _arm_of(trial, data, settings)
        for key, value in (("arm", arm.key), ("model", arm.model), ("synthetic", arm.synthetic),
                           ("schedule", arm.schedule), ("real_only", arm.is_real_only)):
            trial.set_user_attr(key, value)
        _refuse_duplicate(trial, arm)
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True) if settings.tune_lr else settings.lr
        epochs = trial.suggest_int("epochs", max(1, settings.epochs // 2), settings.epochs) \
            if settings.tune_epochs else settings.epochs
        name = f"{arm.model} {arm.label(several)}"
        values, tests = [], []
        for seed in range(settings.seeds):
            train = train_set(arm, data, settings, seed, epochs)
            model = build_model(arm.model, in_channels=len(data.load.keys), num_classes=2, seed=seed)

            def on_epoch(epoch: int, val: dict, seed: int = seed) -> None:
                if progress:
                    progress(name, seed * epochs + epoch + 1, settings.seeds * epochs, {})

            config = fit_config(settings, seed, lr, epochs, len(data.real_train))
            with train:  # stops and joins on-the-fly generation, also when the trial is pruned or fails
                result = fit(model, train, data.val, config, on_epoch=on_epoch, progress=False)
            scored = evaluate(model, data.test, config, threshold=result.threshold)
            train.transform.write(items_file(data.out, arm, seed), arm, seed)
            values.append(result.best_metric if result.best_metric is not None else float("nan"))
            tests.append({"seed": seed, "val": result.best_metric, "best_epoch": result.best_epoch,
                          "threshold": result.threshold, "train_items": len(train),
                          "real_items_seen": len(train.transform.real),
                          "synthetic_items_seen": len(train.transform.synthetic),
                          **{f"test_{k}": scored.metrics.get(k) for k in TEST_METRICS}})
            trial.set_user_attr("seeds", tests)
            finite = [v for v in values if math.isfinite(v)]
            trial.report(float(np.mean(finite)) if finite else 0.0, seed)
            if settings.prune and seed < settings.seeds - 1 and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after seed {seed}")
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    return objective


def _refuse_duplicate(trial, arm: Arm) -> None:
    """Several workers on one grid can draw the same point at once: the later one stops at once."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or other.user_attrs.get("arm") != arm.key:
            continue
        if other.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING) \
                and other.number < trial.number and not other.user_attrs.get("duplicate"):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned(f"arm {arm.key} is already done or running in trial {other.number}")
