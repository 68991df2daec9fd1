"""Text and class guidance, class control, and the latent sampling loop (the samplers: ``synthaug.ldm.samplers``).

    sampler = build_sampler("dpm++", cfg.diffusion, steps=20)
    latents = sample_latents(ldm, sampler, noise, cond, guidance=2.0, class_guidance=2.0)

``build_sampler``, the sampler classes and their registry live in ``synthaug.ldm.samplers``, the training
objective in ``synthaug.ldm.objective``; both are re-exported here, where earlier versions defined them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthaug.errors import InputError
from synthaug.ldm.model import null_class
from synthaug.ldm.objective import training_scheduler, training_target
from synthaug.ldm.samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    FlowSampler,
    Sampler,
    build_sampler,
    default_steps,
    register_sampler,
    resolve_sampler,
    sampler_class,
    sampler_names,
)

__all__ = [
    "DEFAULT_STEPS", "SAMPLERS", "Conditioning", "DDIMSampler", "DDPMSampler", "DPMSolverSampler", "FlowSampler",
    "Sampler", "build_sampler", "check_guidance", "default_steps", "guided_prediction", "guided_steps", "label_probs",
    "predicted_class_probs", "register_sampler", "resolve_sampler", "sample_latents", "sampler_class",
    "sampler_names", "start_step", "training_scheduler", "training_target",
]


# ---------------------------------------------------------------- guidance and class control


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for a batch of B requests.

    text (B, T, D) and mask (B, T): the reports' token features; null_text (1, T, D) / null_mask (1, T):
    the empty report (the unconditional input of classifier-free guidance); spacing (B, 3) mm;
    class_probs (B, 2) to feed the U-Net a requested class (``class_source="label"``), or None to use
    the adapter's prediction from the report (the reference).
    """

    text: torch.Tensor
    mask: torch.Tensor
    null_text: torch.Tensor
    null_mask: torch.Tensor
    spacing: torch.Tensor
    class_probs: torch.Tensor | None = None


def label_probs(labels: Sequence[int]) -> torch.Tensor:
    """Requested labels -> one-hot class input (B, 2) for ``class_source="label"``."""
    return F.one_hot(torch.as_tensor(list(labels), dtype=torch.long), 2).float()


def check_guidance(scale: float, name: str) -> float:
    """A guidance scale as a float; negative or non-finite ones are an ``InputError`` naming ``name``."""
    scale = float(scale)
    if not (math.isfinite(scale) and scale >= 0):
        raise InputError(f"must be >= 0 and finite, got {scale}", where=name, fix="use 1 for no guidance")
    return scale


@torch.no_grad()
def guided_prediction(ldm, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                      guidance: float, class_guidance: float = 1.0) -> torch.Tensor:
    """The model output at (x, t) with text guidance ``s_t`` and class guidance ``s_c``; both 1 is one plain pass.

    Three branches: ``c`` = the report with the requested class (the adapter's, or a label), ``u`` = the
    empty report with the class the adapter predicts from it (what the model saw for dropped reports in
    training), ``n`` = the report with the null class (``synthaug.ldm.model.null_class``)::

        out = u + s_t (c - u) + (s_c - 1) (c - n)

    Text guidance ``u + s_t (c - u)`` compares everything the request says, class included, with nothing
    (the classifier-free guidance of earlier versions, unchanged); class guidance adds the class alone,
    ``n + s_c (c - n)`` when ``s_t`` is 1. Together the class direction is weighted ``s_t + s_c - 1``. A
    branch whose scale is 1 is not computed, so ``s_c = 1`` costs what it did before class guidance.
    """
    guidance = check_guidance(guidance, "guidance")
    class_guidance = check_guidance(class_guidance, "class_guidance")
    b = x.shape[0]
    if guidance == 1.0:
        text, mask, probs, xs, ts, spacing = cond.text, cond.mask, cond.class_probs, x, t, cond.spacing
    else:
        null_text = cond.null_text.expand(b, -1, -1)
        null_mask = cond.null_mask.expand(b, -1)
        text, mask = torch.cat([cond.text, null_text]), torch.cat([cond.mask, null_mask])
        xs, ts, spacing = torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond.spacing, cond.spacing])
        probs = cond.class_probs
    context, logits = ldm.adapter(text, mask, ts)
    class_probs = logits.softmax(dim=-1)
    if probs is not None:
        class_probs = torch.cat([probs.to(class_probs), class_probs[b:]])
    if class_guidance != 1.0:  # the report's context again, with the null class
        context, class_probs = torch.cat([context, context[:b]]), torch.cat([class_probs, null_class(b, class_probs)])
        xs, ts, spacing = torch.cat([xs, x]), torch.cat([ts, t]), torch.cat([spacing, cond.spacing])
    out = ldm.denoise(xs, ts, context, class_probs, spacing)
    conditional = guided = out[:b]
    if guidance != 1.0:
        unconditional = out[b:2 * b]
        guided = unconditional + guidance * (conditional - unconditional)
    if class_guidance != 1.0:
        guided = guided + (class_guidance - 1.0) * (conditional - out[-b:])
    return guided


