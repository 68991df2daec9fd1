"""``synthaug sweep``: an Optuna study over synthetic-data recipes, scored with the ``classifiers`` package.

    result = run_sweep("phantom/manifest.jsonl", "synth_cache", "sweep_out", SweepSettings(seeds=5))
    result = run_sweep("phantom/manifest.jsonl", ["cache_g1", "cache_g4"], "sweep_out",
                       SweepSettings(models=("tiny-cnn", "resnet10"), schedules=("constant", "pretrain:5", "decay")))

Each trial is one arm (``synthaug.apps.sweep.arms``): a classifier, a synthetic source and a ratio schedule
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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from synthaug.apps.sweep.arms import Arm
from synthaug.apps.sweep.inputs import prepare
from synthaug.apps.sweep.objective import objective_for
from synthaug.apps.sweep.settings import SweepSettings
from synthaug.config import DataConfig
from synthaug.errors import InputError
from synthaug.progress import Progress


def run_sweep(manifest_path: str | os.PathLike[str], synthetic: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              out: str | os.PathLike[str], settings: SweepSettings, data: DataConfig | None = None,
              progress: Progress | None = None) -> dict:
    """Run (or resume) the study, then write trials.csv, summary.json, the plots and report.md."""
    import optuna

    from synthaug.apps.sweep.report import write_outputs

    settings.check()
    out = Path(out)
    prepared = prepare(manifest_path, synthetic, out, settings, data)
    if settings.search == "tpe" and len(prepared.sources) > 1:
        raise InputError("a TPE search draws one constant ratio for one synthetic source", where="--synthetic",
                         fix="use --search grid to compare several sources")
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(settings, out, list(prepared.sources))
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


def _grid_left(study, settings: SweepSettings, sources: Sequence[str]) -> list[Arm]:
    """Grid arms with no finished trial yet (complete, or pruned as bad: both count as done)."""
    import optuna

    done = {t.user_attrs.get("arm") for t in study.trials if not t.user_attrs.get("duplicate")
            and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    return [arm for arm in settings.arms(sources) if arm.key not in done]


def open_study(settings: SweepSettings, out: Path, sources: Sequence[str]):  # optuna.Study
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


def _storage(url: str):  # optuna RDBStorage
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


class PerModelMedianPruner:
    """Optuna's median rule, within one classifier: a trial stops when its running value (mean best
    validation metric over its finished seeds) is below the median of the finished trials of the same
    classifier after as many seeds. Real-only arms always complete (they are the reference)."""

    def __init__(self, n_startup_trials: int = 2) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study, trial) -> bool:  # optuna.Study, optuna.trial.FrozenTrial
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
