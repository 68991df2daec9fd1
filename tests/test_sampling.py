"""Samplers on a toy problem with a known exact score: a wrong coefficient moves the samples' moments."""

from __future__ import annotations

import pytest
import torch

from synthaug.config import DiffusionConfig, SampleConfig
from synthaug.errors import ConfigError, InputError
from synthaug.ldm import samplers
from synthaug.ldm.sampling import (
    Sampler,
    build_sampler,
    default_steps,
    register_sampler,
    resolve_sampler,
    sampler_names,
    training_scheduler,
    training_target,
)

MU, SIGMA = 0.5, 0.8  # the "data": every voxel ~ N(MU, SIGMA^2), independent
SHAPE = (8, 1, 10, 10, 10)  # 8000 values in 8 samples


def exact_eps(cfg: DiffusionConfig, x: torch.Tensor, t: int) -> torch.Tensor:
    """E[eps | x_t] for Gaussian data: x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    a = training_scheduler(cfg).alphas_cumprod[t].double()
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a)


def exact_v(cfg: DiffusionConfig, x: torch.Tensor, t: int) -> torch.Tensor:
    """E[v | x_t] with v = sqrt(a) eps - sqrt(1 - a) x0."""
    a = training_scheduler(cfg).alphas_cumprod[t].double()
    x0 = MU + a.sqrt() * SIGMA**2 * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a)
    return a.sqrt() * exact_eps(cfg, x, t) - (1 - a).sqrt() * x0


def exact_flow(cfg: DiffusionConfig, x: torch.Tensor, t: int) -> torch.Tensor:
    """E[x0 - eps | x_t] on the straight path x_t = (1 - s) x0 + s eps, s = t / T."""
    s = t / cfg.num_train_timesteps
    var = (1 - s) ** 2 * SIGMA**2 + s**2
    centred = x - (1 - s) * MU
    return MU + (1 - s) * SIGMA**2 * centred / var - s * centred / var


def run_chain(name: str, prediction: str, steps: int, eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    cfg = DiffusionConfig(prediction=prediction)
    sampler = build_sampler(name, cfg, steps, eta=eta)
    generators = [torch.Generator().manual_seed(seed * 100 + i) for i in range(SHAPE[0])]
    x = torch.stack([torch.randn(SHAPE[1:], generator=g) for g in generators]).double()
    exact = {"eps": exact_eps, "v": exact_v, "flow": exact_flow}[prediction]
    for t in sampler.timesteps:
        x = sampler.step(exact(cfg, x, t), t, x, generators)
    return x


def std_error(x: torch.Tensor) -> float:
    return abs(float(x.std()) / SIGMA - 1)


@pytest.mark.parametrize("name,prediction,steps", [
    ("ddim", "eps", 200), ("ddim", "v", 200), ("dpm++", "eps", 20), ("dpm++", "v", 20), ("flow", "flow", 100),
    ("ddpm", "eps", 1000),
])
def test_sampler_recovers_the_data_distribution(name, prediction, steps):
    x = run_chain(name, prediction, steps)
    assert abs(float(x.mean()) - MU) < 0.03
    assert std_error(x) < 0.04


@pytest.mark.parametrize("name,prediction,steps", [("ddim", "eps", 10), ("dpm++", "eps", 10), ("flow", "flow", 10)])
def test_the_error_shrinks_as_steps_double(name, prediction, steps):
    errors = [std_error(run_chain(name, prediction, n)) for n in (steps, 2 * steps, 4 * steps)]
    assert errors[0] > errors[1] > errors[2]


def test_stochastic_ddim_matches_the_distribution_too():
    x = run_chain("ddim", "eps", 200, eta=1.0)
    assert abs(float(x.mean()) - MU) < 0.03 and std_error(x) < 0.04


def test_a_wrong_noise_coefficient_is_caught():
    """The same chain with the score off by 10% misses the moments: the tolerance above has teeth."""
    cfg = DiffusionConfig()
    sampler = build_sampler("dpm++", cfg, 20)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).double()
    for t in sampler.timesteps:
        x = sampler.step(1.1 * exact_eps(cfg, x, t), t, x)
    assert std_error(x) > 0.1


def test_deterministic_samplers_repeat_and_stochastic_ones_follow_their_seeds():
    assert torch.equal(run_chain("ddim", "eps", 10), run_chain("ddim", "eps", 10))
    assert torch.equal(run_chain("ddim", "eps", 10, eta=1.0, seed=3), run_chain("ddim", "eps", 10, eta=1.0, seed=3))
    assert not torch.equal(run_chain("ddim", "eps", 10, eta=1.0, seed=3), run_chain("ddim", "eps", 10, eta=1.0, seed=4))


def test_flow_training_target_is_the_straight_path_velocity():
    cfg = DiffusionConfig(prediction="flow")
    scheduler = training_scheduler(cfg)
    x0, noise = torch.full((2, 1, 2, 2, 2), 3.0), torch.zeros(2, 1, 2, 2, 2)
    x_t, target = training_target(cfg, scheduler, x0, noise, torch.tensor([0, 500]))
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[1], 0.5 * x0[1])
    assert torch.equal(target, x0 - noise)


def test_sampler_choice_and_bad_settings():
    assert resolve_sampler("auto", "eps") == "ddim" and resolve_sampler("auto", "flow") == "flow"
    assert resolve_sampler("auto", "v") == "ddim" and SampleConfig().eta == 1.0  # stochastic DDIM by default
    assert build_sampler("auto", DiffusionConfig()).steps == default_steps("ddim", DiffusionConfig()) == 20
    assert build_sampler("ddpm", DiffusionConfig()).steps == 1000
    short = DiffusionConfig(num_train_timesteps=16)  # defaults follow the model's own number of steps
    assert build_sampler("ddpm", short).steps == 16 and build_sampler("dpm++", short).steps == 16
    with pytest.raises(InputError, match="unknown sampler"):
        build_sampler("euler", DiffusionConfig())
    with pytest.raises(InputError, match="cannot sample"):
        build_sampler("flow", DiffusionConfig())
    with pytest.raises(InputError, match="cannot sample"):
        build_sampler("ddim", DiffusionConfig(prediction="flow"))
    for steps in (0, 1001):
        with pytest.raises(InputError, match="between 1 and 1000"):
            build_sampler("ddim", DiffusionConfig(), steps)
    with pytest.raises(InputError, match="eta"):
        build_sampler("ddim", DiffusionConfig(), 10, eta=-1)


def test_the_registry_names_every_sampler_and_builds_a_new_one_by_name(monkeypatch):
    assert sampler_names() == ("ddpm", "ddim", "dpm++", "flow")
    with pytest.raises(InputError) as unknown:
        build_sampler("euler", DiffusionConfig())
    assert unknown.value.fix == "choose one of ddpm, ddim, dpm++, flow"
    with pytest.raises(InputError) as mismatch:
        build_sampler("flow", DiffusionConfig())
    assert mismatch.value.fix == "use 'flow' for flow-trained bundles and ddpm/ddim/dpm++ otherwise (or 'auto')"
    with pytest.raises(ConfigError, match="Input should be 'auto', 'ddpm', 'ddim', 'dpm\\+\\+' or 'flow'"):
        SampleConfig().with_options(sampler="euler")

    monkeypatch.setattr(samplers, "_SAMPLERS", dict(samplers._SAMPLERS))  # this test's registrations end with it

    @register_sampler
    class Euler(Sampler):  # a new sampler is one decorated class: name, default steps, objectives, constructor
        name, default_steps, predictions = "euler", 7, ("flow",)

        def set_timesteps(self, n: int) -> None:
            self.timesteps = list(range(n, 0, -1))

    flow = DiffusionConfig(prediction="flow")
    assert "euler" in sampler_names() and SampleConfig().with_options(sampler="euler").sampler == "euler"
    assert isinstance(build_sampler("euler", flow), Euler) and build_sampler("euler", flow).steps == 7
    assert resolve_sampler("auto", "flow") == "flow"  # auto keeps its choice: Euler claims no objective
    with pytest.raises(InputError, match="cannot sample"):
        build_sampler("euler", DiffusionConfig())
    with pytest.raises(ValueError, match="already registered"):
        register_sampler(Euler)


def test_eps_and_v_training_targets():
    for prediction in ("eps", "v"):
        cfg = DiffusionConfig(prediction=prediction)
        scheduler = training_scheduler(cfg)
        x0, noise = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2)
        t = torch.tensor([10, 700])
        a = scheduler.alphas_cumprod[t].view(2, 1, 1, 1, 1)
        x_t, target = training_target(cfg, scheduler, x0, noise, t)
        torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
        expected = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        torch.testing.assert_close(target, expected)
