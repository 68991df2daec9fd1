"""``synthaug sweep``: an Optuna study over synthetic-data recipes, scored with the ``classifiers`` package.

    result = run_sweep("phantom/manifest.jsonl", "synth_cache", "sweep_out", SweepSettings(seeds=5))
    result = run_sweep("phantom/manifest.jsonl", ["cache_g1", "cache_g4"], "sweep_out",
                       SweepSettings(models=("tiny-cnn", "resnet10"), schedules=("constant", "pretrain:5", "decay")))

Each trial is one arm (``synthaug.sweep_arms``): a classifier, a synthetic source and a ratio schedule
(a grid point, or a TPE draw of a constant ratio on a log range). It trains ``seeds`` classifiers on
``SyntheticMixDataset(train split, source, schedule)``, selects each on the validation split, and
scores each selected model on the test split; after every seed it reports the running mean of the
best validation metric, so that a pruner compares arms of one classifier on what they reached. The
study lives in an Optuna storage (SQLite in the output folder by default; any RDB URL lets several
machines share it): re-running resumes and never repeats a finished grid point. Every trial records
which training items each seed loaded (``items/``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthaug.config import DataConfig
from synthaug.errors import InputError
from synthaug.mix.schedule import SYNTHETIC_ONLY, arm_schedules, parse_schedule, parse_templates
from synthaug.sweep_arms import Arm, describe_source, enumerate_arms, source_names

DEFAULT_GRID: tuple[float | str, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, SYNTHETIC_ONLY)
TEST_METRICS = ("auroc", "balanced_accuracy", "accuracy", "ap", "sensitivity", "specificity")


@dataclass
class SweepSettings:
    """What the study searches and how each classifier trains (``classifiers.FitConfig`` fields)."""

    ratios: Sequence[float | str] = DEFAULT_GRID  # grid points; "synthetic-only" = no real training items
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
            _fit_config(self, seed=0, lr=self.lr, epochs=self.epochs, n_real=1)
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
    return parse_schedule(ratio, where="--ratios").label


def check_leakage(manifest, generator_case_ids: set[str], allow: bool) -> None:  # noqa: ANN001
    """Refuse a generator trained on any validation or test case (its synthetic arm saw the scoring data)."""
    held_out = {c.case_id for c in manifest.records if c.split in ("val", "test")}
    leaked = sorted(held_out & generator_case_ids)
    if leaked and not allow:
        raise InputError(f"the generator was trained on {len(leaked)} validation/test case(s), e.g. {leaked[0]}",
                         where="--synthetic", fix="train the generator on the train split only, "
                                                  "or pass --allow-leakage to accept the bias")


class VolumeStore:
    """Preprocessed volumes by path, loaded once per process (the sweep trains many models on the same files).

    ``crop`` (voxels) keeps a centred box of every volume for the classifier (the gland sits in the
    middle of the field of view), real and synthetic alike.
    """

    def __init__(self, data: DataConfig, crop: Sequence[int] | None = None) -> None:
        from monai.transforms import CenterSpatialCrop

        if list(data.modalities) != ["t2w"]:  # a synthetic item is one multi-channel file, a real one a file per key
            raise InputError(f"the sweep and quality metrics take T2W-only data, not {'+'.join(data.modalities)}",
                             where="data.modalities", fix="train the generator with data.modalities=[t2w]")

        from synthaug.data.transforms import preprocessing_transforms

        self.preprocess = preprocessing_transforms(data)
        self.crop = CenterSpatialCrop(list(crop)) if crop else None
        self.volumes: dict[str, torch.Tensor] = {}

    def __call__(self, item: dict) -> dict:
        path = str(item["image"])
        if path not in self.volumes:
            loaded = self.preprocess({"image": path})["image"]
            if self.crop is not None:
                loaded = self.crop(loaded)
            self.volumes[path] = torch.as_tensor(loaded).float().contiguous()
        return {"image": self.volumes[path], "label": int(item["label"])}


def _storage(url: str):  # noqa: ANN202 - optuna RDBStorage
    """The RDB storage at ``url`` with heartbeats: a trial whose worker died is failed and retried once."""
    import time
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        for attempt in range(5):
            try:
                return RDBStorage(url, heartbeat_interval=30, grace_period=120, **retry)
            except Exception as exc:  # SQLAlchemy/driver errors: bad URL, server down, missing driver
                racing = ("already exists", "UNIQUE constraint", "database is locked")
                if any(r in str(exc) for r in racing) and attempt < 4:  # another worker is creating the tables
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise InputError(f"cannot open the study storage ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:120]})", where=url.split("@")[-1],
                                 fix="check the URL, that the server runs, and its Python driver") from exc
    raise AssertionError("unreachable")


def open_study(settings: SweepSettings, out: Path, sources: Sequence[str]):  # noqa: ANN201 - optuna.Study
    """Create or load the study; refuses an unreachable storage or an existing study with another space."""

    import optuna

    url = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = _storage(url)
    if settings.search == "grid":
        grid = {"arm": [arm.key for arm in settings.arms(sources)]}
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(grid, seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0)
    pruner = PerModelMedianPruner(n_startup_trials=2)
    study = optuna.create_study(storage=storage, study_name=settings.study_name, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    wanted = {**settings.space(), "sources": list(sources)}
    space = study.user_attrs.get("space")
    if space is None:
        study.set_user_attr("space", wanted)
    elif space != wanted:
        changed = sorted(k for k in {*space, *wanted} if space.get(k) != wanted.get(k))
        raise InputError(f"study {settings.study_name!r} exists with another search space ({', '.join(changed)})",
                         where=url.split("@")[-1], fix="use the same settings, or another --study-name")
    return study


class PerModelMedianPruner:
    """Optuna's median rule, within one classifier: a trial stops when its running value (mean best
    validation metric over its finished seeds) is below the median of the finished trials of the same
    classifier after as many seeds. Real-only arms always complete (they are the reference)."""

    def __init__(self, n_startup_trials: int = 2) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study, trial) -> bool:  # noqa: ANN001 - optuna.Study, optuna.trial.FrozenTrial
        import optuna

        step = trial.last_step
        if step is None or trial.user_attrs.get("real_only"):
            return False
        model = trial.user_attrs.get("model")
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False,
                                                                       states=(optuna.trial.TrialState.COMPLETE,))
                  if t.user_attrs.get("model") == model and step in t.intermediate_values]
        if len(others) < self.n_startup_trials:
            return False
        value = trial.intermediate_values[step]
        return math.isfinite(value) and value < float(np.median(others))


@dataclass
class SweepData:
    """Everything one process needs to run trials."""

    manifest: Any
    real_train: list[dict]
    val: Any
    test: Any
    sources: dict[str, Any]  # name -> SyntheticCache or CCELLAGenerator
    described: dict[str, dict[str, Any]]  # name -> the settings that made its volumes
    load: VolumeStore
    out: Path

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"


def _open_source(path: str | os.PathLike[str], manifest, settings: SweepSettings):  # noqa: ANN001, ANN202
    """-> (source, its DataConfig, its volume shape), leakage checked."""
    from synthaug.mix.cache import SyntheticCache
    from synthaug.mix.dataset import open_synthetic_folder

    source = open_synthetic_folder(path)
    if isinstance(source, SyntheticCache):
        case_ids, own, shape = source.train_case_ids, source.data_config(), source.meta["shape"][1:]
    else:
        case_ids, own, shape = source.bundle.train_case_ids, source.bundle.config.data, list(source.image_shape)
    check_leakage(manifest, case_ids, settings.allow_leakage)
    return source, own, list(shape)


def prepare(manifest_path: str | os.PathLike[str], synthetic: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            out: Path, settings: SweepSettings, data: DataConfig | None = None) -> SweepData:
    """Load the manifest and the synthetic sources; check splits, leakage and shapes.

    ``data`` None preprocesses the real volumes as the (first) source's own data settings say; every
    source must share them.
    """
    from synthaug.data.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    for split in ("train", "val", "test"):
        if not manifest.split(split):
            raise InputError(f"the manifest has no {split!r} cases", where=str(manifest_path),
                             fix="the sweep trains on train, selects on val and scores on test: mark all three")
    paths = [synthetic] if isinstance(synthetic, (str, os.PathLike)) else list(synthetic)
    if not paths:
        raise InputError("no synthetic source given", where="--synthetic", fix="pass a cache or bundle folder")
    opened = [_open_source(path, manifest, settings) for path in paths]
    first_data, first_shape = opened[0][1], opened[0][2]
    for path, (_, own, shape) in zip(paths[1:], opened[1:]):
        if shape != first_shape or own.model_dump() != first_data.model_dump():
            raise InputError(f"its volumes are {shape} with other data settings than {paths[0]} ({first_shape})",
                             where=str(path), fix="compare caches made for one data geometry (same preset and "
                                                  "data.* settings)")
    data = data or first_data
    if list(first_shape) != list(data.image_shape):
        raise InputError(f"synthetic volumes are {first_shape}, the classifier's input {list(data.image_shape)}",
                         where=str(paths[0]), fix="use the data settings the generator was trained with "
                                                  "(--preset/--set data.image_shape=...)")
    described = [describe_source(source) for source, _, _ in opened]
    names = source_names(paths, described)
    load = VolumeStore(data, settings.crop)
    from monai.data import Dataset

    return SweepData(manifest, manifest.items("train"), Dataset(manifest.items("val"), transform=load),
                     Dataset(manifest.items("test"), transform=load),
                     {n: source for n, (source, _, _) in zip(names, opened)}, dict(zip(names, described)), load, out)


def _fit_config(settings: SweepSettings, seed: int, lr: float, epochs: int, n_real: int):  # noqa: ANN202
    from classifiers import FitConfig

    per_epoch = 2 * n_real if settings.samples_per_epoch is None else (settings.samples_per_epoch or None)
    return FitConfig(epochs=epochs, batch_size=settings.batch_size, lr=lr, patience=settings.patience,
                     metric=settings.metric, augment=settings.augment, seed=seed, device=settings.device,
                     samples_per_epoch=per_epoch)


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


def _arm_of(trial, data: SweepData, settings: SweepSettings) -> Arm:  # noqa: ANN001 - optuna.Trial
    if settings.search == "grid":
        return Arm.from_key(trial.suggest_categorical("arm", [a.key for a in settings.arms(list(data.sources))]))
    label = ratio_label(trial.suggest_float("ratio", settings.ratio_min, settings.ratio_max, log=True))
    return Arm(settings.models[0], next(iter(data.sources)), label)


def train_set(arm: Arm, data: SweepData, settings: SweepSettings, seed: int, epochs: int):  # noqa: ANN201
    """The arm's ``SyntheticMixDataset`` for one seed (real only: no source)."""
    from synthaug.mix.dataset import SyntheticMixDataset

    # pool_size=0: a bundle source gives each arm a fixed pool (its quota), like a cache of that size,
    # instead of new volumes every epoch (epochs x quota generated volumes per trial).
    return SyntheticMixDataset(data.real_train, None if arm.is_real_only else data.sources[arm.synthetic],
                               ratio=arm.schedule, epochs=epochs, class_balance=settings.class_balance,
                               transform=SeenItems(data.load), seed=seed, cache_dir=data.cache_dir,
                               label_from=settings.label_from, pool_size=0)


