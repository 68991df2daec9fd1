"""Feature extractors for FID/KID/precision-recall: MedicalNet 3D, RadImageNet 2.5D, seeded offline defaults.

Every extractor has a ``name``, the sha256 of its weights, ``comparable`` (True only for published
weights, whose FIDs can be set beside published numbers) and ``extract(volumes) -> (N, F)``. Inputs are
``(N, 1, X, Y, Z)`` float volumes in [0, 1]; each extractor applies the preprocessing its reference uses.
Weights come only from local files (safetensors, or ``torch.load(weights_only=True)``): never downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from synthaug.data.io import file_sha256
from synthaug.errors import InputError

# 2.5D planes: slices perpendicular to array axis x, y, z (sagittal, coronal, axial for RAS volumes).
PLANES = ("x", "y", "z")
SEEDED_NOTE = "random weights: NOT comparable to published FID/KID"


# ------------------------------------------------------------------------------------------ weights


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a local weights file: safetensors, or a ``torch.save`` state dict read with ``weights_only=True``.

    A ``{"state_dict": {...}}`` wrapper (MedicalNet's layout) is unwrapped. A pickle that needs code to
    load (a whole saved model), anything that is not a name -> tensor mapping, or an unreadable file
    is one ``InputError``.
    """
    path = Path(path).expanduser()
    where = str(path)
    if not path.is_file():
        raise InputError("weights file not found", where=where, fix="check the path (synthaug never downloads weights)")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" or head[:1] == b"\x80":  # torch.save zip archive or a legacy/raw pickle
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError("is a pickle that needs code to load (e.g. a whole saved model), refused", where=where,
                             fix="save only the weights: torch.save(model.state_dict(), path) or "
                                 "safetensors.torch.save_file") from exc
        except Exception as exc:  # truncated archive, bad zip, ...
            raise InputError(f"cannot read the torch weights file ({type(exc).__name__})", where=where,
                             fix="the file is truncated or corrupt; save it again") from exc
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for bad headers and short files
            raise InputError("is neither a safetensors file nor a torch state dict", where=where,
                             fix="give a .safetensors file or a torch.save(state_dict) .pth/.pt file") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise InputError(f"is not a state dict (a mapping of parameter names to tensors; got {type(state).__name__})",
                         where=where, fix="save model.state_dict(), not a model, optimizer or list")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints


def state_dict_sha256(model: nn.Module) -> str:
    """Hex sha256 over a model's parameter names and values (for weights that exist in no file)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_matching(model: nn.Module, state: Mapping[str, Tensor], *, where: str, layout: str) -> None:
    """Load ``state`` into ``model`` strictly; any missing/unexpected key or wrong shape is one ``InputError``.

    Missing ``num_batches_tracked`` buffers (absent from checkpoints of old PyTorch) are not an error.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(items)} {what} (e.g. {', '.join(items[:2])})"
                 for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("wrong shapes", wrong)) if items]
        raise InputError(f"weights do not match {layout}: {'; '.join(parts)}", where=where,
                         fix=f"give the {layout} weights named by the option")
    full = dict(expected)
    full.update(state)
    model.load_state_dict(full, strict=True)


# --------------------------------------------------------------------------------------- extractors


def as_volume_batch(volumes: Tensor | np.ndarray) -> Tensor:
    """``(N, 1, X, Y, Z)`` float32 tensor from a tensor/array of ``(N, X, Y, Z)`` or ``(N, 1, X, Y, Z)``."""
    x = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, Tensor) else volumes, dtype=torch.float32)
    if x.ndim == 4:
        x = x.unsqueeze(1)
    if x.ndim != 5 or x.shape[1] != 1:
        raise InputError(f"expected volumes of shape (N, 1, X, Y, Z), got {tuple(x.shape)}", where="feature extractor",
                         fix="stack single-channel 3D volumes along a new first axis")
    return x


