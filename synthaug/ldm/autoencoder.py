"""Stage 1 of CCELLA: a 3D KL autoencoder (4 latent channels, 4x downsampling per axis).

Built from MONAI ``AutoencoderKL`` or MAISI ``AutoencoderKlMaisi``, trained (or loaded) once, then
frozen. The training set is encoded once to latents; the diffusion model works on
``latents * scale_factor`` where the scale factor is 1/std over the WHOLE set (the reference uses
one batch).

    ae = build_autoencoder(cfg.autoencoder, seed=0)
    history = train_autoencoder(ae, volumes, cfg.autoencoder, seed=0)
    z = encode_volumes(ae, volumes)              # (N, 4, X/4, Y/4, Z/4), posterior mean
    scale = scale_factor(z)
    x = decode_latents(ae, z)                     # (N, 1, X, Y, Z)

Every random draw (initialisation, batches, flips, posterior samples, perceptual slices) goes through
an explicit ``torch.Generator``: the same seed gives bit-identical weights on CPU in fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import (
    AutoencoderKlMaisi,
    MaisiConvolution,
    MaisiDownsample,
)
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLDownsample
from torch import Tensor, nn

from synthaug.config import AutoencoderConfig, SynthaugConfig
from synthaug.errors import ConfigError, InputError, SynthaugError, TrainingInterrupted
from synthaug.ldm import checkpoint as ckpt
from synthaug.progress import Progress

Volumes = torch.utils.data.Dataset | Sequence[Any]  # items: (C, X, Y, Z) tensors/arrays or {"image": ...}

# Fraction of the slices along each axis that the 2.5D perceptual loss looks at (MONAI's default is 0.5;
# ResNet-50 on every slice is slow on CPU).
PERCEPTUAL_SLICE_FRACTION = 0.25


# ----------------------------------------------------------------------------------------- building


def build_autoencoder(cfg: AutoencoderConfig, in_channels: int = 1, *, seed: int | None = None) -> nn.Module:
    """A MONAI (``kind="monai"``) or MAISI (``kind="maisi"``) 3D KL autoencoder; ``in_channels`` = modalities.

    ``seed`` initialises the weights from a private generator (the global RNG is left as it was).
    With ``cfg.attention`` the deepest level gets attention plus the non-local blocks; full-resolution
    3D attention would not fit in memory.
    """
    levels = len(cfg.channels)
    attention_levels = tuple([False] * (levels - 1) + [bool(cfg.attention) and cfg.kind == "monai"])
    with _seeded(seed):
        if cfg.kind == "monai":
            return AutoencoderKL(
                spatial_dims=3, in_channels=in_channels, out_channels=in_channels, channels=tuple(cfg.channels),
                latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks,
                norm_num_groups=cfg.norm_num_groups, attention_levels=attention_levels,
                with_encoder_nonlocal_attn=cfg.attention, with_decoder_nonlocal_attn=cfg.attention,
            )
        # Built unsplit (num_splits=1): training and encoding run whole convolutions; decode_latents
        # switches on MAISI's split convolutions for the memory-heavy decoder. norm_float16 stays off:
        # mixed precision comes from autocast, and float16 group norm does not run on CPU.
        return AutoencoderKlMaisi(
            spatial_dims=3, in_channels=in_channels, out_channels=in_channels,
            num_res_blocks=(cfg.num_res_blocks,) * levels, num_channels=tuple(cfg.channels),
            attention_levels=(False,) * levels, latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups, norm_eps=1e-6,
            with_encoder_nonlocal_attn=cfg.attention, with_decoder_nonlocal_attn=cfg.attention,
            include_fc=False, use_checkpointing=False, use_convtranspose=False,
            num_splits=1, dim_split=0, norm_float16=False, print_info=False, save_mem=False,
        )


def downsample_factor(cfg: AutoencoderConfig | SynthaugConfig) -> int:
    """Voxels per latent voxel along each axis: ``2 ** (len(channels) - 1)``.

    Given a whole ``SynthaugConfig``, also checks that ``data.image_shape`` is divisible by it.
    """
    ae = cfg.autoencoder if isinstance(cfg, SynthaugConfig) else cfg
    factor = 2 ** (len(ae.channels) - 1)
    if isinstance(cfg, SynthaugConfig):
        check_image_shape(cfg.data.image_shape, ae)
    return factor


def check_image_shape(image_shape: Sequence[int], cfg: AutoencoderConfig) -> None:
    """Raise ``ConfigError`` unless every side of ``image_shape`` is a multiple of the downsampling factor."""
    factor = 2 ** (len(cfg.channels) - 1)
    if any(int(s) % factor for s in image_shape):
        fixed = [max(factor, int(s) // factor * factor) for s in image_shape]
        raise ConfigError(
            f"image shape {list(image_shape)} is not divisible by the autoencoder's downsampling factor {factor}",
            where="data.image_shape",
            fix=f"use a multiple of {factor} on every side, e.g. {fixed}",
        )


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the autoencoder once stage 1 is done."""
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------- loss


