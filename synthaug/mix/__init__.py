"""Synthetic data for training loops: the on-disk cache and the mix dataset."""

from synthaug.mix.cache import SyntheticCache, VerifyReport
from synthaug.mix.dataset import SyntheticMixDataset, synthetic_quotas

__all__ = ["SyntheticCache", "SyntheticMixDataset", "VerifyReport", "synthetic_quotas"]
