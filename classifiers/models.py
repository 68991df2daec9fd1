"""Model registry: ``build_model("efficientnet-b0", in_channels=1, num_classes=2)`` (timm-style).

Every model maps ``(B, C, *spatial)`` to class logits ``(B, num_classes)``; ``spatial`` is ``(X, Y, Z)``
for ``spatial_dims=3``. Weights are random unless ``pretrained`` names a local file: nothing downloads.

    list_models()  # ['densenet121', 'efficientnet-b0', 'resnet10', 'resnet18', 'resnet18-2.5d', 'tiny-cnn']
    model = build_model("tiny-cnn", in_channels=1, num_classes=2, seed=0)
    model = build_model("resnet18", 1, 2, pretrained="weights/resnet18.safetensors")

Register your own with ``@register_model("name")`` on a function ``(in_channels, num_classes, spatial_dims,
**kwargs) -> nn.Module``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from classifiers.errors import ClassifierError

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: make ``fn(in_channels, num_classes, spatial_dims, **kwargs)`` buildable as ``name``."""

    def add(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY:
            raise ClassifierError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 3,
                pretrained: str | os.PathLike[str] | None = None, *, seed: int | None = None,
                pretrained_strict: bool = True, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        in_channels: image channels (modalities).
        num_classes: logits per case; 2 (softmax) or 1 (sigmoid) for the binary task ``fit`` trains.
        spatial_dims: 3 for volumes; the MONAI models and ``tiny-cnn`` also take 2.
        pretrained: a local ``.safetensors`` file (or a ``torch.save``d state dict, read with
            ``weights_only=True``) holding this model's state dict; never a download.
        seed: seed the weight initialisation without touching the global torch generator.
        pretrained_strict: False loads the tensors whose name and shape match and leaves the rest
            (e.g. a classification head of another size) initialised.
        kwargs: passed to the model's constructor.
    """
    if name not in _REGISTRY:
        raise ClassifierError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if num_classes < 1 or in_channels < 1:
        raise ClassifierError(f"need in_channels >= 1 and num_classes >= 1, got {in_channels} and {num_classes}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _REGISTRY[name](in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                                **kwargs)
    if pretrained is not None:
        load_weights(model, pretrained, strict=pretrained_strict)
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or a ``torch.save``d (state) dict loaded with
    ``weights_only=True``; a ``{"state_dict": ...}``/``{"model": ...}`` wrapper and DDP's ``module.``
    prefix are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: pretrained weights file not found; pass a local file path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the readers raise many types for a corrupt or foreign file
        raise ClassifierError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); expected a "
                              "safetensors file or a torch.save'd state dict") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load a local weights file into ``model`` (see ``read_state_dict``); mismatches raise ``ClassifierError``."""
    state = read_state_dict(path)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (shape_mismatch or missing or unexpected):
        raise ClassifierError(
            f"{path}: weights do not fit this model: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(shape_mismatch)} of another shape "
            f"(e.g. {shape_mismatch[:2]}); pass pretrained_strict=False to load only what matches")
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ClassifierError(f"{path}: no tensor in the file matches this model's parameters")
    model.load_state_dict(matching, strict=False)
    return model


# ---------------------------------------------------------------- MONAI 3D models


@register_model("efficientnet-b0")
def efficientnet_b0(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """MONAI ``EfficientNetBN`` B0, the paper's downstream classifier (5.3M parameters at 3D)."""
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels,
                          num_classes=num_classes, **kwargs)


def _monai_resnet(depth: int, in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    from monai.networks.nets import resnet

    return getattr(resnet, f"resnet{depth}")(pretrained=False, spatial_dims=spatial_dims,
                                             n_input_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("resnet10")
def resnet10(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """MONAI 3D ResNet-10 (MedicalNet layout; load MedicalNet weights with ``pretrained_strict=False``)."""
    return _monai_resnet(10, in_channels, num_classes, spatial_dims, **kwargs)


@register_model("resnet18")
def resnet18(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """MONAI 3D ResNet-18."""
    return _monai_resnet(18, in_channels, num_classes, spatial_dims, **kwargs)


@register_model("densenet121")
def densenet121(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """MONAI DenseNet-121."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)


class TinyCNN(nn.Module):
    """A small CNN that trains in seconds on a CPU: conv-BN-ReLU blocks that halve the grid, global
    pooling, dropout and a linear head. ``pool="avgmax"`` concatenates average and max pooling: the max
    keeps a small focal finding from being averaged away over the volume."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 channels: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.2, pool: str = "avgmax") -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        blocks, c_in = [], in_channels
        for c_out in channels:
            blocks.append(Convolution(spatial_dims, c_in, c_out, strides=2, kernel_size=3, norm="batch", act="relu"))
            blocks.append(Convolution(spatial_dims, c_out, c_out, kernel_size=3, norm="batch", act="relu"))
            c_in = c_out
        if pool not in ("avg", "max", "avgmax"):
            raise ClassifierError(f"pool must be 'avg', 'max' or 'avgmax', got {pool!r}")
        self.pool = pool
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * (2 if pool == "avgmax" else 1), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(2)  # (B, C, N)
        pooled = {"avg": [f.mean(-1)], "max": [f.amax(-1)], "avgmax": [f.mean(-1), f.amax(-1)]}[self.pool]
        return self.head(torch.cat(pooled, 1))  # (B, num_classes)


@register_model("tiny-cnn")
def tiny_cnn(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """``TinyCNN``: the CPU demo's classifier (about 0.9M parameters)."""
    return TinyCNN(in_channels, num_classes, spatial_dims, **kwargs)


# ---------------------------------------------------------------- 2.5D over a timm backbone


class SliceClassifier(nn.Module):
    """2.5D: a timm 2D backbone on every slice (with ``context`` neighbouring slices on each side as extra
    channels), slice features pooled over the volume by mean and max, then a linear head."""

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet18", context: int = 1,
                 slice_axis: int = -1, dropout: float = 0.2, **backbone_kwargs) -> None:
        super().__init__()
        import timm

        self.context, self.slice_axis = context, slice_axis
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0,
                                          in_chans=in_channels * (2 * context + 1), **backbone_kwargs)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.backbone.num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.movedim(self.slice_axis if self.slice_axis < 0 else self.slice_axis + 2, 2)  # (B, C, S, H, W)
        s = x.shape[2]
        k = self.context
        padded = torch.cat([x[:, :, :1].expand(-1, -1, k, -1, -1), x, x[:, :, -1:].expand(-1, -1, k, -1, -1)], 2)
        stacks = torch.stack([padded[:, :, i:i + s] for i in range(2 * k + 1)], 2)  # (B, C, 2k+1, S, H, W)
        slices = stacks.permute(0, 3, 1, 2, 4, 5).reshape(b * s, c * (2 * k + 1), *x.shape[3:])
        feats = self.backbone(slices).reshape(b, s, -1)  # (B, S, F)
        return self.head(torch.cat([feats.mean(1), feats.amax(1)], 1))


@register_model("resnet18-2.5d")
def resnet18_25d(in_channels: int, num_classes: int, spatial_dims: int, **kwargs) -> nn.Module:
    """``SliceClassifier`` over timm's 2D ResNet-18 (random weights; ``backbone=`` picks another timm model)."""
    if spatial_dims != 3:
        raise ClassifierError(f"a 2.5D model needs spatial_dims=3, got {spatial_dims}")
    return SliceClassifier(in_channels, num_classes, **kwargs)
