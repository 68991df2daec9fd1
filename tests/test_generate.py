"""CCELLAGenerator and `synthaug generate`: determinism, text and class guidance, class control, geometry, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from synthaug.cli import main
from synthaug.data.io import read_volume
from synthaug.errors import InputError
from synthaug.generate import CCELLAGenerator
from synthaug.ldm.bundle import CONFIG_FILE, LDM_EMA_FILE, load_bundle
from synthaug.ldm.model import null_class
from synthaug.ldm.sampling import guided_prediction, guided_steps
from tests.test_cli import assert_one_line_error, synthaug

REPORT = "IMPRESSION: PI-RADS 4 lesion in the left peripheral zone."


@pytest.fixture(scope="module")
def generator(small_bundle) -> CCELLAGenerator:
    """Unguided (class guidance 1): the tests below compare guidance against it."""
    return CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, class_guidance=1.0)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float reordering in batched convolutions (1e-5 of the intensity range)."""
    return torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))


def test_volumes_have_the_bundle_geometry_and_provenance(generator, small_bundle):
    out = generator.generate([0, 1], seeds=[5, 6])
    assert out.volumes.shape == (2, 1, 32, 32, 16) and out.volumes.dtype == torch.float32
    assert torch.isfinite(out.volumes).all()
    assert out.spacing == (3.0, 3.0, 6.0)
    assert np.allclose(np.diag(out.affine)[:3], [3.0, 3.0, 6.0])
    assert np.allclose(out.affine[:3, 3], -(np.array([32, 32, 16]) - 1) / 2 * np.array([3.0, 3.0, 6.0]))
    p = out.provenance[1]
    assert p["seed"] == 6 and p["label"] == 1 and p["requested_label"] == 1
    assert p["sampler"] == "ddim" and p["steps"] == 4 and p["guidance"] == 1.0 and p["ema"] is True
    assert p["bundle"] == generator.fingerprint and p["report_source"] == "train"
    assert 0.0 <= p["predicted_prob"] <= 1.0
    train_reports = {c["report"] for c in generator.bundle.train_cases if c["label"] == 1}
    assert p["report"] in train_reports and p["report"]
    # In the training data's units: the model's [0, 1] maps onto the median raw 0-99.5 percentile range.
    stats = generator.bundle.info["data"]["intensity"]
    low, high = stats["p0_median"], stats["p99_5_median"]
    assert high > 1.5 and low - 1e-3 <= float(out.volumes.min()) and float(out.volumes.max()) <= high + 1e-3
    unit = torch.rand(1, 1, 2, 2, 2)
    torch.testing.assert_close(generator.to_intensity(unit), unit * (high - low) + low)


def test_round_trip_is_the_autoencoders_posterior_mean_decoded_and_clamped(generator):
    """What link (b) of the class-signal chain and the benchmarks' round-trip arms feed a judge or classifier."""
    from synthaug.ldm.autoencoder import decode_latents, encode_volumes

    x = torch.rand(3, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    out = generator.round_trip(x)
    assert out.shape == x.shape and not out.requires_grad
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not close(out, x)  # it went through the autoencoder
    mean = decode_latents(generator.autoencoder, encode_volumes(generator.autoencoder, list(x)))
    assert close(out, mean.clamp(0, 1))
    assert close(generator.round_trip(x[1:2]), out[1:2])  # per volume, whatever the batch


def test_same_seed_same_volume_whatever_the_batch(small_bundle):
    labels, seeds = [1, 0, 1, 0], [11, 12, 13, 14]
    for sampler, eta in (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)):
        steps = 4 if sampler == "ddim" else 10
        options = {"sampler": sampler, "steps": steps, "eta": eta, "precision": "fp32"}  # bitwise in fp32
        batched = CCELLAGenerator.from_bundle(small_bundle, batch_size=4, **options)
        single = CCELLAGenerator.from_bundle(small_bundle, batch_size=1, **options)
        a = batched.generate(labels, seeds=seeds)
        b = single.generate(labels[2:3], seeds=seeds[2:3])
        assert close(a.volumes[2], b.volumes[0]), sampler
        assert a.provenance[2]["report"] == b.provenance[0]["report"]
        assert not close(a.volumes[0], a.volumes[2])