def zscore(x: Tensor) -> Tensor:
    """Per-volume z-score of ``(N, C, ...)``, MedicalNet's intensity normalisation."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(1).view(-1, *([1] * (x.ndim - 1)))
    std = flat.std(1).clamp_min(1e-6).view(-1, *([1] * (x.ndim - 1)))
    return (x - mean) / std


class FeatureExtractor:
    """A frozen network + preprocessing mapping ``(N, 1, X, Y, Z)`` volumes in [0, 1] to ``(N, F)`` features."""

    kind = "3d"

    def __init__(self, model: nn.Module, *, name: str, weights_sha256: str, comparable: bool,
                 device: str | torch.device = "cpu", batch_size: int = 4) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.weights_sha256 = weights_sha256
        self.comparable = comparable
        self.device = torch.device(device)
        self.batch_size = batch_size

    def preprocess(self, x: Tensor) -> Tensor:
        """Reference preprocessing of a ``(B, 1, X, Y, Z)`` batch in [0, 1]."""
        return x

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))

    @torch.no_grad()
    def extract(self, volumes: Tensor | np.ndarray) -> Tensor:
        """``(N, F)`` float32 features (on CPU) of ``(N, 1, X, Y, Z)`` volumes in [0, 1], in batches."""
        x = as_volume_batch(volumes)
        out = [self._forward(x[i:i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out).reshape(x.shape[0], -1)

    def describe(self) -> dict:
        """What every output records about this extractor."""
        return {"name": self.name, "weights_sha256": self.weights_sha256, "comparable": self.comparable,
                "kind": self.kind}


def _medicalnet_resnet(depth: int, dilated: bool) -> nn.Module:
    """MONAI 3D ResNet with MedicalNet's conventions (1 channel, no head, shortcut/bias per depth, conv1 stride 2).

    ``dilated`` reproduces MedicalNet's own network, whose layer3/layer4 keep stride 1 with dilation 2/4
    (it was pre-trained for segmentation); MONAI's ResNet strides there instead. Same weights, other features.
    """
    from monai.networks.nets import resnet
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth)
    model = getattr(resnet, f"resnet{depth}")(spatial_dims=3, n_input_channels=1, conv1_t_stride=2,
                                               shortcut_type=shortcut_type, bias_downsample=bias_downsample,
                                               feed_forward=False)
    if dilated:
        for layer, dilation in ((model.layer3, 2), (model.layer4, 4)):
            for block in layer:
                # the 3x3x3 convs: conv2 of a bottleneck, conv1 and conv2 of a basic block
                convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1, block.conv2]
                for conv in convs:
                    conv.stride, conv.dilation, conv.padding = (1, 1, 1), (dilation,) * 3, (dilation,) * 3
                if isinstance(block.downsample, nn.Sequential):
                    block.downsample[0].stride = (1, 1, 1)
                elif isinstance(block.downsample, functools.partial):  # shortcut "A" (ResNet-18/34)
                    block.downsample = functools.partial(block.downsample.func,
                                                         **{**block.downsample.keywords, "stride": 1})
    return model


class MedicalNet3D(FeatureExtractor):
    """MedicalNet (Med3D) ResNet-50 3D features: per-volume z-score, global average pool -> 2048-d.

    ``weights``: the published ``resnet_50*.pth`` (``{"state_dict": {"module.conv1.weight": ...}}``) or
    the same tensors as safetensors; ``module.`` prefixes are stripped and the ``conv_seg`` head dropped.
    """

    def __init__(self, weights: str | os.PathLike[str], *, depth: int = 50, dilated: bool = True,
                 device: str | torch.device = "cpu", batch_size: int = 2) -> None:
        state = read_state_dict(weights)
        state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
        model = _medicalnet_resnet(depth, dilated)
        load_matching(model, state, where=str(weights), layout=f"MedicalNet ResNet-{depth} (module.conv1.weight, "
                                                               "module.layer1.0.conv1.weight, ...)")
        super().__init__(model, name=f"medicalnet-resnet{depth}-3d", weights_sha256=file_sha256(weights),
                         comparable=True, device=device, batch_size=batch_size)

    def preprocess(self, x: Tensor) -> Tensor:
        return zscore(x)


class SeededResNet3D(FeatureExtractor):
    """Offline default: a MONAI 3D ResNet with seeded random weights; NOT comparable to published FIDs.

    Features are the global averages of every stage (layer1..layer4, 960-d for ResNet-10) of volumes
    taken as given in [0, 1]: random deep features alone, or z-scored inputs, hardly moved with added
    noise in our tests. Compare runs only with the same seed (the name and weights hash say which).
    """

    def __init__(self, *, seed: int = 0, depth: int = 10, device: str | torch.device = "cpu",
                 batch_size: int = 4) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _medicalnet_resnet(depth, dilated=False)
        super().__init__(model, name=f"seeded-resnet{depth}-3d-multistage (seed {seed}, {SEEDED_NOTE})",
                         weights_sha256=state_dict_sha256(model), comparable=False, device=device,
                         batch_size=batch_size)

    def _forward(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.maxpool(m.act(m.bn1(m.conv1(x))))
        pooled = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
            pooled.append(x.mean((2, 3, 4)))  # (B, C_stage)
        return torch.cat(pooled, dim=1)


class ClassifierFeatures(FeatureExtractor):
    """The penultimate features of a classifier trained on real data (the input of its last linear layer).

    Trained to tell the classes apart on the real train split, it sees the gland, zones and lesions that a
    random network ranks below texture; not comparable to published FIDs (the name says which model).
    ``crop``: the centred box the classifier was trained on.
    """

    def __init__(self, net: nn.Module, *, name: str, crop: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        super().__init__(net, name=name, weights_sha256=state_dict_sha256(net), comparable=False, device=device,
                         batch_size=batch_size)
        heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise InputError("the classifier has no linear layer to take features before", where=name,
                             fix="use a classifier whose last layer is nn.Linear")
        self.head = heads[-1]
        self.crop = list(crop) if crop else None

    def _forward(self, x: Tensor) -> Tensor:
        if self.crop is not None:
            from monai.transforms import CenterSpatialCrop

            x = torch.stack([torch.as_tensor(CenterSpatialCrop(self.crop)(v)) for v in x])
        captured: list[Tensor] = []
        handle = self.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]


# ------------------------------------------------------------------------------------- 2.5D (2D nets)


class _KerasBottleneck(nn.Module):
    """Keras ResNet50 (v1) bottleneck: stride on the first 1x1 conv, biased convs, BN eps 1.001e-5."""

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * 4
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv3 = nn.Conv2d(width, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1.001e-5)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), nn.BatchNorm2d(out_ch, eps=1.001e-5))
                           if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class KerasResNet50(nn.Module):
    """RadImageNet's Keras ResNet50 in PyTorch with the community port's key names (Warvito/radimagenet-models):
    ``conv1.{weight,bias}``, ``bn1.*``, ``layer1.0.conv1.{weight,bias}``, ``layer1.0.downsample.{0,1}.*``; no head.
    ``forward`` returns the global-average-pooled ``(B, 2048)`` features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64, eps=1.001e-5)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, layers = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(_KerasBottleneck(in_ch, width, stride if i == 0 else 1))
                in_ch = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


