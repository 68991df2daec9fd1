"""Preprocessed volumes by path, loaded once per process."""

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

        if list(data.modalities) != ["t2w"]:  # a synthetic item is one multi-channel file, a real one a file per key
            raise InputError(f"the sweep and quality metrics take T2W-only data, not {'+'.join(data.modalities)}",
                             where="data.modalities", fix="train the generator with data.modalities=[t2w]")

        from synthaug.data.transforms import preprocessing_transforms

        self.preprocess = preprocessing_transforms(data)
        self.crop = CenterSpatialCrop(list(crop)) if crop else None
        self.volumes: dict[str, torch.Tensor] = {}

    def __call__(self, item: dict) -> dict:
        path = str(item["image"])
        if path not in self.volumes:
            loaded = self.preprocess({"image": path})["image"]
            if self.crop is not None:
                loaded = self.crop(loaded)
            self.volumes[path] = torch.as_tensor(loaded).float().contiguous()
        return {"image": self.volumes[path], "label": int(item["label"])}
