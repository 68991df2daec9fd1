"""CCELLALDM = CCELLA adapter + conditioned U-Net; the joint loss; text dropout and class-slot draws for guidance.

    model = CCELLALDM.from_config(cfg, text_dim=384)
    class_probs, given = class_slot(labels, cfg.loss.p_label, cfg.loss.p_null, generator)  # teacher forcing
    noise_pred, class_logits = model(x_t, t, text, mask, spacing, class_probs, given)
    loss, logs = joint_loss(noise_pred, noise, class_logits, labels, text_isnull, cfg.loss)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import FocalLoss
from torch import nn

from synthaug.config import LossConfig, SynthaugConfig
from synthaug.ldm.adapter import NUM_CLASSES, CCELLAAdapter
from synthaug.ldm.unet import CCELLAUNet

REFERENCE_FOCAL_SCALE = 100.0  # the reference's one-hot focal target is (accidentally) multiplied by 100


def edm_flow_velocity(x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The flow velocity x0_hat - noise_hat from the U-Net's output ``out`` under EDM skip preconditioning.

    On x_t = (1 - s) x0 + s n with unit-variance data, x0_hat = c_skip x_t + c_out out with
    c_skip = (1 - s) / D, c_out = s / sqrt(D), D = (1 - s)^2 + s^2 (Karras et al. 2022, table 1, for this
    path); the velocity (x0_hat - x_t) / s is then ((1 - 2s) x_t + sqrt(D) out) / D, finite at every s.
    """
    s = (t.to(torch.float32) / num_train_timesteps).view(-1, *([1] * (x_t.dim() - 1)))
    d = (1 - s) ** 2 + s ** 2
    return (((1 - 2 * s) * x_t.float() + d.sqrt() * out.float()) / d).to(out.dtype)


