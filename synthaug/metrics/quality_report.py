"""``evaluate_quality``: every quality metric of a synthetic set against a real one, written to a folder.

Inputs are MONAI-style items (``{"image": path or array, "label": int, ...}``; synthetic items may add
``requested_label`` and ``synthetic_id``). Outputs: ``metrics.json``, ``report.md``, montage PNGs,
``memorisation.csv`` and ``memorisation_pairs.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthaug.data.io import atomic_write_text, check_volume_array, read_volume
from synthaug.errors import InputError
from synthaug.metrics import montage, quality
from synthaug.metrics.features import FeatureExtractor, MedicalNet3D, RadImageNet2D, SeededResNet2D, SeededResNet3D
from synthaug.progress import Progress

FORMAT_VERSION = 1
NORMALISATION = "per volume: percentile 0 -> 0, percentile 99.5 -> 1, clipped (real and synthetic alike)"


# ------------------------------------------------------------------------------------------- volumes


def normalise_volume(array: np.ndarray, lower: float = 0.0, upper: float = 99.5) -> np.ndarray:
    """Map the ``lower``/``upper`` percentiles of a volume to 0/1 and clip: float32 in [0, 1]."""
    lo, hi = np.percentile(array, [lower, upper])
    if hi <= lo:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _item_where(item: Mapping, image_key: str, what: str, index: int) -> str:
    image = item.get(image_key)
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"{what} item {index}"


def _raw_volume(item: Mapping, image_key: str, what: str, index: int) -> np.ndarray:
    if not isinstance(item, Mapping) or image_key not in item:
        raise InputError(f"{what} item {index} has no {image_key!r} entry", where=f"{what} items",
                         fix=f"give dicts with {image_key!r} = a volume path or array")
    image = item[image_key]
    if isinstance(image, (str, os.PathLike)):
        return read_volume(image).array
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:  # MONAI channel-first (1, X, Y, Z)
        array = array[0]
    return check_volume_array(array, f"{what} item {index}")


def load_volumes(items: Sequence[Mapping], *, image_key: str = "image", what: str = "real") -> list[np.ndarray]:
    """Each item's volume as float32 ``(X, Y, Z)`` in [0, 1] (:func:`normalise_volume`)."""
    return [normalise_volume(_raw_volume(item, image_key, what, i)) for i, item in enumerate(items)]


def _conform(sets: dict[str, tuple[list[np.ndarray], Sequence[Mapping]]], image_key: str, resize: bool) -> tuple:
    """One common shape for all sets: the real set's most common one; others refused or resized."""
    target = Counter(v.shape for v in sets["real"][0]).most_common(1)[0][0]
    for what, (volumes, items) in sets.items():
        for i, v in enumerate(volumes):
            if v.shape == target:
                continue
            if not resize:
                raise InputError(f"{what} volume has shape {v.shape}, the real volumes {target}",
                                 where=_item_where(items[i], image_key, what, i),
                                 fix=f"generate at {target}, or resample with resize=True (--resize)")
            from monai.transforms import Resize

            volumes[i] = np.clip(np.asarray(Resize(spatial_size=target, mode="trilinear")(v[None]))[0], 0, 1)
    return target


def _stack(volumes: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(volumes)[:, None])  # (N, 1, X, Y, Z)


def _labels(items: Sequence[Mapping], keys: Sequence[str]) -> list[int | None]:
    out = []
    for item in items:
        value = next((item[k] for k in keys if item.get(k) is not None), None)
        out.append(None if value is None else int(value))
    return out


def _ids(items: Sequence[Mapping], keys: Sequence[str], image_key: str, prefix: str) -> list[str]:
    ids = []
    for i, item in enumerate(items):
        value = next((item[k] for k in keys if item.get(k) not in (None, "")), None)
        if value is None and isinstance(item.get(image_key), (str, os.PathLike)):
            value = Path(item[image_key]).name
        ids.append(str(value) if value is not None else f"{prefix}{i}")
    total, seen = Counter(ids), Counter()
    unique = []
    for value in ids:
        seen[value] += 1
        unique.append(value if total[value] == 1 else f"{value}#{seen[value]}")
    return unique