def autoencoder_loss(
    recon: Tensor,
    x: Tensor,
    z_mu: Tensor,
    z_sigma: Tensor,
    cfg: AutoencoderConfig,
    *,
    perceptual: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """L1 + ``kl_weight`` * KL (+ ``edge_weight`` * edge L1, + ``perceptual_weight`` * 2.5D perceptual).

    Returns (loss, float parts). The edge term is ``edge_l1``.

    KL is the sum over latent elements, averaged over the batch (as MONAI's tutorials). ``perceptual``
    is a ``build_perceptual_loss`` module, built here when the config asks for one and none is given.
    ``generator`` picks the perceptual slices.
    """
    l1 = (recon.float() - x.float()).abs().mean()
    mu, sigma = z_mu.float(), z_sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma) - 1.0).flatten(1).sum(1).mean()
    loss = l1 + cfg.kl_weight * kl
    parts = {"l1": float(l1.detach()), "kl": float(kl.detach())}
    if cfg.edge_weight > 0:
        edge = edge_l1(recon.float(), x.float())
        loss = loss + cfg.edge_weight * edge
        parts["edge"] = float(edge.detach())
    if cfg.perceptual_weight > 0:
        if perceptual is None:
            perceptual = build_perceptual_loss(cfg).to(x.device)
        p = perceptual(recon.float(), x.float(), generator=generator)
        loss = loss + cfg.perceptual_weight * p
        parts["perceptual"] = float(p.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def edge_l1(recon: Tensor, x: Tensor) -> Tensor:
    """Mean L1 between the forward differences of ``recon`` and ``x`` along each spatial axis of
    ``(B, C, X, Y, Z)`` volumes, averaged over the three axes: zero only where every edge is kept."""
    total = recon.new_zeros(())
    for dim in (2, 3, 4):
        total = total + (recon.diff(dim=dim) - x.diff(dim=dim)).abs().mean()
    return total / 3


class SlicePerceptualLoss(nn.Module):
    """MONAI's 2.5D ``PerceptualLoss`` (torchvision ResNet-50 on slices of all three axes), frozen, from local weights.

    MONAI draws the slices with the global RNG; here each call seeds that draw from ``generator``
    inside a forked RNG, so results are reproducible and the global state is untouched.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], fake_3d_ratio: float = PERCEPTUAL_SLICE_FRACTION) -> None:
        super().__init__()
        from monai.losses import PerceptualLoss

        # pretrained=False: torchvision builds the bare network, nothing is downloaded. Its random initial
        # weights are replaced below, so they are drawn from a forked RNG: the global stream stays as it was.
        with torch.random.fork_rng(devices=[]):
            self.loss = PerceptualLoss(spatial_dims=3, network_type="resnet50", is_fake_3d=True,
                                       fake_3d_ratio=fake_3d_ratio, pretrained=False)
        self.loss.perceptual_function.model.load_state_dict(state_dict, strict=True)
        freeze(self)

    def train(self, mode: bool = True) -> SlicePerceptualLoss:
        return super().train(False)  # batch norm statistics stay those of the pretrained network

    def forward(self, recon: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Perceptual distance between ``(B, C, X, Y, Z)`` volumes in [0, 1]; a scalar."""
        seed = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.loss(recon, x)


def build_perceptual_loss(cfg: AutoencoderConfig, fake_3d_ratio: float = PERCEPTUAL_SLICE_FRACTION) -> SlicePerceptualLoss:
    """The perceptual term from ``cfg.perceptual_weights``: a local torchvision ResNet-50 state dict.

    Accepts ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True``), optionally
    nested under ``state_dict``/``model`` and with a DDP ``module.`` prefix. Never downloads.
    """
    where = "autoencoder.perceptual_weights"
    if not cfg.perceptual_weights:
        raise ConfigError("autoencoder.perceptual_weight > 0 needs local ResNet-50 weights", where=where,
                          fix="set it to a torchvision ResNet-50 state dict (.safetensors or .pth), "
                              "or set autoencoder.perceptual_weight=0")
    path = Path(cfg.perceptual_weights).expanduser()
    if not path.is_file():
        raise ConfigError("perceptual network weights file not found", where=str(path),
                          fix=f"check {where}, or set autoencoder.perceptual_weight=0")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"cannot read perceptual weights ({exc.__class__.__name__})", where=str(path),
                          fix="give a torchvision ResNet-50 state dict as .safetensors or a weights-only .pth") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ConfigError("perceptual weights are not a state dict", where=str(path),
                          fix="give a torchvision ResNet-50 state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        return SlicePerceptualLoss(state, fake_3d_ratio=fake_3d_ratio)
    except RuntimeError as exc:
        raise ConfigError("perceptual weights do not match torchvision's ResNet-50", where=str(path),
                          fix="give a torchvision resnet50 state dict (keys conv1.weight, layer1.0..., fc.*)") from exc


# ----------------------------------------------------------------------------------------- training


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str, cpu_auto: str = "bf16") -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``: None (fp32), bf16 or fp16.

    ``auto``: fp16 on CUDA; on CPU ``cpu_auto`` (bf16 for the VAE, ~2.3x faster on a CPU with native bf16;
    the LDM passes fp32 because bf16 was not faster for it, see benchmarks/bench_train.py), but fp32 on a
    CPU without native bf16, where emulated bf16 made a tiny VAE step over 100x slower (0.55 s -> > 60 s
    on an AVX2-only EPYC, 2026-12-01).
    """
    device_type = torch.device(device).type
    if precision == "auto":
        precision = ("fp16" if device_type == "cuda" else cpu_auto if cpu_has_native_bf16() else "fp32")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ConfigError(f"unknown precision {precision!r}", where="train.precision", fix="use auto, fp32, bf16 or fp16")


def train_autoencoder(
    model: nn.Module,
    volumes: Volumes,
    cfg: AutoencoderConfig,
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    seed: int = 0,
    augment: bool = True,
    progress: Progress | None = None,
    checkpoints: str | Path | None = None,
    run_key: str = "",
    checkpoint_every: int = 500,
    resume: bool = False,
    should_stop: Callable[[], str | None] | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``cfg.steps`` AdamW steps; returns one record per step run now.

    ``volumes`` holds ``(C, X, Y, Z)`` tensors (or MONAI dicts with an ``"image"`` key), every side a
    multiple of ``downsample_factor(cfg)``. Batches of ``cfg.batch_size`` are drawn epoch by epoch
    from a generator seeded with ``seed`` (random ``cfg.patch_size`` boxes when set); ``augment`` flips
    left-right at random. ``precision``:
    autocast dtype (``auto`` = bf16 on CPU, about 2x faster there; fp16 on CUDA with loss scaling).
    ``progress("autoencoder", step, total, record)`` is called after every step.

    Checkpoints (``checkpoints`` a folder, tagged ``run_key``): every ``checkpoint_every`` steps, and when
    ``should_stop()`` names a signal, which then raises ``TrainingInterrupted``. ``resume`` continues from
    the newest checkpoint exactly: weights, optimizer, random stream and epoch order, so the result equals
    an uninterrupted run's.
    """
    if len(volumes) == 0:
        raise InputError("no volumes to train the autoencoder on", where="autoencoder training",
                         fix="check the manifest's train split")
    run = _AutoencoderRun(model, len(volumes), cfg, device=device, precision=precision, seed=seed)
    first = 1
    if resume and checkpoints is not None and ckpt.has_checkpoint(checkpoints):
        first = run.restore(checkpoints, run_key) + 1

    history: list[dict] = []
    for step in range(first, cfg.steps + 1):
        x = run.next_batch(volumes, augment)  # (B, C, X, Y, Z) on the device
        record = {"step": step, **run.train_step(x, step)}
        history.append(record)
        if progress is not None:
            progress("autoencoder", step, cfg.steps, record)
        if checkpoints is not None and step % checkpoint_every == 0 and step < cfg.steps:
            run.save(checkpoints, step, run_key)
        stop = should_stop() if should_stop is not None else None
        if stop and step < cfg.steps:
            run.interrupt(stop, step, checkpoints, run_key)
    model.eval()
    return history