def null_class(batch: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The null class input (B, 2): zeros, neither a one-hot label nor a softmax output ("no class")."""
    return torch.zeros(batch, NUM_CLASSES, dtype=torch.float32 if like is None else like.dtype,
                       device=None if like is None else like.device)


class CCELLALDM(nn.Module):
    """The denoiser: the adapter reads the report, the U-Net denoises the latents given its outputs."""

    def __init__(self, adapter: CCELLAAdapter, unet: CCELLAUNet, *, preconditioning: str = "none",
                 num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.adapter = adapter
        self.unet = unet
        self.preconditioning = preconditioning
        self.num_train_timesteps = num_train_timesteps

    @classmethod
    def from_config(cls, cfg: SynthaugConfig, text_dim: int) -> CCELLALDM:
        """Build both networks from ``cfg.adapter`` / ``cfg.unet`` for text features of width ``text_dim``."""
        adapter = CCELLAAdapter(text_dim, cfg.adapter)
        unet = CCELLAUNet(cfg.unet, latent_channels=cfg.autoencoder.latent_channels,
                          cross_attention_dim=cfg.adapter.width)
        return cls(adapter, unet, preconditioning=cfg.diffusion.preconditioning,
                   num_train_timesteps=cfg.diffusion.num_train_timesteps)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor | None,
        spacing: torch.Tensor | None = None,
        class_probs: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, C, D, H, W), t (B,), text (B, T, Dt), mask (B, T) -> noise_pred (B, C, D, H, W), class_logits (B, 2).

        ``class_probs`` None: the U-Net gets ``softmax(class_logits)``, not detached, so the diffusion loss
        also trains the adapter through the class path (the reference). Given (B, 2): used instead (class
        control by label, the null class), for every case, or with ``given`` (B,) bool only where it is
        True, the rest keeping the adapter's prediction (teacher forcing, ``class_slot``).
        """
        context, class_logits = self.adapter(text, mask, t)  # (B, N, W), (B, 2)
        if class_probs is None:
            class_probs = class_logits.softmax(dim=-1)
        elif given is not None:
            predicted = class_logits.softmax(dim=-1)
            class_probs = torch.where(given.to(predicted.device)[:, None], class_probs.to(predicted), predicted)
        return self.denoise(x_t, t, context, class_probs, spacing), class_logits

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, class_probs: torch.Tensor,
                spacing: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's prediction given the adapter's outputs, in the objective's units (the flow velocity
        under ``edm`` preconditioning): what training regresses and every sampler steps with."""
        out = self.unet(x_t, t, context, class_probs, spacing)
        if self.preconditioning == "edm":
            out = edm_flow_velocity(x_t, out, t, self.num_train_timesteps)
        return out


def joint_loss(
    noise_pred: torch.Tensor,
    target: torch.Tensor,
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    text_isnull: torch.Tensor,
    cfg: LossConfig,
    focal_denominator: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """d(noise_pred, target) + focal_weight * focal(class_logits, labels) over the cases that have a report;
    d is L1 (the reference) or MSE, as ``cfg.diffusion_loss`` says, and is logged under that name.

    The focal term is MONAI ``FocalLoss(use_softmax=True)`` (a 2-logit softmax classifier, one-hot
    target, scalar alpha weighting class 1 by alpha and class 0 by 1 - alpha) with its ``mean``
    reduction, i.e. the mean over classes per case, averaged over the cases whose report is not empty
    (``text_isnull`` False); exactly 0 when every report is empty. ``focal_denominator`` replaces the
    local count of such cases (data-parallel training passes the global count / world size, so that the
    averaged gradients equal those of one process on the whole batch).
    """
    distance = F.l1_loss if cfg.diffusion_loss == "l1" else F.mse_loss
    denoising = distance(noise_pred.float(), target.float())
    keep = ~text_isnull.to(device=class_logits.device, dtype=torch.bool)
    focal = focal_term(class_logits, labels, keep, cfg, focal_denominator)
    loss = denoising + cfg.focal_weight * focal
    values = torch.stack([loss, denoising, focal, keep.sum().to(loss.dtype)]).detach().tolist()  # one device sync
    return loss, dict(zip(("loss", cfg.diffusion_loss, "focal", "focal_cases"), values))


def focal_term(class_logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, cfg: LossConfig,
               denominator: torch.Tensor | None = None) -> torch.Tensor:
    """The class head's focal loss (``joint_loss``) summed over the cases where ``keep`` (B,) is True, divided by
    their count (or by ``denominator``); 0 where none is kept."""
    focal_fn = FocalLoss(gamma=cfg.focal_gamma, alpha=cfg.focal_alpha, use_softmax=True, reduction="none")
    onehot = F.one_hot(labels.long(), NUM_CLASSES).float()  # (B, 2)
    if cfg.reference_focal_scaling:
        onehot = onehot * REFERENCE_FOCAL_SCALE
    per_case = focal_fn(class_logits.float(), onehot).mean(dim=1)  # (B,)
    denominator = keep.sum().clamp(min=1) if denominator is None else denominator.to(per_case)
    return torch.where(keep, per_case, torch.zeros_like(per_case)).sum() / denominator


def text_dropout(
    text: torch.Tensor,
    mask: torch.Tensor,
    isnull: torch.Tensor,
    null_text: torch.Tensor,
    null_mask: torch.Tensor | None,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace whole reports by the empty-report embedding with probability ``p`` (classifier-free guidance).

    text (B, T, D), mask (B, T), isnull (B,); null_text (T0, D) or (1, T0, D), null_mask (T0,) or (1, T0),
    None = all tokens real. The null embedding is zero-padded (mask False) or cut to T tokens. Dropped
    cases come back with ``isnull`` True, so their focal term is masked out. ``p = 0`` (the reference)
    returns the inputs unchanged and draws nothing.
    """
    if p <= 0:
        return text, mask, isnull
    b, t = text.shape[:2]
    null_text = null_text.reshape(-1, text.shape[-1])[:t].to(device=text.device, dtype=text.dtype)  # (<=T, D)
    null_mask = (torch.ones(null_text.shape[0], dtype=torch.bool) if null_mask is None
                 else null_mask.reshape(-1)[:t].bool()).to(device=mask.device)
    pad = t - null_text.shape[0]
    null_text = F.pad(null_text, (0, 0, 0, pad))  # (T, D)
    null_mask = F.pad(null_mask, (0, pad), value=False).to(mask.dtype)  # (T,)

    gen_device = generator.device if generator is not None else torch.device("cpu")
    drop = (torch.rand(b, generator=generator, device=gen_device) < p).to(text.device)  # (B,)
    text = torch.where(drop[:, None, None], null_text, text)
    mask = torch.where(drop[:, None].to(mask.device), null_mask, mask)
    isnull = isnull | drop.to(isnull.device)
    return text, mask, isnull


def class_slot(
    labels: torch.Tensor,
    p_label: float,
    p_null: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Draw what the U-Net's class slot gets for each training case (``LossConfig``): the label or the null class.

    One uniform draw per case u: u < p_label -> the one-hot label (teacher forcing), p_label <= u <
    p_label + p_null -> ``null_class``, else the adapter's prediction. Returns ``(class_probs (B, 2),
    given (B,) bool)`` for ``CCELLALDM.forward``. ``p_label = p_null = 0`` (the reference) draws nothing
    and returns ``(None, None)``.
    """
    if p_label <= 0 and p_null <= 0:
        return None, None
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(len(labels), generator=generator, device=gen_device).to(labels.device)  # (B,)
    forced = u < p_label
    onehot = F.one_hot(labels.long(), NUM_CLASSES).float()
    probs = torch.where(forced[:, None], onehot, null_class(len(labels), like=onehot))  # (B, 2)
    return probs, forced | (u < p_label + p_null)
