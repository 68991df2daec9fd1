"""Class- and spacing-conditioned 3D diffusion U-Net over the latents, built on MONAI MAISI's U-Net.

    unet = CCELLAUNet(cfg.unet, latent_channels=4, cross_attention_dim=cfg.adapter.width)
    noise_pred = unet(x_t, t, context, class_probs, spacing)  # (B, C, D, H, W)

Why a subclass of ``DiffusionModelUNetMaisi``: MAISI already conditions its time embedding on extra
inputs the way the reference CCELLA does. Each extra input (top/bottom region index, spacing) goes
through a small MLP (``_create_embedding_module``: Linear, SiLU, Linear to the time-embedding width)
and is concatenated to the time embedding, and every block is built for the widened embedding. The
reference feeds ``softmax(class logits)`` in place of the top-region index, both inputs scaled by 100.
So we construct MAISI's network with its top-region slot switched on and swap that slot's 4-input MLP
for a 2-input one before any weights are used (the weights keep MAISI's name, ``top_region_index_layer``);
MAISI's own ``_get_input_embeddings`` and ``forward`` then run unchanged, and only the argument names
of ``forward`` change. The embedding is
``[time | class | spacing]``, each ``4 * channels[0]`` wide. (Plain ``DiffusionModelUNet`` fixes the
embedding width inside ``__init__`` and has no extra-input hook: reusing it would mean rebuilding its
blocks or copying its forward.)

Attention blocks include their output projection (``include_fc=True``, MONAI's ``DiffusionModelUNet``
default; MAISI defaults to False for its released checkpoints): with it the paper configuration has
the reference's 207M parameters.
"""

from __future__ import annotations

import torch
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

from synthaug.config import UNetConfig

INPUT_SCALE = 100.0  # MAISI and the reference multiply spacing (and class probabilities) by 1e2


class CCELLAUNet(DiffusionModelUNetMaisi):
    """3D U-Net: cross-attention to the adapter's context; class probabilities and spacing in the time embedding.

    Args:
        cfg: channels, attention levels, head width, residual blocks, groups, which extra inputs.
        latent_channels: channels C of the latents (input and output).
        cross_attention_dim: width W of the adapter's context.
    """

    def __init__(self, cfg: UNetConfig, latent_channels: int, cross_attention_dim: int) -> None:
        super().__init__(
            spatial_dims=3,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_res_blocks=cfg.num_res_blocks,
            num_channels=cfg.channels,
            attention_levels=cfg.attention_levels,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,  # per head; ignored at attention-free levels
            with_conditioning=True,
            cross_attention_dim=cross_attention_dim,
            upcast_attention=True,
            include_fc=True,
            include_top_region_index_input=cfg.class_conditioning,  # the class slot, see the module docstring
            include_spacing_input=cfg.spacing_conditioning,
        )
        self.cfg = cfg
        if cfg.class_conditioning:  # 2 class probabilities instead of MAISI's 4-value region index
            self.top_region_index_layer = self._create_embedding_module(2, 4 * cfg.channels[0])

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        class_probs: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise prediction (B, C, D, H, W) for latents x (B, C, D, H, W) at timesteps (B,).

        context (B, N, W) from the adapter; class_probs (B, 2) and spacing (B, 3) in mm, each required
        when the config switches it on and ignored otherwise.
        """
        class_input = spacing_input = None
        if self.cfg.class_conditioning:
            if class_probs is None:
                raise ValueError("class_probs (B, 2) is required: this U-Net was built with class_conditioning")
            class_input = class_probs.to(x.dtype) * INPUT_SCALE
        if self.cfg.spacing_conditioning:
            if spacing is None:
                raise ValueError("spacing (B, 3) is required: this U-Net was built with spacing_conditioning")
            spacing_input = spacing.to(device=x.device, dtype=x.dtype) * INPUT_SCALE
        return super().forward(x, timesteps, context=context,
                               top_region_index_tensor=class_input, spacing_tensor=spacing_input)
