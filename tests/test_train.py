"""Training the CCELLA generator end to end on a small phantom: bundle, exact resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthaug.data.io import load_weights
from synthaug.data.manifest import load_manifest, write_manifest
from synthaug.errors import ConfigError, InputError
from synthaug.ldm.bundle import LDM_FILE, load_bundle
from synthaug.ldm.train import TrainingInterrupted, train_generator
from tests.helpers import SMALL, small_config


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from synthaug.data.phantom import write_phantom_dataset

    cfg = small_config()
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "ph", cfg.data, cfg.phantom)


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "bundle"
    return out, train_generator(phantom, out, small_config())


def test_bundle_round_trip_is_bit_exact(trained, phantom):
    out, result = trained
    bundle = load_bundle(out)
    assert bundle.fingerprint == result.fingerprint
    saved = load_file(str(out / LDM_FILE))
    for key, value in bundle.ldm.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert bundle.ldm_ema is not None
    assert bundle.train_case_ids == {r.case_id for r in load_manifest(phantom).split("train")}
    assert bundle.scale_factor > 0 and bundle.info["latent_shape"] == [4, 8, 8, 4]
    assert bundle.info["text"]["dim"] == 384 and len(bundle.info["text"]["fingerprint"]) == 64
    assert set(bundle.info["versions"]) >= {"synthaug", "torch", "monai"}
    assert bundle.config.preset == "tiny" and bundle.config.train.steps == 6


def test_the_log_has_the_adapters_class_accuracy_on_the_validation_reports(trained, phantom):
    from synthaug.text.encoder import TextEncoder
    from synthaug.text.store import EmbeddingStore

    out, _ = trained
    log = [json.loads(line) for line in out.with_name("bundle.work").joinpath("ldm_log.jsonl").read_text().splitlines()]
    assert all({"val_class_acc", "val_class_acc_ema"} <= r.keys() for r in log)  # step 0 too
    val = [c for c in load_manifest(phantom).split("val") if c.report.strip()]  # cases with a report only
    assert val
    bundle = load_bundle(out)
    text = EmbeddingStore(out.with_name("bundle.work") / "text", TextEncoder.from_config(bundle.config.text)).get(
        [c.report for c in val])
    labels = torch.tensor([c.label for c in val])
    for key, ldm in (("val_class_acc", bundle.ldm), ("val_class_acc_ema", bundle.ldm_ema)):
        logits = ldm.adapter(text.features, text.mask, torch.zeros(len(val), dtype=torch.long))[1]  # t = 0
        assert log[-1][key] == pytest.approx(float((logits.argmax(dim=1) == labels).float().mean())), key


def test_validation_accuracy_is_the_adapters_prediction_at_t0_on_the_validation_reports(tmp_path):
    from synthaug.text.store import TextBatch
    from tests.test_class_slot import DIM, TOKENS, toy_trainer

    def reports(labels, seed):  # toy reports whose first feature says the class
        text = torch.randn(len(labels), TOKENS, DIM, generator=torch.Generator().manual_seed(seed))
        text[:, :, 0] = 4.0 * (2 * labels[:, None] - 1)
        return text

    train_labels, val_labels = torch.arange(8) % 2, torch.tensor([1, 1, 0, 1, 0, 0])
    trainer = toy_trainer(tmp_path, "loss.focal_weight=1", "train.lr=0.003", "train.ema_decay=0.9",
                          labels=train_labels, text=reports(train_labels, 0))
    trainer.val = (TextBatch(reports(val_labels, 1), torch.ones(6, TOKENS, dtype=torch.bool),
                             torch.zeros(6, dtype=torch.bool)), val_labels)
    for _ in range(30):
        trainer.train_step()
    timesteps = {"raw": [], "ema": []}
    for name, ldm in (("raw", trainer.model), ("ema", trainer.ema.module)):
        ldm.adapter.register_forward_pre_hook(lambda m, args, seen=timesteps[name]: seen.append(args[2]))
    assert trainer.val_class_accuracy() == {"val_class_acc": 1.0, "val_class_acc_ema": 1.0}
    for seen in timesteps.values():  # the raw and the EMA adapter read every report at t = 0
        assert torch.equal(torch.cat(seen), torch.zeros(6, dtype=torch.long))
    trainer.val = (trainer.val[0], 1 - val_labels)  # the same reports with every label wrong
    assert trainer.val_class_accuracy() == {"val_class_acc": 0.0, "val_class_acc_ema": 0.0}


def test_the_trainer_initialises_from_its_seed_and_leaves_the_global_rng_alone(tmp_path):
    from tests.test_class_slot import toy_trainer

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = toy_trainer(tmp_path / "a", "train.seed=5")
    assert torch.equal(torch.get_rng_state(), state)  # construction neither seeds nor draws from the global RNG
    torch.manual_seed(456)  # a different global state: the weights come from the seed alone
    b = toy_trainer(tmp_path / "b", "train.seed=5")
    c = toy_trainer(tmp_path / "c", "train.seed=6")
    weights = [list(t.model.state_dict().values()) for t in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(weights[0], weights[1]))
    assert not all(torch.equal(x, y) for x, y in zip(weights[0], weights[2]))


def test_bundle_refuses_changed_or_missing_files(trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "train_cases.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="do not match its fingerprint"):
        load_bundle(copy)
    (copy / LDM_FILE).unlink()
    with pytest.raises(InputError, match=r"bundle is missing ldm.safetensors"):
        load_bundle(copy)


def test_pickle_where_safetensors_expected(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(InputError, match="pickle/torch.save file, not safetensors"):
        load_weights(tmp_path / "weights.safetensors")


def signal_at(stage: str, step: int, sig: signal.Signals):
    """A progress callback that sends ``sig`` to this process when ``stage`` reaches ``step`` (like Ctrl-C)."""

    def progress(done_stage, done, total, logs):
        if done_stage == stage and done == step:
            os.kill(os.getpid(), sig)

    return progress


def test_resume_after_a_signal_gives_the_uninterrupted_parameters(trained, phantom, tmp_path):
    out, _ = trained
    cfg = small_config()

    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 3"):
        train_generator(phantom, tmp_path / "b", cfg, work_dir=work, progress=signal_at("ldm", 3, signal.SIGTERM))
    assert not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="pass --resume"):
        train_generator(phantom, tmp_path / "b", cfg, work_dir=work)
    # settings that do not shape training (sampling defaults, the phantom recipe) may change in between
    changed = small_config("sample.guidance=2.0", "phantom.difficulty=0.5")
    resumed = train_generator(phantom, tmp_path / "b", changed, work_dir=work, resume=True)
    assert resumed.steps == 6
    a, b = load_file(str(out / LDM_FILE)), load_file(str(tmp_path / "b" / LDM_FILE))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (work / "ldm_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6]


def test_a_signal_during_the_autoencoder_stage_resumes_to_the_same_bundle(trained, phantom, tmp_path):
    """Ctrl-C while the VAE trains keeps a checkpoint; --resume continues it and the bundle is bit-identical."""
    out, _ = trained
    cfg = small_config("train.checkpoint_every=100")  # only the signal checkpoints

    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted, match="autoencoder step 2; checkpoint saved"):
        train_generator(phantom, tmp_path / "b", cfg, work_dir=work, progress=signal_at("autoencoder", 2, signal.SIGINT))
    with pytest.raises(InputError, match="pass --resume"):
        train_generator(phantom, tmp_path / "b", cfg, work_dir=work)
    steps = []
    train_generator(phantom, tmp_path / "b", cfg, work_dir=work, resume=True,
                    progress=lambda stage, done, total, logs: steps.append((stage, done)))
    assert [d for s, d in steps if s == "autoencoder"] == [3, 4]  # continued, not retrained
    for name in ("autoencoder.safetensors", LDM_FILE):
        a, b = load_file(str(out / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not list(work.glob("autoencoder-*.checkpoints"))  # cleared once the VAE is saved


def test_resume_with_nothing_to_resume_fails_before_any_work(phantom, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        train_generator(phantom, tmp_path / "b", small_config(), work_dir=tmp_path / "work", resume=True)
    assert list(tmp_path.iterdir()) == []


def test_every_written_file_follows_the_umask(phantom, tmp_path):
    """Bundle weights, caches and the phantom: group-writable under umask 002 (safetensors alone writes 0600)."""
    from synthaug.data.phantom import write_phantom_dataset
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import SyntheticCache

    old = os.umask(0o002)
    try:
        cfg = small_config("train.steps=2", "phantom.n_cases=6")
        data = write_phantom_dataset(tmp_path / "ph", cfg.data, cfg.phantom).parent
        train_generator(phantom, tmp_path / "b", cfg, work_dir=tmp_path / "w")
        generator = CCELLAGenerator.from_bundle(tmp_path / "b", sampler="ddim", steps=1)
        SyntheticCache.create(tmp_path / "c", generator).pregenerate(generator, n=2, batch_size=2)
    finally:
        os.umask(old)
    for root in (data, tmp_path / "b", tmp_path / "c", tmp_path / "w"):
        for path in [root, *root.rglob("*")]:
            if path.name.endswith(".lock"):
                continue  # filelock's lock file keeps its own mode
            expected = 0o775 if path.is_dir() else 0o664
            assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"


def test_resume_refuses_truncated_or_foreign_checkpoints(phantom, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted):
        train_generator(phantom, tmp_path / "b", small_config(), work_dir=work, progress=signal_at("ldm", 3, signal.SIGINT))
    with pytest.raises(InputError, match="checkpoint belongs to another run"):
        train_generator(phantom, tmp_path / "b", small_config("train.lr=0.001"), work_dir=work, resume=True)
    (file,) = (work / "checkpoints").glob("step-*.safetensors")
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(InputError, match="missing, truncated or changed"):
        train_generator(phantom, tmp_path / "b", small_config(), work_dir=work, resume=True)


def test_training_loss_falls_by_half(phantom, tmp_path):
    """The loss on a fixed probe batch (timesteps spread over the whole schedule) at least halves."""
    cfg = small_config("train.steps=400", "train.lr=0.003", "train.log_every=200", "train.checkpoint_every=1000")
    train_generator(phantom, tmp_path / "b", cfg)
    log = [json.loads(line) for line in (tmp_path / "b.work" / "ldm_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 200, 400]
    assert log[-1]["probe_l1"] < 0.5 * log[0]["probe_l1"], log


def _manifest_variant(phantom: Path, name: str, change) -> Path:
    """A copy of the phantom's manifest beside it (so image paths still resolve) with records changed."""
    return write_manifest([change(r) for r in load_manifest(phantom).records], phantom.parent / f"{name}.jsonl")


