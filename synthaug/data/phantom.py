"""The embedded default dataset: a procedural 3D prostate-MRI phantom (T2W, and ADC + high-b DWI) with reports.

Positive cases carry 1-3 PI-RADS >= 3 lesions; negative cases are PI-RADS 2 (benign mimics: prostatitis,
atypical BPH nodules) or 1. ``phantom.difficulty`` sets lesion contrast and size, noise, texture and how
many and how lesion-like the mimics are. A case is a pure function of ``(phantom.seed, index, positive)``
and the configs; its draws come from separate seeded streams (clinical, anatomy, mimics, lesions,
textures, acquisition, report), so the positive and the negative version of an index share anatomy,
mimics and noise and differ only by the lesions.

``data.modalities`` chooses the sequences: T2W always; ``adc`` and ``hbv`` (biparametric MRI) come from
``synthaug.data.phantom_dwi`` on a coarser DWI grid, drawn from a stream of their own, so a case's T2W
volume, report and labels are the same bytes with or without them.

    manifest = write_phantom_dataset("data/phantom", cfg.data, cfg.phantom)
    # data/phantom/images/phantom_0000.nii.gz ... (+ _adc, _hbv), manifest.jsonl, phantom.json
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthaug.config import DataConfig, PhantomConfig
from synthaug.data import phantom_anatomy as anatomy
from synthaug.data.io import atomic_write_text, centred_affine, make_temp_dir, write_nifti
from synthaug.data.manifest import SPLITS, CaseRecord, write_manifest
from synthaug.data.phantom_anatomy import Anatomy, Focus
from synthaug.data.phantom_dwi import DiffusionImages, acquire_dwi
from synthaug.data.reports import BenignFinding, Findings, Lesion, lesion_pirads, render_report
from synthaug.errors import InputError

FORMAT_VERSION = 1
_STREAMS = ("clinical", "anatomy", "mimics", "lesions", "texture", "acquisition", "report", "withhold", "dwi")
_P_SIGNIFICANT = {3: 0.2, 4: 0.5, 5: 0.8}  # P(csPCa on biopsy | lesion PI-RADS)
_P_SIGNIFICANT_NEGATIVE = 0.03  # cancers MRI misses
_INT16_MAX = 32767


@dataclass(frozen=True)
class PhantomCase:
    """One phantom examination: T2W volume ``(X, Y, Z)``, RAS+ affine, findings, report and label; with
    ``data.modalities`` beyond T2W, also the DWI sequences on their own (coarser) grid."""

    case_id: str
    array: np.ndarray  # (X, Y, Z) float32, >= 0, finite, integer-valued scanner units
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm, volume centred on 0
    findings: Findings
    pirads: int  # overall PI-RADS 1-5
    label: int  # from data.label_rule
    report: str  # "" when withheld
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable ground truth
    sequences: dict[str, np.ndarray] = field(default_factory=dict)  # "adc"/"hbv" -> (X', Y', Z), data.modalities order
    dwi_affine: np.ndarray | None = None  # (4, 4) voxel -> RAS+ mm of ``sequences``


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _case_rng(phantom: PhantomConfig, index: int, stream: str) -> np.random.Generator:
    return _rng(phantom.seed, 0, index, _STREAMS.index(stream))


def phantom_affine(data: DataConfig) -> np.ndarray:
    """RAS+ affine with ``data.spacing`` on the diagonal and the volume centred on the origin."""
    return centred_affine(data.image_shape, data.spacing)


def label_for(rule: str, pirads: int, cspca: bool) -> int:
    """Binary label of a case under ``data.label_rule``."""
    if rule == "pirads3":
        return int(pirads >= 3)
    if rule == "pirads4":
        return int(pirads >= 4)
    return int(bool(cspca))


# ---------------------------------------------------------------- pathology


def _hardness(difficulty: float) -> float:
    """``phantom.difficulty`` -> the hardness every knob follows (squared: finer control at the easy end)."""
    return float(difficulty) ** 2


def _lesion_contrast(hardness: float) -> float:
    """Fractional T2W signal drop below its zone of a lesion before its PI-RADS-category factor."""
    return 0.95 - 0.5 * hardness


def _place(rng: np.random.Generator, an: Anatomy, zone: str, depth: tuple[float, float],
           taken: list[tuple[np.ndarray, float]], radius: float) -> np.ndarray:
    """A random patient-frame point in ``zone`` with capsule distance in ``depth`` (mm, < 0 inside),
    clear of the foci in ``taken``; the depth rule is relaxed if the zone is too thin."""
    a, b, c = an.gland
    for relax in (1.0, 0.6, 0.3, 0.0):
        pts = rng.uniform(-1, 1, (512, 3)) * np.array([a * (1 + an.taper), b, c])
        zones, d = anatomy.zone_at(an, pts)
        ok = (zones == anatomy.ZONES.index(zone)) & (d <= depth[1] * relax) & (d >= depth[0])
        if zone == "PZ":  # most peripheral-zone cancers are posterior; few sit in the anterior horns
            ok &= (pts[:, 1] < 0) | (rng.random(len(pts)) < 0.3)
        for p in pts[ok]:
            if all(np.linalg.norm(p - q) > 0.8 * (radius + r) + 2 for q, r in taken):
                return p
    inside = pts[zones > 0]
    return inside[0] if len(inside) else np.zeros(3)


def _where(an: Anatomy, p: np.ndarray, zone: str) -> dict[str, Any]:
    """Side, level and sector words of a patient-frame point, as a radiologist would name them."""
    ux, uy, uz, _, _ = (float(t[0]) for t in anatomy.gland_frame(an, *(np.array([v], np.float32) for v in p)))
    side = "right" if p[0] > 2.0 else "left" if p[0] < -2.0 else "midline"  # +x is the patient's right
    level = "base" if uz > 1 / 3 else "apex" if uz < -1 / 3 else "mid"
    if zone == "PZ":
        sector = "anterior" if uy > 0.05 else "posteromedial" if abs(ux) < 0.35 else "posterolateral"
    else:
        sector = "anterior" if uy > an.tz_center[1] else "posterior"
    return {"side": side, "level": level, "sector": sector}


def _tangent_yaw(p: np.ndarray) -> float:
    """Yaw that lays a focus's long axis along the capsule (the PZ crescent) at ``p``."""
    return math.atan2(p[1], p[0]) + math.pi / 2


