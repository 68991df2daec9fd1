"""``synthaug evaluate``: quality of a synthetic set against a manifest split, on the generator's geometry.

    metrics = evaluate_synthetic("phantom/manifest.jsonl", "synth_cache", "quality", split="test")

Real volumes are preprocessed exactly as for training (crop/resample to the generator's shape,
percentile scaling); the generator's training cases are the reference for memorisation; a classifier
trained on the real train split (selected on val) scores conditioning fidelity. ``paper_protocol``
instead generates one volume per real case of the split from that case's own report and label.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthaug.config import DataConfig
from synthaug.errors import InputError

Progress = Callable[[str, int, int, dict], None]


def _preprocessed(items: list[dict], data: DataConfig) -> list[dict]:
    """Items with the image replaced by the preprocessed ``(1, X, Y, Z)`` array in [0, 1]."""
    from synthaug.sweep import VolumeStore

    load = VolumeStore(data)
    return [{**item, "image": load(item)["image"].numpy()} for item in items]


def fidelity_classifier(manifest, data: DataConfig, model: str = "tiny-cnn", epochs: int = 10,  # noqa: ANN001
                        seed: int = 0, crop: tuple[int, int, int] | None = None,
                        lr: float = 1e-3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train ``model`` on the real train split (selected on val); returns volumes (B, 1, X, Y, Z) -> P(class 1).

    ``crop``: the classifier sees (and ``predict`` crops to) a centred box of that many voxels.
    """
    from monai.data import Dataset

    from classifiers import FitConfig, build_model, fit
    from synthaug.sweep import VolumeStore

    if not manifest.split("train") or not manifest.split("val"):
        raise InputError("conditioning fidelity needs real 'train' and 'val' cases", where=str(manifest.path),
                         fix="mark train and val splits, or pass --fidelity-model none")
    load = VolumeStore(data, crop)
    net = build_model(model, in_channels=1, num_classes=2, seed=seed)
    fit(net, Dataset(manifest.items("train"), transform=load), Dataset(manifest.items("val"), transform=load),
        FitConfig(epochs=epochs, seed=seed, patience=None, device="cpu", lr=lr,
                  samples_per_epoch=2 * len(manifest.split("train"))), progress=False)
    net.eval()
    cropper = load.crop

    @torch.no_grad()
    def predict(volumes: torch.Tensor) -> torch.Tensor:
        if cropper is not None:
            volumes = torch.stack([torch.as_tensor(cropper(v)) for v in volumes])
        return net(volumes.float()).softmax(dim=-1)[:, 1]

    return predict


def paper_protocol_items(generator, cases: list[dict], out: Path, progress: Progress | None = None) -> list[dict]:  # noqa: ANN001
    """One synthetic volume per real case, from its own report and label (seed = its index); NIfTI in ``out``."""
    from synthaug.generate import write_volume

    out.mkdir(parents=True, exist_ok=True)
    items, rows = [], []
    for start in range(0, len(cases), generator.batch_size):
        part = cases[start:start + generator.batch_size]
        result = generator.generate([c["label"] for c in part], reports=[c["report"] for c in part],
                                    seeds=list(range(start, start + len(part))))
        for case, volume, record in zip(part, result.volumes, result.provenance):
            name = f"{case['case_id']}_synthetic.nii.gz"
            write_volume(volume, result.affine, out / name)
            rows.append(json.dumps({"file": name, "case_id": case["case_id"], **record}, sort_keys=True))
            items.append({"image": str(out / name), "label": case["label"], "requested_label": case["label"],
                          "synthetic_id": f"{case['case_id']}_synthetic"})
        if progress:
            progress("generate", len(items), len(cases), {})
    (out / "provenance.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return items


def evaluate_synthetic(manifest_path: str | os.PathLike[str], synthetic: str | os.PathLike[str] | None,
                       out: str | os.PathLike[str], *, split: str = "test", bundle: str | os.PathLike[str] | None = None,
                       paper_protocol: bool = False, generator_options: dict[str, Any] | None = None,
                       medicalnet: str | None = None, radimagenet: str | None = None,
                       fidelity_model: str | None = "tiny-cnn", fidelity_epochs: int = 10,
                       fidelity_crop: tuple[int, int, int] | None = None, resize: bool = False,
                       max_synthetic: int | None = None, progress: Progress | None = None) -> dict:
    """Write ``metrics.json``, ``report.md``, montages and the memorisation list to ``out``; return the metrics."""
    from synthaug.data.manifest import SPLITS, load_manifest
    from synthaug.metrics import evaluate_quality
    from synthaug.mix.cache import SyntheticCache

    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}", where="--split", fix=f"choose one of {', '.join(SPLITS)}")
    if max_synthetic is not None and max_synthetic < 1:
        raise InputError(f"must be >= 1, got {max_synthetic}", where="--max-synthetic", fix="evaluate at least one volume")
    manifest = load_manifest(manifest_path)
    real_cases = manifest.items(split)
    out = Path(out)
    if paper_protocol:
        from synthaug.generate import CCELLAGenerator

        if bundle is None:
            raise InputError("the paper protocol generates from a bundle", where="--paper-protocol",
                             fix="pass --bundle BUNDLE (one synthetic volume per real case from its report)")
        generator = CCELLAGenerator.from_bundle(bundle, **(generator_options or {}))
        data, train_ids = generator.bundle.config.data, generator.bundle.train_case_ids
        synthetic_items = paper_protocol_items(generator, real_cases, out / "paper_protocol", progress)
    else:
        if synthetic is None:
            raise InputError("nothing to evaluate", where="--synthetic", fix="pass --synthetic CACHE or --paper-protocol")
        cache = SyntheticCache(synthetic)
        data, train_ids = cache.data_config(), cache.train_case_ids
        synthetic_items = [{**item, "requested_label": item["label"]} for item in cache.items()]
        if max_synthetic is not None:
            synthetic_items = synthetic_items[::max(1, len(synthetic_items) // max_synthetic)][:max_synthetic]
    train_cases = [c for c in manifest.items("train") if c["case_id"] in train_ids] or manifest.items("train")
    predict = fidelity_classifier(manifest, data, fidelity_model, fidelity_epochs, crop=fidelity_crop) \
        if fidelity_model else None
    return evaluate_quality(_preprocessed(real_cases, data), synthetic_items, out, medicalnet=medicalnet,
                            radimagenet=radimagenet, predict=predict, train_items=_preprocessed(train_cases, data),
                            resize=resize, progress=progress)