class _AutoencoderRun:
    """The state of one ``train_autoencoder`` run: model, optimizer, loss scaler, random stream and epoch order.

    A checkpoint saves exactly this, so a restored run continues as if it had never stopped.
    """

    def __init__(self, model: nn.Module, n: int, cfg: AutoencoderConfig, *, device: str | torch.device,
                 precision: str, seed: int) -> None:
        self.model, self.cfg = model, cfg
        self.device = torch.device(device)
        self.factor = downsample_factor(cfg)
        self.perceptual = build_perceptual_loss(cfg).to(self.device) if cfg.perceptual_weight > 0 else None
        self.dtype = resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.generator = torch.Generator().manual_seed(seed)  # every draw of the run: batches, boxes, flips, noise
        self.batches = EpochBatches(n, cfg.batch_size, self.generator)
        model.to(self.device).train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)  # one kernel, not a loop per tensor

    def next_batch(self, volumes: Volumes, augment: bool) -> Tensor:
        """The next ``(B, C, X, Y, Z)`` batch on the device: random boxes with ``cfg.patch_size``, random
        left-right flips with ``augment``."""
        x = torch.stack([_volume(volumes[i], self.factor, i) for i in next(self.batches)])
        if self.cfg.patch_size is not None:
            x = random_patches(x, self.cfg.patch_size, self.generator)
        if augment:
            flip = (torch.rand(x.shape[0], generator=self.generator) < 0.5).view(-1, 1, 1, 1, 1)
            x = torch.where(flip, x.flip(2), x)
        return x.to(self.device)

    def train_step(self, x: Tensor, step: int) -> dict[str, float]:
        """One optimizer step on ``x``: encode, sample the posterior, decode, ``autoencoder_loss``; its float parts."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            z_mu, z_sigma = self.model.encode(x)
            eps = torch.randn(z_mu.shape, generator=self.generator).to(self.device)
            recon = self.model.decode(z_mu + z_sigma * eps)
            loss, parts = autoencoder_loss(recon, x, z_mu, z_sigma, self.cfg, perceptual=self.perceptual,
                                           generator=self.generator)
        if not math.isfinite(parts["loss"]):
            raise SynthaugError(f"autoencoder loss is not finite at step {step}", where="autoencoder training",
                                fix="lower autoencoder.lr or train with precision fp32")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return parts

    def save(self, checkpoints: str | Path, step: int, run_key: str) -> None:
        opt_tensors, opt_rest = ckpt.flatten_optimizer(self.optimizer.state_dict())
        groups = {"model": self.model.state_dict(), "optimizer": opt_tensors,
                  "rng": {"generator": self.generator.get_state()}}
        meta = {"optimizer": opt_rest, "order": self.batches.order,
                "scaler": self.scaler.state_dict() if self.scaler else None}
        ckpt.save_checkpoint(checkpoints, step, groups, meta, run_key)

    def restore(self, checkpoints: str | Path, run_key: str) -> int:
        """Load the newest checkpoint of ``run_key`` into this run; returns the step it was saved after."""
        done, groups, meta = ckpt.load_checkpoint(checkpoints, run_key)
        self.model.load_state_dict(groups["model"])
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(groups.get("optimizer", {}), meta["optimizer"]))
        self.generator.set_state(groups["rng"]["generator"])
        self.batches.order = list(meta["order"])
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        return done

    def interrupt(self, signal: str, step: int, checkpoints: str | Path | None, run_key: str) -> NoReturn:
        """Stop after ``step`` on ``signal``: checkpoint when there is a folder for it, then ``TrainingInterrupted``."""
        if checkpoints is None:
            raise TrainingInterrupted(f"stopped by {signal} at autoencoder step {step}; nothing saved",
                                      where="autoencoder training", fix="run the command again")
        self.save(checkpoints, step, run_key)
        raise TrainingInterrupted(f"stopped by {signal} at autoencoder step {step}; checkpoint saved",
                                  where=str(checkpoints), fix="run the same command with --resume to continue")


def random_patches(x: Tensor, size: Sequence[int], generator: torch.Generator) -> Tensor:
    """One random ``size`` box (voxels) from each ``(C, X, Y, Z)`` volume of the batch ``x``, drawn from ``generator``.

    A side longer than the volume's is the whole side (training on patches never pads). Not MONAI's
    ``RandSpatialCrop``: its draws come from a NumPy state of its own, and these must come from the training
    stream that a checkpoint saves, so that a resumed run draws the same boxes.
    """
    out = []
    for volume in x:
        corner = [int(torch.randint(0, n - s + 1, (1,), generator=generator)) if s < n else 0
                  for n, s in zip(volume.shape[1:], size)]
        box = tuple(slice(c, c + min(s, n)) for c, s, n in zip(corner, size, volume.shape[1:]))
        out.append(volume[(slice(None), *box)])
    return torch.stack(out)


class EpochBatches:
    """Endless batches of indices: every volume once per epoch, in a fresh seeded order each epoch.

    ``order`` (what is left of this epoch) is the whole state beside the generator's: a checkpoint keeps it.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.order: list[int] = []

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> list[int]:
        batch = []
        while len(batch) < self.batch_size:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.generator).tolist()
            batch.append(self.order.pop())
        return batch