def _prostatitis(rng: np.random.Generator, an: Anatomy, hardness: float) -> Focus:
    """A band/wedge of mild hypointensity reaching in from the capsule of the peripheral zone."""
    angle = float(rng.choice([-1, 1]) * rng.uniform(math.radians(15), math.radians(110)))
    p = anatomy.boundary_point(an, angle, float(rng.uniform(-0.6, 0.45) * an.gland[2]), an.capsule + 0.5)
    contrast = _lesion_contrast(hardness) * (0.35 + 0.55 * hardness) * rng.uniform(0.8, 1.2)
    radii = (rng.uniform(6, 14), rng.uniform(2.0, 5.5), rng.uniform(3, 8))  # depth, half-width, half-height
    return Focus("prostatitis", tuple(p.tolist()), radii, yaw=math.atan2(-p[1], -p[0]), contrast=contrast,
                 edge=rng.uniform(1.5, 3.0), texture=0.25)


def _bph_nodule(rng: np.random.Generator, an: Anatomy, hardness: float, taken) -> Focus:
    """A prominent stromal BPH nodule: dark like a TZ cancer, but encapsulated (less so when harder)."""
    r = rng.uniform(4.0, 9.0)
    p = _place(rng, an, "TZ", (-60.0, -r), taken, r)
    return Focus("bph_nodule", tuple(p.tolist()), (r, r * rng.uniform(0.8, 1.0), r), yaw=rng.uniform(0, math.pi),
                 contrast=rng.uniform(0.2, 0.4) * (0.7 + 0.6 * hardness), edge=0.8 + 1.5 * hardness,
                 texture=0.05, rim=(1 - 0.75 * hardness) * rng.uniform(0.7, 1.0))


