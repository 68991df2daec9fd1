"""CCELLA adapter: ELLA's timestep-aware semantic connector (TSC) plus a class head after every block.

    adapter = CCELLAAdapter(text_dim=384, cfg=AdapterConfig())
    context, class_logits = adapter(text, mask, timesteps)  # (B, N, W) for cross-attention, (B, 2)

N learnable latent queries read the report's token features through L perceiver blocks whose three
AdaLayerNorms are modulated by the diffusion timestep (Hu et al., ELLA, arXiv 2403.05135). CCELLA adds
a class head after every block and a final linear layer over the L stacked pairs of logits (DESIGN.md
section 2). Head kinds: ``flatten`` is the reference (N*W -> hidden -> 2 per block: 302M of the paper
model's 577M parameters); ``pool`` (default) averages the latents first (N times fewer weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from synthaug.config import AdapterConfig

NUM_CLASSES = 2


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then ``x * (1 + scale) + shift`` from the time embedding (zero-initialised)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.modulation.weight)  # identity modulation at init
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(t_emb)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, W) each
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) ** 2


class PerceiverBlock(nn.Module):
    """Latents attend to [latents ; text tokens], then a squared-ReLU MLP; AdaLN before each."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = AdaLayerNorm(width)  # latents
        self.ln_2 = AdaLayerNorm(width)  # text tokens
        self.ln_ff = AdaLayerNorm(width)  # before the MLP
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), SquaredReLU(), nn.Linear(4 * width, width))

    def forward(self, latents: torch.Tensor, text: torch.Tensor, t_emb: torch.Tensor,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.ln_1(latents, t_emb)  # (B, N, W)
        kv = torch.cat([q, self.ln_2(text, t_emb)], dim=1)  # (B, N + T, W)
        latents = latents + self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return latents + self.mlp(self.ln_ff(latents, t_emb))


class ClassHead(nn.Module):
    """Latents (B, N, W) -> 2 logits: ``flatten`` (the reference) or ``pool`` (mean over the N latents)."""

    def __init__(self, kind: str, num_latents: int, width: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "flatten":
            self.reduce: nn.Module = nn.Flatten(1)  # (B, N * W)
            in_features = num_latents * width
        else:
            self.reduce = nn.LayerNorm(width)  # applied to the mean latent, (B, W)
            in_features = width
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.reduce(latents) if self.kind == "flatten" else self.reduce(latents.mean(dim=1))
        return self.mlp(x)  # (B, 2)


class CCELLAAdapter(nn.Module):
    """Report token features + timestep -> cross-attention context (B, N, W) and class logits (B, 2).

    Args:
        text_dim: width Dt of the text encoder's token features.
        cfg: width W, layers L, heads, latents N, class-head kind and hidden size, text masking.
    """

    def __init__(self, text_dim: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))  # sinusoid (W) -> t_emb (W)
        self.proj_in = nn.Linear(text_dim, w)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, w) * w**-0.5)  # (N, W)
        self.time_aware_linear = nn.Linear(w, w)
        self.blocks = nn.ModuleList(PerceiverBlock(w, cfg.heads) for _ in range(cfg.layers))
        self.class_heads = nn.ModuleList(
            ClassHead(cfg.class_head, cfg.num_latents, w, cfg.head_hidden) for _ in range(cfg.layers))
        self.classifier = nn.Linear(cfg.layers * NUM_CLASSES, NUM_CLASSES)  # stacked per-block logits -> logits

    def time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) diffusion steps -> (B, W): MONAI's sinusoid ([cos | sin], as ELLA's) through an MLP."""
        sinusoid = get_timestep_embedding(timesteps, self.cfg.width)
        return self.time_mlp(sinusoid.to(self.proj_in.weight.dtype))

    def forward(self, text: torch.Tensor, mask: torch.Tensor | None,
                timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, T, Dt), mask (B, T) True = real token, timesteps (B,) -> context (B, N, W), logits (B, 2)."""
        t_emb = self.time_embedding(timesteps)  # (B, W)
        text = self.proj_in(text.to(self.proj_in.weight.dtype))  # (B, T, W)
        b, n = text.shape[0], self.latents.shape[0]
        latents = self.latents.expand(b, -1, -1) + self.time_aware_linear(F.silu(t_emb)).unsqueeze(1)  # (B, N, W)

        key_padding_mask = None  # True = ignore; the latent keys are always visible
        if mask is not None and self.cfg.use_text_mask:
            visible = torch.ones(b, n, dtype=torch.bool, device=text.device)
            key_padding_mask = ~torch.cat([visible, mask.to(device=text.device, dtype=torch.bool)], dim=1)

        block_logits = []
        for block, head in zip(self.blocks, self.class_heads):
            latents = block(latents, text, t_emb, key_padding_mask)
            block_logits.append(head(latents))  # (B, 2)
        class_logits = self.classifier(torch.cat(block_logits, dim=1))  # (B, L * 2) -> (B, 2)
        return latents, class_logits
