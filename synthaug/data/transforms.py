"""MONAI preprocessing chains: a manifest item -> model-ready tensors on one fixed grid.

    preprocess = preprocessing_transforms(cfg.data)
    item = preprocess(manifest.items("train")[0])
    item["image"]  # (C, X, Y, Z) float32 in [0, 1], RAS, voxel size cfg.data.spacing; C = len(modalities)

T2W is reoriented to RAS and resampled to ``data.spacing``; ADC and HBV are resampled onto that T2W
grid (not each on its own), so the channels stay voxel-aligned. Intensities go to [0, 1] over the cropped
box, or over the whole resampled volume before the crop (``data.normalisation.region``). Other item keys pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from synthaug.config import MODALITY_KEYS, DataConfig
from synthaug.data.io import image_format, read_volume
from synthaug.errors import ConfigError, ImageError, SynthaugError


class VolumeReader(ImageReader):
    """MONAI image reader for NIfTI and ITK files (MHA/MHD/NRRD) through ``synthaug.data.io.read_volume``.

    MONAI's ``ITKReader`` needs the ``itk`` package; this one uses SimpleITK and raises ``ImageError``
    (naming the file) for a missing, unreadable, non-3D or NaN/Inf volume.
    """

    def verify_suffix(self, filename: Any) -> bool:
        try:
            return all(image_format(f) for f in ensure_tuple(filename))
        except ImageError:
            return False

    def read(self, data: Any, **kwargs: Any) -> tuple[str, ...]:
        names = tuple(str(f) for f in ensure_tuple(data))
        for name in names:
            image_format(name)  # unsupported suffix: LoadImage then tries its other readers
        return names  # voxels are read in get_data, where LoadImage lets our ImageError through

    def get_data(self, img: tuple[str, ...]) -> tuple[np.ndarray, dict]:
        if len(img) != 1:
            raise ImageError(f"expected one file per item key, got {len(img)}", where=str(img[0]),
                             fix="give one path per modality")
        volume = read_volume(img[0])
        meta = {
            MetaKeys.AFFINE: volume.affine,
            MetaKeys.ORIGINAL_AFFINE: volume.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.array.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel axis: EnsureChannelFirst adds one
            MetaKeys.SPACE: SpaceKeys.RAS,
        }
        return volume.array, meta


class Preprocessing(Compose):
    """A ``Compose`` that re-raises synthaug's typed errors, which MONAI wraps in ``RuntimeError``, naming the case."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as exc:
            err = exc.__cause__
            while err is not None and not isinstance(err, SynthaugError):
                err = err.__cause__
            if err is None:
                raise
            case = input_.get("case_id") if isinstance(input_, dict) else None
            what = f"case {case!r}: {err.what}" if case else err.what
            raise type(err)(what, where=err.where, fix=err.fix) from exc


def above_background(img: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: voxels above 10% of the 1st..99.5th percentile range (air and noise fall below)."""
    lo, hi = (float(v) for v in percentile(img, [1.0, 99.5]))
    mask = img > lo + 0.1 * (hi - lo)
    return mask if mask.any() else torch.ones_like(mask)  # a blank image: fall back to the whole field of view


def _keys(data: DataConfig, keys: Sequence[str] | None) -> list[str]:
    keys = data.item_keys if keys is None else list(keys)
    if "image" not in keys or not set(keys) <= set(MODALITY_KEYS.values()) or len(set(keys)) != len(keys):
        raise ConfigError(f"preprocessing keys {keys} are not valid", where="keys",
                          fix="use 'image' (T2W) plus optionally 'adc' and 'hbv', each once")
    return keys


def load_transforms(data: DataConfig, keys: Sequence[str] | None = None) -> list[MapTransform]:
    """Read each key's file (NIfTI or MHA) as a channel-first MetaTensor in RAS orientation."""
    keys = _keys(data, keys)
    return [
        LoadImaged(keys, reader=VolumeReader(), image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=None),
    ]


def _normalisation(keys: list[str], data: DataConfig) -> list[MapTransform]:
    """Each key to [0, 1]: ADC through its fixed window, T2W and HBV through their percentiles, clipped."""
    norm, steps = data.normalisation, []
    for key in keys:
        if key == "adc":  # quantitative map: a fixed window keeps values comparable between cases
            low, high = norm.adc_window
            steps.append(ScaleIntensityRanged(key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
        else:
            low, high = norm.hbv_percentiles if key == "hbv" else norm.t2w_percentiles
            steps.append(ScaleIntensityRangePercentilesd(key, lower=low, upper=high, b_min=0.0, b_max=1.0,
                                                         clip=True, relative=False, channel_wise=True))
    return steps


def preprocessing_transforms(data: DataConfig, keys: Sequence[str] | None = None, concat: bool = True) -> Compose:
    """Load, orient, resample, crop/pad and normalise a manifest item (see the module docstring).

    Args:
        data: geometry (``image_shape``, ``spacing``, ``crop``), ``modalities`` and ``normalisation``.
        keys: item keys to process; default ``"image"`` (T2W) then ``"adc"``/``"hbv"`` in ``data.modalities`` order.
        concat: stack the keys, in order, into ``"image"`` ``(C, X, Y, Z)`` and drop the others; else
            every key stays a ``(1, X, Y, Z)`` tensor of its own.
    """
    keys = _keys(data, keys)
    others = [k for k in keys if k != "image"]
    shape = list(data.image_shape)
    norm = data.normalisation
    steps: list[MapTransform] = [*load_transforms(data, keys), Spacingd("image", pixdim=data.spacing, mode="bilinear")]
    if others:
        steps.append(ResampleToMatchd(others, key_dst="image", mode="bilinear", padding_mode="zeros"))
    normalise = _normalisation(keys, data)
    if norm.region == "field_of_view":  # percentiles over the whole resampled volume, then the crop
        steps += normalise
    if data.crop == "foreground":
        # The margin makes the box at least image_shape, so the crop below is centred on the foreground
        # and filled with real surrounding tissue rather than zero padding.
        steps.append(CropForegroundd(keys, source_key="image", select_fn=above_background, allow_smaller=False,
                                     margin=[(s + 1) // 2 for s in shape], start_coord_key=None, end_coord_key=None))
    steps.append(ResizeWithPadOrCropd(keys, spatial_size=shape))
    if norm.region == "image":
        steps += normalise
    if concat and others:
        steps += [ConcatItemsd(keys, name="image"), DeleteItemsd(others)]
    steps.append(EnsureTyped("image" if concat else keys, dtype=torch.float32))
    return Preprocessing(steps)