def _cyst(rng: np.random.Generator, an: Anatomy, taken) -> Focus:
    r = rng.uniform(1.5, 4.0)
    p = _place(rng, an, "PZ", (-60.0, -r), taken, r)
    return Focus("cyst", tuple(p.tolist()), (r, r, r), contrast=rng.uniform(0.0, 0.1), edge=0.5, texture=0.0)


def _draw_mimics(rng: np.random.Generator, an: Anatomy, hardness: float, taken) -> list[tuple[dict, Focus]]:
    """Benign confounders, more of them when harder: PZ prostatitis, atypical stromal BPH nodules, cysts."""
    out = []
    for _ in range(int(rng.poisson(2.0 * math.sqrt(hardness)))):  # = 2 x difficulty
        kind = str(rng.choice(["prostatitis", "bph_nodule", "cyst"], p=[0.5, 0.4, 0.1]))
        if kind == "prostatitis":
            focus, zone = _prostatitis(rng, an, hardness), "PZ"
            size = max(focus.radii[0], 2 * focus.radii[1], 2 * focus.radii[2])
        else:
            focus = _bph_nodule(rng, an, hardness, taken) if kind == "bph_nodule" else _cyst(rng, an, taken)
            zone, size = ("TZ" if kind == "bph_nodule" else "PZ"), 2 * focus.radii[0]
        taken.append((np.asarray(focus.center), size / 2))
        where = _where(an, np.asarray(focus.center), zone)
        out.append(({"kind": kind, "zone": zone, "side": where["side"], "level": where["level"],
                     "size_mm": round(float(size), 1)}, focus))
    return out


def _scores(rng: np.random.Generator, zone: str, size: float, epe: bool) -> tuple[int, int]:
    """T2W and DWI scores: size >= 15 mm or EPE -> 5; else circumscribed (4) or equivocal (3)."""
    t2 = 5 if size >= 15 or epe else (4 if rng.random() < 0.55 else 3)
    if t2 > 3:
        return t2, t2
    dwi = rng.choice([3, 4], p=[0.65, 0.35]) if zone == "PZ" else rng.choice([3, 4, 5], p=[0.5, 0.35, 0.15])
    return t2, int(dwi)


