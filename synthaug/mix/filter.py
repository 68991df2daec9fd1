"""Filtering synthetic volumes: keep one only when a real-data classifier agrees with the class it was asked for.

    vf = VolumeFilter.train(manifest, data, model="tiny-cnn", confidence=0.8)    # on the real train split
    vf = VolumeFilter.load("filter.safetensors", data, model="tiny-cnn", confidence=0.8)
    keep = vf.accepts(paths, requested_labels)   # P(requested class) >= confidence, per volume

The filter sees a volume as the classifier was trained to: the same preprocessing as the real data (and the
same centred crop). Its weights are safetensors only (a pickle is refused) and their sha256 goes into the
cache's provenance, so an evaluation can refuse to judge the cache with the filter itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from synthaug.config import DataConfig
from synthaug.data.io import load_weights, save_weights
from synthaug.errors import InputError
from synthaug.metrics.features import state_dict_sha256

FILTER_SEED = 2  # the judge of the class-signal chain trains with seed 0 and CAS with 1: the filter is neither


def check_confidence(confidence: float) -> float:
    """A confidence in (0.5, 1): at 0.5 or below the filter would keep volumes of the other class."""
    value = float(confidence)
    if not 0.5 < value < 1.0:
        raise InputError(f"must be between 0.5 and 1 (exclusive), got {confidence!r}", where="--filter-confidence",
                         fix="e.g. 0.8: keep volumes the filter gives at least 80% for the requested class")
    return value


class VolumeFilter:
    """A trained classifier and a confidence: accepts volumes whose P(requested class) reaches the confidence."""

    def __init__(self, net: torch.nn.Module, model: str, data: DataConfig, confidence: float,
                 crop: Sequence[int] | None = None) -> None:
        from synthaug.data.volume_store import VolumeStore

        self.net = net.eval()
        self.model = model
        self.confidence = check_confidence(confidence)
        self.crop = list(crop) if crop else None
        self.preprocess = VolumeStore(data, self.crop)
        self.weights_sha256 = state_dict_sha256(net)

    @classmethod
    def train(cls, manifest, data: DataConfig, *, model: str = "tiny-cnn", confidence: float = 0.8,
              epochs: int = 10, crop: Sequence[int] | None = None, seed: int = FILTER_SEED) -> VolumeFilter:
        """Train ``model`` on the manifest's real train split, selected on its val split."""
        from monai.data import Dataset

        from classifiers import FitConfig, build_model, fit
        from synthaug.data.volume_store import VolumeStore

        check_confidence(confidence)
        if not manifest.split("train") or not manifest.split("val"):
            raise InputError("the filter trains on real 'train' cases and is selected on 'val' cases",
                             where=str(manifest.path), fix="mark train and val splits in the manifest")
        load = VolumeStore(data, crop)
        net = build_model(model, in_channels=len(data.modalities), num_classes=2, seed=seed)
        fit(net, Dataset(manifest.items("train"), transform=load), Dataset(manifest.items("val"), transform=load),
            FitConfig(epochs=epochs, seed=seed, patience=None, device="cpu", lr=1e-3,
                      samples_per_epoch=2 * len(manifest.split("train"))), progress=False)
        return cls(net, model, data, confidence, crop)

    @classmethod
    def load(cls, path: str | os.PathLike[str], data: DataConfig, *, model: str = "tiny-cnn",
             confidence: float = 0.8, crop: Sequence[int] | None = None) -> VolumeFilter:
        """A filter from a ``classifiers`` model's weights (safetensors; a pickle or another model is refused)."""
        from classifiers import build_model

        check_confidence(confidence)
        weights = load_weights(path)
        net = build_model(model, in_channels=len(data.modalities), num_classes=2)
        try:
            net.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "shape or key mismatch"
            raise InputError(f"is not a {model} with {len(data.modalities)} input channel(s) and 2 classes ({first})", where=str(path),
                             fix="pass the weights of the model named by --filter-model") from exc
        return cls(net, model, data, confidence, crop)

    @classmethod
    def from_option(cls, option: str, kept: Path, data: DataConfig, *, manifest: str | os.PathLike[str] | None = None,
                    model: str = "tiny-cnn", confidence: float = 0.8, epochs: int = 10,
                    crop: Sequence[int] | None = None) -> VolumeFilter:
        """``--filter train`` (train on ``manifest``, or reuse the filter ``kept`` from an earlier run) or a weights file."""
        from synthaug.data.manifest import load_manifest

        if option != "train":
            return cls.load(option, data, model=model, confidence=confidence, crop=crop)
        if kept.is_file():  # resuming a filtered cache: the very filter that decided its earlier candidates
            return cls.load(kept, data, model=model, confidence=confidence, crop=crop)
        if manifest is None:
            raise InputError("--filter train needs the real data to train on", where="--filter-data",
                             fix="pass --filter-data MANIFEST (its train split trains the filter, val selects it)")
        return cls.train(load_manifest(manifest), data, model=model, confidence=confidence, epochs=epochs, crop=crop)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_weights({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, path)

    def describe(self) -> dict[str, Any]:
        """What ``cache.json`` records: the model, its weights' sha256, the confidence and the crop."""
        return {"model": self.model, "weights_sha256": self.weights_sha256, "confidence": self.confidence,
                "crop": self.crop}

    @torch.no_grad()
    def probabilities(self, volumes: Sequence[str | os.PathLike[str] | Mapping[str, Any]],
                      labels: Sequence[int]) -> list[float]:
        """P(requested class) of each volume (preprocessed as the real data): a T2W file, or its files by
        item key (``{"image": ..., "adc": ..., "hbv": ...}``) for several sequences."""
        if not volumes:
            return []
        items = [{**({"image": str(v)} if isinstance(v, (str, os.PathLike)) else dict(v)), "label": int(c)}
                 for v, c in zip(volumes, labels)]
        x = torch.stack([self.preprocess(item)["image"] for item in items])
        p1 = self.net(x.float()).softmax(dim=-1)[:, 1]
        return [float(p if c == 1 else 1.0 - p) for p, c in zip(p1.tolist(), labels)]