# ------------------------------------------------------------------------------------------ metrics


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _predict(predict: Callable, volumes: torch.Tensor, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, volumes.shape[0], batch_size):
        p = predict(volumes[i:i + batch_size])
        p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        out.append(np.asarray(p, dtype=float).reshape(-1))
    return np.concatenate(out)


STAGES = ("load", "features 3d", "features 2.5d", "distances", "diversity", "memorisation", "conditioning", "outputs")


@dataclass(frozen=True)
class QualitySettings:
    """How ``evaluate_quality`` computes and draws its metrics (its keyword arguments of the same names).

    Args:
        extractor / medicalnet: the 3D feature network (an object, or MedicalNet ResNet-50 weights);
            neither -> the seeded random-weight default, flagged not comparable in every output.
        extractor_2d / radimagenet: the 2.5D network (object or RadImageNet ResNet-50 weights); else seeded.
        image_key: the items' key of the volume (a path or an ``(X, Y, Z)`` array).
        seed: seeds the default feature networks, the KID subsets and the MS-SSIM pairs.
        resize: resample volumes whose shape differs from the real set's (MONAI ``Resize``) instead of refusing.
        device: where the default feature networks run.
        kid_subsets / kid_subset_size: the KID's random subsets (how many, and how large).
        k: neighbours of the precision/recall manifolds.
        max_pairs: pairs of volumes per class that the MS-SSIM diversity averages.
        memorisation_percentile: percentile of the training set's own nearest-neighbour distances that marks
            (times the copy factor) a synthetic volume as a likely copy.
        montage_rows: rows of each montage PNG.
        batch_size: volumes per batch of the 3D feature network and of ``predict``.
        max_slices_2d: evenly spaced slices per axis for the default 2.5D extractors (None: all slices).
    """

    extractor: FeatureExtractor | None
    extractor_2d: FeatureExtractor | None
    medicalnet: str | os.PathLike[str] | None
    radimagenet: str | os.PathLike[str] | None
    image_key: str
    seed: int
    resize: bool
    device: str | torch.device
    kid_subsets: int
    kid_subset_size: int
    k: int
    max_pairs: int
    memorisation_percentile: float
    montage_rows: int
    batch_size: int
    max_slices_2d: int | None


@dataclass
class _Sets:
    """The volumes compared, each ``(X, Y, Z)`` in [0, 1] at one ``shape``, stacked ``(N, 1, X, Y, Z)``, with the
    labels that group them and the ids that name them. Without train items, ``train`` is the real set."""

    real: list[np.ndarray]
    synth: list[np.ndarray]
    train: list[np.ndarray]
    train_given: bool
    shape: tuple[int, ...]
    real_t: torch.Tensor
    synth_t: torch.Tensor
    train_t: torch.Tensor
    real_labels: list[int | None]
    synth_labels: list[int | None]  # requested_label, else label
    train_labels: list[int | None]
    synth_reports: list[str | None]  # the report a synthetic volume was drawn from, when its item names one
    train_reports: list[str | None]
    synth_ids: list[str]
    train_ids: list[str]


