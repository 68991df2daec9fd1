"""synthaug: synthetic 3D MRI from a report- and class-conditioned latent diffusion model (CCELLA)
for classifier training.

    from synthaug import SyntheticMixDataset, SyntheticCache, CCELLAGenerator, load_bundle

The names below are imported on first use, so ``import synthaug`` (and ``synthaug --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "SyntheticMixDataset": "synthaug.mix.dataset",
    "SyntheticCache": "synthaug.mix.cache",
    "RatioSchedule": "synthaug.mix.schedule",
    "parse_schedule": "synthaug.mix.schedule",
    "CCELLAGenerator": "synthaug.generate",
    "load_bundle": "synthaug.ldm.bundle",
    "load_config": "synthaug.config",
    "load_manifest": "synthaug.data.manifest",
    "train_generator": "synthaug.ldm.train",
    "write_phantom_dataset": "synthaug.data.phantom",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synthaug' has no attribute {name!r}")