def _draw_lesions(rng: np.random.Generator, an: Anatomy, hardness: float, taken) -> list[tuple[dict, Focus]]:
    """1-3 focal hypointense lesions of PI-RADS >= 3: PZ round/ovoid, TZ lenticular and ill-defined."""
    out = []
    u = rng.random()
    for i in range(1 + int(u < 0.35) + int(u < 0.10)):
        zone = "PZ" if rng.random() < 0.7 else "TZ"
        # Large and conspicuous at the easy end (learnable at the demo's 2 mm voxels), small when hard.
        median = 16.0 - 7.0 * hardness  # mm; secondary lesions are smaller
        smallest = 8.0 - 3.0 * hardness
        size = float(np.clip(rng.lognormal(math.log(median), 0.35) * (0.8 if i else 1.0), smallest, 25.0))
        epe = size >= 10 and rng.random() < 0.12
        t2, dwi = _scores(rng, zone, size, epe)
        pirads = lesion_pirads(zone, t2, dwi)
        r = size / 2
        p = _place(rng, an, zone, (-r * 0.7, -r * 0.15) if epe else (-60.0, -min(0.6 * r, 4.0)), taken, r)
        taken.append((p, r))
        factor = {3: 0.6, 4: 0.85, 5: 0.95}[t2]
        factor += (1.0 - factor) * 0.6 * (1.0 - hardness)  # equivocal lesions stay visible when easy
        contrast = min(_lesion_contrast(hardness) * factor * rng.uniform(0.85, 1.15), 0.85 - 0.3 * hardness)
        if zone == "TZ":  # the TZ is already dark: a TZ cancer sits near muscle signal, not black
            contrast *= 0.6 + 0.3 * (1.0 - hardness)
        texture = 0.15 if t2 == 3 else 0.03  # equivocal lesions are heterogeneous
        if zone == "PZ":  # round/ovoid, circumscribed unless equivocal
            radii = (r, r * rng.uniform(0.6, 0.9), r * rng.uniform(0.7, 1.0))
            edge = min(2.0 + 2.0 * hardness, 0.3 * size) if t2 == 3 else 0.6 + 1.2 * hardness
            focus = Focus("pz_lesion", tuple(p.tolist()), radii, _tangent_yaw(p), contrast, edge, texture, epe=epe)
        else:  # lenticular, ill-defined, homogeneous: "erased charcoal"
            radii = (r, r * rng.uniform(0.5, 0.7), r * rng.uniform(0.7, 0.9))
            edge = min(1.5 + 2.0 * hardness, 0.3 * size)
            focus = Focus("tz_lesion", tuple(p.tolist()), radii, _tangent_yaw(p), contrast, edge, texture, epe=epe)
        significant = bool(rng.random() < _P_SIGNIFICANT[pirads])
        lesion = {"pirads": pirads, "zone": zone, **_where(an, p, zone), "size_mm": round(size, 1),
                  "t2_score": t2, "dwi_score": dwi, "epe": epe, "significant": significant,
                  "contrast": round(float(contrast), 3)}
        out.append((lesion, focus))
    return out


