"""Shared test settings: a generator small enough to train in seconds (32x32x16 images, latents 4x8x8x4)."""

from __future__ import annotations

import contextlib

from synthaug.config import SynthaugConfig, load_config

SMALL = [
    "data.image_shape=[32, 32, 16]", "data.spacing=[3.0, 3.0, 6.0]", "phantom.n_cases=16",
    "autoencoder.channels=[8, 16, 16]", "autoencoder.norm_num_groups=4", "autoencoder.steps=4",
    "autoencoder.batch_size=2", "adapter.width=32", "adapter.layers=2", "adapter.heads=4", "adapter.num_latents=8",
    "adapter.head_hidden=16", "unet.channels=[16, 32]", "unet.attention_levels=[false, true]",
    "unet.num_head_channels=8", "unet.norm_num_groups=8", "text.max_tokens=64", "train.steps=6",
    "train.batch_size=2", "train.checkpoint_every=3", "train.log_every=1",
]


def small_config(*extra: str) -> SynthaugConfig:
    return load_config(overrides=[*SMALL, *extra])


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads: float reductions (hence exact bytes) depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