@torch.no_grad()
def predicted_class_probs(ldm, cond: Conditioning) -> torch.Tensor:
    """The adapter's class probabilities (B, 2) from the reports at t = 0 (the least noisy step)."""
    t = torch.zeros(cond.text.shape[0], dtype=torch.long, device=cond.text.device)
    return ldm.adapter(cond.text, cond.mask, t)[1].softmax(dim=-1)


def guided_steps(timesteps: Sequence[int], num_train_timesteps: int,
                 interval: tuple[float, float] = (0.0, 1.0)) -> list[bool]:
    """Which steps of a chain are guided: those whose ``t / T`` lies in ``interval`` = [low, high], ends included.

    Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024): ``(0, 1)`` guides every step.
    """
    low, high = interval
    return [low <= t / num_train_timesteps <= high for t in timesteps]


def start_step(steps: int, strength: float) -> int:
    """The chain step at which a variation of a given volume starts: the last ``round(steps x strength)`` steps
    run (diffusers' img2img ``strength``; SDEdit, Meng et al. 2022). Strength 1 runs the whole chain from pure
    noise (the given volume is lost); the smaller it is, the more of the given volume's layout stays."""
    if not (isinstance(strength, (int, float)) and 0.0 < strength <= 1.0):
        raise InputError(f"strength must be in (0, 1], got {strength!r}", where="strength",
                         fix="use e.g. 0.5: the noisier half of the chain is run again")
    run = round(steps * strength)
    if run < 1:
        raise InputError(f"strength {strength:g} of a {steps}-step chain runs no step", where="strength",
                         fix=f"use strength >= {1 / steps:.2g} or more sampler steps")
    return steps - run


@torch.no_grad()
def sample_latents(ldm, sampler: Sampler, noise: torch.Tensor, cond: Conditioning, *,
                   guidance: float = 1.0, class_guidance: float = 1.0,
                   guidance_interval: tuple[float, float] = (0.0, 1.0),
                   generators: Sequence[torch.Generator] | None = None, progress=None,
                   init: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """Run the reverse chain from ``noise`` (B, C, x, y, z) to clean (scaled) latents of the same shape.

    ``guidance`` / ``class_guidance`` as in ``guided_prediction``, on the steps that ``guided_steps`` picks
    from ``guidance_interval`` (the others make one plain conditional pass); ``generators`` (one per sample)
    feed the stochastic samplers' noise; ``progress(done, total)`` is called after every step.
    ``init`` (scaled latents of given volumes) and ``start`` (``start_step``): a variation, the chain from its
    ``start``-th step on, begun from ``init`` noised to that step with ``noise``; without ``init`` ``start``
    must be 0.
    """
    sampler.set_timesteps(sampler.steps)  # fresh state (DPM-Solver++ keeps a history)
    if not 0 <= start < sampler.steps or (init is None and start):
        raise ValueError(f"start {start} of a {sampler.steps}-step chain (init given: {init is not None})")
    timesteps = sampler.timesteps[start:]
    guided = guided_steps(timesteps, sampler.cfg.num_train_timesteps, guidance_interval)
    x = noise if init is None else sampler.add_noise(init.float(), noise, timesteps[0])
    for i, (t, guide) in enumerate(zip(timesteps, guided), start=1):
        ts = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = guided_prediction(ldm, x, ts, cond, guidance if guide else 1.0, class_guidance if guide else 1.0)
        x = sampler.step(out.float(), t, x, generators)
        if progress is not None:
            progress(i, len(timesteps))
    return x
