"""A sweep's inputs: the manifest's splits and the synthetic sources, checked for leakage and geometry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthaug.apps.sweep.arms import describe_source, source_names
from synthaug.apps.sweep.settings import SweepSettings
from synthaug.config import DataConfig
from synthaug.data.volume_store import VolumeStore
from synthaug.errors import InputError


def check_leakage(manifest, generator_case_ids: set[str], allow: bool) -> None:
    """Refuse a generator trained on any validation or test case (its synthetic arm saw the scoring data)."""
    held_out = {c.case_id for c in manifest.records if c.split in ("val", "test")}
    leaked = sorted(held_out & generator_case_ids)
    if leaked and not allow:
        raise InputError(f"the generator was trained on {len(leaked)} validation/test case(s), e.g. {leaked[0]}",
                         where="--synthetic", fix="train the generator on the train split only, "
                                                  "or pass --allow-leakage to accept the bias")


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


def _open_source(path: str | os.PathLike[str], manifest, settings: SweepSettings):
    """-> (source, its DataConfig, its volume shape), leakage checked."""
    from synthaug.mix.cache import SyntheticCache
    from synthaug.mix.sources import open_synthetic_folder

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
    if list(data.modalities) != list(first_data.modalities):
        raise InputError(f"the generator made {'+'.join(first_data.modalities)} volumes, the data settings ask for "
                         f"{'+'.join(data.modalities)}", where=str(paths[0]),
                         fix=f"use data.modalities={list(first_data.modalities)}, the sequences it was trained on")
    _check_sequences(manifest, data)
    described = [describe_source(source) for source, _, _ in opened]
    names = source_names(paths, described)
    load = VolumeStore(data, settings.crop)
    from monai.data import Dataset

    return SweepData(manifest, manifest.items("train"), Dataset(manifest.items("val"), transform=load),
                     Dataset(manifest.items("test"), transform=load),
                     {n: source for n, (source, _, _) in zip(names, opened)}, dict(zip(names, described)), load, out)


def _check_sequences(manifest, data: DataConfig) -> None:
    """Every case of the three splits has a file for every sequence the classifiers will see."""
    for key in data.item_keys:
        for case in (c for split in ("train", "val", "test") for c in manifest.items(split)):
            if not case.get(key):
                raise InputError(f"case {case['case_id']!r} has no {key!r} image, which the synthetic volumes have "
                                 f"({'+'.join(data.modalities)})", where=str(manifest.path),
                                 fix=f"give every case its {key!r} file, or compare against a T2W-only generator")
