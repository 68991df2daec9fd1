"""Samplers with one interface, text and class guidance, class control, and the latent sampling loop.

    sampler = build_sampler("dpm++", cfg.diffusion, steps=20)
    latents = sample_latents(ldm, sampler, noise, cond, guidance=2.0, class_guidance=2.0)

Samplers wrap library schedulers (diffusers' ``DDPMScheduler``, ``DDIMScheduler`` (trailing spacing)
and ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M); MONAI's ``RFlowScheduler`` for rectified flow,
as MAISI-v2) behind ``set_timesteps(n)`` / ``timesteps`` / ``step(output, t, sample, generators)``.
The betas come from the training scheduler itself, so training and sampling share one noise schedule.
Stochastic steps draw their noise per sample from that sample's own ``torch.Generator``: a volume
depends on its seed, label and report only, never on its batch neighbours. (MONAI's own DDIM spaces
its timesteps by (T-1)/(n-1) but steps back by T//n, so its few-step chains end short of t = 0; the
diffusers schedulers keep the two consistent.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthaug.config import DiffusionConfig
from synthaug.errors import InputError
from synthaug.ldm.model import null_class

SAMPLERS = ("ddpm", "ddim", "dpm++", "flow")
DEFAULT_STEPS = {"ddpm": None, "ddim": 20, "dpm++": 20, "flow": 30}  # None: every training step (the reference)


def resolve_sampler(name: str, prediction: str) -> str:
    """``auto`` -> the fast default for the model's objective (flow, or DDIM with the configured eta; see
    ``SampleConfig.eta``); refuses a sampler the objective cannot use."""
    if name == "auto":
        return "flow" if prediction == "flow" else "ddim"
    if name not in SAMPLERS:
        raise InputError(f"unknown sampler {name!r}", where="sampler", fix=f"choose one of {', '.join(SAMPLERS)}")
    if (name == "flow") != (prediction == "flow"):
        trained = "rectified flow" if prediction == "flow" else f"DDPM ({prediction} prediction)"
        raise InputError(f"sampler {name!r} cannot sample a model trained with {trained}", where="sampler",
                         fix="use 'flow' for flow-trained bundles and ddpm/ddim/dpm++ otherwise (or 'auto')")
    return name


def training_scheduler(cfg: DiffusionConfig):  # noqa: ANN201 - a MONAI scheduler
    """The MONAI scheduler the LDM trains with: ``DDPMScheduler`` (eps/v) or ``RFlowScheduler`` (flow)."""
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    if cfg.prediction == "flow":
        return RFlowScheduler(num_train_timesteps=cfg.num_train_timesteps, use_discrete_timesteps=True)
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False,
                         prediction_type="epsilon" if cfg.prediction == "eps" else "v_prediction")


def training_target(cfg: DiffusionConfig, scheduler, x0: torch.Tensor, noise: torch.Tensor,  # noqa: ANN001
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, regression target) for the objective: eps -> noise, v -> DDPM velocity, flow -> x0 - noise."""
    x_t = scheduler.add_noise(x0, noise, t)
    if cfg.prediction == "eps":
        return x_t, noise
    if cfg.prediction == "v":
        return x_t, scheduler.get_velocity(x0, noise, t)
    return x_t, x0 - noise


