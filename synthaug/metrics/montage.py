"""PNG montages for looking at synthetic volumes: mid-slices in three planes, real vs synthetic, and
memorisation pairs side by side. Matplotlib's object API (no pyplot), so no global backend state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthaug.data.io import atomic_path

PLANE_TITLES = ("x (sagittal)", "y (coronal)", "z (axial)")  # names hold for RAS-oriented (X, Y, Z) arrays


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The three central slices of an ``(X, Y, Z)`` volume, each rotated for display (first axis up)."""
    v = np.asarray(volume, dtype=np.float32).reshape(volume.shape[-3:])
    x, y, z = (s // 2 for s in v.shape)
    return [np.rot90(v[x]), np.rot90(v[:, y]), np.rot90(v[:, :, z])]


def _save(fig, path: Path) -> Path:  # matplotlib Figure
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _show(ax, image: np.ndarray, title: str | None = None) -> None:  # matplotlib Axes
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def save_montage(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], path: str | os.PathLike[str], *,
                 title: str = "", rows: int = 4) -> Path:
    """Write a PNG: per row one real and one synthetic volume (``(X, Y, Z)`` in [0, 1]), three mid-slices each."""
    from matplotlib.figure import Figure

    n = max(1, min(rows, max(len(real), len(synthetic))))
    fig = Figure(figsize=(6 * 1.6, n * 1.7 + 0.4))
    axes = fig.subplots(n, 6, squeeze=False)
    for r in range(n):
        for side, volumes in enumerate((real, synthetic)):
            slices = mid_slices(volumes[r]) if r < len(volumes) else [None] * 3
            for p, image in enumerate(slices):
                ax = axes[r, side * 3 + p]
                if image is None:
                    ax.axis("off")
                    continue
                _show(ax, image, f"{'real' if side == 0 else 'synthetic'} {PLANE_TITLES[p]}" if r == 0 else None)
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))


def save_pairs(pairs: Sequence[dict], synthetic: dict[str, np.ndarray], train: dict[str, np.ndarray],
               path: str | os.PathLike[str], *, space: str = "voxel", rows: int = 8) -> Path:
    """Write a PNG of memorisation pairs: each synthetic volume beside its nearest training volume.

    ``pairs``: rows of :func:`synthaug.metrics.quality.memorisation` (most suspicious first);
    ``synthetic``/``train``: volumes ``(X, Y, Z)`` in [0, 1] by id.
    """
    from matplotlib.figure import Figure

    shown = list(pairs[:rows])
    fig = Figure(figsize=(6 * 1.6, max(1, len(shown)) * 2.0 + 0.5))
    if not shown:
        fig.text(0.5, 0.5, "no pairs", ha="center", va="center")
    for r, (sub, pair) in enumerate(zip(fig.subfigures(max(1, len(shown)), 1, squeeze=False)[:, 0], shown)):
        train_id = pair.get(f"{space}_train_id", pair.get("feature_train_id"))
        flag = "LIKELY COPY" if pair.get("likely_copy") else "no copy flag"
        sub.suptitle(f"{pair['synthetic_id']} (left) vs nearest training volume {train_id} (right): {space} distance "
                     f"{pair.get(f'{space}_distance', float('nan')):.4g}, ratio to median train-train "
                     f"{pair.get(f'{space}_ratio', float('nan')):.3g}; {flag}", fontsize=7)
        axes = sub.subplots(1, 6)
        for side, volume in enumerate((synthetic[pair["synthetic_id"]], train[train_id])):
            for p, image in enumerate(mid_slices(volume)):
                _show(axes[side * 3 + p], image,
                      f"{'synthetic' if side == 0 else 'train'} {PLANE_TITLES[p]}" if r == 0 else None)
    fig.suptitle(f"Nearest training volume of each synthetic volume ({space} space), most suspicious first",
                 fontsize=9, y=1.0 + 0.25 / fig.get_figheight())
    return _save(fig, Path(path))


def save_volumes(volumes: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Write a PNG with one row per ``(X, Y, Z)`` volume (any intensity units): its three mid-slices, each
    volume scaled by its own 0.5-99.5 percentiles; ``titles`` label the rows."""
    from matplotlib.figure import Figure

    n = max(1, len(volumes))
    fig = Figure(figsize=(3 * 1.6, n * 1.7 + 0.2))
    axes = fig.subplots(n, 3, squeeze=False)
    for r, (volume, title) in enumerate(zip(volumes, titles)):
        v = np.asarray(volume, dtype=np.float32)
        lo, hi = np.percentile(v, [0.5, 99.5])
        scaled = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
        for p, image in enumerate(mid_slices(scaled)):
            _show(axes[r, p], image, PLANE_TITLES[p] if r == 0 else None)
        axes[r, 0].set_ylabel(title, fontsize=7)
    return _save(fig, Path(path))
