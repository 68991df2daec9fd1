"""Synthetic data for training loops: the on-disk cache, the ratio, the class balance and the mix dataset.

The names below are imported on first use, so ``synthaug.mix.ratio`` (used by the command line and the
sweep settings) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Ratio": "synthaug.mix.ratio",
    "RatioSchedule": "synthaug.mix.schedule",
    "SyntheticCache": "synthaug.mix.cache",
    "SyntheticMixDataset": "synthaug.mix.dataset",
    "VerifyReport": "synthaug.mix.cache",
    "parse_schedule": "synthaug.mix.schedule",
    "synthetic_quotas": "synthaug.mix.balance",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synthaug.mix' has no attribute {name!r}")
