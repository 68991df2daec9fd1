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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthaug.config import DataConfig
from synthaug.data.io import atomic_write_text
from synthaug.errors import InputError
from synthaug.progress import Progress


def _preprocessed(items: list[dict], data: DataConfig) -> list[dict]:
    """Items with the image replaced by the preprocessed ``(1, X, Y, Z)`` array in [0, 1]."""
    from synthaug.data.volume_store import VolumeStore

    load = VolumeStore(data)
    return [{**item, "image": load(item)["image"].numpy()} for item in items]


def fidelity_classifier(manifest, data: DataConfig, model: str = "tiny-cnn", epochs: int = 10,
                        seed: int = 0, crop: tuple[int, int, int] | None = None,
                        lr: float = 1e-3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train ``model`` on the real train split (selected on val); returns volumes (B, 1, X, Y, Z) -> P(class 1).

    ``crop``: the classifier sees (and ``predict`` crops to) a centred box of that many voxels.
    """
    if not manifest.split("train") or not manifest.split("val"):
        raise InputError("conditioning fidelity needs real 'train' and 'val' cases", where=str(manifest.path),
                         fix="mark train and val splits, or pass --fidelity-model none")
    return train_classifier(manifest.items("train"), manifest.items("val"), data, model, epochs, seed, crop, lr)


def train_classifier(train_items: list[dict], val_items: list[dict], data: DataConfig, model: str = "tiny-cnn",
                     epochs: int = 10, seed: int = 0, crop: tuple[int, int, int] | None = None,
                     lr: float = 1e-3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train ``model`` on items (real or synthetic paths, preprocessed alike), select on ``val_items``."""
    from monai.data import Dataset

    from classifiers import FitConfig, build_model, fit
    from synthaug.data.volume_store import VolumeStore
    from synthaug.metrics.features import state_dict_sha256

    load = VolumeStore(data, crop)
    net = build_model(model, in_channels=len(data.modalities), num_classes=2, seed=seed)
    fit(net, Dataset(train_items, transform=load), Dataset(val_items, transform=load),
        FitConfig(epochs=epochs, seed=seed, patience=None, device="cpu", lr=lr,
                  samples_per_epoch=2 * len(train_items)), progress=False)
    net.eval()
    cropper = load.crop

    @torch.no_grad()
    def predict(volumes: torch.Tensor) -> torch.Tensor:
        if cropper is not None:
            volumes = torch.stack([torch.as_tensor(cropper(v)) for v in volumes])
        return net(volumes.float()).softmax(dim=-1)[:, 1]

    predict.weights_sha256 = state_dict_sha256(net)  # type: ignore[attr-defined] - checked against a cache's filter
    predict.net, predict.crop = net, crop  # type: ignore[attr-defined] - for ClassifierFeatures
    return predict


def paper_protocol_items(generator, cases: list[dict], out: Path, progress: Progress | None = None,
                         seed_offset: int = 0) -> list[dict]:
    """One synthetic volume per real case, from its own report and label (seed = ``seed_offset`` + its index);
    NIfTI in ``out``. Another ``seed_offset`` (e.g. k x the number of cases) makes a k-th twin of every case."""
    from synthaug.generate import sequence_files, write_sequences

    out.mkdir(parents=True, exist_ok=True)
    modalities = list(generator.bundle.config.data.modalities)
    items, rows = [], []
    for start in range(0, len(cases), generator.batch_size):
        part = cases[start:start + generator.batch_size]
        result = generator.generate([c["label"] for c in part], reports=[c["report"] for c in part],
                                    seeds=list(range(seed_offset + start, seed_offset + start + len(part))))
        for case, volume, record in zip(part, result.volumes, result.provenance):
            names = sequence_files(f"{case['case_id']}_synthetic", ".nii.gz", modalities)  # a file per sequence
            written = write_sequences(volume, result.affine, {key: out / name for key, name in names.items()})
            files = {"files": names} if len(names) > 1 else {}
            rows.append(json.dumps({"file": names["image"], **files, "case_id": case["case_id"], **record},
                                   sort_keys=True))
            items.append({**{key: str(path) for key, path in written.items()}, "label": case["label"],
                          "requested_label": case["label"], "synthetic_id": f"{case['case_id']}_synthetic"})
        if progress:
            progress("generate", len(items), len(cases), {})
    (out / "provenance.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return items


def class_signal(manifest, data: DataConfig, judge: Callable[[torch.Tensor], torch.Tensor], judge_name: str,
                 synthetic_items: list[dict], *, split: str = "test", generator=None,
                 model: str = "tiny-cnn", epochs: int = 10, crop: tuple[int, int, int] | None = None, seed: int = 0):
    """The class-signal chain (``synthaug.metrics.class_signal``) of a synthetic set with real data's ``judge``.

    Real and synthetic volumes go through the same preprocessing as the judge's training data. With the
    ``generator`` that made the set, the autoencoder (its round trip of the test volumes) and the adapter
    (its class head on the val + test reports) are scored too. CAS trains ``model`` with another seed than
    the judge on the synthetic set alone, and on as many real training cases, and scores both on ``split``.
    """
    from synthaug.data.volume_store import VolumeStore
    from synthaug.metrics.class_signal import class_signal_chain

    load = VolumeStore(data)
    test_items = manifest.items(split)

    def volumes(items: list[dict]) -> torch.Tensor:
        return torch.stack([load(item)["image"] for item in items])  # (N, 1, X, Y, Z) in [0, 1]

    reconstruct = adapter = None
    if generator is not None:
        reconstruct = generator.round_trip
        texts = [c for c in [*manifest.items("val"), *test_items] if c["report"]]
        if texts:
            adapter = (generator.predict_class, [c["report"] for c in texts], [c["label"] for c in texts])
    n = min(len(synthetic_items), len(manifest.split("train")))
    cas_seed = seed + 1  # never the judge's own weights
    real_n = sorted(manifest.items("train"), key=lambda c: c["case_id"])[:n]
    cas = {}
    test = volumes(test_items)
    if n >= 2 and len({c["label"] for c in real_n}) == 2:
        for setting, items in ((f"synthetic N={n}", synthetic_items[:n]), (f"real N={n}", real_n)):
            predict = train_classifier(items, manifest.items("val"), data, model, epochs, cas_seed, crop)
            cas[f"{setting} ({model}, seed {cas_seed})"] = predict(test)
    return class_signal_chain(judge, judge_name, test, [c["label"] for c in test_items],
                              reconstruct=reconstruct, adapter=adapter, cas=cas,
                              generated={"the evaluated set": (volumes(synthetic_items),
                                                               [c["requested_label"] for c in synthetic_items])})


@dataclass
class _SyntheticSet:
    """What is evaluated: the items (with ``requested_label``), the data geometry they were made for, the
    generator's training cases (the memorisation reference) and the generator itself when known."""

    items: list[dict]
    data: DataConfig
    train_ids: set[str]
    generator: Any = None  # CCELLAGenerator, for the paper protocol
    cache: Any = None  # SyntheticCache
    filter_sha256: str | None = None  # a cache's filter, which must not be the judge

    def source_generator(self):  # -> CCELLAGenerator | None
        """The generator that made the set (a cache's only when its bundle is still where it was)."""
        return self.generator if self.cache is None else _cache_generator(self.cache)


def _check_options(split: str, features: str, max_synthetic: int | None) -> None:
    from synthaug.data.manifest import SPLITS

    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}", where="--split", fix=f"choose one of {', '.join(SPLITS)}")
    if features not in ("judge", "seeded"):
        raise InputError(f"unknown features {features!r}", where="--features", fix="use judge or seeded")
    if max_synthetic is not None and max_synthetic < 1:
        raise InputError(f"must be >= 1, got {max_synthetic}", where="--max-synthetic", fix="evaluate at least one volume")


def _paper_protocol_set(bundle: str | os.PathLike[str] | None, real_cases: list[dict], out: Path,
                        generator_options: dict[str, Any] | None, progress: Progress | None) -> _SyntheticSet:
    from synthaug.generate import CCELLAGenerator

    if bundle is None:
        raise InputError("the paper protocol generates from a bundle", where="--paper-protocol",
                         fix="pass --bundle BUNDLE (one synthetic volume per real case from its report)")
    generator = CCELLAGenerator.from_bundle(bundle, **(generator_options or {}))
    items = paper_protocol_items(generator, real_cases, out / "paper_protocol", progress)
    return _SyntheticSet(items, generator.bundle.config.data, generator.bundle.train_case_ids, generator)


def _cache_set(synthetic: str | os.PathLike[str] | None, max_synthetic: int | None) -> _SyntheticSet:
    from synthaug.mix.cache import SyntheticCache

    if synthetic is None:
        raise InputError("nothing to evaluate", where="--synthetic", fix="pass --synthetic CACHE or --paper-protocol")
    cache = SyntheticCache(synthetic)
    items = [{**item, "requested_label": item["label"]} for item in cache.items()]
    if max_synthetic is not None:
        items = items[::max(1, len(items) // max_synthetic)][:max_synthetic]
    return _SyntheticSet(items, cache.data_config(), cache.train_case_ids, cache=cache,
                         filter_sha256=(cache.meta.get("filter") or {}).get("weights_sha256"))


def _judge_features(predict, fidelity_model: str, fidelity_epochs: int):  # -> ClassifierFeatures
    from synthaug.metrics.features import ClassifierFeatures

    return ClassifierFeatures(predict.net, crop=predict.crop, name=(
        f"judge features: {fidelity_model} trained on the real train split (seed 0, {fidelity_epochs} epochs), "
        "penultimate layer; not comparable to published FIDs"))


def evaluate_synthetic(manifest_path: str | os.PathLike[str], synthetic: str | os.PathLike[str] | None,
                       out: str | os.PathLike[str], *, split: str = "test", bundle: str | os.PathLike[str] | None = None,
                       paper_protocol: bool = False, generator_options: dict[str, Any] | None = None,
                       medicalnet: str | None = None, radimagenet: str | None = None,
                       fidelity_model: str | None = "tiny-cnn", fidelity_epochs: int = 10,
                       fidelity_crop: tuple[int, int, int] | None = None, resize: bool = False,
                       max_synthetic: int | None = None, features: str = "judge",
                       progress: Progress | None = None) -> dict:
    """Write ``metrics.json``, ``report.md``, montages and the memorisation list to ``out``; return the metrics.

    ``features``: the 3D FID/KID/memorisation features when no ``medicalnet`` weights are given: ``judge``
    (the fidelity classifier's penultimate layer, trained on the real train split: it sees anatomy) or
    ``seeded`` (a seeded random ResNet, which ranks texture over layout). Every output names which.
    """
    from synthaug.data.manifest import load_manifest
    from synthaug.metrics import evaluate_quality
    from synthaug.metrics.class_signal import check_judge

    _check_options(split, features, max_synthetic)
    manifest, out = load_manifest(manifest_path), Path(out)
    real_cases = manifest.items(split)
    evaluated = _paper_protocol_set(bundle, real_cases, out, generator_options, progress) if paper_protocol \
        else _cache_set(synthetic, max_synthetic)
    data = evaluated.data
    train_cases = [c for c in manifest.items("train") if c["case_id"] in evaluated.train_ids] or manifest.items("train")
    predict = fidelity_classifier(manifest, data, fidelity_model, fidelity_epochs, crop=fidelity_crop) \
        if fidelity_model else None
    if predict is not None and not paper_protocol:  # before any more work: the judge must not be the filter
        check_judge(predict.weights_sha256, evaluated.filter_sha256)
    extractor = _judge_features(predict, fidelity_model, fidelity_epochs) \
        if features == "judge" and predict is not None and medicalnet is None else None
    quality = {"medicalnet": medicalnet, "radimagenet": radimagenet, "resize": resize, "progress": progress}
    if len(data.modalities) > 1:
        metrics = _quality_per_sequence(_preprocessed(real_cases, data), evaluated.items,
                                        _preprocessed(train_cases, data), data, out, quality)
    else:
        metrics = evaluate_quality(_preprocessed(real_cases, data), evaluated.items, out, predict=predict,
                                   train_items=_preprocessed(train_cases, data), extractor=extractor, **quality)
    if predict is not None and not resize:
        judge = f"{fidelity_model} (seed 0, trained on the real train split, {fidelity_epochs} epochs)"
        chain = class_signal(manifest, data, predict, judge, evaluated.items, split=split,
                             generator=evaluated.source_generator(), model=fidelity_model, epochs=fidelity_epochs,
                             crop=fidelity_crop)
        metrics["class_signal"] = chain.to_dict()
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(out / "report.md", (out / "report.md").read_text(encoding="utf-8") + "\n" + chain.markdown())
    return metrics


def _quality_per_sequence(real: list[dict], synthetic: list[dict], train: list[dict], data: DataConfig, out: Path,
                          quality: dict[str, Any]) -> dict:
    """FID/KID, diversity and memorisation of each sequence on its own (T2W in ``out``, the others in
    ``out/sequences/<sequence>``); the T2W metrics, with every sequence's headline under ``sequences``.

    The 3D features are the seeded (or MedicalNet) single-channel network: the judge sees all sequences at
    once, so it scores the class signal (the chain) rather than each sequence's features.
    """
    from synthaug.config import MODALITY_KEYS
    from synthaug.metrics import evaluate_quality, headline

    per_sequence, first = {}, None
    for c, modality in enumerate(data.modalities):
        key = MODALITY_KEYS[modality]

        def channel(items: list[dict], c: int = c) -> list[dict]:
            return [{**item, "image": item["image"][c:c + 1]} for item in items]

        metrics = evaluate_quality(channel(real), [{**item, "image": item[key]} for item in synthetic],
                                   out if c == 0 else out / "sequences" / modality, train_items=channel(train),
                                   **quality)
        per_sequence[modality] = dict(headline(metrics))
        first = first or metrics
    first["sequences"] = per_sequence
    atomic_write_text(out / "metrics.json", json.dumps(first, indent=2) + "\n")
    rows = [[name, *(per_sequence[m].get(name, "-") for m in data.modalities)]
            for name in per_sequence[data.modalities[0]]]
    from synthaug.markdown import markdown_table

    table = markdown_table(["metric", *data.modalities], rows)
    atomic_write_text(out / "report.md", (out / "report.md").read_text(encoding="utf-8")
                      + "\n## Per sequence\n\n" + "\n".join(table) + "\n")
    return first


def _cache_generator(cache):  # SyntheticCache -> CCELLAGenerator | None
    """The generator of a cache when its bundle is still where ``cache.json`` says (for the VAE and adapter links)."""
    from synthaug.generate import CCELLAGenerator

    bundle = cache.meta.get("bundle_path")
    if not bundle or not Path(bundle).is_dir():
        return None
    generator = CCELLAGenerator.from_bundle(bundle)
    return generator if generator.fingerprint == cache.fingerprint else None
