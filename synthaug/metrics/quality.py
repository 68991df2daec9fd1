"""Quality metrics of synthetic volumes: pure functions on features, volumes and predictions.

FID (MONAI ``FIDMetric``, 3D and 2.5D), KID (unbiased MMD^2, polynomial kernel, subsets), improved
precision/recall (k-NN manifolds), MS-SSIM diversity (MONAI), memorisation (nearest training volume in
feature and voxel space vs train-train distances) and conditioning fidelity (a real-data classifier's
accuracy/AUROC on synthetic volumes by requested label).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthaug.errors import InputError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, MONAI's default
MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5


def _features(x: Tensor | np.ndarray, what: str, minimum: int = 2) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).double()
    if t.ndim != 2 or t.shape[0] < minimum:
        raise InputError(f"{what}: expected at least {minimum} feature vectors of shape (N, F), got {tuple(t.shape)}",
                         where="quality metrics", fix=f"give at least {minimum} volumes per set")
    return t


# -------------------------------------------------------------------------------------------- FID/KID


def fid(real: Tensor | np.ndarray, synthetic: Tensor | np.ndarray) -> float:
    """Frechet distance between ``(N, F)`` real and ``(M, F)`` synthetic features (MONAI ``FIDMetric``).

    With fewer samples than features the covariances are singular; then the diagonals get a tiny ridge
    (1e-6 of the mean variance) and numerical imaginary parts are dropped. Clamped at 0.
    """
    from monai.metrics import FIDMetric
    from monai.metrics.fid import _cov, compute_frechet_distance

    r, s = _features(real, "FID real"), _features(synthetic, "FID synthetic")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI prints and scipy warns on singular covariances (N < F), expected
        try:
            value = float(FIDMetric()(s, r))
        except ValueError:  # "imaginary component too high" on near-singular covariances
            sr, ss = _cov(r, rowvar=False), _cov(s, rowvar=False)
            ridge = 1e-6 * float(torch.diagonal(sr).mean() + torch.diagonal(ss).mean()) / 2 + 1e-12
            eye = torch.eye(sr.shape[0], dtype=sr.dtype)
            value = float(_frechet_real(compute_frechet_distance, s.mean(0), ss + ridge * eye, r.mean(0),
                                        sr + ridge * eye))
    return max(value, 0.0) if math.isfinite(value) else float("nan")


def _frechet_real(fn, *args: Tensor) -> Tensor:
    try:
        return fn(*args)
    except ValueError:  # still complex: compute tr sqrt(AB) from the eigenvalues of AB instead
        mu_x, sigma_x, mu_y, sigma_y = args
        eig = torch.linalg.eigvals(sigma_x @ sigma_y).real.clamp_min(0)
        return (mu_x - mu_y).dot(mu_x - mu_y) + sigma_x.trace() + sigma_y.trace() - 2 * eig.sqrt().sum()


def fid_planes(real: Mapping[str, Tensor], synthetic: Mapping[str, Tensor]) -> dict[str, float]:
    """2.5D FID: one FID per plane (``{"x": .., "y": .., "z": ..}`` features) and their ``mean``."""
    out = {plane: fid(real[plane], synthetic[plane]) for plane in real}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between ``(m, F)`` and ``(n, F)`` with kernel ``(gamma <x, y> + coef0) ** degree``."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (gamma * x @ x.T + coef0) ** degree
    kyy = (gamma * y @ y.T + coef0) ** degree
    kxy = (gamma * x @ y.T + coef0) ** degree
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: Tensor | np.ndarray, synthetic: Tensor | np.ndarray, *, subsets: int = 100,
        subset_size: int = 1000, degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
        seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased polynomial MMD^2 over seeded random subsets.

    Each subset draws ``min(subset_size, N, M)`` vectors without replacement from each set. Returns
    ``{"mean", "std", "subsets", "subset_size", "kernel"}``; unbiased, so it can dip below 0 for equal sets.
    """
    r = _features(real, "KID real").numpy()
    s = _features(synthetic, "KID synthetic").numpy()
    size = min(subset_size, r.shape[0], s.shape[0])
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(r[rng.choice(r.shape[0], size, replace=False)],
                              s[rng.choice(s.shape[0], size, replace=False)], degree=degree, gamma=gamma, coef0=coef0)
              for _ in range(subsets)]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subsets": subsets, "subset_size": size,
            "kernel": f"polynomial(degree={degree}, gamma={'1/dim' if gamma is None else gamma}, coef0={coef0})"}


