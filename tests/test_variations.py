"""Variations of given volumes (``CCELLAGenerator.vary``, SDEdit): where the chain starts, what it starts from,
that strength 1 is plain generation, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

import synthaug.ldm.sampling as sampling
from synthaug.errors import InputError
from synthaug.generate import CCELLAGenerator
from synthaug.ldm.samplers import build_sampler
from synthaug.ldm.sampling import start_step


@pytest.mark.parametrize(("steps", "strength", "start"), [(6, 1.0, 0), (6, 0.5, 3), (6, 0.34, 4), (4, 0.25, 3),
                                                          (10, 0.3, 7)])
def test_strength_picks_the_last_steps_of_the_chain(steps, strength, start):
    assert start_step(steps, strength) == start


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.01, float("nan"), "0.5"])
def test_a_strength_outside_0_1_is_one_clear_error(strength):
    with pytest.raises(InputError, match="strength must be in"):
        start_step(6, strength)


def test_a_strength_that_runs_no_step_says_how_many_it_needs():
    with pytest.raises(InputError, match="runs no step"):
        start_step(4, 0.1)


def _real(bundle, manifest, n: int) -> tuple[torch.Tensor, list[dict]]:
    """``n`` training cases of the phantom, in model space as ``VolumeStore`` loads them."""
    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore

    cases = load_manifest(manifest).items("train")[:n]
    load = VolumeStore(bundle.config.data)
    return torch.stack([load(c)["image"] for c in cases]), cases


def test_the_chain_starts_from_the_given_volume_noised_to_its_first_step(small_bundle, small_phantom, monkeypatch):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, class_guidance=1.0,
                                            precision="fp32")
    x, cases = _real(generator.bundle, small_phantom, 2)
    seen = []
    real_prediction = sampling.guided_prediction
    monkeypatch.setattr(sampling, "guided_prediction",
                        lambda ldm, x_t, t, *a: seen.append((x_t.clone(), int(t[0]))) or real_prediction(ldm, x_t, t, *a))
    out = generator.vary(x, [c["label"] for c in cases], seeds=[3, 4], strength=0.5)
    assert [t for _, t in seen] == generator.sampler.timesteps[2:]  # the last two of four steps, one pass each
    from synthaug.ldm.autoencoder import encode_volumes

    init = encode_volumes(generator.autoencoder, list(x)) * generator.bundle.scale_factor
    noise = torch.stack([torch.randn(init.shape[1:], generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    expected = generator.sampler.add_noise(init, noise, seen[0][1])
    torch.testing.assert_close(seen[0][0], expected)
    p = out.provenance[0]
    assert p["strength"] == 0.5 and p["seed"] == 3 and p["label"] == cases[0]["label"]
    assert out.volumes.shape == (2, *x.shape[1:]) and torch.isfinite(out.volumes).all()
    assert "strength" not in generator.generate([0], seeds=[0]).provenance[0]


def test_less_strength_stays_closer_to_the_given_volume(small_bundle, small_phantom):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, precision="fp32")
    x, cases = _real(generator.bundle, small_phantom, 4)
    labels = [c["label"] for c in cases]
    target = generator.to_intensity(generator.round_trip(x))
    far = (generator.vary(x, labels, seeds=[0, 1, 2, 3], strength=1.0).volumes - target).abs().mean()
    near = (generator.vary(x, labels, seeds=[0, 1, 2, 3], strength=0.25).volumes - target).abs().mean()
    assert near < 0.5 * far


def test_strength_1_of_a_flow_chain_is_plain_generation(small_phantom, tmp_path):
    """Rectified flow's first step is pure noise: a variation at strength 1 forgets its volume entirely."""
    from synthaug.ldm.train import train_generator
    from tests.helpers import small_config

    train_generator(small_phantom, tmp_path / "flow", small_config("train.steps=4", "diffusion.prediction=flow"))
    generator = CCELLAGenerator.from_bundle(tmp_path / "flow", steps=3, precision="fp32")
    x, cases = _real(generator.bundle, small_phantom, 2)
    reports = [c["report"] for c in cases]
    varied = generator.vary(x, [1, 0], reports=reports, seeds=[7, 8], strength=1.0).volumes
    torch.testing.assert_close(varied, generator.generate([1, 0], reports=reports, seeds=[7, 8]).volumes)
    assert not torch.allclose(generator.vary(x, [1, 0], reports=reports, seeds=[7, 8], strength=0.34).volumes, varied)