# ---------------------------------------------------------------- acquisition


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Run torchio on one intra-op thread (small volumes: faster, no oversubscription) and keep the
    global torch generator untouched (``Transform.__call__`` draws from it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def _acquire(image: np.ndarray, affine: np.ndarray, rng: np.random.Generator, hardness: float,
             artifact_probability: float) -> tuple[np.ndarray, list[str]]:
    """Bias field, optional motion/ghosting (torchio, seeded parameters), Rician noise, scanner scale."""
    import torchio as tio
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField
    from torchio.transforms.augmentation.intensity.random_ghosting import Ghosting
    from torchio.transforms.augmentation.intensity.random_motion import Motion

    amp = {0: 0.0, 1: 0.15, 2: 0.08, 3: 0.04}  # per polynomial order: a smooth +-20-40% shading
    orders = [i + j + k for i in range(4) for j in range(4 - i) for k in range(4 - i - j)]
    bias = [float(rng.uniform(-1, 1) * amp[o] * (0.6 + 0.8 * hardness)) for o in orders]
    sigma = (0.025 + 0.05 * hardness) * rng.uniform(0.8, 1.25)
    scale = rng.uniform(0.5, 2.0) * 1000.0
    happens, which = rng.random() < artifact_probability, rng.random()
    n_moves = int(rng.integers(1, 3))
    motion = {"degrees": rng.uniform(-2.0, 2.0, (n_moves, 3)), "translation": rng.uniform(-2.5, 2.5, (n_moves, 3)),
              "times": np.sort(rng.uniform(0.15, 0.9, n_moves)), "image_interpolation": "linear"}
    ghosting = {"num_ghosts": int(rng.integers(2, 6)), "axis": int(rng.integers(0, 2)),
                "intensity": float(rng.uniform(0.3, 0.8)), "restore": float(rng.uniform(0.02, 0.06))}
    artifacts = [] if not happens else ["motion"] if which < 0.55 else ["ghosting"] if which < 0.9 else [
        "motion", "ghosting"]

    with _quiet_torch():
        # The bias field is a smooth polynomial: evaluate it on a coarse grid and upsample (much faster).
        coarse = tuple(max(4, n // 4) for n in image.shape)
        ones = tio.ScalarImage(tensor=torch.ones((1, *coarse)), affine=affine)
        field = BiasField(coefficients=bias, order=3)(ones).data[0].numpy()
        signal = image * anatomy.upsample(field, image.shape)
        subject = tio.Subject(t2=tio.ScalarImage(tensor=torch.from_numpy(signal[None]), affine=affine))
        for transform in ([Motion(**motion)] if "motion" in artifacts else []) + (
                [Ghosting(**ghosting)] if "ghosting" in artifacts else []):
            subject = transform(subject)
    signal = subject["t2"].data[0].numpy().astype(np.float32)
    n1, n2 = rng.standard_normal((2, *signal.shape), dtype=np.float32) * np.float32(sigma)
    out = np.sqrt((signal + n1) ** 2 + n2**2) * np.float32(scale)
    # Integer scanner units, as an MR series stores them (and as the NIfTI file does: int16).
    return np.round(np.nan_to_num(out, nan=0.0, posinf=0.0)).clip(0, _INT16_MAX).astype(np.float32), artifacts


# ---------------------------------------------------------------- one case


def _world(an: Anatomy, p) -> list[float]:
    return [round(float(v), 2) for v in np.asarray(an.rotation) @ np.asarray(p, float) + np.asarray(an.offset)]


def _clinical(rng: np.random.Generator, positive: bool) -> tuple[int, float, float]:
    age = int(rng.integers(50, 81))
    median = 22.0 + 0.9 * (age - 50)
    volume = 0.0
    for _ in range(100):
        volume = float(rng.lognormal(math.log(median), 0.3))
        if 20.0 <= volume <= 80.0:
            break
    volume = float(np.clip(volume, 20.0, 80.0))
    psa = math.exp(math.log(3.5 + 0.06 * volume) + 0.45 * rng.standard_normal()) * (1.7 if positive else 1.0)
    return age, volume, round(float(np.clip(psa, 0.4, 60.0)), 2)


@dataclass(frozen=True)
class _Plan:
    """Everything drawn for one case before rendering."""

    age: int
    psa: float
    anatomy: Anatomy
    mimics: list  # [(benign finding dict, Focus)]
    lesions: list  # [(lesion dict, Focus)]

    @property
    def foci(self) -> tuple[Focus, ...]:
        return tuple(f for _, f in self.mimics + self.lesions)


def _plan(index: int, phantom: PhantomConfig, positive: bool) -> _Plan:
    d = _hardness(phantom.difficulty)
    age, target_volume, psa = _clinical(_case_rng(phantom, index, "clinical"), positive)
    an = anatomy.draw_anatomy(_case_rng(phantom, index, "anatomy"), target_volume, d)
    taken: list = []
    mimics = _draw_mimics(_case_rng(phantom, index, "mimics"), an, d, taken)
    lesions = _draw_lesions(_case_rng(phantom, index, "lesions"), an, d, taken) if positive else []
    return _Plan(age, psa, an, mimics, lesions)


def make_phantom_case(index: int, data: DataConfig, phantom: PhantomConfig, positive: bool,
                      *, empty_report: bool | None = None) -> PhantomCase:
    """Generate case ``index``; pure: the same arguments give the same bytes.

    ``positive`` draws 1-3 lesions of PI-RADS >= 3; otherwise the case is PI-RADS 2 (benign mimics) or 1.
    ``empty_report`` None withholds the report with probability ``data.reports.empty_fraction``
    (``write_phantom_dataset`` passes an exact, label-stratified choice instead).
    """
    plan = _plan(index, phantom, positive)
    an, mimics, lesions, age, psa = plan.anatomy, plan.mimics, plan.lesions, plan.age, plan.psa
    dwi_names = [m for m in data.modalities if m != "t2w"]
    rendered = anatomy.render(an, plan.foci, data.image_shape, data.spacing, _case_rng(phantom, index, "texture"),
                              with_masks=bool(dwi_names))
    affine = phantom_affine(data)
    array, artifacts = _acquire(rendered.image, affine, _case_rng(phantom, index, "acquisition"),
                                _hardness(phantom.difficulty), phantom.artifact_probability)
    dwi = _diffusion(index, plan, rendered.masks, data, phantom, dwi_names) if dwi_names else None

    volume = round(anatomy.gland_volume_ml(an), 1)
    benign = [m for m, _ in mimics]
    if lesions:
        overall = max(les["pirads"] for les, _ in lesions)
    else:
        overall = 2 if any(m["kind"] != "cyst" for m in benign) else 1
    lesion_keys = ("pirads", "zone", "side", "level", "sector", "size_mm", "t2_score", "dwi_score", "epe")
    findings = Findings(
        age=age, psa=psa, prostate_volume_ml=volume,
        lesions=tuple(Lesion(**{k: les[k] for k in lesion_keys}) for les, _ in lesions),
        benign=tuple(BenignFinding(**m) for m in benign), overall_pirads=overall,
    )
    cspca = any(les["significant"] for les, _ in lesions) if lesions else bool(
        _case_rng(phantom, index, "lesions").random() < _P_SIGNIFICANT_NEGATIVE)
    report = render_report(findings, _case_rng(phantom, index, "report"), varied=data.reports.varied_phrasing)
    if empty_report is None:
        empty_report = bool(_case_rng(phantom, index, "withhold").random() < data.reports.empty_fraction)
    meta = {
        "generator": "synthaug.phantom", "phantom_seed": phantom.seed, "index": index, "positive": positive,
        "difficulty": phantom.difficulty, "cspca": cspca, "age": age, "psa": psa, "prostate_volume_ml": volume,
        "lesions": [{**les, "center_mm": _world(an, f.center)} for les, f in lesions],
        "benign": [{**m, "center_mm": _world(an, f.center)} for m, f in mimics],
        "artifacts": artifacts, "gland_center_mm": _world(an, (0, 0, 0)), "report_withheld": empty_report,
    }
    if dwi is not None:  # the ADC each focus was given (mimics first, as rendered)
        for finding, adc in zip(meta["benign"] + meta["lesions"], dwi.focus_adc):
            finding["adc"] = adc
    return PhantomCase(
        case_id=f"phantom_{index:04d}", array=array, affine=affine, findings=findings, pirads=overall,
        label=label_for(data.label_rule, overall, cspca), report="" if empty_report else report, meta=meta,
        sequences=dwi.images if dwi is not None else {}, dwi_affine=dwi.affine if dwi is not None else None,
    )


def _diffusion(index: int, plan: _Plan, masks: dict[str, np.ndarray], data: DataConfig, phantom: PhantomConfig,
               names: list[str]) -> DiffusionImages:
    """The case's DWI sequences ``names`` from its render masks, on the DWI stream."""
    foci = [(f.kind, None) for _, f in plan.mimics] + [(f.kind, les["dwi_score"]) for les, f in plan.lesions]
    return acquire_dwi(masks, foci, data, _case_rng(phantom, index, "dwi"), _hardness(phantom.difficulty), names)


# ---------------------------------------------------------------- the dataset


def _positive_flags(phantom: PhantomConfig) -> np.ndarray:
    n = phantom.n_cases
    flags = np.zeros(n, dtype=bool)
    flags[_rng(phantom.seed, 1, 0).permutation(n)[: int(round(phantom.prevalence * n))]] = True
    return flags


def _split_counts(n: int, fractions) -> list[int]:
    """Largest-remainder rounding of ``n * fractions``."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _stratified_order(labels: list[int], rng: np.random.Generator) -> list[int]:
    """Case indices shuffled within each label and interleaved in proportion, so any leading slice
    holds each label in (almost exactly) its overall share."""
    labels_arr = np.asarray(labels)
    position = np.zeros(len(labels))
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        position[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((np.arange(len(labels)), position)).tolist()


def _splits(labels: list[int], phantom: PhantomConfig) -> list[str]:
    """Seeded train/val/test split: exact overall counts, stratified by label."""
    bounds = np.cumsum(_split_counts(len(labels), phantom.split_fractions))
    out = [""] * len(labels)
    for rank, i in enumerate(_stratified_order(labels, _rng(phantom.seed, 1, 1))):
        out[i] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
    return out


def _withheld(labels: list[int], fraction: float, phantom: PhantomConfig) -> list[bool]:
    """Seeded choice of the cases whose report is withheld: round(fraction * n), stratified by label."""
    out = [False] * len(labels)
    for i in _stratified_order(labels, _rng(phantom.seed, 1, 2))[: int(round(fraction * len(labels)))]:
        out[i] = True
    return out


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output path exists and is not a folder", where=str(out_dir), fix="choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError("output folder exists and is not empty", where=str(out_dir),
                         fix="pass overwrite=True (--overwrite) to replace it, or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _swap_in(new: Path, out_dir: Path) -> None:
    """Move the finished ``new`` folder to ``out_dir``; an old ``out_dir`` is removed only afterwards."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
    os.replace(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_images(case: PhantomCase, folder: Path) -> str | dict[str, str]:
    """Write the case's volumes as int16 NIfTI (exact: integer-valued); the manifest's ``image`` field."""
    paths = {"t2w": f"images/{case.case_id}.nii.gz"}
    write_nifti(case.array, case.affine, folder / paths["t2w"], dtype=np.int16)
    for name, array in case.sequences.items():
        paths[name] = f"images/{case.case_id}_{name}.nii.gz"
        write_nifti(array, case.dwi_affine, folder / paths[name], dtype=np.int16)
    return paths if case.sequences else paths["t2w"]


def write_phantom_dataset(out_dir: str | os.PathLike[str], data: DataConfig, phantom: PhantomConfig,
                          progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> Path:
    """Write ``images/<case_id>.nii.gz``, ``manifest.jsonl`` and ``phantom.json`` into ``out_dir``.

    With ``data.modalities`` beyond T2W, also ``images/<case_id>_adc.nii.gz`` / ``_hbv.nii.gz`` on the DWI
    grid, and each record's ``image`` maps modality -> path (as a PI-CAI manifest does). The dataset is built
    in a temporary sibling folder and renamed into place when complete; an existing, non-empty ``out_dir``
    raises ``InputError`` unless ``overwrite``. Returns the manifest path.
    """
    from synthaug import __version__

    out_dir = Path(out_dir)
    _prepare(out_dir, overwrite)
    n = phantom.n_cases
    positive = _positive_flags(phantom)
    tmp = make_temp_dir(out_dir)
    try:
        cases = []
        for i in range(n):
            case = make_phantom_case(i, data, phantom, bool(positive[i]), empty_report=False)
            cases.append((case.case_id, _write_images(case, tmp), case.label, case.pirads, case.report, case.meta))
            if progress is not None:
                progress(i + 1, n)
        labels = [c[2] for c in cases]
        splits = _splits(labels, phantom)
        withheld = _withheld(labels, data.reports.empty_fraction, phantom)
        records = [
            CaseRecord(case_id=cid, image=image, label=label, pirads=pirads, report="" if empty else report,
                       spacing=tuple(float(s) for s in data.spacing), split=split,
                       meta={**meta, "report_withheld": empty})
            for (cid, image, label, pirads, report, meta), split, empty in zip(cases, splits, withheld)
        ]
        manifest = write_manifest(records, tmp / "manifest.jsonl")
        info = {"format_version": FORMAT_VERSION, "synthaug_version": __version__,
                "data": data.model_dump(mode="json"), "phantom": phantom.model_dump(mode="json")}
        atomic_write_text(tmp / "phantom.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / manifest.name