def test_new_reports_are_encoded_in_one_call_and_cached(small_bundle, monkeypatch):
    generator = CCELLAGenerator.from_bundle(small_bundle, precision="bf16")
    encoder = generator.text_encoder
    encode, calls = encoder.encode, []
    monkeypatch.setattr(encoder, "encode", lambda texts: calls.append(list(texts)) or encode(texts))
    reports = [REPORT, "No focal lesion.", REPORT, "Diffuse low signal, PI-RADS 2."]
    batched = generator._encoded(reports)
    assert calls == [[REPORT, "No focal lesion.", "Diffuse low signal, PI-RADS 2."]]  # once, each report once
    generator._encoded(reports[1:])
    assert len(calls) == 1  # then from the cache
    width = generator.bundle.info["text"]["max_tokens"]
    for report, (features, mask) in zip(reports, batched):
        alone, alone_mask = encode([report])
        t = alone.shape[1]
        assert features.shape == (width, alone.shape[2]) and torch.equal(mask[:t], alone_mask[0])
        assert not mask[t:].any() and not features[t:].any()
        torch.testing.assert_close(features[:t], alone[0], rtol=0, atol=1e-5 * float(alone.abs().max()))
    exact = CCELLAGenerator.from_bundle(small_bundle, precision="fp32")  # each report alone: bitwise as before
    monkeypatch.setattr(exact, "_encoder", encoder)
    calls.clear()
    for (features, _), (alone, _) in zip(exact._encoded(reports), (encode([r]) for r in reports)):
        assert torch.equal(features[:alone.shape[1]], alone[0])
    assert calls == [[REPORT], ["No focal lesion."], ["Diffuse low signal, PI-RADS 2."]]


def test_the_fast_path_agrees_with_fp32_within_the_stated_tolerance(small_bundle, monkeypatch):
    from synthaug import generate

    labels, seeds = [1, 0, 1, 0], [21, 22, 23, 24]
    exact = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, precision="fp32", batch_size=4)
    fast = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, precision="bf16", batch_size=4)
    single = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, precision="bf16", batch_size=1)
    a, b = exact.generate(labels, seeds=seeds), fast.generate(labels, seeds=seeds)
    stats = exact.bundle.info["data"]["intensity"]
    scale = stats["p99_5_median"] - stats["p0_median"]
    diff = (a.volumes - b.volumes).abs() / scale
    assert 0 < float(diff.mean()) < 0.01 and float(diff.max()) < 0.1  # the README's tolerance for bf16
    alone = (single.generate(labels[1:2], seeds=seeds[1:2]).volumes[0] - b.volumes[1]).abs() / scale
    assert float(alone.mean()) < 0.01  # in bf16 the batch changes a volume only within that tolerance
    assert a.provenance[0]["precision"] == "fp32" and b.provenance[0]["precision"] == "bf16"
    monkeypatch.setattr(generate, "cpu_has_native_bf16", lambda: False)
    assert CCELLAGenerator.from_bundle(small_bundle, precision="auto").precision == "fp32"  # emulated bf16 is slow
    monkeypatch.setattr(generate, "cpu_has_native_bf16", lambda: True)
    assert CCELLAGenerator.from_bundle(small_bundle).precision == "bf16"
    with pytest.raises(InputError, match="fp16 does not run on a CPU"):
        CCELLAGenerator.from_bundle(small_bundle, precision="fp16")


def test_bf16_runs_channels_last_and_fp32_keeps_its_bits_on_a_shared_bundle(small_bundle):
    bundle = load_bundle(small_bundle)
    options = {"sampler": "ddim", "steps": 2, "eta": 0.0}
    reference = CCELLAGenerator.from_bundle(small_bundle, precision="fp32", **options).generate([1], seeds=[5]).volumes

    def weights(module):
        return [p for p in module.parameters() if p.dim() == 5]

    fast = CCELLAGenerator(bundle, precision="bf16", **options)
    fast.generate([1], seeds=[5])
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
               for p in weights(fast.ldm) + weights(fast.autoencoder) if p.shape[1] > 1 and p.shape[-1] > 1)
    exact = CCELLAGenerator(bundle, precision="fp32", **options)  # the same modules, now channels-last
    assert torch.equal(exact.generate([1], seeds=[5]).volumes, reference)
    assert all(p.is_contiguous() for p in weights(exact.ldm) + weights(exact.autoencoder))


def test_deterministic_ddim_repeats_exactly(generator):
    a = generator.generate([1], reports=[REPORT], seeds=[3])
    b = generator.generate([1], reports=[REPORT], seeds=[3])
    assert torch.equal(a.volumes, b.volumes)


