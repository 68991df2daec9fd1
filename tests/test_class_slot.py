"""The U-Net's class slot in training: the reference path, teacher forcing, the null class, and a toy that learns
the class from the slot (DESIGN.md section 2, second wave)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from synthaug.ldm.model import joint_loss, text_dropout
from synthaug.ldm.sampling import Conditioning, build_sampler, label_probs, sample_latents, training_target
from synthaug.ldm.train import LDMTrainer, epoch_batch
from synthaug.text.store import TextBatch
from tests.helpers import small_config

LATENT, TOKENS, DIM = (4, 8, 8, 4), 6, 16  # small_config's latents; a made-up text encoder's width


def toy_trainer(work: Path, *overrides: str, latents: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, text: torch.Tensor | None = None) -> LDMTrainer:
    """An LDM trainer on random latents and token features (8 cases unless given), no EMA."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, *LATENT, generator=g) if latents is None else latents
    n = len(latents)
    labels = torch.arange(n) % 2 if labels is None else labels
    text = torch.randn(n, TOKENS, DIM, generator=g) if text is None else text
    cases = TextBatch(text, torch.ones(n, TOKENS, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    null = TextBatch(torch.zeros(1, 2, DIM), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    cfg = small_config("train.ema_decay=0", *overrides)
    return LDMTrainer(cfg, latents, labels, cases, null, torch.device("cpu"), "toy", work)


def reference_step(trainer: LDMTrainer) -> float:
    """The reference's training step written out: the U-Net's class input is softmax(adapter logits), not detached."""
    cfg, g, model = trainer.cfg, trainer.generator, trainer.model
    idx = epoch_batch(trainer.step, len(trainer.latents), cfg.train.batch_size, cfg.train.seed, {})
    x0 = trainer.latents[idx]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, cfg.diffusion.num_train_timesteps, (len(idx),), generator=g)
    x_t, target = training_target(cfg.diffusion, trainer.scheduler, x0, noise, t)
    text, mask, isnull = text_dropout(trainer.text.features[idx], trainer.text.mask[idx], trainer.text.isnull[idx],
                                      trainer.null.features[0], trainer.null.mask[0], cfg.loss.text_dropout, g)
    model.train()
    context, logits = model.adapter(text, mask, t)
    pred = model.unet(x_t, t, context, logits.softmax(dim=-1), trainer.spacing.expand(len(t), 3))
    loss, _ = joint_loss(pred, target, logits, trainer.labels[idx], isnull, cfg.loss)
    trainer.optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    trainer.optimizer.step()
    trainer.lr_schedule.step()
    trainer.step += 1
    return loss.item()


def test_no_teacher_forcing_is_exactly_the_reference_step(tmp_path):
    settings = ("loss.p_label=0", "loss.p_null=0", "loss.text_dropout=0.5")  # dropout draws share the generator
    ours, reference = toy_trainer(tmp_path / "a", *settings), toy_trainer(tmp_path / "b", *settings)
    losses = [ours.train_step()["loss"] for _ in range(3)]
    assert losses == [reference_step(reference) for _ in range(3)]
    for (name, a), b in zip(ours.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(ours.generator.get_state(), reference.generator.get_state())  # no extra draw


def class_inputs(trainer: LDMTrainer, steps: int, between=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The class inputs (steps * B, 2) the U-Net received in ``steps`` training steps, and the batches' labels."""
    seen, labels = [], []
    handle = trainer.model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[3].detach().clone()))
    try:
        for _ in range(steps):
            cfg = trainer.cfg.train
            labels.append(trainer.labels[epoch_batch(trainer.step, len(trainer.labels), cfg.batch_size, cfg.seed, {})])
            trainer.train_step()
            if between is not None:
                between()
    finally:
        handle.remove()
    return torch.cat(seen), torch.cat(labels)


def test_p_label_one_feeds_exactly_the_one_hot_labels(tmp_path):
    probs, labels = class_inputs(toy_trainer(tmp_path, "loss.p_label=1", "loss.p_null=0"), 4)
    assert labels.unique().tolist() == [0, 1]
    assert torch.equal(probs, F.one_hot(labels, 2).float())


def test_p_null_one_feeds_exactly_the_null_class(tmp_path):
    probs, _ = class_inputs(toy_trainer(tmp_path, "loss.p_label=0", "loss.p_null=1"), 4)
    assert torch.equal(probs, torch.zeros(8, 2))


def draws(probs: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Which class input each case got: the label, the null class, or the adapter's prediction."""
    onehot = F.one_hot(labels, 2).float()
    return ["label" if torch.equal(p, o) else "null" if not p.any() else "adapter" for p, o in zip(probs, onehot)]


def test_teacher_forcing_draws_follow_the_training_seed_only(tmp_path):
    settings = ("loss.p_label=0.4", "loss.p_null=0.3")
    first = draws(*class_inputs(toy_trainer(tmp_path / "a", *settings), 8))
    assert {"label", "null", "adapter"} <= set(first)
    # the global RNG is not the trainer's: drawing from it between steps changes nothing
    again = draws(*class_inputs(toy_trainer(tmp_path / "b", *settings), 8, between=lambda: torch.rand(5)))
    assert again == first
    other = draws(*class_inputs(toy_trainer(tmp_path / "c", *settings, "train.seed=1"), 8))
    assert other != first


def test_a_toy_unet_trained_with_teacher_forcing_generates_the_requested_class(tmp_path):
    """Class 1 carries a bright blob and the reports say nothing: only the class slot can tell the classes apart."""
    g = torch.Generator().manual_seed(0)
    n, blob = 32, (slice(None), slice(2, 6), slice(2, 6), slice(1, 3))
    labels = torch.arange(n) % 2
    bright = torch.zeros(LATENT)
    bright[blob] = 2.0
    latents = 0.3 * torch.randn(n, *LATENT, generator=g) + labels[:, None, None, None, None] * bright
    text = torch.randn(1, TOKENS, DIM, generator=g).expand(n, -1, -1).clone()  # one report for every case
    trainer = toy_trainer(tmp_path, "loss.p_label=1", "loss.p_null=0", "loss.text_dropout=0",
                          "diffusion.prediction=flow", "train.steps=150", "train.batch_size=4", "train.lr=0.003",
                          latents=latents, labels=labels, text=text)
    for _ in range(trainer.cfg.train.steps):
        trainer.train_step()

    requested = [1, 1, 1, 1, 0, 0, 0, 0]
    cond = Conditioning(text=text[:8], mask=torch.ones(8, TOKENS, dtype=torch.bool), null_text=torch.zeros(1, 2, DIM),
                        null_mask=torch.ones(1, 2, dtype=torch.bool), spacing=trainer.spacing.expand(8, 3),
                        class_probs=label_probs(requested))  # class_source "label"
    noise = torch.randn(8, *LATENT, generator=torch.Generator().manual_seed(1))
    sampled = sample_latents(trainer.model.eval(), build_sampler("flow", trainer.cfg.diffusion, steps=10), noise, cond)
    region = sampled[(slice(None), *blob)].mean(dim=(1, 2, 3, 4))  # (8,) the blob's mean per volume
    asked_1, asked_0 = region[:4], region[4:]
    assert float(asked_1.min()) > float(asked_0.max()), region  # every label-1 volume is brighter there
    assert float(asked_1.mean() - asked_0.mean()) > 1.0, region  # most of the true difference of 2