def _torchvision_resnet(depth: int) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    model.fc = nn.Identity()
    return model


class SliceExtractor(FeatureExtractor):
    """2.5D features: a 2D network on every slice along each axis, averaged per volume and plane.

    ``extract_planes`` gives ``{"x": (N, F), "y": (N, F), "z": (N, F)}``; ``extract`` concatenates them.
    Preprocessing (RadImageNet, as MONAI's perceptual loss and FID tutorial do it): the volume is min-max
    scaled to [0, 1], grey is repeated to 3 channels, RGB -> BGR, and the channel means
    ``[0.406, 0.456, 0.485]`` are subtracted. Slices are not resized. ``max_slices`` (per axis) keeps
    that many evenly spaced slices instead of all, to bound CPU time on large volumes.
    """

    kind = "2.5d"
    BGR_MEAN = (0.406, 0.456, 0.485)

    def __init__(self, model: nn.Module, *, name: str, weights_sha256: str, comparable: bool,
                 device: str | torch.device = "cpu", batch_size: int = 64, max_slices: int | None = None) -> None:
        super().__init__(model, name=name, weights_sha256=weights_sha256, comparable=comparable, device=device,
                         batch_size=batch_size)
        self.max_slices = max_slices

    def describe(self) -> dict:
        return {**super().describe(), "max_slices_per_axis": self.max_slices}

    def preprocess(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W)`` slices in [0, 1] -> ``(B, 3, H, W)`` BGR minus mean."""
        x = x.repeat(1, 3, 1, 1)[:, [2, 1, 0]]
        return x - torch.tensor(self.BGR_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)

    @torch.no_grad()
    def extract_planes(self, volumes: Tensor | np.ndarray) -> dict[str, Tensor]:
        """Per-plane ``(N, F)`` features: the mean over the volume's slices perpendicular to each axis."""
        x = as_volume_batch(volumes)
        flat = x.reshape(x.shape[0], -1)
        lo, hi = flat.min(1).values.view(-1, 1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
        out: dict[str, Tensor] = {}
        for axis, plane in enumerate(PLANES):
            n_slices = x.shape[2 + axis]
            keep = (torch.linspace(0, n_slices - 1, self.max_slices).round().long().unique()
                    if self.max_slices and self.max_slices < n_slices else torch.arange(n_slices))
            # (N, 1, X, Y, Z) -> (N * S, 1, H, W): the kept slices perpendicular to this axis
            slices = x.index_select(2 + axis, keep).movedim(2 + axis, 1)
            slices = slices.reshape(x.shape[0] * len(keep), 1, *[s for i, s in enumerate(x.shape[2:]) if i != axis])
            feats = [self._forward(slices[i:i + self.batch_size].to(self.device)).float().cpu()
                     for i in range(0, slices.shape[0], self.batch_size)]
            out[plane] = torch.cat(feats).reshape(x.shape[0], len(keep), -1).mean(1)
        return out

    def extract(self, volumes: Tensor | np.ndarray) -> Tensor:
        planes = self.extract_planes(volumes)
        return torch.cat([planes[p] for p in PLANES], dim=1)


class RadImageNet2D(SliceExtractor):
    """RadImageNet ResNet-50 2.5D features from a local file.

    Accepted layouts: the community PyTorch port of the Keras weights (``RadImageNet-ResNet50_notop.pth``,
    Warvito/radimagenet-models: biased convs, detected by ``conv1.bias``) or a plain torchvision
    ``resnet50`` state dict (``fc.*`` ignored), each as ``.pth`` (weights only) or ``.safetensors``.
    """

    def __init__(self, weights: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                 batch_size: int = 64, max_slices: int | None = None) -> None:
        state = read_state_dict(weights)
        if "conv1.bias" in state:
            model, layout = KerasResNet50(), "RadImageNet ResNet-50 (Keras port: conv1.bias, layer1.0.conv1.bias, ...)"
        else:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            model, layout = _torchvision_resnet(50), "torchvision ResNet-50 (conv1.weight, layer1.0.conv1.weight, ...)"
        load_matching(model, state, where=str(weights), layout=layout)
        super().__init__(model, name="radimagenet-resnet50-2.5d", weights_sha256=file_sha256(weights),
                         comparable=True, device=device, batch_size=batch_size, max_slices=max_slices)


class SeededResNet2D(SliceExtractor):
    """Offline 2.5D default: a torchvision 2D ResNet with seeded random weights; NOT comparable to published FID."""

    def __init__(self, *, seed: int = 0, depth: int = 18, device: str | torch.device = "cpu",
                 batch_size: int = 64, max_slices: int | None = None) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _torchvision_resnet(depth)
        super().__init__(model, name=f"seeded-resnet{depth}-2.5d (seed {seed}, {SEEDED_NOTE})",
                         weights_sha256=state_dict_sha256(model), comparable=False, device=device,
                         batch_size=batch_size, max_slices=max_slices)