def _point(generator: CCELLAGenerator, reports: list[str]):
    """Conditioning for labels [1, 0] with ``reports``, and a fixed point (x, t) of the reverse chain."""
    cond = generator._conditioning([1, 0], reports)
    return cond, torch.randn(2, 4, 8, 8, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])


def _unet_batches(ldm, cond, *scales: float) -> list[int]:
    """The batch size of each U-Net call that one guided prediction of 2 cases makes with (guidance, class guidance)."""
    sizes = []
    handle = ldm.unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        guided_prediction(ldm, torch.zeros(2, 4, 8, 8, 4), torch.tensor([500, 20]), cond, *scales)
    finally:
        handle.remove()
    return sizes


def test_guidance_and_class_guidance_one_are_exactly_the_unguided_model(generator):
    ldm = generator.ldm
    cond, x, t = _point(generator, [REPORT, ""])
    plain, _ = ldm(x, t, cond.text, cond.mask, cond.spacing)
    assert torch.equal(guided_prediction(ldm, x, t, cond, 1.0), plain)
    assert torch.equal(guided_prediction(ldm, x, t, cond, 1.0, 1.0), plain)
    assert not torch.allclose(guided_prediction(ldm, x, t, cond, 3.0), plain)
    # w = 0 is the unconditional model: the empty report with the class the adapter predicts from it
    null = ldm(x, t, cond.null_text.expand(2, -1, -1), cond.null_mask.expand(2, -1), cond.spacing)[0]
    assert torch.allclose(guided_prediction(ldm, x, t, cond, 0.0), null, atol=1e-6)
    # a scale of 1 adds no branch: 2 cases are 2, 4 (text guidance), 4 (class guidance) or 6 U-Net rows
    scales = ((1.0, 1.0), (3.0, 1.0), (1.0, 3.0), (3.0, 3.0))
    assert [_unet_batches(ldm, cond, *s) for s in scales] == [[2], [4], [4], [6]]
    a = generator.generate([1, 0], reports=[REPORT, ""], seeds=[4, 5])
    b = CCELLAGenerator.from_bundle(generator.bundle.path, sampler="ddim", steps=4, eta=0.0, class_guidance=1.0)
    assert torch.equal(a.volumes, b.generate([1, 0], reports=[REPORT, ""], seeds=[4, 5]).volumes)


def test_guided_predictions_go_through_the_preconditioning(generator):
    # the sampler must step with what training regressed: under edm preconditioning, the velocity
    # made from the U-Net's output, for the plain pass and for every guided branch
    import copy

    from synthaug.ldm.model import edm_flow_velocity

    ldm = copy.deepcopy(generator.ldm)  # the module fixture stays unpreconditioned
    ldm.preconditioning = "edm"
    cond, x, t = _point(generator, [REPORT, REPORT])
    context, logits = ldm.adapter(cond.text, cond.mask, t)
    c = ldm.unet(x, t, context, logits.softmax(dim=-1), cond.spacing)
    n = ldm.unet(x, t, context, null_class(2), cond.spacing)
    velocity = lambda out: edm_flow_velocity(x, out, t, ldm.num_train_timesteps)  # noqa: E731
    torch.testing.assert_close(guided_prediction(ldm, x, t, cond, 1.0), velocity(c))
    torch.testing.assert_close(guided_prediction(ldm, x, t, cond, 1.0, 2.5),
                               velocity(n) + 2.5 * (velocity(c) - velocity(n)))


def test_class_guidance_pushes_the_class_against_the_null_class(generator, small_bundle):
    ldm = generator.ldm
    cond, x, t = _point(generator, [REPORT, REPORT])
    context, logits = ldm.adapter(cond.text, cond.mask, t)
    c = ldm.unet(x, t, context, logits.softmax(dim=-1), cond.spacing)  # the report's class (class_source report)
    n = ldm.unet(x, t, context, null_class(2), cond.spacing)  # the null class
    u = ldm(x, t, cond.null_text.expand(2, -1, -1), cond.null_mask.expand(2, -1), cond.spacing)[0]
    assert not torch.allclose(c, n)
    torch.testing.assert_close(guided_prediction(ldm, x, t, cond, 1.0, 2.5), n + 2.5 * (c - n))
    torch.testing.assert_close(guided_prediction(ldm, x, t, cond, 2.0, 2.5), u + 2.0 * (c - u) + 1.5 * (c - n))

    guided = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, eta=0.0, class_guidance=3.0)
    a = generator.generate([1], reports=[REPORT], seeds=[3])
    b = guided.generate([1], reports=[REPORT], seeds=[3])
    assert not torch.allclose(a.volumes, b.volumes)
    assert b.provenance[0]["class_guidance"] == 3.0 and a.provenance[0]["class_guidance"] == 1.0