def objective_for(data: SweepData, settings: SweepSettings,
                  progress: Callable[[str, int, int, dict], None] | None = None) -> Callable:
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
            model = build_model(arm.model, in_channels=1, num_classes=2, seed=seed)

            def on_epoch(epoch: int, val: dict, seed: int = seed) -> None:
                if progress:
                    progress(name, seed * epochs + epoch + 1, settings.seeds * epochs, {})

            config = _fit_config(settings, seed, lr, epochs, len(data.real_train))
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


def _refuse_duplicate(trial, arm: Arm) -> None:  # noqa: ANN001
    """Several workers on one grid can draw the same point at once: the later one stops at once."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or other.user_attrs.get("arm") != arm.key:
            continue
        if other.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING) \
                and other.number < trial.number and not other.user_attrs.get("duplicate"):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned(f"arm {arm.key} is already done or running in trial {other.number}")


def run_sweep(manifest_path: str | os.PathLike[str], synthetic: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              out: str | os.PathLike[str], settings: SweepSettings, data: DataConfig | None = None,
              progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Run (or resume) the study, then write trials.csv, summary.json, the plots and report.md."""
    import optuna

    from synthaug.sweep_report import write_outputs

    settings.check()
    out = Path(out)
    prepared = prepare(manifest_path, synthetic, out, settings, data)
    if settings.search == "tpe" and len(prepared.sources) > 1:
        raise InputError("a TPE search draws one constant ratio for one synthetic source", where="--synthetic",
                         fix="use --search grid to compare several sources")
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(settings, out, list(prepared.sources))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = objective_for(prepared, settings, progress)
    if settings.search == "grid":
        todo = len(_grid_left(study, settings, list(prepared.sources)))
        if todo:
            study.optimize(objective, n_trials=todo)
    else:
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        if done < settings.n_trials:
            study.optimize(objective, n_trials=settings.n_trials - done)
    (out / "settings.json").write_text(json.dumps({**asdict(settings), "ratios": [str(r) for r in settings.ratios],
                                                   "sources": prepared.described}, indent=2, default=str) + "\n",
                                       encoding="utf-8")
    return write_outputs(study, settings, out, prepared.described)


def _grid_left(study, settings: SweepSettings, sources: Sequence[str]) -> list[Arm]:  # noqa: ANN001
    """Grid arms with no finished trial yet (complete, or pruned as bad: both count as done)."""
    import optuna

    done = {t.user_attrs.get("arm") for t in study.trials if not t.user_attrs.get("duplicate")
            and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    return [arm for arm in settings.arms(sources) if arm.key not in done]