def evaluate_quality(
    real_items: Sequence[Mapping],
    synthetic_items: Sequence[Mapping],
    out_dir: str | os.PathLike[str],
    *,
    extractor: FeatureExtractor | None = None,
    extractor_2d: FeatureExtractor | None = None,
    medicalnet: str | os.PathLike[str] | None = None,
    radimagenet: str | os.PathLike[str] | None = None,
    image_key: str = "image",
    predict: Callable[[torch.Tensor], Any] | None = None,
    train_items: Sequence[Mapping] | None = None,
    seed: int = 0,
    resize: bool = False,
    device: str | torch.device = "cpu",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    max_pairs: int = 100,
    memorisation_percentile: float = 1.0,
    montage_rows: int = 4,
    batch_size: int = 4,
    max_slices_2d: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Compute every quality metric of ``synthetic_items`` against ``real_items``; write them to ``out_dir``.

    Args:
        real_items / synthetic_items: MONAI-style dicts, ``image_key`` -> NIfTI/MHA path or ``(X, Y, Z)`` array;
            ``label`` (real) and ``requested_label`` (synthetic, else ``label``) group the per-class metrics.
        extractor / medicalnet: the 3D feature network (an object, or MedicalNet ResNet-50 weights);
            neither -> the seeded random-weight default, flagged not comparable in every output.
        extractor_2d / radimagenet: the 2.5D network (object or RadImageNet ResNet-50 weights); else seeded.
        predict: ``(B, 1, X, Y, Z)`` volumes in [0, 1] -> P(class 1), a classifier trained on real data,
            for conditioning fidelity (skipped when None).
        train_items: the generator's training set for the memorisation check (default: ``real_items``).
        progress: ``(stage, done, total, logs)`` callback (``synthaug.progress.Progress``) after each of the
            ``STAGES``, as ``synthaug.console.stage_progress`` yields.
        The other arguments: see ``QualitySettings``.

    Returns the metrics dict also written to ``metrics.json`` (``files`` names every output).
    """
    settings = QualitySettings(
        extractor=extractor, extractor_2d=extractor_2d, medicalnet=medicalnet, radimagenet=radimagenet,
        image_key=image_key, seed=seed, resize=resize, device=device, kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size, k=k, max_pairs=max_pairs, memorisation_percentile=memorisation_percentile,
        montage_rows=montage_rows, batch_size=batch_size, max_slices_2d=max_slices_2d)
    return _evaluate(real_items, synthetic_items, train_items, Path(out_dir), settings, predict, progress)


def _evaluate(real_items: Sequence[Mapping], synthetic_items: Sequence[Mapping], train_items: Sequence[Mapping] | None,
              out: Path, settings: QualitySettings, predict: Callable[[torch.Tensor], Any] | None,
              progress: Progress | None) -> dict:
    """``evaluate_quality``'s stages in order, reporting each of the ``STAGES`` as it is done."""
    step = _stage_reporter(progress)
    real_items, synthetic_items, train_items = _checked_items(real_items, synthetic_items, train_items)
    step(0)
    sets = _load_sets(real_items, synthetic_items, train_items, settings)
    step(1)
    extractor, extractor_2d = _feature_networks(settings)
    f_real, f_synth = extractor.extract(sets.real_t), extractor.extract(sets.synth_t)
    f_train = extractor.extract(sets.train_t) if sets.train_given else f_real
    step(2)
    planes = _planes(extractor_2d, sets)
    step(3)
    metrics = _describe_run(sets, settings, extractor, extractor_2d)
    metrics.update(_distances(f_real, f_synth, planes, sets, settings))
    step(4)
    metrics.update(_diversity(sets, settings))
    step(5)
    metrics["memorisation"], pairs = _memorisation(f_synth, f_train, sets, settings, extractor.name)
    step(6)
    metrics["conditioning"] = _conditioning(predict, sets, settings.batch_size)
    step(7)
    metrics = _write_all(out, metrics, pairs, sets, settings.montage_rows)
    step(len(STAGES))
    return metrics


def _stage_reporter(progress: Progress | None) -> Callable[[int], None]:
    """``step(i)``: report that ``i`` of the ``STAGES`` are done (nothing without ``progress``)."""

    def step(i: int) -> None:
        if progress is not None:
            progress("evaluate", i, len(STAGES), {})

    return step


def _checked_items(real_items: Sequence[Mapping], synthetic_items: Sequence[Mapping],
                   train_items: Sequence[Mapping] | None) -> tuple[list, list, list | None]:
    """The item lists, refused when a set has fewer than 2 volumes (``train_items`` None: the real items stand in)."""
    real_items, synthetic_items = list(real_items), list(synthetic_items)
    for what, items in (("real", real_items), ("synthetic", synthetic_items)):
        if len(items) < 2:
            raise InputError(f"{len(items)} {what} volume(s); the metrics need at least 2", where=f"{what} items",
                             fix=f"give at least 2 {what} volumes (FID/KID are meaningful from tens)")
    train = list(train_items) if train_items is not None else None
    if train is not None and len(train) < 2:
        raise InputError(f"{len(train)} training volume(s); memorisation needs at least 2",
                         where="train items", fix="give the generator's training set")
    return real_items, synthetic_items, train


def _load_sets(real_items: list, synthetic_items: list, train_items: list | None, settings: QualitySettings) -> _Sets:
    """Read and normalise every volume, bring all to the real set's shape, and note labels and ids."""
    key = settings.image_key
    train_given = train_items is not None
    train_items = train_items if train_given else real_items
    real = load_volumes(real_items, image_key=key, what="real")
    synth = load_volumes(synthetic_items, image_key=key, what="synthetic")
    sets: dict = {"real": (real, real_items), "synthetic": (synth, synthetic_items)}
    train = load_volumes(train_items, image_key=key, what="train") if train_given else real
    if train_given:
        sets["train"] = (train, train_items)
    shape = _conform(sets, key, settings.resize)
    real_t, synth_t = _stack(real), _stack(synth)
    return _Sets(
        real=real, synth=synth, train=train, train_given=train_given, shape=shape, real_t=real_t, synth_t=synth_t,
        train_t=_stack(train) if train_given else real_t, real_labels=_labels(real_items, ("label",)),
        synth_labels=_labels(synthetic_items, ("requested_label", "label")),
        train_labels=_labels(train_items, ("label",)),
        synth_reports=[item.get("report") for item in synthetic_items],
        train_reports=[item.get("report") for item in train_items],
        synth_ids=_ids(synthetic_items, ("synthetic_id", "id"), key, "synthetic_"),
        train_ids=_ids(train_items, ("case_id", "id"), key, "train_"))


def _feature_networks(settings: QualitySettings) -> tuple[FeatureExtractor, FeatureExtractor]:
    """The 3D and 2.5D feature networks: those given, else from the weights given, else the seeded defaults."""
    extractor, extractor_2d, medicalnet, radimagenet = (
        settings.extractor, settings.extractor_2d, settings.medicalnet, settings.radimagenet)
    device, seed = settings.device, settings.seed
    if extractor is None:
        extractor = (MedicalNet3D(medicalnet, device=device, batch_size=settings.batch_size) if medicalnet is not None
                     else SeededResNet3D(seed=seed, device=device, batch_size=settings.batch_size))
    if extractor_2d is None:
        slices = settings.max_slices_2d
        extractor_2d = (RadImageNet2D(radimagenet, device=device, max_slices=slices) if radimagenet is not None
                        else SeededResNet2D(seed=seed, device=device, max_slices=slices))
    return extractor, extractor_2d


def _planes(extractor_2d: FeatureExtractor, sets: _Sets) -> tuple[dict, dict] | None:
    """Per-plane 2.5D features (real, synthetic), or None for a network without ``extract_planes``."""
    if not hasattr(extractor_2d, "extract_planes"):
        return None
    return extractor_2d.extract_planes(sets.real_t), extractor_2d.extract_planes(sets.synth_t)


def _describe_run(sets: _Sets, settings: QualitySettings, extractor: FeatureExtractor,
                  extractor_2d: FeatureExtractor) -> dict[str, Any]:
    """The metrics' header: format, set sizes, shape, normalisation, seed and feature networks."""
    return {
        "format_version": FORMAT_VERSION,
        "n_real": len(sets.real), "n_synthetic": len(sets.synth), "n_train": len(sets.train),
        "shape": list(sets.shape), "resized": bool(settings.resize), "normalisation": NORMALISATION,
        "seed": settings.seed,
        "extractors": {"3d": extractor.describe(), "2.5d": extractor_2d.describe()},
        "comparable_to_published": bool(extractor.comparable and extractor_2d.comparable),
    }


def _distances(f_real: torch.Tensor, f_synth: torch.Tensor, planes: tuple[dict, dict] | None, sets: _Sets,
               settings: QualitySettings) -> dict[str, Any]:
    """FID, KID and precision/recall of the 3D features, the 2.5D FID, and FID/KID per class."""
    kid_args = {"subsets": settings.kid_subsets, "subset_size": settings.kid_subset_size, "seed": settings.seed}
    out: dict[str, Any] = {
        "fid_3d": quality.fid(f_real, f_synth),
        "kid_3d": quality.kid(f_real, f_synth, **kid_args),
        "precision_recall_3d": quality.precision_recall(f_real, f_synth, k=settings.k),
    }
    if planes is not None:
        out["fid_2_5d"] = quality.fid_planes(*planes)
    by_class: dict[str, dict] = {}
    for label in sorted({c for c in sets.real_labels + sets.synth_labels if c is not None}):
        ri = [i for i, c in enumerate(sets.real_labels) if c == label]
        si = [i for i, c in enumerate(sets.synth_labels) if c == label]
        entry: dict[str, Any] = {"n_real": len(ri), "n_synthetic": len(si)}
        if len(ri) >= 2 and len(si) >= 2:
            entry["fid_3d"] = quality.fid(f_real[ri], f_synth[si])
            entry["kid_3d"] = quality.kid(f_real[ri], f_synth[si], **kid_args)
        else:
            entry["note"] = "per-class FID/KID need at least 2 real and 2 synthetic volumes of the class"
        by_class[str(label)] = entry
    out["by_class"] = by_class
    return out


def _diversity(sets: _Sets, settings: QualitySettings) -> dict[str, Any]:
    """MS-SSIM diversity within each class (or of all volumes, without labels), synthetic and real."""
    ms_ssim = quality.ms_ssim_settings(sets.shape)
    diversity: dict[str, dict] = {"synthetic": {}, "real": {}}
    for what, tensor, labels in (("synthetic", sets.synth_t, sets.synth_labels), ("real", sets.real_t, sets.real_labels)):
        for label in sorted({c for c in labels if c is not None}) or [None]:
            idx = [i for i, c in enumerate(labels) if c == label or label is None]
            result = quality.ms_ssim_diversity(tensor[idx], max_pairs=settings.max_pairs, seed=settings.seed,
                                               settings=ms_ssim)
            result.pop("settings")
            diversity[what]["all" if label is None else str(label)] = result
    return {"ms_ssim_settings": ms_ssim, "diversity": diversity}


def _memorisation(f_synth: torch.Tensor, f_train: torch.Tensor, sets: _Sets, settings: QualitySettings,
                  extractor_name: str) -> tuple[dict[str, Any], list[dict]]:
    """Nearest training volume of each synthetic one, in feature and voxel space: (summary, pairs by rank)."""
    mem = quality.memorisation(
        {"feature": f_synth, "voxel": quality.voxel_signature(sets.synth_t)},
        {"feature": f_train, "voxel": quality.voxel_signature(sets.train_t)},
        synthetic_ids=sets.synth_ids, train_ids=sets.train_ids, percentile=settings.memorisation_percentile)
    pairs = mem.pop("pairs")
    mem["reference"] = "train_items" if sets.train_given else "real_items (no train_items given)"
    mem["feature_extractor"] = extractor_name
    mem["class_by_training_case"] = _class_by_training_case(sets)
    return mem, pairs


def _class_by_training_case(sets: _Sets) -> dict[str, Any]:
    """How often the nearest training volume has the volume's label, synthetic beside held-out real (chance).

    A synthetic volume may not match the training case whose report it was drawn from (a near copy of that
    case has its label whatever the generator does with the class)."""
    if not sets.train_given:
        return {"note": "skipped: needs the generator's training set (train_items) beside held-out real volumes"}
    if any(c is None for c in [*sets.synth_labels, *sets.real_labels, *sets.train_labels]):
        return {"note": "skipped: a synthetic, real or training item lacks its label"}
    source = {report: i for i, report in enumerate(sets.train_reports) if report}
    exclude = [source.get(report) if report else None for report in sets.synth_reports]
    return {"synthetic": quality.nearest_train_label_agreement(sets.synth_t, sets.synth_labels, sets.train_t,
                                                               sets.train_labels, exclude=exclude),
            "held_out_real": quality.nearest_train_label_agreement(sets.real_t, sets.real_labels, sets.train_t,
                                                                   sets.train_labels),
            "report_source_excluded": sum(j is not None for j in exclude),
            "synthetic_distinct_nearest": len(set(quality.nearest_train_cases(sets.synth_t, sets.train_t,
                                                                              exclude=exclude).tolist()))}


def _conditioning(predict: Callable[[torch.Tensor], Any] | None, sets: _Sets, batch_size: int) -> dict[str, Any]:
    """Conditioning fidelity: the real-data classifier ``predict`` on the synthetic volumes against their labels."""
    if predict is None:
        return {"note": "skipped: no classifier (predict) given"}
    if any(c is None for c in sets.synth_labels):
        return {"note": "skipped: synthetic items lack requested_label/label"}
    probs = _predict(predict, sets.synth_t, batch_size)
    return quality.conditioning_fidelity(probs, sets.synth_labels)


def _write_all(out: Path, metrics: dict, pairs: list[dict], sets: _Sets, montage_rows: int) -> dict:
    """Montages, memorisation files, ``metrics.json`` and ``report.md`` in ``out``; the JSON-safe metrics."""
    out.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(out, metrics, pairs, sets.real, sets.synth, sets.train, sets.real_labels,
                           sets.synth_labels, sets.synth_ids, sets.train_ids, montage_rows)
    metrics["files"] = files
    metrics = _clean(metrics)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_report(metrics, pairs))
    return metrics


