"""Synthetic data for training loops: the on-disk cache and the mix dataset."""

from synthaug.mix.cache import SyntheticCache, VerifyReport
from synthaug.mix.dataset import SyntheticMixDataset, synthetic_quotas
from synthaug.mix.schedule import RatioSchedule, parse_schedule

__all__ = ["RatioSchedule", "SyntheticCache", "SyntheticMixDataset", "VerifyReport", "parse_schedule",
           "synthetic_quotas"]