def test_no_training_cases_or_one_class_is_refused(phantom, tmp_path):
    from dataclasses import replace

    no_train = _manifest_variant(phantom, "no_train", lambda r: replace(r, split="val" if r.split == "train" else r.split))
    with pytest.raises(InputError, match="no cases in the 'train' split"):
        train_generator(no_train, tmp_path / "b", small_config())
    one_class = _manifest_variant(phantom, "one_class", lambda r: replace(r, label=0))
    with pytest.raises(InputError, match="the train split has only label 0"):
        train_generator(one_class, tmp_path / "b", small_config())


def test_image_shape_must_fit_the_downsampling(phantom, tmp_path):
    with pytest.raises(ConfigError, match="image_shape"):
        train_generator(phantom, tmp_path / "b", small_config("data.image_shape=[30, 32, 16]"))
    with pytest.raises(ConfigError, match="U-Net's downsampling"):
        train_generator(phantom, tmp_path / "b", small_config("data.image_shape=[32, 32, 12]"))


def test_missing_text_model_is_refused(phantom, tmp_path):
    with pytest.raises(ConfigError, match="no_such_model"):
        train_generator(phantom, tmp_path / "b", small_config(f"text.model={tmp_path}/no_such_model"))


def test_existing_bundle_is_not_overwritten(trained, phantom):
    out, _ = trained
    with pytest.raises(InputError, match="bundle folder exists"):
        train_generator(phantom, out, small_config())


