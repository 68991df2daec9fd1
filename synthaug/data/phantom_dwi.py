"""Diffusion-weighted sequences of the prostate-MRI phantom: an ADC map and a high-b (b = 1400) image.

Every tissue has an apparent diffusion coefficient (ADC, in 10^-6 mm^2/s, as PI-CAI's ADC maps store it)
and a b = 0 signal ``S0`` (proton-density- and T2-weighted, fat suppressed); the high-b image follows the
mono-exponential model ``S = S0 * exp(-b * ADC)``. Both are painted from the renderer's partial-volume
masks on the T2W grid, blurred and resampled onto a coarser DWI grid (in-plane voxels twice as large, like
an EPI acquisition, over the same field of view), and get noise: Gaussian on the ADC map, Rician on the
high-b image. A lesion's DWI score sets how far its ADC falls, and so how bright it is at high b; benign
mimics differ (BPH nodules: moderately low ADC but low S0, so not bright; cysts: high ADC, dark).

    dwi = acquire_dwi(rendered.masks, [(focus.kind, dwi_score), ...], data, rng, hardness, ("adc", "hbv"))
    dwi.images["adc"], dwi.images["hbv"]  # (X', Y', Z) float32, integer-valued; dwi.affine: their grid
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthaug.config import DataConfig
from synthaug.data.io import centred_affine
from synthaug.data.phantom_anatomy import upsample
from synthaug.errors import InputError

B_VALUE = 1400.0  # s/mm^2, the high-b image (PI-CAI's "hbv" is b = 1400-2000, often computed)
DWI_FACTOR = (2, 2, 1)  # DWI voxel size / T2W voxel size per axis: coarser in-plane, the same slices
PSF_SIGMA = 0.35  # in-plane blur of the EPI read-out, in DWI voxels
_INT16_MAX = 32767

# Per tissue: ADC (10^-6 mm^2/s) and S0 (relative b = 0 signal), in painting order; each jittered +-5% per
# case. "gland" is what is neither PZ nor TZ (central zone, anterior fibromuscular stroma); fat (the
# background) is suppressed, so both maps hold little more than noise there.
TISSUES: dict[str, tuple[float, float]] = {
    "fat": (150.0, 0.02), "muscle": (1400.0, 0.35), "urine": (2900.0, 1.3), "sv": (1800.0, 1.1),
    "rectum": (1150.0, 0.45), "rectal_air": (0.0, 0.0), "gland": (1150.0, 0.6), "pz": (1700.0, 1.0),
    "tz": (1300.0, 0.7),
}
LESION_ADC = {3: (1050.0, 0.7), 4: (850.0, 0.85), 5: (700.0, 0.9)}  # by DWI score: ADC, S0
# Mimics by kind: ADC, S0. Stromal BPH nodules and prostatitis have a low S0 (short T2), so at high b they stay
# near their zone's signal while a lesion of the same ADC would be bright; cysts are free water.
MIMIC_ADC = {"prostatitis": (1300.0, 0.6), "bph_nodule": (1100.0, 0.55), "cyst": (2500.0, 1.3)}
_MIMIC_HARDER = {"prostatitis": 80.0, "bph_nodule": 100.0, "cyst": 0.0}  # ADC drop at hardness 1
_LESION_ZONE = {"pz_lesion": "pz", "tz_lesion": "tz"}
_JITTER = 0.05
_TEXTURE = {"adc": 0.05, "s0": 0.06}  # smooth multiplicative heterogeneity
_TEXTURE_MM = 2.0  # its correlation length


@dataclass(frozen=True)
class DiffusionImages:
    """The DWI sequences of one case on their own grid, and the ADC each focus was given."""

    images: dict[str, np.ndarray]  # "adc" / "hbv" -> (X', Y', Z) float32, >= 0, integer-valued
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm of the DWI grid, centred on the origin like the T2W one
    focus_adc: list[float]  # per focus, in the order given (10^-6 mm^2/s, before texture and noise)


def dwi_geometry(data: DataConfig) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing (mm) of the DWI grid: ``DWI_FACTOR`` coarser, covering the T2W field of view."""
    shape = tuple(max(1, math.ceil(n / f)) for n, f in zip(data.image_shape, DWI_FACTOR))
    spacing = tuple(n * s / m for n, s, m in zip(data.image_shape, data.spacing, shape))
    return shape, spacing  # type: ignore[return-value]


def _focus_values(rng: np.random.Generator, foci: Sequence[tuple[str, int | None]], zone_adc: dict[str, float],
                  hardness: float) -> list[tuple[float, float]]:
    """(ADC, S0) per focus: lesions by DWI score (a little closer to their zone when harder), mimics by kind."""
    out = []
    for kind, dwi_score in foci:
        if kind in _LESION_ZONE:
            adc, s0 = LESION_ADC[int(dwi_score or 3)]
            adc *= rng.uniform(1 - 1.6 * _JITTER, 1 + 1.6 * _JITTER)
            adc += 0.15 * hardness * (zone_adc[_LESION_ZONE[kind]] - adc)
        else:
            adc, s0 = MIMIC_ADC[kind]
            adc *= rng.uniform(1 - 1.6 * _JITTER, 1 + 1.6 * _JITTER)
            adc -= _MIMIC_HARDER[kind] * hardness  # more lesion-like when harder
        out.append((float(adc), s0))
    return out


