"""Preprocessed volumes by path, loaded once per process: ``(C, X, Y, Z)``, one channel per sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from synthaug.config import DataConfig
from synthaug.errors import InputError


class VolumeStore:
    """Preprocessed volumes by path, loaded once per process (the sweep trains many models on the same files).

    ``crop`` (voxels) keeps a centred box of every volume for the classifier (the gland sits in the
    middle of the field of view), real and synthetic alike.
    """

    def __init__(self, data: DataConfig, crop: Sequence[int] | None = None) -> None:
        from monai.transforms import CenterSpatialCrop

        from synthaug.data.transforms import preprocessing_transforms

        self.keys = data.item_keys  # image (T2W), then adc, hbv: a file per key
        self.preprocess = preprocessing_transforms(data)  # the sequences resampled onto T2W, stacked as channels
        self.crop = CenterSpatialCrop(list(crop)) if crop else None
        self.volumes: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, item: dict) -> dict:
        missing = [key for key in self.keys if not item.get(key)]
        if missing:
            who = item.get("case_id") or item.get("image")
            raise InputError(f"case {who!r} has no {missing[0]!r} image, which the data settings' sequences "
                             f"({', '.join(self.keys)}) need", where=str(who),
                             fix="give every case every sequence, or drop that sequence from data.modalities")
        paths = tuple(str(item[key]) for key in self.keys)
        if paths not in self.volumes:
            loaded = self.preprocess(dict(zip(self.keys, paths)))["image"]
            if self.crop is not None:
                loaded = self.crop(loaded)
            self.volumes[paths] = torch.as_tensor(loaded).float().contiguous()
        return {"image": self.volumes[paths], "label": int(item["label"])}
