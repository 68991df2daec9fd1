"""Stage 1 autoencoder: build, train, encode to latents, scale factor, decode (tiny models on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthaug.config import AutoencoderConfig, SynthaugConfig
from synthaug.errors import ConfigError, InputError, TrainingInterrupted
from synthaug.ldm.autoencoder import (
    autoencoder_loss,
    build_autoencoder,
    build_perceptual_loss,
    decode_latents,
    downsample_factor,
    edge_l1,
    encode_volumes,
    load_autoencoder,
    random_patches,
    save_autoencoder,
    scale_factor,
    train_autoencoder,
)

SHAPE = (32, 32, 16)


def tiny(**kw) -> AutoencoderConfig:
    return AutoencoderConfig(**{"channels": (8, 16, 16), "norm_num_groups": 4, "steps": 3, "batch_size": 2, **kw})


def smooth_volumes(n: int, shape=SHAPE, seed: int = 0) -> list[torch.Tensor]:
    """``n`` (1, X, Y, Z) volumes in [0, 1]: coarse noise upsampled trilinearly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, *(s // 8 for s in shape), generator=g)
    vols = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    return list(vols)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("kind", ["monai", "maisi"])
def test_latents_are_4_channels_at_a_quarter_of_the_size(kind):
    cfg = tiny(kind=kind)
    model = build_autoencoder(cfg, seed=0)
    z = encode_volumes(model, smooth_volumes(3), batch_size=2)
    assert downsample_factor(cfg) == 4
    assert z.shape == (3, 4, 8, 8, 4) and z.dtype == torch.float32
    assert decode_latents(model, z).shape == (3, 1, *SHAPE)


def test_image_shape_must_divide_by_the_downsampling_factor():
    cfg = SynthaugConfig(data={"image_shape": (30, 32, 16)}, autoencoder=tiny().model_dump())
    with pytest.raises(ConfigError, match="data.image_shape.*divisible.*4"):
        downsample_factor(cfg)
    assert downsample_factor(SynthaugConfig(autoencoder=tiny().model_dump())) == 4
    with pytest.raises(InputError, match="volume 1.*divisible"):
        encode_volumes(build_autoencoder(tiny()), [torch.zeros(1, *SHAPE), torch.zeros(1, 30, 32, 16)])
    with pytest.raises(InputError, match=r"\(C, X, Y, Z\)"):
        train_autoencoder(build_autoencoder(tiny()), [torch.zeros(*SHAPE)], tiny())


def test_loss_is_l1_plus_weighted_kl():
    cfg = tiny(kl_weight=0.5)
    x, recon = torch.zeros(2, 1, 4, 4, 4), torch.full((2, 1, 4, 4, 4), 0.25)
    mu, sigma = torch.ones(2, 4, 2, 2, 2), torch.ones(2, 4, 2, 2, 2)
    loss, parts = autoencoder_loss(recon, x, mu, sigma, cfg)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per element, summed over the 32 latent elements, averaged over the batch
    assert parts["l1"] == pytest.approx(0.25) and parts["kl"] == pytest.approx(16.0)
    assert float(loss) == pytest.approx(0.25 + 0.5 * 16.0)
    _, parts = autoencoder_loss(recon, x, torch.zeros_like(mu), sigma, cfg)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)


def test_edge_term_penalises_a_lost_edge_but_not_a_constant_offset():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 2:6, 2:6, 2:6] = 1.0  # a bright cube: six faces of edges
    offset, erased = x + 0.3, torch.full_like(x, float(x.mean()))
    assert float(edge_l1(x, x)) == 0.0
    assert float(edge_l1(offset, x)) == pytest.approx(0.0, abs=1e-6)  # edges kept, level wrong: L1's job
    # the flat volume misses every unit step across the cube's two faces per axis: 2 x 4 x 4 of 7 x 8 x 8 differences
    assert float(edge_l1(erased, x)) == pytest.approx(2 * 16 / (7 * 8 * 8))
    cfg = tiny(edge_weight=2.0)
    mu = sigma = torch.ones(1, 4, 2, 2, 2)
    loss, parts = autoencoder_loss(erased, x, mu, sigma, cfg)
    _, plain = autoencoder_loss(erased, x, mu, sigma, tiny())
    assert "edge" not in plain and parts["edge"] == pytest.approx(float(edge_l1(erased, x)))
    assert float(loss) == pytest.approx(plain["loss"] + 2.0 * parts["edge"])