class Sampler:
    """A reverse-diffusion chain: ``set_timesteps(n)``, then ``step`` once per entry of ``timesteps``."""

    name = ""

    def __init__(self, cfg: DiffusionConfig, steps: int) -> None:
        if not 1 <= steps <= cfg.num_train_timesteps:
            raise InputError(f"must be between 1 and {cfg.num_train_timesteps} (the training steps), got {steps}",
                             where="steps", fix=f"pass --steps 1..{cfg.num_train_timesteps}")
        self.cfg = cfg
        self.set_timesteps(steps)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def step(self, output: torch.Tensor, t: int, sample: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        raise NotImplementedError


def _per_sample_noise(shape: torch.Size, generators: Sequence[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """(B, ...) standard normal noise, row i drawn from ``generators[i]`` on the CPU (device-independent)."""
    rows = [torch.randn(shape[1:], generator=g) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


class _DiffusersSampler(Sampler):
    """A diffusers scheduler built on the training schedule's exact betas."""

    scheduler_class = ""
    options: dict = {}

    def __init__(self, cfg: DiffusionConfig, steps: int, eta: float = 0.0) -> None:
        import diffusers

        betas = training_scheduler(cfg).betas.double().numpy()
        prediction = "epsilon" if cfg.prediction == "eps" else "v_prediction"
        self.scheduler = getattr(diffusers, self.scheduler_class)(
            num_train_timesteps=cfg.num_train_timesteps, trained_betas=betas, prediction_type=prediction,
            **self.options)
        self.eta = eta
        super().__init__(cfg, steps)

    def set_timesteps(self, n: int) -> None:
        self.scheduler.set_timesteps(n)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]


class DDPMSampler(_DiffusersSampler):
    """Ancestral DDPM (the reference: 1000 steps); fewer steps use diffusers' leading spacing."""

    name = "ddpm"
    scheduler_class = "DDPMScheduler"
    options = {"clip_sample": False, "variance_type": "fixed_small"}

    def step(self, output, t, sample, generators=None):  # noqa: ANN001, ANN201
        if generators is None:
            raise ValueError("DDPM draws noise at every step: pass one torch.Generator per sample")
        rows = [self.scheduler.step(output[i:i + 1], t, sample[i:i + 1], generator=g).prev_sample
                for i, g in enumerate(generators)]
        return torch.cat(rows)


class DDIMSampler(_DiffusersSampler):
    """DDIM (Song et al.) with ``eta`` (0 = deterministic); trailing spacing, so the chain starts at t = T-1."""

    name = "ddim"
    scheduler_class = "DDIMScheduler"
    options = {"clip_sample": False, "set_alpha_to_one": True, "timestep_spacing": "trailing"}

    def step(self, output, t, sample, generators=None):  # noqa: ANN001, ANN201
        noise = None
        if self.eta > 0:
            if generators is None:
                raise ValueError("DDIM with eta > 0 draws noise: pass one torch.Generator per sample")
            noise = _per_sample_noise(sample.shape, generators, sample)
        return self.scheduler.step(output, t, sample, eta=self.eta, variance_noise=noise).prev_sample


class DPMSolverSampler(_DiffusersSampler):
    """DPM-Solver++ 2M with Karras sigmas (Lu et al.; Karras et al.): deterministic, second order.

    Karras spacing puts more steps at low noise, where uniform spacing loses most (on a Gaussian toy
    problem with the exact score, 20 steps: std error 3% with Karras spacing vs 6% uniform).
    """

    name = "dpm++"
    scheduler_class = "DPMSolverMultistepScheduler"
    options = {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True,
               "use_karras_sigmas": True}

    def step(self, output, t, sample, generators=None):  # noqa: ANN001, ANN201
        return self.scheduler.step(output, t, sample).prev_sample


class FlowSampler(Sampler):
    """Rectified flow (MONAI ``RFlowScheduler``): Euler steps along the predicted velocity from t = T to 0."""

    name = "flow"

    def set_timesteps(self, n: int) -> None:
        from monai.networks.schedulers import RFlowScheduler

        self.scheduler = RFlowScheduler(num_train_timesteps=self.cfg.num_train_timesteps, use_discrete_timesteps=True)
        self.scheduler.set_timesteps(n)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        self._next = dict(zip(self.timesteps, [*self.timesteps[1:], 0]))

    def step(self, output, t, sample, generators=None):  # noqa: ANN001, ANN201
        return self.scheduler.step(output, t, sample, self._next[int(t)])[0]


_CLASSES = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm++": DPMSolverSampler, "flow": FlowSampler}


def build_sampler(name: str, cfg: DiffusionConfig, steps: int | None = None, eta: float = 0.0) -> Sampler:
    """A sampler for a model trained with ``cfg``; ``steps`` None takes the sampler's default."""
    name = resolve_sampler(name, cfg.prediction)
    if eta < 0:
        raise InputError(f"eta must be >= 0, got {eta}", where="eta", fix="use 0 for deterministic DDIM")
    if steps is None:  # a default never asks for more steps than the model was trained with
        steps = min(DEFAULT_STEPS[name] or cfg.num_train_timesteps, cfg.num_train_timesteps)
    if name == "flow":
        return FlowSampler(cfg, steps)
    return _CLASSES[name](cfg, steps, eta=eta)


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
def guided_prediction(ldm, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,  # noqa: ANN001
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
    out = ldm.unet(xs, ts, context, class_probs, spacing)
    conditional = guided = out[:b]
    if guidance != 1.0:
        unconditional = out[b:2 * b]
        guided = unconditional + guidance * (conditional - unconditional)
    if class_guidance != 1.0:
        guided = guided + (class_guidance - 1.0) * (conditional - out[-b:])
    return guided


@torch.no_grad()
def predicted_class_probs(ldm, cond: Conditioning) -> torch.Tensor:  # noqa: ANN001
    """The adapter's class probabilities (B, 2) from the reports at t = 0 (the least noisy step)."""
    t = torch.zeros(cond.text.shape[0], dtype=torch.long, device=cond.text.device)
    return ldm.adapter(cond.text, cond.mask, t)[1].softmax(dim=-1)


@torch.no_grad()
def sample_latents(ldm, sampler: Sampler, noise: torch.Tensor, cond: Conditioning, *,  # noqa: ANN001
                   guidance: float = 1.0, class_guidance: float = 1.0,
                   generators: Sequence[torch.Generator] | None = None, progress=None) -> torch.Tensor:  # noqa: ANN001
    """Run the reverse chain from ``noise`` (B, C, x, y, z) to clean (scaled) latents of the same shape.

    ``guidance`` / ``class_guidance`` as in ``guided_prediction``; ``generators`` (one per sample) feed the
    stochastic samplers' noise; ``progress(done, total)`` is called after every step.
    """
    sampler.set_timesteps(sampler.steps)  # fresh state (DPM-Solver++ keeps a history)
    x = noise
    for i, t in enumerate(sampler.timesteps, start=1):
        ts = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = guided_prediction(ldm, x, ts, cond, guidance, class_guidance)
        x = sampler.step(out.float(), t, x, generators)
        if progress is not None:
            progress(i, sampler.steps)
    return x