def test_the_generator_passes_both_guidance_scales_to_every_sampler_step(small_bundle, monkeypatch):
    from synthaug.ldm import sampling

    seen = []

    def spy(ldm, x, t, cond, guidance, class_guidance=1.0):  # the prediction each sampler step is given
        seen.append((guidance, class_guidance))
        return guided_prediction(ldm, x, t, cond, guidance, class_guidance)

    monkeypatch.setattr(sampling, "guided_prediction", spy)
    guided = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=3, guidance=2.5, class_guidance=3.0,
                                         guidance_interval=(0.0, 1.0), batch_size=1)
    out = guided.generate([0, 1], seeds=[1, 2])
    assert seen == [(2.5, 3.0)] * 6  # 3 steps for each of the 2 batches
    assert [(p["guidance"], p["class_guidance"]) for p in out.provenance] == [(2.5, 3.0)] * 2
    # a guidance interval guides the steps whose t/T lies in it (DDIM x 4, trailing: t = 999, 749, 499, 249)
    seen.clear()
    part = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=4, guidance=2.5, class_guidance=3.0,
                                       guidance_interval=(0.4, 0.8))
    assert part.sampler.timesteps == [999, 749, 499, 249]
    out = part.generate([1], seeds=[1])
    assert seen == [(1.0, 1.0), (2.5, 3.0), (2.5, 3.0), (1.0, 1.0)]
    assert out.provenance[0]["guidance_interval"] == [0.4, 0.8]
    assert guided_steps([1000, 500, 499, 0], 1000, (0.5, 1.0)) == [True, True, False, False]  # ends included


def test_the_default_guidance_interval_is_the_noisier_half(small_bundle):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=1)
    assert generator.guidance_interval == (0.5, 1.0) and generator.settings()["guidance_interval"] == [0.5, 1.0]
    for interval in ((0.5, 0.5), (0.8, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.0, float("nan"))):
        with pytest.raises(InputError, match="sample.guidance_interval"):
            CCELLAGenerator.from_bundle(small_bundle, guidance_interval=interval)


def test_class_guidance_defaults_to_12_with_a_null_class_and_1_without(small_bundle):
    from dataclasses import replace

    from synthaug.config import CLASS_GUIDANCE

    bundle = load_bundle(small_bundle)
    assert bundle.config.sample.class_guidance is None and CLASS_GUIDANCE == 12.0
    assert CCELLAGenerator(bundle, sampler="ddim", steps=1).class_guidance == 12.0
    loss = bundle.config.loss.model_copy(update={"p_null": 0.0})
    no_null = replace(bundle, config=bundle.config.model_copy(update={"loss": loss}))
    assert CCELLAGenerator(no_null, sampler="ddim", steps=1).class_guidance == 1.0


def test_class_guidance_is_refused_on_a_bundle_trained_without_a_null_class(small_bundle, tmp_path):
    from dataclasses import replace

    bundle = load_bundle(small_bundle)
    assert bundle.config.loss.p_null > 0  # the default trains the null class
    loss = bundle.config.loss.model_copy(update={"p_null": 0.0})
    no_null = replace(bundle, config=bundle.config.model_copy(update={"loss": loss}))
    with pytest.raises(InputError, match="p_null 0") as err:
        CCELLAGenerator(no_null, class_guidance=2.0)
    assert err.value.where == "class_guidance"
    CCELLAGenerator(no_null, sampler="ddim", steps=1)  # without class guidance: fine
    # bundles written before the class-slot settings were trained without a null class
    old = tmp_path / "old"
    shutil.copytree(small_bundle, old)
    document = json.loads((old / CONFIG_FILE).read_text())
    del document["config"]["loss"]["p_label"], document["config"]["loss"]["p_null"]
    (old / CONFIG_FILE).write_text(json.dumps(document))
    assert load_bundle(old, verify=False).config.loss.p_null == 0.0
    with pytest.raises(InputError, match="p_null 0"):
        CCELLAGenerator.from_bundle(old, verify=False, class_guidance=2.0)


