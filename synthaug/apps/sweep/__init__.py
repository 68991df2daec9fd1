"""``synthaug sweep``: an Optuna study over synthetic-data arms (classifier x source x ratio schedule).

    from synthaug.apps.sweep import SweepSettings, run_sweep
    result = run_sweep("phantom/manifest.jsonl", "synth_cache", "sweep_out", SweepSettings(seeds=5))

``settings`` (what is searched), ``inputs`` (splits and sources, checked), ``arms`` (the grid),
``objective`` (one trial), ``study`` (the Optuna study, resumable), ``statistics`` and ``report``.
"""

from synthaug.apps.sweep.settings import DEFAULT_GRID, SweepSettings
from synthaug.apps.sweep.study import run_sweep

__all__ = ["DEFAULT_GRID", "SweepSettings", "run_sweep"]