def _texture(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    """A smooth random field of unit variance on the T2W grid."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32),
                                    [_TEXTURE_MM / s for s in spacing], mode="wrap")
    return field / np.float32(max(field.std(dtype=np.float64), 1e-6))


def _paint_maps(masks: dict[str, np.ndarray], shape, tissues: dict[str, tuple[float, float]],
                focus_values: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free ADC and S0 maps on the T2W grid: tissues back to front, then the foci over them."""
    adc = np.full(shape, tissues["fat"][0], np.float32)
    s0 = np.full(shape, tissues["fat"][1], np.float32)
    gland = masks.get("gland")
    layers = [(name, masks[name]) for name in TISSUES if name != "fat" and name in masks]
    layers += [(i, masks[f"focus{i}"]) for i in range(len(focus_values)) if f"focus{i}" in masks]
    for name, weight in layers:
        if name in ("pz", "tz") and gland is not None:  # the zone's share of the gland in a boundary voxel
            weight = np.clip(weight / np.maximum(gland, 1e-3), 0.0, 1.0)
        value_adc, value_s0 = focus_values[name] if isinstance(name, int) else tissues[name]
        adc += weight * (np.float32(value_adc) - adc)
        s0 += weight * (np.float32(value_s0) - s0)
    return adc, s0


def _to_dwi_grid(a: np.ndarray, shape) -> np.ndarray:
    """Blur with the EPI point-spread function, then linear resampling onto the DWI grid (area-averages
    pairs of T2W voxels when the factor is 2)."""
    sigma = [PSF_SIGMA * f if f > 1 else 0.0 for f in DWI_FACTOR]
    return upsample(ndimage.gaussian_filter(a, sigma, mode="nearest"), shape)


def acquire_dwi(masks: dict[str, np.ndarray], foci: Sequence[tuple[str, int | None]], data: DataConfig,
                rng: np.random.Generator, hardness: float, sequences: Sequence[str] = ("adc", "hbv"),
                ) -> DiffusionImages:
    """ADC map and high-b image of one case from its render ``masks`` (partial volume, T2W grid).

    Args:
        masks: ``phantom_anatomy.render(..., with_masks=True).masks``: tissues and ``focus<i>``.
        foci: ``(Focus.kind, DWI score or None)`` per focus, in the renderer's order (mimics, then lesions).
        rng: the case's own DWI stream; the fixed-size draws come first, the per-focus ones last, so the
            positive and negative version of a case share texture and noise.
        sequences: which of ``"adc"``, ``"hbv"`` to return.
    """
    t2_shape = tuple(data.image_shape)
    tissues = {k: (adc * rng.uniform(1 - _JITTER, 1 + _JITTER), s0) for k, (adc, s0) in TISSUES.items()}
    texture = {k: _texture(rng, t2_shape, data.spacing) for k in _TEXTURE}
    adc_noise = (50.0 + 70.0 * hardness) * rng.uniform(0.8, 1.25)
    hbv_noise = (0.008 + 0.008 * hardness) * rng.uniform(0.8, 1.25)  # of the b = 0 PZ signal
    scale = rng.uniform(0.5, 2.0) * 2000.0  # scanner units
    shape, spacing = dwi_geometry(data)
    n_adc, n1, n2 = rng.standard_normal((3, *shape), dtype=np.float32)
    values = _focus_values(rng, foci, {k: v[0] for k, v in tissues.items()}, hardness)

    adc, s0 = _paint_maps(masks, t2_shape, tissues, values)
    adc *= 1 + np.float32(_TEXTURE["adc"]) * texture["adc"]
    s0 *= 1 + np.float32(_TEXTURE["s0"]) * texture["s0"]
    signal = s0 * np.exp(np.float32(-B_VALUE * 1e-6) * np.maximum(adc, 0))
    images = {}
    for name in sequences:
        if name == "adc":
            out = _to_dwi_grid(adc, shape) + n_adc * np.float32(adc_noise)
        elif name == "hbv":
            b_high, sigma = _to_dwi_grid(signal, shape), np.float32(hbv_noise)
            out = np.sqrt((b_high + n1 * sigma) ** 2 + (n2 * sigma) ** 2) * np.float32(scale)
        else:
            raise InputError(f"unknown diffusion sequence {name!r}", where="data.modalities", fix="use adc and/or hbv")
        images[name] = np.round(out).clip(0, _INT16_MAX).astype(np.float32)  # int16 in the file
    return DiffusionImages(images=images, affine=centred_affine(shape, spacing),
                           focus_adc=[round(v, 1) for v, _ in values])