def _class_inputs(generator: CCELLAGenerator, labels: list[int], report: str) -> torch.Tensor:
    """The class probabilities the U-Net receives for the conditional branch, captured with a hook."""
    seen = []
    handle = generator.ldm.unet.register_forward_pre_hook(lambda m, args: seen.append(args[3].clone()))
    try:
        generator.generate(labels, reports=[report] * len(labels), seeds=list(range(len(labels))))
    finally:
        handle.remove()
    return seen[-1][: len(labels)]


def test_class_source_label_feeds_the_requested_class(small_bundle):
    by_label = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, class_source="label")
    by_report = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, class_source="report")
    probs = _class_inputs(by_label, [0, 1], REPORT)
    assert torch.equal(probs, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # flips with the label
    probs = _class_inputs(by_report, [0, 1], REPORT)
    assert torch.allclose(probs[0], probs[1])  # the same report: the same predicted class, whatever the label
    a = by_label.generate([0], reports=[REPORT], seeds=[1]).volumes
    b = by_label.generate([1], reports=[REPORT], seeds=[1]).volumes
    assert not torch.allclose(a, b)


def test_report_sources(small_bundle):
    template = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=1, report_source="template",
                                           class_source="label")
    empty = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=1, report_source="empty",
                                        class_source="label")
    assert "PI-RADS" in template.choose_report(1, seed=0)
    assert template.choose_report(1, seed=0) == template.choose_report(1, seed=0)
    assert empty.generate([1], seeds=[0]).provenance[0]["report"] == ""


def test_generation_progress_counts_every_volume_of_a_batch(small_bundle):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, batch_size=2)
    seen = []
    generator.generate([0, 1, 0], seeds=[0, 1, 2], progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 6), (4, 6), (5, 6), (6, 6)]  # volume-steps: a batch of 2, then a batch of 1


def test_made_up_reports_refuse_the_class_from_the_report_where_it_would_be_lost(small_bundle, tmp_path):
    from dataclasses import replace

    # the adapter's reading of an empty report names no class: the requested class would be lost silently
    with pytest.raises(InputError, match="report_source 'empty' needs class_source 'label'"):
        CCELLAGenerator.from_bundle(small_bundle, report_source="empty")
    # a template states its PI-RADS score: read by a class head trained with report variants (the default) ...
    bundle = load_bundle(small_bundle)
    assert bundle.config.loss.report_variants > 0
    template = CCELLAGenerator(bundle, sampler="ddim", steps=1, report_source="template")
    assert template.class_source == "report" and "PI-RADS" in template.choose_report(1, seed=0)
    # ... refused for one trained without them, and for bundles written before the setting (trained without)
    loss = bundle.config.loss.model_copy(update={"report_variants": 0})
    without = replace(bundle, config=bundle.config.model_copy(update={"loss": loss}))
    with pytest.raises(InputError, match="needs a bundle trained with loss.report_variants > 0") as err:
        CCELLAGenerator(without, report_source="template")
    assert err.value.where == "report_source" and "--class-source label" in err.value.message
    CCELLAGenerator(without, sampler="ddim", steps=1, report_source="template", class_source="label")  # fine
    old = tmp_path / "old"
    shutil.copytree(small_bundle, old)
    document = json.loads((old / CONFIG_FILE).read_text())
    del document["config"]["loss"]["report_variants"]
    (old / CONFIG_FILE).write_text(json.dumps(document))
    assert load_bundle(old, verify=False).config.loss.report_variants == 0
    with pytest.raises(InputError, match="report_variants > 0"):
        CCELLAGenerator.from_bundle(old, verify=False, report_source="template")


def test_bad_requests_are_one_clear_error(generator, small_bundle):
    with pytest.raises(InputError, match="0 or 1"):
        generator.generate([2])
    with pytest.raises(InputError, match="2 reports for 1 labels"):
        generator.generate([1], reports=["a", "b"])
    with pytest.raises(InputError, match="seeds"):
        generator.generate([1, 0], seeds=[1])
    for options, match in (({"sampler": "plms"}, "sampler"), ({"steps": 0}, "sample.steps"),
                           ({"steps": 1001}, "between 1 and 1000"), ({"guidance": -0.5}, "greater than or equal to 0"),
                           ({"guidance": float("inf")}, "finite"), ({"class_guidance": -1.0}, "greater than or equal"),
                           ({"class_guidance": float("nan")}, "finite"),
                           ({"sampler": "flow"}, "cannot sample")):
        with pytest.raises(InputError, match=match):
            CCELLAGenerator.from_bundle(small_bundle, **options)