def precision_recall(real: Tensor | np.ndarray, synthetic: Tensor | np.ndarray, *, k: int = 3) -> dict:
    """Improved precision/recall (Kynkaanniemi et al. 2019): fractions inside the other set's k-NN balls.

    precision = share of synthetic vectors within some real vector's k-th-neighbour radius (fidelity);
    recall = share of real vectors within some synthetic vector's radius (coverage). ``k`` is capped at N-1.
    """
    r, s = _features(real, "precision/recall real"), _features(synthetic, "precision/recall synthetic")
    k = max(1, min(k, r.shape[0] - 1, s.shape[0] - 1))

    def radii(x: Tensor) -> Tensor:
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0

    inside = lambda q, ref, rad: (torch.cdist(q, ref) <= rad.unsqueeze(0)).any(1).double().mean()  # noqa: E731
    return {"precision": float(inside(s, r, radii(r))), "recall": float(inside(r, s, radii(s))), "k": k}


# ------------------------------------------------------------------------------------------- MS-SSIM


def ms_ssim_settings(shape: Sequence[int]) -> dict:
    """MS-SSIM scales and per-axis kernel for volumes of spatial ``shape``; the most scales that fit.

    MONAI needs ``side // (scales - 1) ** 2 > kernel - 1`` on each axis and the last scale must still hold
    one kernel (``side // 2 ** (scales - 1) >= kernel``). Kernels are odd, at most 11 and at least 3;
    sigma shrinks with the kernel (1.5 at 11); the first ``scales`` standard weights are renormalised.
    """
    shape = [int(s) for s in shape]
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        div = max(1, scales - 1) ** 2
        kernels = []
        for side in shape:
            k = min(MS_SSIM_KERNEL, side // div, side // 2 ** (scales - 1))  # side // div > k - 1
            k -= 1 - k % 2  # odd
            kernels.append(k)
        if min(kernels) >= 3:
            weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
            return {"scales": scales, "kernel_size": kernels,
                    "kernel_sigma": [round(MS_SSIM_SIGMA * k / MS_SSIM_KERNEL, 4) for k in kernels],
                    "weights": [round(float(w), 6) for w in weights / weights.sum()], "kernel_type": "gaussian",
                    "data_range": 1.0}
    raise InputError(f"volumes of shape {tuple(shape)} are too small for MS-SSIM (every side needs >= 3 voxels)",
                     where="MS-SSIM diversity", fix="evaluate larger volumes")


def sample_pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """All ``i < j`` pairs of ``n`` items, or ``max_pairs`` of them drawn with a seeded generator."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) <= max_pairs:
        return pairs
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs, replace=False))]


def ms_ssim_diversity(volumes: Tensor | np.ndarray, *, max_pairs: int = 100, seed: int = 0,
                      settings: dict | None = None, batch_size: int = 8) -> dict:
    """Diversity = 1 - mean pairwise MS-SSIM (MONAI ``MultiScaleSSIMMetric``) of ``(N, 1, X, Y, Z)`` in [0, 1].

    Returns ``{"diversity", "ms_ssim_mean", "ms_ssim_std", "pairs", "settings"}``; ``None`` values with a
    ``note`` when fewer than 2 volumes.
    """
    from monai.metrics import MultiScaleSSIMMetric

    x = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, Tensor) else volumes, dtype=torch.float32)
    if x.ndim == 4:
        x = x.unsqueeze(1)
    settings = settings or ms_ssim_settings(x.shape[2:])
    if x.shape[0] < 2:
        return {"diversity": None, "ms_ssim_mean": None, "ms_ssim_std": None, "pairs": 0, "settings": settings,
                "note": "needs at least 2 volumes"}
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=settings["data_range"],
                                  kernel_type=settings["kernel_type"], kernel_size=settings["kernel_size"],
                                  kernel_sigma=settings["kernel_sigma"], weights=settings["weights"],
                                  reduction="none")
    pairs = sample_pairs(x.shape[0], max_pairs, seed)
    values = []
    for b in range(0, len(pairs), batch_size):
        i, j = zip(*pairs[b:b + batch_size], strict=True)
        values.append(metric(x[list(i)], x[list(j)]).reshape(-1))
    v = torch.cat(values).double()
    return {"diversity": float(1 - v.mean()), "ms_ssim_mean": float(v.mean()), "ms_ssim_std": float(v.std())
            if v.numel() > 1 else 0.0, "pairs": len(pairs), "settings": settings}


# ------------------------------------------------------------------------------------- memorisation


def voxel_signature(volumes: Tensor | np.ndarray, size: int = 32) -> Tensor:
    """``(N, D)`` downsampled (average-pooled to at most ``size`` per axis), per-volume z-scored voxels."""
    x = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, Tensor) else volumes, dtype=torch.float32)
    if x.ndim == 4:
        x = x.unsqueeze(1)
    x = F.adaptive_avg_pool3d(x, [min(size, s) for s in x.shape[2:]]).reshape(x.shape[0], -1).double()
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def voxel_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - NCC`` between all rows of two :func:`voxel_signature` outputs: 0 for a copy (up to intensity scale)."""
    return (1 - a @ b.T).clamp_min(0)


def _nn(dist: Tensor, exclude_self: bool) -> tuple[Tensor, Tensor]:
    if exclude_self:
        dist = dist.clone().fill_diagonal_(float("inf"))
    values, index = dist.min(1)
    return values, index


def memorisation(
    synthetic: Mapping[str, Tensor],
    train: Mapping[str, Tensor],
    *,
    synthetic_ids: Sequence[str] | None = None,
    train_ids: Sequence[str] | None = None,
    percentile: float = 1.0,
    copy_factor: float = 0.5,
) -> dict:
    """Nearest training volume of each synthetic one, per space, flagged against train-train NN distances.

    ``synthetic``/``train``: ``{space: (N, D)}`` with ``"feature"`` (Euclidean distance) and/or ``"voxel"``
    (:func:`voxel_signature`, distance 1 - NCC). Per space, ``threshold`` = the ``percentile``-th percentile
    of the training set's own nearest-neighbour distances. A synthetic volume is ``closer_than_train`` if
    below it, and a ``likely_copy`` if below ``copy_factor * threshold`` in any space (a fresh sample from
    the training distribution falls that low only rarely; an exact or near copy always does). ``ratio`` =
    distance / median train-train distance. Pairs are sorted most suspicious first (smallest ratio).
    """
    spaces = [s for s in ("feature", "voxel") if s in synthetic and s in train]
    if not spaces:
        raise InputError("memorisation needs features or voxels of both synthetic and training volumes",
                         where="memorisation", fix="give matching 'feature' and/or 'voxel' arrays")
    n_syn = next(iter(synthetic.values())).shape[0]
    n_train = next(iter(train.values())).shape[0]
    if n_train < 2:
        raise InputError(f"memorisation needs at least 2 training volumes, got {n_train}", where="memorisation",
                         fix="give more training items")
    synthetic_ids = list(synthetic_ids) if synthetic_ids is not None else [str(i) for i in range(n_syn)]
    train_ids = list(train_ids) if train_ids is not None else [str(i) for i in range(n_train)]
    summary: dict[str, dict] = {}
    rows = [{"synthetic_id": synthetic_ids[i]} for i in range(n_syn)]
    for space in spaces:
        s, t = torch.as_tensor(synthetic[space]).double(), torch.as_tensor(train[space]).double()
        measure = voxel_distance if space == "voxel" else torch.cdist
        train_nn, _ = _nn(measure(t, t), exclude_self=True)
        threshold = float(np.percentile(train_nn.numpy(), percentile))
        median = float(train_nn.median())
        dist, index = _nn(measure(s, t), exclude_self=False)
        for i, row in enumerate(rows):
            d = float(dist[i])
            row.update({f"{space}_train_id": train_ids[int(index[i])], f"{space}_distance": d,
                        f"{space}_ratio": d / median if median > 0 else float("inf"),
                        f"{space}_closer_than_train": d < threshold,
                        f"{space}_likely_copy": d < copy_factor * threshold or d == 0.0})
        summary[space] = {"train_nn_percentile": percentile, "threshold": threshold,
                          "copy_threshold": copy_factor * threshold, "train_nn_median": median,
                          "n_closer_than_train": sum(r[f"{space}_closer_than_train"] for r in rows),
                          "n_likely_copies": sum(r[f"{space}_likely_copy"] for r in rows)}
    for row in rows:
        row["likely_copy"] = any(row[f"{space}_likely_copy"] for space in spaces)
        row["min_ratio"] = min(row[f"{space}_ratio"] for space in spaces)
    rows.sort(key=lambda r: (not r["likely_copy"], r["min_ratio"]))
    return {"spaces": summary, "copy_factor": copy_factor, "n_synthetic": n_syn, "n_train": n_train,
            "n_likely_copies": sum(r["likely_copy"] for r in rows), "pairs": rows}


def nearest_train_cases(volumes: Tensor | np.ndarray, train: Tensor | np.ndarray, *,
                        exclude: Sequence[int | None] | None = None) -> np.ndarray:
    """The index of each volume's nearest training volume: :func:`voxel_distance` of :func:`voxel_signature`,
    a class-blind anatomy distance. ``exclude[i]``: a training index volume i may not match (e.g. the case
    whose report it was drawn from), or None."""
    if len(train) == 0 or (exclude is not None and len(exclude) != len(volumes)):
        raise InputError(f"{len(train)} training volumes, {len(volumes)} volumes with "
                         f"{'no' if exclude is None else len(exclude)} exclusions", where="nearest training case",
                         fix="give at least one training volume and one exclusion (or None) per volume")
    dist = voxel_distance(voxel_signature(volumes), voxel_signature(train))
    for i, j in enumerate(exclude or []):
        if j is not None:
            dist[i, j] = float("inf")
    return _nn(dist, exclude_self=False)[1].numpy()


def nearest_train_label_agreement(volumes: Tensor | np.ndarray, labels: Sequence[int],
                                  train: Tensor | np.ndarray, train_labels: Sequence[int], *,
                                  exclude: Sequence[int | None] | None = None) -> float:
    """Class by training case: the fraction of ``volumes`` whose nearest training volume
    (:func:`nearest_train_cases`, ``exclude`` as there) has the same label.

    A generator that renders a class as "look like that class's training cases" scores far above what
    held-out real volumes score (their anatomy is independent of their class, so their agreement is the
    chance one): compare the two, the number alone means little.
    """
    y, y_train = np.asarray(labels, dtype=int).reshape(-1), np.asarray(train_labels, dtype=int).reshape(-1)
    if len(y) != len(volumes) or len(y_train) != len(train) or len(y) == 0 or len(y_train) == 0:
        raise InputError(f"got {len(volumes)} volumes with {len(y)} labels and {len(train)} training volumes with "
                         f"{len(y_train)} labels", where="nearest-training label agreement",
                         fix="give one label per volume and at least one volume in each set")
    return float((y_train[nearest_train_cases(volumes, train, exclude=exclude)] == y).mean())


# ------------------------------------------------------------------------------- conditioning fidelity


def conditioning_fidelity(probabilities: Sequence[float] | np.ndarray | Tensor,
                          requested_labels: Sequence[int] | np.ndarray, *, threshold: float = 0.5) -> dict:
    """How often a real-data classifier agrees with the requested class of synthetic volumes.

    ``probabilities``: P(class 1) per synthetic volume. Returns overall accuracy, AUROC of the
    probabilities against the requested labels (``None`` with a note when only one class was requested),
    and per requested label: count, accuracy and mean probability.
    """
    from sklearn.metrics import roc_auc_score

    p = np.asarray(probabilities.detach().cpu() if isinstance(probabilities, Tensor) else probabilities,
                   dtype=float).reshape(-1)
    y = np.asarray(requested_labels, dtype=int).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise InputError(f"got {p.size} probabilities for {y.size} requested labels", where="conditioning fidelity",
                         fix="predict must return one probability of class 1 per volume")
    pred = (p >= threshold).astype(int)
    out: dict = {"n": int(y.size), "threshold": threshold, "accuracy": float((pred == y).mean()), "by_label": {}}
    if len(set(y.tolist())) < 2:
        out["auroc"], out["auroc_note"] = None, "undefined: only one class was requested"
    else:
        out["auroc"] = float(roc_auc_score(y, p))
    for label in sorted(set(y.tolist())):
        m = y == label
        out["by_label"][str(label)] = {"n": int(m.sum()), "accuracy": float((pred[m] == label).mean()),
                                       "mean_probability": float(p[m].mean())}
    return out
