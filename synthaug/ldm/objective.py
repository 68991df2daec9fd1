"""The LDM's training objective: the noise schedule it trains with and the target it regresses.

    scheduler = training_scheduler(cfg.diffusion)
    t = training_timesteps(cfg.diffusion, batch, generator)
    x_t, target = training_target(cfg.diffusion, scheduler, x0, noise, t)

Training (``synthaug.ldm.train``) and sampling (``synthaug.ldm.samplers``, whose samplers take their
betas from this scheduler) share it, so both see one noise schedule. MONAI is imported where it is
used: the sampler registry, which builds on this module, loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from synthaug.config import DiffusionConfig


def training_scheduler(cfg: DiffusionConfig):  # a MONAI scheduler
    """The MONAI scheduler the LDM trains with: ``DDPMScheduler`` (eps/v) or ``RFlowScheduler`` (flow)."""
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    if cfg.prediction == "flow":
        return RFlowScheduler(num_train_timesteps=cfg.num_train_timesteps, use_discrete_timesteps=True)
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=False,
                         prediction_type="epsilon" if cfg.prediction == "eps" else "v_prediction")


def training_timesteps(cfg: DiffusionConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps in [0, num_train_timesteps) from ``generator``, as ``cfg.timestep_sampling`` says.

    MONAI's ``RFlowScheduler.sample_timesteps`` has the logit-normal draw too, but from the global RNG; the
    trainer's stream is its own so that a resumed run repeats its draws.
    """
    import torch

    steps = cfg.num_train_timesteps
    if cfg.timestep_sampling == "logit-normal":
        fraction = torch.sigmoid(torch.randn(n, generator=generator))
        return (fraction * steps).long().clamp(0, steps - 1)
    return torch.randint(0, steps, (n,), generator=generator)


def training_target(cfg: DiffusionConfig, scheduler, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, regression target) for the objective: eps -> noise, v -> DDPM velocity, flow -> x0 - noise."""
    x_t = scheduler.add_noise(x0, noise, t)
    if cfg.prediction == "eps":
        return x_t, noise
    if cfg.prediction == "v":
        return x_t, scheduler.get_velocity(x0, noise, t)
    return x_t, x0 - noise