def test_damaged_bundles_are_refused(small_bundle, tmp_path):
    missing = tmp_path / "missing"
    shutil.copytree(small_bundle, missing)
    (missing / LDM_EMA_FILE).unlink()
    with pytest.raises(InputError, match="fingerprint"):
        CCELLAGenerator.from_bundle(missing)
    (missing / "ldm.safetensors").unlink()
    with pytest.raises(InputError, match="missing ldm.safetensors"):
        CCELLAGenerator.from_bundle(missing)


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run `synthaug ARGS` in this process (no interpreter start-up), shaped like a subprocess result."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_cli_generate_writes_volumes_provenance_and_montage(small_bundle, tmp_path, capsys):
    out = tmp_path / "gen"
    done = synthaug("generate", "--bundle", str(small_bundle), "--out", str(out), "--n", "3", "--label", "1",
                    "--sampler", "ddim", "--steps", "2", "--guidance", "2.0", "--seed", "7")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [7, 8, 9] and all(r["label"] == 1 and r["guidance"] == 2.0 for r in rows)
    assert all(r["eta"] == 1.0 for r in rows) and "ddim x 2, eta 1, guidance 2.0" in " ".join(done.stdout.split())  # the default eta
    volume = read_volume(out / rows[0]["file"])
    assert volume.array.shape == (32, 32, 16) and np.allclose(np.diag(volume.affine)[:3], [3.0, 3.0, 6.0])
    assert (out / "montage.png").read_bytes()[:4] == b"\x89PNG"
    agree = sum(r["predicted_label"] == r["label"] for r in rows)  # the class from the report: how often it is asked for
    assert f"the requested class for {agree} of 3" in " ".join(done.stdout.split())

    for args, match in ((["--label", "3"], "--label"), (["--steps", "0"], "steps"), (["--guidance", "-1"], "guidance"),
                        (["--class-guidance", "-1"], "--class-guidance"), (["--class-guidance", "nan"], "--class-guidance"),
                        (["--sampler", "flow"], "cannot sample"), (["--guidance-interval", "0.8:0.2"], "guidance_interval"),
                        (["--guidance-interval", "half"], "--guidance-interval"),
                        (["--report-source", "empty"], "needs class_source 'label'")):
        done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "bad", *args)
        assert_one_line_error(done, match)
        assert not (tmp_path / "bad").exists()
    assert_one_line_error(in_process(capsys, "generate", "--bundle", small_bundle, "--out", out), "not empty")
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "cg", "--n", "1",
                      "--steps", "1", "--class-guidance", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cg" / "provenance.jsonl").read_text())["class_guidance"] == 2.0
    shown = " ".join(done.stdout.split())
    assert "class guidance 2.0 on t/T in" in shown and "[0.5, 1]" in shown  # the default interval
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "cl", "--n", "1",
                      "--steps", "1", "--class-source", "label", "--report-source", "empty")
    assert done.returncode == 0 and "the requested label" in " ".join(done.stdout.split())
    done = in_process(capsys, "generate", "--bundle", small_bundle, "--out", tmp_path / "gi", "--n", "1",
                      "--steps", "1", "--guidance-interval", "0:1")
    assert json.loads((tmp_path / "gi" / "provenance.jsonl").read_text())["guidance_interval"] == [0.0, 1.0]
    done = in_process(capsys, "generate", "--bundle", tmp_path / "nope", "--out", tmp_path / "o2")
    assert_one_line_error(done, "bundle folder not found")
    assert not (tmp_path / "o2").exists()


def test_flow_objective_trains_and_samples_with_rectified_flow(small_phantom, tmp_path):
    from synthaug.ldm.train import train_generator
    from tests.helpers import small_config

    train_generator(small_phantom, tmp_path / "flow", small_config("train.steps=4", "diffusion.prediction=flow"))
    generator = CCELLAGenerator.from_bundle(tmp_path / "flow", steps=3)
    assert generator.sampler.name == "flow" and generator.settings()["steps"] == 3
    out = generator.generate([1, 0], seeds=[0, 1])
    assert torch.isfinite(out.volumes).all() and out.provenance[0]["sampler"] == "flow"
    with pytest.raises(InputError, match="cannot sample"):
        CCELLAGenerator.from_bundle(tmp_path / "flow", sampler="dpm++")