def test_cli_train_writes_bundle_and_refuses_bad_input(phantom, tmp_path):
    from test_cli import assert_one_line_error, synthaug

    sets = [a for s in SMALL for a in ("--set", s)]
    result = synthaug("train", "--data", phantom, "--out", tmp_path / "b", *sets)
    assert result.returncode == 0, result.stderr
    assert "Trained bundle" in result.stdout and "fingerprint" in result.stdout
    assert (tmp_path / "b" / "fingerprint").is_file()
    assert_one_line_error(synthaug("train", "--data", phantom, "--out", tmp_path / "b", *sets), "bundle folder exists")
    assert_one_line_error(synthaug("train", "--data", tmp_path / "none.jsonl", "--out", tmp_path / "c", *sets),
                          "manifest not found")
    assert_one_line_error(synthaug("train", "--data", phantom, "--out", tmp_path / "c", *sets,
                                   "--set", "adapter.heads=5"), "adapter", "divisible")


def test_ema_warms_up_instead_of_keeping_the_initial_weights():
    from torch.optim.swa_utils import AveragedModel

    from synthaug.ldm.train import ema_with_warmup

    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.zero_()
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)  # training moves the weights once, then they stay
    for _ in range(200):
        ema.update_parameters(model)
    # A fixed 0.999 would still hold 0.999^200 = 82% of the initial zeros; the warm-up forgets them.
    assert float(ema.module.weight.detach().mean()) > 0.95
    for _ in range(2000):
        ema.update_parameters(model)
    assert float(ema.module.weight.detach().mean()) == pytest.approx(1.0, abs=1e-4)


def test_timestep_sampling_uniform_is_the_old_draw_and_logit_normal_trains_the_middle_most():
    from synthaug.config import DiffusionConfig
    from synthaug.ldm.objective import training_timesteps

    uniform = DiffusionConfig(prediction="flow")
    drawn = training_timesteps(uniform, 4096, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(3)))
    middle = DiffusionConfig(prediction="flow", timestep_sampling="logit-normal")
    t = training_timesteps(middle, 4096, torch.Generator().manual_seed(3))
    assert torch.equal(t, training_timesteps(middle, 4096, torch.Generator().manual_seed(3)))  # seeded
    assert int(t.min()) >= 0 and int(t.max()) <= 999 and t.dtype == torch.long
    share = lambda v: float(((v >= 250) & (v < 750)).float().mean())  # noqa: E731
    assert 0.45 < share(drawn) < 0.55 and 0.68 < share(t) < 0.76  # P(|n| < logit(0.75)) = 0.728
    with pytest.raises(ValueError):
        DiffusionConfig(timestep_sampling="cosine")