def test_patches_are_seeded_boxes_of_each_volume():
    x = torch.arange(2 * 32 * 32 * 16, dtype=torch.float32).reshape(2, 1, 32, 32, 16)
    a = random_patches(x, (16, 8, 16), torch.Generator().manual_seed(3))
    b = random_patches(x, (16, 8, 16), torch.Generator().manual_seed(3))
    assert a.shape == (2, 1, 16, 8, 16) and torch.equal(a, b)
    for volume, patch in zip(x, a):  # a contiguous box of its own volume
        i, j, k = (int(v) for v in torch.nonzero(volume[0] == patch[0, 0, 0, 0])[0])
        assert torch.equal(volume[:, i:i + 16, j:j + 8, k:k + 16], patch)
    corners = {tuple(int(v) for v in torch.nonzero(x[0, 0] == random_patches(x, (8, 8, 8), g)[0, 0, 0, 0, 0])[0])
               for g in (torch.Generator().manual_seed(s) for s in range(20))}
    assert len(corners) > 10  # the boxes move
    assert random_patches(x, (64, 32, 16), torch.Generator()).shape == x.shape  # never padded


def test_patch_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(ValueError, match="patch_size.*multiple of the downsampling factor 4"):
        tiny(patch_size=(16, 16, 6))
    with pytest.raises(ValueError, match="patch_size"):
        tiny(patch_size=(0, 16, 8))


def test_a_model_trained_on_patches_encodes_whole_volumes():
    cfg = tiny(steps=20, lr=2e-3, patch_size=(16, 16, 8))
    model = build_autoencoder(cfg, seed=0)
    history = train_autoencoder(model, smooth_volumes(4), cfg, precision="fp32", seed=0)
    assert np.mean([r["loss"] for r in history[-5:]]) < 0.7 * np.mean([r["loss"] for r in history[:5]])
    z = encode_volumes(model, smooth_volumes(2), batch_size=2)
    assert z.shape == (2, 4, 8, 8, 4) and decode_latents(model, z).shape == (2, 1, *SHAPE)
    whole_cfg = tiny(steps=2, lr=2e-3)
    patched, whole = build_autoencoder(whole_cfg, seed=0), build_autoencoder(whole_cfg, seed=0)
    train_autoencoder(patched, smooth_volumes(4), whole_cfg.model_copy(update={"patch_size": (16, 16, 8)}), seed=0)
    train_autoencoder(whole, smooth_volumes(4), whole_cfg, seed=0)
    assert not same_weights(patched, whole)  # the patches, not the whole volumes, were trained on


