"""CCELLA networks: adapter, conditioned U-Net, the joint model, joint loss, text dropout and class-slot draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import FocalLoss

from synthaug.config import AdapterConfig, LossConfig, UNetConfig, load_config
from synthaug.errors import ConfigError
from synthaug.ldm.adapter import AdaLayerNorm, CCELLAAdapter
from synthaug.ldm.model import CCELLALDM, class_slot, edm_flow_velocity, joint_loss, null_class, text_dropout
from synthaug.ldm.objective import training_scheduler, training_target
from synthaug.ldm.unet import CCELLAUNet

B, C, LATENT, T, DT = 2, 4, (16, 16, 8), 12, 32
ADAPTER = AdapterConfig(width=32, layers=2, heads=4, num_latents=8, head_hidden=16)
UNET = UNetConfig(channels=(16, 32, 32), attention_levels=(False, True, True), num_head_channels=8,
                  norm_num_groups=8)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def inputs(batch: int = B) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, T, dtype=torch.bool)
    mask[0, T // 2:] = False  # the first report is shorter: padding tokens at the end
    return {
        "x_t": torch.randn(batch, C, *LATENT),
        "t": torch.randint(0, 1000, (batch,)),
        "text": torch.randn(batch, T, DT),
        "mask": mask,
        "spacing": torch.tensor([[1.5, 1.5, 3.0]] * batch),
    }


def wake(unet: CCELLAUNet) -> CCELLAUNet:
    """Randomise MONAI's zero-initialised layers (output conv, each residual branch's last conv, attention
    output projections), which make a fresh U-Net ignore its conditioning, as if it had been trained a while."""
    with torch.no_grad():
        for p in unet.parameters():
            if p.dim() > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.05)
    return unet


def tiny_model(**adapter) -> CCELLALDM:
    return CCELLALDM(CCELLAAdapter(DT, ADAPTER.model_copy(update=adapter)),
                     wake(CCELLAUNet(UNET, latent_channels=C, cross_attention_dim=ADAPTER.width)))


# ---------------------------------------------------------------- adapter


@pytest.mark.parametrize("head", ["pool", "flatten"])
def test_adapter_returns_context_and_class_logits(head):
    adapter = CCELLAAdapter(DT, ADAPTER.model_copy(update={"class_head": head}))
    x = inputs()
    context, logits = adapter(x["text"], x["mask"], x["t"])
    assert context.shape == (B, ADAPTER.num_latents, ADAPTER.width)
    assert logits.shape == (B, 2)
    assert torch.isfinite(context).all() and torch.isfinite(logits).all()


def test_flatten_heads_see_every_latent_pool_heads_their_mean():
    flatten = CCELLAAdapter(DT, ADAPTER.model_copy(update={"class_head": "flatten"}))
    pool = CCELLAAdapter(DT, ADAPTER)
    n, w, h = ADAPTER.num_latents, ADAPTER.width, ADAPTER.head_hidden
    assert flatten.class_heads[0].mlp[0].in_features == n * w
    assert pool.class_heads[0].mlp[0].in_features == w
    saving = sum(p.numel() for p in flatten.parameters()) - sum(p.numel() for p in pool.parameters())
    assert saving == ADAPTER.layers * ((n * w - w) * h - 2 * w)  # flatten weights minus the pool LayerNorm


def test_adaln_is_identity_modulation_at_init():
    adapter = CCELLAAdapter(DT, ADAPTER)
    t_emb = adapter.time_embedding(torch.tensor([3, 700]))
    norms = [m for m in adapter.modules() if isinstance(m, AdaLayerNorm)]
    assert len(norms) == 3 * ADAPTER.layers
    x = torch.randn(2, 5, ADAPTER.width)
    for norm in norms:
        assert torch.equal(norm.modulation(F.silu(t_emb)), torch.zeros(2, 2 * ADAPTER.width))  # shift, scale
        assert torch.allclose(norm(x, t_emb), F.layer_norm(x, (ADAPTER.width,), eps=1e-6), atol=1e-6)


def test_timestep_changes_the_context():
    adapter = CCELLAAdapter(DT, ADAPTER)
    x = inputs()
    early, _ = adapter(x["text"], x["mask"], torch.tensor([10, 10]))
    late, _ = adapter(x["text"], x["mask"], torch.tensor([900, 900]))
    assert not torch.allclose(early, late)  # through the time-aware latent term even while AdaLN is identity


@pytest.mark.parametrize("use_text_mask", [True, False])
def test_padding_tokens_are_ignored_only_with_the_text_mask(use_text_mask):
    adapter = CCELLAAdapter(DT, ADAPTER.model_copy(update={"use_text_mask": use_text_mask}))
    x = inputs()
    padded = x["text"].clone()
    padded[0, T // 2:] = torch.randn(T - T // 2, DT) * 5  # change only the first report's padding tokens
    context, logits = adapter(x["text"], x["mask"], x["t"])
    context2, logits2 = adapter(padded, x["mask"], x["t"])
    same = torch.allclose(context, context2, atol=1e-5) and torch.allclose(logits, logits2, atol=1e-5)
    assert same is use_text_mask
    assert torch.allclose(context[1], context2[1], atol=1e-5)  # the other report is untouched either way


def test_a_fully_masked_report_still_gives_finite_outputs():
    adapter = CCELLAAdapter(DT, ADAPTER)
    x = inputs()
    context, logits = adapter(x["text"], torch.zeros(B, T, dtype=torch.bool), x["t"])
    assert torch.isfinite(context).all() and torch.isfinite(logits).all()  # the latent keys stay visible


# ---------------------------------------------------------------- U-Net


@pytest.mark.parametrize("class_conditioning", [True, False])
@pytest.mark.parametrize("spacing_conditioning", [True, False])
def test_unet_shapes_and_extra_inputs(class_conditioning, spacing_conditioning):
    cfg = UNET.model_copy(update={"class_conditioning": class_conditioning,
                                  "spacing_conditioning": spacing_conditioning})
    unet = wake(CCELLAUNet(cfg, latent_channels=C, cross_attention_dim=ADAPTER.width)).eval()
    x = inputs()
    context = torch.randn(B, ADAPTER.num_latents, ADAPTER.width)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    out = unet(x["x_t"], x["t"], context, probs, x["spacing"])
    assert out.shape == (B, C, *LATENT)
    width = 4 * cfg.channels[0]  # MAISI: [time | class | spacing], each 4 * channels[0] wide
    assert unet.down_blocks[0].resnets[0].time_emb_proj.in_features == width * (
        1 + class_conditioning + spacing_conditioning)

    flipped = unet(x["x_t"], x["t"], context, probs.flip(1), x["spacing"])
    assert (not torch.allclose(out, flipped)) is class_conditioning
    thinner = unet(x["x_t"], x["t"], context, probs, x["spacing"] * 0.5)
    assert (not torch.allclose(out, thinner)) is spacing_conditioning
    other_context = unet(x["x_t"], x["t"], torch.randn_like(context), probs, x["spacing"])
    assert not torch.allclose(out, other_context)  # cross-attention


def test_unet_class_input_takes_two_probabilities():
    unet = CCELLAUNet(UNET, latent_channels=C, cross_attention_dim=ADAPTER.width)
    assert unet.top_region_index_layer[0].in_features == 2
    x = inputs()
    with pytest.raises(ValueError, match="class_probs"):
        unet(x["x_t"], x["t"], torch.randn(B, 3, ADAPTER.width), None, x["spacing"])
    with pytest.raises(ValueError, match="spacing"):
        unet(x["x_t"], x["t"], torch.randn(B, 3, ADAPTER.width), torch.rand(B, 2), None)


# ---------------------------------------------------------------- joint model


def test_model_forward_shapes_and_from_config():
    model = CCELLALDM.from_config(load_config(), text_dim=DT)
    x = inputs()
    noise_pred, logits = model(**x)
    assert noise_pred.shape == x["x_t"].shape and logits.shape == (B, 2)


@pytest.mark.parametrize("t", [0, 1, 167, 500, 833, 999, 1000])
def test_edm_velocity_of_the_ideal_output_is_the_flow_target(t):
    # The U-Net output that makes x0_hat exact, F = (x0 - c_skip x_t) / c_out, must give the training
    # target x0 - noise at every noise level, the ends included (no division by s or by 1 - s).
    cfg = load_config(overrides=["diffusion.prediction=flow"]).diffusion
    x0, noise = torch.randn(3, C, 4, 4, 2), torch.randn(3, C, 4, 4, 2)
    ts = torch.full((3,), t)
    x_t, target = training_target(cfg, training_scheduler(cfg), x0, noise, ts)
    s = t / 1000
    # (x0 - c_skip x_t) / c_out in closed form: (s x0 - (1 - s) noise) / sqrt(D), minus the noise at s = 0
    ideal = (s * x0 - (1 - s) * noise) / ((1 - s) ** 2 + s ** 2) ** 0.5
    torch.testing.assert_close(edm_flow_velocity(x_t, ideal, ts, 1000), target, rtol=1e-4, atol=1e-4)
    if t == 1000:  # pure noise: the output is the clean latent itself
        torch.testing.assert_close(edm_flow_velocity(x_t, x0, ts, 1000), x0 - x_t)


def test_preconditioning_is_applied_by_the_model_only_when_configured():
    x = inputs()
    plain = CCELLALDM.from_config(load_config(overrides=["diffusion.prediction=flow"]), text_dim=DT)
    edm = CCELLALDM.from_config(load_config(overrides=["diffusion.prediction=flow",
                                                       "diffusion.preconditioning=edm"]), text_dim=DT)
    edm.load_state_dict(plain.state_dict())  # same weights: no parameters of its own
    out, _ = plain(**x)
    assert plain.preconditioning == "none"
    torch.testing.assert_close(edm(**x)[0], edm_flow_velocity(x["x_t"], out, x["t"], 1000))
    assert not torch.allclose(edm(**x)[0], out)


def test_preconditioning_needs_the_flow_objective():
    with pytest.raises(ConfigError, match="preconditioning edm is defined for prediction flow"):
        load_config(overrides=["diffusion.preconditioning=edm"])  # the default objective is eps


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_diffusion_loss_is_l1_or_mse_and_logged_under_its_name(kind):
    noise_pred, target, logits, labels = loss_inputs()
    isnull = torch.ones(4, dtype=torch.bool)  # no focal term
    loss, logs = joint_loss(noise_pred, target, logits, labels, isnull, LossConfig(diffusion_loss=kind))
    expected = (F.l1_loss if kind == "l1" else F.mse_loss)(noise_pred, target)
    assert torch.equal(loss, expected) and logs[kind] == pytest.approx(expected.item())
    assert ({"l1", "mse"} - {kind}).isdisjoint(logs)


def test_diffusion_loss_trains_the_class_heads_through_the_class_path():
    model = tiny_model()
    noise_pred, _ = model(**inputs())
    noise_pred.abs().mean().backward()  # an L1 term on noise_pred only, no focal loss
    # The class heads and final classifier do not touch the context: their only way into noise_pred is
    # softmax(class_logits) -> U-Net. Detaching class_probs would leave these gradients None.
    for part in (model.adapter.classifier, model.adapter.class_heads):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_given_class_probs_replace_the_prediction():
    model = tiny_model().eval()
    x = inputs()
    noise_pred, logits = model(**x)
    as_predicted, _ = model(**x, class_probs=logits.softmax(-1))
    assert torch.allclose(noise_pred, as_predicted, atol=1e-6)
    negative, _ = model(**x, class_probs=torch.tensor([[1.0, 0.0]] * B))
    positive, _ = model(**x, class_probs=torch.tensor([[0.0, 1.0]] * B))
    assert not torch.allclose(negative, positive)

    positive.abs().mean().backward()  # by label, the adapter is trained through the context alone
    assert model.adapter.proj_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.adapter.classifier.parameters())


def test_given_mask_feeds_the_given_class_to_some_cases_and_the_prediction_to_the_rest():
    model = tiny_model().eval()
    x = inputs(3)
    seen = []
    model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[3]))
    _, logits = model(**x)
    given_probs = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    model(**x, class_probs=given_probs, given=torch.tensor([True, True, False]))
    expected = torch.cat([given_probs[:2], logits[2:].softmax(-1)])
    assert torch.equal(seen[-1], expected)  # the label, the null class, the adapter's prediction


# ---------------------------------------------------------------- class-slot draws (teacher forcing)


def test_class_slot_draws_nothing_when_both_probabilities_are_zero():
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    assert class_slot(torch.tensor([0, 1, 1]), 0.0, 0.0, generator=g) == (None, None)
    assert torch.equal(g.get_state(), before)  # the reference's random stream is untouched


def test_class_slot_gives_one_hot_labels_null_classes_and_the_adapter_in_proportion():
    labels = torch.arange(4000) % 2
    probs, given = class_slot(labels, 0.5, 0.2, generator=torch.Generator().manual_seed(0))
    forced = given & (probs.sum(dim=1) == 1)
    null = given & (probs.sum(dim=1) == 0)
    assert torch.equal(probs[forced], F.one_hot(labels[forced], 2).float())
    assert torch.equal(probs[null], null_class(int(null.sum())))
    assert forced.float().mean() == pytest.approx(0.5, abs=0.03)
    assert null.float().mean() == pytest.approx(0.2, abs=0.03)
    assert (~given).float().mean() == pytest.approx(0.3, abs=0.03)
    everything, given = class_slot(labels[:8], 1.0, 0.0)
    assert given.all() and torch.equal(everything, F.one_hot(labels[:8], 2).float())
    nothing, given = class_slot(labels[:8], 0.0, 1.0)
    assert given.all() and not nothing.any()


def test_class_slot_draws_follow_the_seed():
    labels = torch.arange(64) % 2

    def draw(seed):
        probs, given = class_slot(labels, 0.4, 0.3, generator=torch.Generator().manual_seed(seed))
        return torch.cat([probs, given[:, None].float()], dim=1)

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


# ---------------------------------------------------------------- joint loss


def loss_inputs():
    noise_pred, target = torch.randn(4, C, 4, 4, 2), torch.randn(4, C, 4, 4, 2)
    logits = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    return noise_pred, target, logits, labels


def test_focal_term_is_zero_when_every_report_is_empty():
    noise_pred, target, logits, labels = loss_inputs()
    loss, logs = joint_loss(noise_pred, target, logits, labels, torch.ones(4, dtype=torch.bool), LossConfig())
    assert logs["focal"] == 0.0 and logs["focal_cases"] == 0
    assert torch.equal(loss, F.l1_loss(noise_pred, target))
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))  # no NaN


def test_focal_term_is_monai_focal_loss_over_the_cases_with_a_report():
    noise_pred, target, logits, labels = loss_inputs()
    isnull = torch.tensor([False, True, False, False])
    cfg = LossConfig(focal_weight=0.5)
    loss, logs = joint_loss(noise_pred, target, logits, labels, isnull, cfg)
    keep = ~isnull
    expected = FocalLoss(gamma=2.0, alpha=0.75, use_softmax=True)(
        logits[keep], F.one_hot(labels[keep], 2).float())
    assert logs["focal"] == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(F.l1_loss(noise_pred, target).item() + 0.5 * expected.item(), rel=1e-5)
    assert logs["focal_cases"] == 3

    changed = logits.detach().clone()
    changed[1] = torch.tensor([9.0, -9.0])  # the empty-report case does not count
    assert joint_loss(noise_pred, target, changed, labels, isnull, cfg)[1]["focal"] == pytest.approx(logs["focal"])


def test_reference_focal_scaling_multiplies_the_target_by_100():
    noise_pred, target, logits, labels = loss_inputs()
    isnull = torch.tensor([False, True, False, False])
    plain = joint_loss(noise_pred, target, logits, labels, isnull, LossConfig())[1]["focal"]
    scaled = joint_loss(noise_pred, target, logits, labels, isnull, LossConfig(reference_focal_scaling=True))[1]
    assert scaled["focal"] == pytest.approx(100 * plain, rel=1e-5)  # softmax focal loss is linear in the target


# ---------------------------------------------------------------- text dropout


def dropout_inputs(batch: int = 16):
    text = torch.randn(batch, T, DT)
    mask = torch.ones(batch, T, dtype=torch.bool)
    isnull = torch.zeros(batch, dtype=torch.bool)
    null_text, null_mask = torch.randn(1, 3, DT), torch.ones(1, 3, dtype=torch.bool)
    return text, mask, isnull, null_text, null_mask


def test_text_dropout_zero_is_identity():
    text, mask, isnull, null_text, null_mask = dropout_inputs()
    out = text_dropout(text, mask, isnull, null_text, null_mask, p=0.0, generator=torch.Generator().manual_seed(0))
    assert out[0] is text and out[1] is mask and out[2] is isnull


def test_text_dropout_one_replaces_every_report_with_the_padded_empty_report():
    text, mask, isnull, null_text, null_mask = dropout_inputs()
    new_text, new_mask, new_isnull = text_dropout(text, mask, isnull, null_text, null_mask, p=1.0)
    assert new_text.shape == text.shape and new_mask.shape == mask.shape
    assert torch.equal(new_text[:, :3], null_text.expand(len(text), -1, -1))
    assert torch.equal(new_text[:, 3:], torch.zeros_like(new_text[:, 3:]))
    assert new_mask[:, :3].all() and not new_mask[:, 3:].any()
    assert new_isnull.all()


def test_text_dropout_truncates_a_longer_empty_report():
    text, mask, isnull, _, _ = dropout_inputs(2)
    null_text = torch.randn(T + 5, DT)
    new_text, new_mask, _ = text_dropout(text, mask, isnull, null_text, None, p=1.0)
    assert torch.equal(new_text[0], null_text[:T]) and new_mask.all()


def test_text_dropout_is_deterministic_for_a_seeded_generator():
    text, mask, isnull, null_text, null_mask = dropout_inputs(64)
    runs = [text_dropout(text, mask, isnull, null_text, null_mask, p=0.5, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    dropped = runs[0][2]
    assert 0 < dropped.sum() < 64
    assert torch.equal(runs[0][0][~dropped], text[~dropped])  # the rest keep their report


# ---------------------------------------------------------------- paper sizes


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_and_reference_parameter_counts():
    with torch.device("meta"):
        paper = CCELLALDM.from_config(load_config(preset="paper"), text_dim=4096)
        reference = CCELLALDM.from_config(load_config(preset="reference"), text_dim=4096)
    assert count(reference.unet) == pytest.approx(207e6, rel=0.02)
    assert count(reference.adapter) == pytest.approx(370e6, rel=0.02)
    assert count(reference.adapter.class_heads) == pytest.approx(302e6, rel=0.02)  # 6 x (256*768 -> 256 -> 2)
    assert count(reference) == pytest.approx(577e6, rel=0.02)
    saving = count(reference) - count(paper)
    assert count(paper.unet) == count(reference.unet) and saving > 295e6
    print(f"paper (pool heads) {count(paper) / 1e6:.1f}M vs reference (flatten) {count(reference) / 1e6:.1f}M: "
          f"pool heads save {saving / 1e6:.1f}M")