def test_volumes_of_the_wrong_shape_are_one_clear_error(small_bundle):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4)
    with pytest.raises(InputError, match=r"volumes.*\(N, 1, 32, 32, 16\)"):
        generator.vary(torch.zeros(2, 1, 16, 16, 16), [0, 1], strength=0.5)
    with pytest.raises(InputError, match="one per label"):
        generator.vary(torch.zeros(2, 1, 32, 32, 16), [0], strength=0.5)
    with pytest.raises(InputError, match="strength"):
        generator.vary(torch.zeros(1, 1, 32, 32, 16), [0], strength=0)


def test_every_sampler_noises_as_training_did(small_bundle, tmp_path):
    """A chain that starts part-way must start where training put that timestep's inputs (DPM-Solver++ noises
    to its own Karras sigma of the step, which the integer timestep the U-Net sees rounds)."""
    from synthaug.config import DiffusionConfig
    from synthaug.ldm.objective import training_scheduler

    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    for prediction, names in (("eps", ("ddpm", "ddim", "dpm++")), ("flow", ("flow",))):
        cfg = DiffusionConfig(prediction=prediction)
        for name in names:
            sampler = build_sampler(name, cfg, steps=4)
            for t in sampler.timesteps:
                trained = training_scheduler(cfg).add_noise(clean, noise, torch.full((2,), t, dtype=torch.long))
                tolerance = 5e-3 if name == "dpm++" else 0.0
                torch.testing.assert_close(sampler.add_noise(clean, noise, t), trained, rtol=0, atol=tolerance)


def test_cli_generate_vary_writes_variations_of_the_train_cases(small_bundle, small_phantom, tmp_path, capsys):
    from synthaug.data.manifest import load_manifest
    from tests.test_cli import assert_one_line_error
    from tests.test_generate import in_process

    out = tmp_path / "var"
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", out, "--vary", small_phantom,
                      "--n", "3", "--strength", "0.5", "--sampler", "ddim", "--steps", "4", "--seed", "2")
    assert done.returncode == 0, done.stderr
    cases = load_manifest(small_phantom).items("train")[:3]
    rows = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert [r["source_case"] for r in rows] == [c["case_id"] for c in cases]
    assert [r["label"] for r in rows] == [c["label"] for c in cases] and [r["seed"] for r in rows] == [2, 3, 4]
    assert all(r["strength"] == 0.5 and r["report_source"] == "given" for r in rows)
    assert [r["report"] for r in rows] == [c.get("report") or "" for c in cases]
    assert "the last 2 of 4 steps" in " ".join(done.stdout.split())
    for args, match in ((["--strength", "0"], "strength must be in"), (["--strength", "1.5"], "strength must be in"),
                        (["--strength", "nan"], "strength must be in"), (["--label", "1"], "--label"),
                        (["--report", "x"], "--report"), (["--steps", "2", "--strength", "0.1"], "runs no step")):
        done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "bad", "--vary",
                          small_phantom, *args)
        assert_one_line_error(done, match)
        assert not (tmp_path / "bad").exists()
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "bad", "--strength", "0.5")
    assert_one_line_error(done, "--vary")
    for args, match in ((["--strength", "0.5"], "--vary"), (["--vary", small_phantom, "--label", "0"], "--label")):
        done = in_process(capsys, "generate", "--bundle", tmp_path / "no-bundle", "--out", tmp_path / "bad", *args)
        assert_one_line_error(done, match)  # the options alone are checked before a bundle is looked for
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "bad", "--vary",
                      tmp_path / "missing.jsonl")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