def test_training_reduces_the_loss():
    cfg = tiny(steps=30, lr=2e-3, batch_size=2)
    seen = []
    history = train_autoencoder(build_autoencoder(cfg, seed=0), smooth_volumes(4), cfg, precision="bf16", seed=0,
                                progress=lambda stage, step, total, rec: seen.append((stage, step, total)))
    losses = [r["loss"] for r in history]
    assert len(history) == 30 and seen[-1] == ("autoencoder", 30, 30)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    cfg, vols = tiny(), smooth_volumes(3)
    a, b, c = (build_autoencoder(cfg, seed=0) for _ in range(3))
    assert same_weights(a, b)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_autoencoder(a, vols, cfg, precision="fp32", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    train_autoencoder(b, vols, cfg, precision="fp32", seed=7)
    train_autoencoder(c, vols, cfg, precision="fp32", seed=8)
    assert same_weights(a, b)
    assert not same_weights(a, c)
    assert not same_weights(a, build_autoencoder(cfg, seed=1))


@pytest.mark.parametrize(("precision", "patch"), [("fp32", None), ("bf16", None), ("fp32", (16, 16, 8))])
def test_a_stopped_run_resumes_to_the_uninterrupted_weights(tmp_path, precision, patch):
    """Stopped at step 3 of 7 (mid-epoch: 3 volumes, batch 2), checkpointed, resumed: the same weights."""
    cfg, vols = tiny(steps=7, patch_size=patch), smooth_volumes(3)
    whole = build_autoencoder(cfg, seed=0)
    train_autoencoder(whole, vols, cfg, precision=precision, seed=5)

    steps_seen = []
    stopped = build_autoencoder(cfg, seed=0)
    with pytest.raises(TrainingInterrupted, match="autoencoder step 3; checkpoint saved"):
        train_autoencoder(stopped, vols, cfg, precision=precision, seed=5, checkpoints=tmp_path / "ck", run_key="k",
                          checkpoint_every=100, should_stop=lambda: "SIGINT" if len(steps_seen) == 3 else None,
                          progress=lambda stage, step, total, record: steps_seen.append(step))
    resumed = build_autoencoder(cfg, seed=0)  # a new process: fresh weights, state from the checkpoint only
    history = train_autoencoder(resumed, vols, cfg, precision=precision, seed=5, checkpoints=tmp_path / "ck",
                                run_key="k", resume=True)
    assert [r["step"] for r in history] == [4, 5, 6, 7]
    assert same_weights(whole, resumed)


def test_checkpoints_of_another_run_are_refused(tmp_path):
    cfg, vols = tiny(steps=4), smooth_volumes(2)
    train_autoencoder(build_autoencoder(cfg), vols, cfg, precision="fp32", checkpoints=tmp_path, run_key="a",
                      checkpoint_every=2)
    with pytest.raises(InputError, match="another run"):
        train_autoencoder(build_autoencoder(cfg), vols, cfg, precision="fp32", checkpoints=tmp_path, run_key="b",
                          resume=True)


def test_scale_factor_is_over_the_whole_set():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(10, 4, 4, 4, 2, generator=g) * 2.0 + 0.5
    expected = 1.0 / np.std(latents.numpy().astype(np.float64), ddof=1)
    assert scale_factor(latents) == pytest.approx(expected, rel=1e-9)
    # first batch of 2 has std ~1, the rest std ~3: a one-batch estimate is far off
    mixed = torch.cat([torch.randn(2, 4, 4, 4, 2, generator=g), 3.0 * torch.randn(8, 4, 4, 4, 2, generator=g)])
    whole, one_batch = scale_factor(mixed), 1.0 / float(mixed[:2].std())
    assert whole == pytest.approx(1.0 / np.std(mixed.numpy().astype(np.float64), ddof=1), rel=1e-9)
    assert one_batch > 2.0 * whole
    with pytest.raises(InputError):
        scale_factor(torch.zeros(4, 4))


def test_encoding_the_posterior_mean_is_deterministic():
    model, vols = build_autoencoder(tiny(), seed=0), smooth_volumes(3)
    z1 = encode_volumes(model, vols, batch_size=2)
    z2 = encode_volumes(model, vols, batch_size=2)
    assert torch.equal(z1, z2)
    with torch.no_grad():
        mu, _ = model.encode(torch.stack(vols))
    torch.testing.assert_close(encode_volumes(model, vols, batch_size=1), mu, atol=1e-5, rtol=1e-5)


def test_sampled_latents_follow_the_generator():
    model, vols = build_autoencoder(tiny(), seed=0), smooth_volumes(2)
    mean = encode_volumes(model, vols)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    s1 = encode_volumes(model, vols, sample=True, generator=torch.Generator().manual_seed(5))
    s2 = encode_volumes(model, vols, sample=True, generator=torch.Generator().manual_seed(5))
    s3 = encode_volumes(model, vols, sample=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, s3) and not torch.equal(s1, mean)
    with pytest.raises(ValueError, match="Generator"):
        encode_volumes(model, vols, sample=True)


def test_maisi_split_decoding_matches_whole_decoding():
    model = build_autoencoder(tiny(kind="maisi"), seed=0)
    z = torch.randn(1, 4, 16, 8, 4, generator=torch.Generator().manual_seed(0))
    whole = decode_latents(model, z, num_splits=1)
    torch.testing.assert_close(decode_latents(model, z), whole, atol=1e-5, rtol=1e-5)  # auto: 2 pieces
    torch.testing.assert_close(decode_latents(model, z, num_splits=4), whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="split"):
        decode_latents(model, z, num_splits=3)


def test_weights_round_trip_through_safetensors(tmp_path):
    cfg = tiny()
    model, vols = build_autoencoder(cfg, seed=0), smooth_volumes(2)
    train_autoencoder(model, [{"image": v} for v in vols], cfg, precision="fp32")  # MONAI-style dict items
    loaded = load_autoencoder(cfg, save_autoencoder(model, tmp_path / "autoencoder.safetensors"))
    assert same_weights(model, loaded)
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(InputError, match="not found"):
        load_autoencoder(cfg, tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="do not match"):
        load_autoencoder(tiny(channels=(8, 16, 32)), tmp_path / "autoencoder.safetensors")


def test_perceptual_term_needs_local_weights(tmp_path):
    cfg = tiny(perceptual_weight=0.1)
    vols = smooth_volumes(1)
    with pytest.raises(ConfigError, match="autoencoder.perceptual_weights"):
        train_autoencoder(build_autoencoder(cfg), vols, cfg)
    x = torch.stack(vols)
    with pytest.raises(ConfigError, match="perceptual_weights"):
        autoencoder_loss(x, x, torch.zeros(1, 4), torch.ones(1, 4), cfg)
    with pytest.raises(ConfigError, match="not found"):
        build_perceptual_loss(tiny(perceptual_weight=0.1, perceptual_weights=str(tmp_path / "none.safetensors")))


def test_perceptual_term_from_a_local_resnet50(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    cfg = tiny(perceptual_weight=0.1, perceptual_weights=str(path))
    rng = torch.get_rng_state()
    perceptual = build_perceptual_loss(cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # its throwaway initial weights come from a forked RNG
    x = torch.stack(smooth_volumes(1))
    recon = (x + 0.2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    mu, sigma = torch.zeros(1, 4, 8, 8, 4), torch.ones(1, 4, 8, 8, 4)
    _, p1 = autoencoder_loss(recon, x, mu, sigma, cfg, perceptual=perceptual, generator=torch.Generator().manual_seed(3))
    _, p2 = autoencoder_loss(recon, x, mu, sigma, cfg, perceptual=perceptual, generator=torch.Generator().manual_seed(3))
    _, same = autoencoder_loss(x, x, mu, sigma, cfg, perceptual=perceptual, generator=torch.Generator().manual_seed(3))
    assert p1 == p2 and p1["perceptual"] > 0
    assert same["perceptual"] == pytest.approx(0.0, abs=1e-6)
    assert p1["loss"] == pytest.approx(p1["l1"] + 0.1 * p1["perceptual"], rel=1e-5)
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ConfigError, match="ResNet-50"):
        build_perceptual_loss(tiny(perceptual_weight=0.1, perceptual_weights=str(bad)))


def test_a_patch_trained_autoencoder_reconstructs_the_phantom(small_phantom):
    """On held-out phantom volumes, the round trip of a VAE trained for 150 steps on patches has a mean L1
    below 0.8 of the best constant guess (each volume's own mean; the phantom's noise sets the floor: 0.73
    measured). The class-keeping quality of the demo's VAE is benchmarks/bench_autoencoder.py's."""
    from synthaug.data.manifest import load_manifest
    from synthaug.data.transforms import preprocessing_transforms
    from tests.helpers import small_config

    manifest = load_manifest(small_phantom)
    load = preprocessing_transforms(small_config().data)
    train = [torch.as_tensor(load(item)["image"]).float() for item in manifest.items("train")]
    held_out = torch.stack([torch.as_tensor(load(item)["image"]).float()
                            for item in manifest.items("val") + manifest.items("test")])
    cfg = AutoencoderConfig(channels=(16, 32, 64), norm_num_groups=8, steps=150, batch_size=4, lr=1e-3,
                            patch_size=(16, 16, 8))
    model = build_autoencoder(cfg, seed=0)
    train_autoencoder(model, train, cfg, seed=0)
    recon = decode_latents(model, encode_volumes(model, list(held_out), batch_size=4), batch_size=4)
    round_trip = float((recon - held_out).abs().mean())
    constant = float((held_out - held_out.mean(dim=(1, 2, 3, 4), keepdim=True)).abs().mean())
    assert round_trip < 0.8 * constant, (round_trip, constant)


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    import synthaug.ldm.autoencoder as ae

    monkeypatch.setattr(ae, "cpu_has_native_bf16", lambda: True)
    assert ae.resolve_precision("auto", "cpu") is torch.bfloat16
    assert ae.resolve_precision("auto", "cpu", cpu_auto="fp32") is None
    monkeypatch.setattr(ae, "cpu_has_native_bf16", lambda: False)  # emulated bf16: over 100x slower
    assert ae.resolve_precision("auto", "cpu") is None
    assert ae.resolve_precision("bf16", "cpu") is torch.bfloat16  # asked for by name, still honoured
