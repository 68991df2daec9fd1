"""``synthaug pregenerate``: fill a synthetic cache from a bundle, optionally through a filter, one shard at a time.

    cache, made = pregenerate_cache("bundle", "synth_cache", {0: 50, 1: 50}, shard=(0, 1),
                                    generator_options={"sampler": "dpm++", "class_guidance": 4.0})

The library pieces are ``CCELLAGenerator`` (the volumes), ``VolumeFilter`` (which to keep) and
``SyntheticCache`` (where they go, resumable); this module puts them together the way the command does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthaug.generate import CCELLAGenerator
from synthaug.mix.cache import FILTER_FILE, SyntheticCache
from synthaug.mix.filter import VolumeFilter, check_confidence


@dataclass(frozen=True)
class FilterOptions:
    """``--filter``: ``source`` is ``train`` (train a classifier on ``data``'s train split) or a weights file."""

    source: str
    data: Path | None = None
    model: str = "tiny-cnn"
    confidence: float = 0.8
    epochs: int = 10
    crop: tuple[int, int, int] | None = None


def pregenerate_cache(bundle: str | os.PathLike[str], out: str | os.PathLike[str], counts: Mapping[int, int], *,
                      shard: tuple[int, int] = (0, 1), generator_options: Mapping[str, Any] | None = None,
                      filter_options: FilterOptions | None = None, file_format: str = "nifti-gz", seed: int = 0,
                      allow_foreign: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> tuple[SyntheticCache, int]:
    """Make this shard's missing volumes of ``counts`` (label -> volumes in the whole cache) in ``out``.

    Returns the cache and how many volumes this call made. A trained filter is saved in the cache
    (``filter.safetensors``), so that a resumed run keeps deciding with the very same classifier.
    """
    if filter_options is not None:
        check_confidence(filter_options.confidence)
    generator = CCELLAGenerator.from_bundle(bundle, **dict(generator_options or {}))
    kept = Path(out) / FILTER_FILE
    volume_filter = _volume_filter(filter_options, kept, generator) if filter_options else None
    cache = SyntheticCache.create(out, generator, file_format=file_format, seed=seed, allow_foreign=allow_foreign,
                                  volume_filter=volume_filter)
    if volume_filter is not None and filter_options.source == "train" and not kept.is_file():
        volume_filter.save(kept)
    made = cache.pregenerate(generator, counts=dict(counts), shard=shard, batch_size=generator.batch_size,
                             progress=progress, allow_foreign=allow_foreign, volume_filter=volume_filter)
    return cache, made


def _volume_filter(options: FilterOptions, kept: Path, generator: CCELLAGenerator) -> VolumeFilter:
    return VolumeFilter.from_option(options.source, kept, generator.bundle.config.data, manifest=options.data,
                                    model=options.model, confidence=options.confidence, epochs=options.epochs,
                                    crop=options.crop)
