"""Seeded draws of indices: the one rule by which an epoch picks real items and pooled synthetic volumes."""

from __future__ import annotations

import numpy as np


def draw_indices(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)``, sorted: a seeded draw without replacement when k <= n, else every index
    k // n times plus such a draw of the rest."""
    if k <= n:
        return sorted(rng.choice(n, size=k, replace=False).tolist())
    return sorted([*list(range(n)) * (k // n), *rng.choice(n, size=k % n, replace=False).tolist()])
