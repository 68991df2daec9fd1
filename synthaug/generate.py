"""CCELLAGenerator: a trained bundle -> synthetic volumes for (label, report, seed) requests, batched.

    gen = CCELLAGenerator.from_bundle("runs/bundle", sampler="dpm++", steps=20, guidance=2.0, class_guidance=2.0)
    out = gen.generate(labels=[1, 1, 0], seeds=[0, 1, 2])
    out.volumes      # (B, C, X, Y, Z) float32 in the training data's intensity units
    out.affine       # (4, 4) RAS+ affine with the bundle's spacing, volume centred on the origin
    out.provenance   # one dict per volume: seed, label, report, predicted probability, sampler, ...

Determinism: a volume depends only on (seed, label, report) and the generator's settings: each sample's
initial noise and every stochastic step draw from its own ``torch.Generator(seed)``, and reports are
encoded one at a time and padded to a fixed width. In ``precision="fp32"`` it is also bitwise independent
of the batch size and its batch neighbours; in bf16 (the default on CPUs with native bf16, 1.8x faster here)
the kernels round differently per batch shape, so a volume made in another batch size differs within the
tolerance stated in benchmarks/README.md (the same batch size reproduces it exactly).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthaug.config import CLASS_GUIDANCE, made_up_report_problem
from synthaug.data.io import centred_affine
from synthaug.data.reports import template_report
from synthaug.errors import InputError
from synthaug.ldm.autoencoder import cpu_has_native_bf16, decode_latents, encode_volumes, resolve_precision
from synthaug.ldm.bundle import Bundle, load_bundle
from synthaug.ldm.sampling import (
    Conditioning,
    build_sampler,
    label_probs,
    predicted_class_probs,
    sample_latents,
    start_step,
)


@dataclass
class Generated:
    """A batch of generated volumes with their geometry and one provenance record each."""

    volumes: torch.Tensor  # (B, C, X, Y, Z) float32, the training data's intensity units
    affine: np.ndarray  # (4, 4)
    spacing: tuple[float, float, float]
    provenance: list[dict[str, Any]] = field(default_factory=list)


def generation_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere; fp16 on a CPU is refused."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise InputError("fp16 does not run on a CPU", where="sample.precision", fix="use bf16, fp32 or auto")
    return precision


def generation_layout(device: torch.device, precision: str) -> torch.memory_format:
    """The 5D weights' layout while generating: channels-last 3D in bf16 on a CPU, where oneDNN's bf16
    convolutions run faster in it (benchmarks/README.md, bench_scaling.py); the default layout otherwise, so
    fp32 volumes stay bitwise those of earlier versions."""
    return torch.channels_last_3d if device.type == "cpu" and precision == "bf16" else torch.contiguous_format


# Volumes the VAE decodes at once. The U-Net runs fastest on the whole generation batch, the decoder, whose
# full-resolution activations outgrow the CPU's caches, on smaller pieces: in bf16 (channels-last) on 2 cores
# the tiny VAE decodes 32 volumes of 48x48x32 in 1.11-1.30 s in chunks of 8 and in 1.31-1.32 s at once, with
# a smaller peak of activations (benchmarks/README.md, bench_scaling.py --decode-batch).
DECODE_BATCH = 8


def _seed_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class CCELLAGenerator:
    """Samples volumes from a bundle's LDM and decodes them with its autoencoder."""

    def __init__(self, bundle: Bundle, *, device: str | torch.device = "cpu", sampler: str | None = None,
                 steps: int | None = None, eta: float | None = None, guidance: float | None = None,
                 class_guidance: float | None = None, guidance_interval: Sequence[float] | None = None,
                 ema: bool = True, class_source: str | None = None, report_source: str | None = None,
                 batch_size: int | None = None, precision: str | None = None, text_encoder=None) -> None:
        settings = bundle.config.sample.with_options(
            sampler=sampler, steps=steps, eta=eta, guidance=guidance, class_guidance=class_guidance,
            guidance_interval=guidance_interval, class_source=class_source, report_source=report_source,
            batch_size=batch_size, precision=precision)
        self.bundle = bundle
        self.device = torch.device(device)
        self.precision = generation_precision(settings.precision, self.device)
        self.guidance = float(settings.guidance)
        self.class_guidance = float(settings.class_guidance if settings.class_guidance is not None
                                    else CLASS_GUIDANCE if bundle.config.loss.p_null > 0 else 1.0)
        self.guidance_interval = (float(settings.guidance_interval[0]), float(settings.guidance_interval[1]))
        self.class_source = settings.class_source
        self.report_source = settings.report_source
        self.batch_size = int(settings.batch_size)
        problem = made_up_report_problem(self.report_source, self.class_source, bundle.config.loss.report_variants)
        if problem:
            raise InputError(problem, where="report_source")
        if self.class_guidance != 1.0 and bundle.config.loss.p_null == 0.0:
            raise InputError(f"class guidance {self.class_guidance:g} needs a bundle trained with a null class; this "
                             "one has loss.p_null 0", where="class_guidance",
                             fix="use class guidance 1, or train with --set loss.p_null=0.1")
        self.sampler = build_sampler(settings.sampler, bundle.config.diffusion, settings.steps, eta=float(settings.eta))
        self.ema = bool(ema and bundle.ldm_ema is not None)
        self.ldm = (bundle.ldm_ema if self.ema else bundle.ldm).to(self.device).eval()
        self.autoencoder = bundle.autoencoder.to(self.device).eval()
        self._encoder = text_encoder
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._next_seed = 0

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                    verify: bool = True, trust_remote_code: bool = False, **options: Any) -> CCELLAGenerator:
        """Load and verify a bundle folder; ``options`` as for the constructor (None = the bundle's defaults).

        ``trust_remote_code``: let the text model run its own code (never taken from the bundle itself).
        """
        bundle = load_bundle(path, device=device, verify=verify, trust_remote_code=trust_remote_code)
        return cls(bundle, device=device, **options)

    # ------------------------------------------------------------ properties

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.bundle.config.data.spacing)  # type: ignore[return-value]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.bundle.config.data.image_shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        return centred_affine(self.image_shape, self.spacing)

    def settings(self) -> dict[str, Any]:
        """The settings that determine the output (stored in caches and provenance)."""
        return {"sampler": self.sampler.name, "steps": self.sampler.steps, "eta": getattr(self.sampler, "eta", 0.0),
                "guidance": self.guidance, "class_guidance": self.class_guidance,
                "guidance_interval": list(self.guidance_interval), "class_source": self.class_source,
                "ema": self.ema, "precision": self.precision}

    # ------------------------------------------------------------ text

    @property
    def text_encoder(self):  # synthaug.text.TextEncoder
        """The bundle's frozen text encoder, loaded on first use and checked against the bundle's fingerprint."""
        if self._encoder is None:
            from synthaug.text.encoder import TextEncoder

            self._encoder = TextEncoder.from_config(self.bundle.config.text, device=self.device,
                                                    expected_fingerprint=self.bundle.info["text"]["fingerprint"])
        return self._encoder

    def _encoded(self, reports: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Token features (W, D) and masks (W,) of ``reports``, zero-padded to the bundle's max_tokens; cached.

        In bf16/fp16 the reports not seen before are encoded in one batched call: one call per report cost
        an eighth of a 32-volume batch's time (benchmarks/README.md), and a report's features then depend on
        its batch by float reordering only (3e-6 of values up to 6 here), far below bf16's resolution. fp32
        encodes each report alone, so that a volume stays bitwise independent of its batch.
        """
        new = [r for r in dict.fromkeys(reports) if r not in self._text_cache]
        width = int(self.bundle.info["text"]["max_tokens"])
        groups = [[r] for r in new] if self.precision == "fp32" else [new] if new else []
        for group in groups:
            features, mask = self.text_encoder.encode(group)  # (N, T, D), (N, T)
            pad = max(width, features.shape[1]) - features.shape[1]
            features, mask = F.pad(features, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)
            self._text_cache.update(zip(group, zip(features, mask)))
        return [self._text_cache[r] for r in reports]

    def _conditioning(self, labels: Sequence[int], reports: Sequence[str]) -> Conditioning:
        *encoded, (null_text, null_mask) = self._encoded([*reports, ""])
        dev = self.device
        return Conditioning(
            text=torch.stack([e[0] for e in encoded]).to(dev), mask=torch.stack([e[1] for e in encoded]).to(dev),
            null_text=null_text[None].to(dev), null_mask=null_mask[None].to(dev),
            spacing=torch.tensor([self.spacing] * len(labels), dtype=torch.float32, device=dev),
            class_probs=label_probs(labels).to(dev) if self.class_source == "label" else None)

    @torch.no_grad()
    def predict_class(self, reports: Sequence[str]) -> torch.Tensor:
        """The adapter's P(class 1) for each report ``(N,)``: its class head, as generation reads it."""
        probs = []
        for start in range(0, len(reports), self.batch_size):
            part = list(reports[start:start + self.batch_size])
            probs.append(predicted_class_probs(self.ldm, self._conditioning([0] * len(part), part))[:, 1].cpu())
        return torch.cat(probs) if probs else torch.zeros(0)

    # ------------------------------------------------------------ reports

    def choose_report(self, label: int, seed: int, source: str | None = None) -> str:
        """The report for a request without one: a training report of the class, a template, or empty."""
        source = source or self.report_source
        if source == "empty":
            return ""
        rng = np.random.default_rng([int(seed), int(label), 0x5EED])
        if source == "template":
            return template_report(int(label), rng, self.bundle.config.data.label_rule)
        pool = sorted({c["report"] for c in self.bundle.train_cases if c["label"] == label and c["report"]})
        if not pool:
            raise InputError(f"the bundle has no non-empty training report of class {label}",
                             where=str(self.bundle.path), fix="use report_source 'template' or 'empty' with class_source 'label'")
        return pool[int(rng.integers(len(pool)))]

    # ------------------------------------------------------------ generation

    def _check(self, labels: Sequence[int], reports: Sequence[str] | None,
               seeds: Sequence[int] | None) -> tuple[list[int], list[int]]:
        checked = []
        for v in labels:
            try:
                ok = int(v) == v and int(v) in (0, 1)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"must be 0 or 1, got {v!r}", where="labels", fix="ask for class 0 or 1")
            checked.append(int(v))
        labels = checked
        n = len(labels)
        if reports is not None and len(reports) != n:
            raise InputError(f"{len(reports)} reports for {n} labels", where="reports",
                             fix="pass one report per label (\"\" for none), or no reports")
        if seeds is None:
            seeds = list(range(self._next_seed, self._next_seed + n))
            self._next_seed += n
        elif len(seeds) != n:
            raise InputError(f"{len(seeds)} seeds for {n} labels", where="seeds", fix="pass one seed per label")
        return labels, [int(s) for s in seeds]

    @torch.no_grad()
    def generate(self, labels: Sequence[int], reports: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Generated:
        """Volumes for the requested labels; reports None takes them from the report source, seeds None counts up."""
        return self._generate(labels, reports, seeds, progress)

    @torch.no_grad()
    def vary(self, volumes: torch.Tensor, labels: Sequence[int], reports: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, *, strength: float,
             progress: Callable[[int, int], None] | None = None) -> Generated:
        """Variations of given volumes (SDEdit; diffusers' img2img): each ``(N, C, X, Y, Z)`` volume in [0, 1]
        model space (as ``VolumeStore`` loads a case) is encoded, noised to the chain's step ``start_step(steps,
        strength)`` and denoised from there under its label and report, so that its layout stays and the model
        redraws what the noise erased. Strength 1 is ``generate`` (the volume is lost); the smaller, the closer."""
        start = start_step(self.sampler.steps, strength)
        want = (len(self.bundle.config.data.modalities), *self.image_shape)
        if volumes.ndim != 5 or tuple(volumes.shape[1:]) != want or len(volumes) != len(labels):
            raise InputError(f"got volumes of shape {tuple(volumes.shape)} for {len(labels)} labels",
                             where="volumes", fix=f"pass (N, {', '.join(map(str, want))}) volumes, one per label")
        return self._generate(labels, reports, seeds, progress, volumes=volumes, strength=float(strength), start=start)

    def _generate(self, labels: Sequence[int], reports: Sequence[str] | None, seeds: Sequence[int] | None,
                  progress: Callable[[int, int], None] | None, volumes: torch.Tensor | None = None,
                  strength: float = 1.0, start: int = 0) -> Generated:
        labels, seeds = self._check(labels, reports, seeds)
        sources = ["given"] * len(labels) if reports is not None else [self.report_source] * len(labels)
        if reports is None:
            reports = [self.choose_report(label, seed) for label, seed in zip(labels, seeds)]
        out, provenance = [], []
        steps = self.sampler.steps - start
        total = len(labels) * steps
        varied = {} if volumes is None else {"strength": strength}
        for begin in range(0, len(labels), self.batch_size):
            part = slice(begin, begin + self.batch_size)
            done, size = begin * steps, len(labels[part])  # a step advances every volume of the batch
            step_progress = (lambda i, n, d=done, b=size: progress(d + i * b, total)) if progress else None
            init = None if volumes is None else volumes[part]
            batch, probs = self._generate_batch(labels[part], list(reports[part]), seeds[part], step_progress,
                                                init=init, start=start)
            out.append(batch)
            for label, report, seed, source, p in zip(labels[part], reports[part], seeds[part], sources[part], probs):
                provenance.append({
                    "seed": seed, "label": label, "requested_label": label, "report": report,
                    "report_source": source, "predicted_prob": round(float(p), 6),
                    "predicted_label": int(p >= 0.5), **self.settings(), **varied, "bundle": self.fingerprint,
                })
        empty = torch.zeros(0, len(self.bundle.config.data.modalities), *self.image_shape)
        return Generated(volumes=torch.cat(out) if out else empty, affine=self.affine,
                         spacing=self.spacing, provenance=provenance)

    def _layout(self) -> None:
        """Set the networks' weight layout (``generation_layout``) before every batch: a bundle's modules may be
        shared by generators of other precisions."""
        layout = generation_layout(self.device, self.precision)
        self.ldm.to(memory_format=layout)
        self.autoencoder.to(memory_format=layout)

    def _generate_batch(self, labels: list[int], reports: list[str], seeds: list[int],
                        progress: Callable[[int, int], None] | None, init: torch.Tensor | None = None,
                        start: int = 0) -> tuple[torch.Tensor, list[float]]:
        """One batch; ``init`` (B, C, X, Y, Z) model-space volumes and ``start``: variations of them (``vary``)."""
        self._layout()
        cond = self._conditioning(labels, reports)
        shape = tuple(self.bundle.info["latent_shape"])  # (C, x, y, z)
        generators = [_seed_generator(s) for s in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        dtype = resolve_precision(self.precision, self.device)  # the autocast dtype of a resolved name
        # The networks run under autocast; the chain (noise, sampler steps, latents) stays float32.
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if init is not None:  # the posterior mean, scaled as the LDM's training latents were
                init = encode_volumes(self.autoencoder, list(init), batch_size=len(init), device=self.device)
                init = init.to(self.device).float() * self.bundle.scale_factor
            latents = sample_latents(self.ldm, self.sampler, noise, cond, guidance=self.guidance,
                                     class_guidance=self.class_guidance, guidance_interval=self.guidance_interval,
                                     generators=generators, progress=progress, init=init, start=start)
            probs = predicted_class_probs(self.ldm, cond)[:, 1].float().cpu().tolist()
            decoded = decode_latents(self.autoencoder, latents / self.bundle.scale_factor,
                                     batch_size=min(len(labels), DECODE_BATCH),
                                     device=self.device,
                                     num_splits=self.bundle.config.sample.decode_splits
                                     if self.bundle.config.autoencoder.kind == "maisi" else None)
        return self.to_intensity(decoded), probs

    @torch.no_grad()
    def round_trip(self, volumes: torch.Tensor) -> torch.Tensor:
        """``(N, C, X, Y, Z)`` volumes in [0, 1] model space through the bundle's autoencoder (encoded to the
        posterior mean, decoded, clamped to [0, 1]): what the LDM could at best hand back of them."""
        latents = encode_volumes(self.autoencoder, list(volumes), batch_size=len(volumes), device=self.device)
        return decode_latents(self.autoencoder, latents, batch_size=len(volumes), device=self.device).clamp(0, 1)

    def to_intensity(self, volumes: torch.Tensor) -> torch.Tensor:
        """[0, 1] model space -> the training data's units: T2W/HBV by the median raw percentiles, ADC by its window."""
        data = self.bundle.config.data
        stats = self.bundle.info["data"]["intensity"]
        out = volumes.clamp(0.0, 1.0)
        channels = []
        for c, modality in enumerate(data.modalities):
            if modality == "adc":
                low, high = data.normalisation.adc_window
            elif modality == "t2w":
                low, high = stats["p0_median"], stats["p99_5_median"]
            else:  # no raw statistics kept for HBV: it stays in [0, 1]
                low, high = 0.0, 1.0
            channels.append(out[:, c] * (high - low) + low)
        return torch.stack(channels, dim=1).float()


def write_volume(volume: torch.Tensor, affine: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write one generated ``(C, X, Y, Z)`` volume as NIfTI (3D for one channel, channels last otherwise)."""
    from synthaug.data.io import write_nifti

    array = volume.numpy()
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    return write_nifti(array, affine, path)


def sequence_files(stem: str, suffix: str, modalities: Sequence[str]) -> dict[str, str]:
    """Where one generated volume's sequences go, by the item key a real manifest item uses for each
    (``image`` for T2W, ``adc``, ``hbv``): T2W at ``<stem><suffix>``, another sequence at ``<stem>_<key><suffix>``."""
    from synthaug.config import MODALITY_KEYS

    keys = [MODALITY_KEYS[m] for m in modalities]
    return {key: f"{stem}{suffix}" if key == "image" else f"{stem}_{key}{suffix}" for key in keys}


def write_sequences(volume: torch.Tensor, affine: np.ndarray, paths: Mapping[str, str | os.PathLike[str]]) -> dict[str, Path]:
    """Write a generated ``(C, X, Y, Z)`` volume as one 3D NIfTI file per sequence: channel c to the c-th of
    ``paths`` (``sequence_files`` order), so that synthetic items load like real ones, a file per key."""
    if len(paths) != volume.shape[0]:
        raise ValueError(f"{volume.shape[0]} channels for {len(paths)} files")
    return {key: write_volume(volume[c:c + 1], affine, path) for c, (key, path) in enumerate(paths.items())}