# ------------------------------------------------------------------------------------------ outputs

PAIR_COLUMNS = ("rank", "synthetic_id", "likely_copy", "feature_train_id", "feature_distance", "feature_ratio",
                "feature_closer_than_train", "feature_likely_copy", "voxel_train_id", "voxel_distance", "voxel_ratio",
                "voxel_closer_than_train", "voxel_likely_copy")


def _write_outputs(out: Path, metrics: dict, pairs: list[dict], real, synth, train, real_labels, synth_labels,
                   synth_ids, train_ids, rows: int) -> dict[str, str]:
    files = {"metrics": "metrics.json", "report": "report.md"}
    labels = sorted({c for c in real_labels + synth_labels if c is not None})
    for label in labels or [None]:
        name = "montage_all.png" if label is None else f"montage_class{label}.png"
        r = [v for v, c in zip(real, real_labels, strict=True) if label is None or c == label]
        s = [v for v, c in zip(synth, synth_labels, strict=True) if label is None or c == label]
        title = f"real vs synthetic, {'all volumes' if label is None else f'class {label}'} (mid-slices)"
        montage.save_montage(r, s, out / name, title=title, rows=rows)
        files[f"montage_{'all' if label is None else label}"] = name

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*PAIR_COLUMNS, "feature_extractor", "feature_extractor_sha256"], extrasaction="ignore")
    writer.writeheader()
    for rank, pair in enumerate(pairs, 1):
        writer.writerow({**pair, "rank": rank, "feature_extractor": metrics["extractors"]["3d"]["name"],
                         "feature_extractor_sha256": metrics["extractors"]["3d"]["weights_sha256"]})
    atomic_write_text(out / "memorisation.csv", buffer.getvalue())
    files["memorisation_csv"] = "memorisation.csv"
    montage.save_pairs(pairs, dict(zip(synth_ids, synth, strict=True)), dict(zip(train_ids, train, strict=True)),
                       out / "memorisation_pairs.png", space="voxel", rows=min(8, len(pairs)))
    files["memorisation_pairs"] = "memorisation_pairs.png"
    return files


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def headline(metrics: Mapping) -> list[tuple[str, str]]:
    """(metric, value) rows for a summary table: the numbers a reader looks at first."""
    kid = metrics["kid_3d"]
    pr = metrics["precision_recall_3d"]
    rows = [("FID 3D", _fmt(metrics["fid_3d"])), ("KID 3D", f"{_fmt(kid['mean'])} +/- {_fmt(kid['std'])}")]
    if "fid_2_5d" in metrics:
        f = metrics["fid_2_5d"]
        rows.append(("FID 2.5D (mean of x/y/z)", f"{_fmt(f['mean'])} ({_fmt(f['x'])} / {_fmt(f['y'])} / {_fmt(f['z'])})"))
    rows += [(f"precision / recall (k={pr['k']})", f"{_fmt(pr['precision'], 3)} / {_fmt(pr['recall'], 3)}")]
    for what in ("synthetic", "real"):
        for label, d in metrics["diversity"][what].items():
            rows.append((f"MS-SSIM diversity, {what} class {label}", _fmt(d["diversity"], 3)))
    mem = metrics["memorisation"]
    rows.append(("likely copies of training volumes", f"{mem['n_likely_copies']} of {mem['n_synthetic']}"))
    by_case = mem.get("class_by_training_case", {})
    if "synthetic" in by_case:
        rows.append(("class by training case: synthetic / held-out real (chance)",
                     f"{_fmt(by_case['synthetic'], 3)} / {_fmt(by_case['held_out_real'], 3)}"))
    cond = metrics["conditioning"]
    if "accuracy" in cond:
        rows.append(("conditioning accuracy / AUROC", f"{_fmt(cond['accuracy'], 3)} / {_fmt(cond['auroc'], 3)}"))
    for role, e in metrics.get("extractors", {}).items():  # which features the FIDs are in, and whether comparable
        note = "" if e["comparable"] or "comparable" in e["name"].lower() else " (not comparable to published FIDs)"
        rows.append((f"{role} features", f"{e['name']}, weights sha256 {e['weights_sha256'][:12]}{note}"))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from synthaug.markdown import markdown_table

    cells = [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    return "\n".join(markdown_table(header, cells)) + "\n"


def render_report(metrics: Mapping, pairs: Sequence[Mapping], top: int = 10) -> str:
    """The Markdown report of :func:`evaluate_quality`'s metrics and memorisation pairs."""
    ex = metrics["extractors"]
    parts = ["# Synthetic data quality report\n",
             f"{metrics['n_real']} real vs {metrics['n_synthetic']} synthetic volumes of shape "
             f"{tuple(metrics['shape'])}{' (resampled)' if metrics['resized'] else ''}; "
             f"memorisation reference: {metrics['memorisation']['reference']} ({metrics['n_train']} volumes). "
             f"Intensities {metrics['normalisation']}.\n"]
    if not metrics["comparable_to_published"]:
        parts.append("> **Not comparable to published numbers**: at least one feature network has random "
                     "weights. Compare only runs with the same extractor and weights hash.\n")
    parts.append("## Feature extractors\n")
    parts.append(_table(["role", "name", "weights sha256", "comparable"],
                        [[role, e["name"], f"`{e['weights_sha256']}`", str(e["comparable"])] for role, e in ex.items()]))
    parts.append("\n## Headline metrics\n")
    parts.append(_table(["metric", "value"], headline(metrics)))
    parts.append("\n## By class\n")
    parts.append(_table(["class", "n real", "n synthetic", "FID 3D", "KID 3D"],
                        [[c, e["n_real"], e["n_synthetic"], e.get("fid_3d"), (e.get("kid_3d") or {}).get("mean")]
                         for c, e in metrics["by_class"].items()]))
    s = metrics["ms_ssim_settings"]
    parts.append(f"\nMS-SSIM: {s['scales']} scales, kernel {s['kernel_size']}, sigma {s['kernel_sigma']}, "
                 f"weights {s['weights']} (chosen for the volume size). Diversity = 1 - mean pairwise MS-SSIM "
                 "within a class.\n")
    mem = metrics["memorisation"]
    parts.append("\n## Memorisation\n")
    parts.append(f"Nearest training volume of each synthetic volume in feature space ({mem['feature_extractor']}) "
                 f"and voxel space (1 - NCC of volumes pooled to <= 32 per axis). A volume is a likely copy when "
                 f"its distance is below {mem['copy_factor']} x percentile {_fmt(mem['spaces']['voxel']['train_nn_percentile'])} "
                 f"of the training set's own nearest-neighbour distances, in either space. "
                 f"**{mem['n_likely_copies']} of {mem['n_synthetic']} flagged.** Full list: `memorisation.csv`.\n\n")
    parts.append(_table(["synthetic", "nearest train (voxel)", "voxel 1-NCC", "ratio", "nearest train (feature)",
                         "feature dist", "likely copy"],
                        [[p["synthetic_id"], p.get("voxel_train_id"), p.get("voxel_distance"), p.get("voxel_ratio"),
                          p.get("feature_train_id"), p.get("feature_distance"), "**yes**" if p["likely_copy"] else "no"]
                         for p in pairs[:top]]))
    parts.append("\n![memorisation pairs](memorisation_pairs.png)\n")
    by_case = mem.get("class_by_training_case", {})
    if "synthetic" in by_case:
        parts.append(f"\n**Class by training case.** The nearest training volume (voxel space; for the "
                     f"{by_case['report_source_excluded']} synthetic volumes drawn from a training report, other than "
                     f"that report's case) has the volume's label for {_fmt(by_case['synthetic'], 3)} of the "
                     f"synthetic volumes (nearest to {by_case['synthetic_distinct_nearest']} distinct training "
                     f"cases) and {_fmt(by_case['held_out_real'], 3)} of the held-out real ones (chance: their anatomy "
                     "does not depend on their class). Far above chance, the generator draws a class as that class's "
                     "training cases, a difference a classifier trained on the volumes learns and real cases do "
                     "not share; a few distinct cases mean the volumes pile up on a few training anatomies, and "
                     "then which ones decides the figure.\n")
    cond = metrics["conditioning"]
    parts.append("\n## Conditioning fidelity\n")
    if "accuracy" in cond:
        parts.append(f"A classifier trained on real data, applied to the synthetic volumes: accuracy "
                     f"{_fmt(cond['accuracy'], 3)}, AUROC {_fmt(cond['auroc'], 3)}"
                     f"{' (' + cond['auroc_note'] + ')' if cond.get('auroc_note') else ''}.\n\n")
        parts.append(_table(["requested label", "n", "accuracy", "mean P(class 1)"],
                            [[c, e["n"], e["accuracy"], e["mean_probability"]] for c, e in cond["by_label"].items()]))
    else:
        parts.append(cond["note"] + "\n")
    parts.append("\n## Montages\n")
    for key, name in metrics["files"].items():
        if key.startswith("montage_"):
            parts.append(f"![{key}]({name})\n")
    return "\n".join(parts)