# ------------------------------------------------------------------------------- encoding, decoding


@torch.no_grad()
def encode_volumes(
    model: nn.Module,
    volumes: Volumes,
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Encode every volume: ``(N, latent_channels, X/f, Y/f, Z/f)`` float32 on CPU, f = downsampling factor.

    The posterior mean by default (``AutoencoderConfig.latent_sampling`` False); ``sample=True`` draws
    ``mu + sigma * noise`` with the noise from ``generator`` (required, for reproducibility).
    """
    if sample and generator is None:
        raise ValueError("encode_volumes(sample=True) needs an explicit torch.Generator")
    device = torch.device(device)
    factor = _model_factor(model)
    model.to(device).eval()
    out = []
    for start in range(0, len(volumes), batch_size):
        idx = range(start, min(start + batch_size, len(volumes)))
        x = torch.stack([_volume(volumes[i], factor, i) for i in idx]).to(device)
        z_mu, z_sigma = model.encode(x)
        if sample:
            noise = torch.randn(z_mu.shape, generator=generator, device=generator.device, dtype=z_mu.dtype)
            z_mu = z_mu + z_sigma * noise.to(device)
        out.append(z_mu.float().cpu())
    if not out:
        raise InputError("no volumes to encode", where="encode_volumes", fix="pass at least one volume")
    return torch.cat(out)


def scale_factor(latents: Tensor) -> float:
    """``1 / std`` over every element of ``latents`` (the whole training set), accumulated in float64.

    The (unbiased) std of the reference, but over all cases instead of the first batch.
    """
    if latents.numel() < 2:
        raise InputError("need at least two latent values to compute a scale factor", where="scale_factor",
                         fix="encode the training set first")
    chunks = latents.reshape(latents.shape[0], -1) if latents.dim() > 1 else latents.reshape(1, -1)
    step = max(1, (1 << 24) // max(1, chunks.shape[1]))  # about 16M values per float64 chunk
    total = 0.0
    for i in range(0, chunks.shape[0], step):
        total += float(chunks[i:i + step].to(torch.float64).sum())
    mean = total / latents.numel()
    sq = 0.0
    for i in range(0, chunks.shape[0], step):
        sq += float((chunks[i:i + step].to(torch.float64) - mean).pow(2).sum())
    std = math.sqrt(sq / (latents.numel() - 1))
    if not math.isfinite(std) or std == 0.0:
        raise InputError(f"latents have std {std}; cannot scale them", where="scale_factor",
                         fix="check that the autoencoder was trained and the volumes are not constant")
    return 1.0 / std


@torch.no_grad()
def decode_latents(
    model: nn.Module,
    latents: Tensor,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_splits: int | None = None,
) -> Tensor:
    """Decode ``(N, latent_channels, x, y, z)`` latents (unscaled: divide by the scale factor first) to volumes.

    Returns ``(N, C, x*f, y*f, z*f)`` float32 on CPU. A MAISI autoencoder decodes with its split
    convolutions along X: ``num_splits`` pieces (None = the most, up to 16, that keep each piece at
    least 8 latent voxels thick and divide the size exactly); 1 turns splitting off.
    """
    device = torch.device(device)
    model.to(device).eval()
    splits = 1
    if isinstance(model, AutoencoderKlMaisi):
        splits = _maisi_splits(int(latents.shape[2]), num_splits)
    out = []
    with _decoder_splits(model, splits):
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start:start + batch_size].to(device=device, dtype=torch.float32)
            out.append(model.decode(z).float().cpu())
    if not out:
        raise InputError("no latents to decode", where="decode_latents", fix="pass at least one latent")
    return torch.cat(out)


# ----------------------------------------------------------------------------------------- weights


def save_autoencoder(model: nn.Module, path: str | Path) -> Path:
    """Write the weights as safetensors (the bundle's ``autoencoder.safetensors``)."""
    from synthaug.data.io import save_weights

    return save_weights({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path)


def load_autoencoder(cfg: AutoencoderConfig, path: str | Path, in_channels: int = 1) -> nn.Module:
    """Build the autoencoder of ``cfg``, load safetensors weights from ``path`` and freeze it."""
    from synthaug.data.io import load_weights

    path = Path(path)
    if not path.is_file():
        raise InputError("autoencoder weights not found", where=str(path), fix="train it, or check the bundle folder")
    weights = load_weights(path)  # a pickle, a truncated or a foreign file: one InputError naming it
    model = build_autoencoder(cfg, in_channels)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError("autoencoder weights do not match the autoencoder config", where=str(path),
                         fix="use the config the weights were trained with") from exc
    return freeze(model)


# ----------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block with the CPU RNG seeded, restoring the global state afterwards (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _volume(item: Any, factor: int, index: int) -> Tensor:
    """One dataset item -> ``(C, X, Y, Z)`` float32 tensor, every side a multiple of ``factor``."""
    if isinstance(item, Mapping):
        if "image" not in item:
            raise InputError("dataset item has no 'image' key", where=f"volume {index}",
                             fix="return tensors or MONAI dicts with an 'image' entry")
        item = item["image"]
    x = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item)
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor -> plain tensor
        x = x.as_tensor()
    if x.dim() != 4:
        raise InputError(f"expected a (C, X, Y, Z) volume, got shape {list(x.shape)}", where=f"volume {index}",
                         fix="add the channel axis first")
    if any(s % factor for s in x.shape[1:]):
        raise InputError(f"volume shape {list(x.shape[1:])} is not divisible by the downsampling factor {factor}",
                         where=f"volume {index}", fix=f"crop or pad every side to a multiple of {factor}")
    return x.float()


def _model_factor(model: nn.Module) -> int:
    """Downsampling factor of a built autoencoder: 2 per downsampling layer in its encoder."""
    downs = sum(isinstance(m, (AEKLDownsample, MaisiDownsample)) for m in model.modules())
    return 2**downs


def _maisi_splits(size: int, requested: int | None) -> int:
    """Number of pieces MAISI's split convolutions cut a ``size``-voxel latent axis into."""
    if requested is None:
        return max(d for d in range(1, 17) if size % d == 0 and size // d >= 8) if size >= 8 else 1
    if requested < 1 or size % requested or size // requested < 4:
        raise InputError(f"cannot split a latent axis of {size} voxels into {requested} pieces",
                         where="decode_latents(num_splits)",
                         fix="use a divisor of the size that leaves at least 4 voxels per piece, or None")
    return requested


@contextlib.contextmanager
def _decoder_splits(model: nn.Module, splits: int) -> Iterator[None]:
    """Temporarily set every MAISI decoder convolution to ``splits`` pieces (no-op for 1 or MONAI models)."""
    convs = [m for m in getattr(model, "decoder", nn.Module()).modules() if isinstance(m, MaisiConvolution)]
    saved = [m.num_splits for m in convs]
    try:
        for m in convs:
            m.num_splits = splits
        yield
    finally:
        for m, s in zip(convs, saved):
            m.num_splits = s
