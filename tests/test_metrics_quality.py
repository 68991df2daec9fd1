"""Quality metrics on small synthetic volumes: FID/KID behave, memorisation finds copies, fidelity reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSmooth

from synthaug.errors import InputError
from synthaug.metrics import (
    SeededResNet3D,
    conditioning_fidelity,
    fid,
    kid,
    memorisation,
    ms_ssim_diversity,
    ms_ssim_settings,
    nearest_train_cases,
    nearest_train_label_agreement,
    precision_recall,
    voxel_signature,
)

SHAPE = (16, 16, 8)


def blobs(n: int, seed: int) -> torch.Tensor:
    """``(n, 1, 16, 16, 8)`` smooth random volumes in [0, 1]: one distribution, many samples."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 1, 8, 8, 4, generator=g), size=SHAPE, mode="trilinear")


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.as_tensor(GaussianSmooth(sigma=sigma)(x[:, 0])).unsqueeze(1) if sigma else x


@pytest.fixture(scope="module")
def extractor() -> SeededResNet3D:
    return SeededResNet3D(seed=0)


@pytest.fixture(scope="module")
def real_features(extractor) -> torch.Tensor:
    return extractor.extract(blobs(32, seed=0))


def test_fid_of_a_set_against_itself_is_zero(real_features):
    assert fid(real_features, real_features) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("degrade, levels", [(noisy, (0.0, 0.1, 0.2, 0.4)), (blurred, (0.0, 0.5, 1.0, 2.0))])
def test_fid_and_kid_grow_with_noise_and_blur(extractor, real_features, degrade, levels):
    other = blobs(32, seed=1)
    fids, kids = [], []
    for level in levels:
        feats = extractor.extract(degrade(other, level))
        fids.append(fid(real_features, feats))
        kids.append(kid(real_features, feats, subsets=50, subset_size=16)["mean"])
    assert fids == sorted(fids) and fids[-1] > 2 * fids[0]
    assert kids == sorted(kids) and kids[-1] > kids[0]


def test_kid_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    same = [kid(rng.normal(size=(64, 32)), rng.normal(size=(64, 32)), subsets=20, subset_size=32, seed=s)["mean"]
            for s in range(10)]
    shifted = kid(rng.normal(size=(64, 32)), rng.normal(0.5, 1.0, size=(64, 32)), subsets=20, subset_size=32)
    assert abs(np.mean(same)) < 0.1 * shifted["mean"]
    assert shifted["mean"] > 5 * shifted["std"] / np.sqrt(shifted["subsets"])
    assert shifted["subset_size"] == 32 and "polynomial" in shifted["kernel"]


def test_kid_is_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    assert kid(a, b, subset_size=10, seed=3) == kid(a, b, subset_size=10, seed=3)


def test_precision_recall_of_a_set_with_itself_and_a_far_one():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 4))
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(real, rng.normal(10.0, 1.0, size=(50, 4)))
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_metrics_refuse_fewer_than_two_vectors():
    with pytest.raises(InputError, match="at least 2"):
        fid(torch.zeros(1, 4), torch.zeros(3, 4))


def test_ms_ssim_settings_fit_the_volume_and_monai_default_for_large_ones():
    assert ms_ssim_settings((176, 176, 176))["scales"] == 5
    small = ms_ssim_settings(SHAPE)
    assert small["scales"] == 2 and small["kernel_size"] == [7, 7, 3]
    assert sum(small["weights"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="too small"):
        ms_ssim_settings((2, 16, 16))


def test_ms_ssim_diversity_is_zero_for_copies_and_positive_for_distinct_volumes():
    x = blobs(6, seed=2)
    copies = ms_ssim_diversity(x[:1].repeat(4, 1, 1, 1, 1))
    distinct = ms_ssim_diversity(x, max_pairs=10, seed=0)
    assert copies["diversity"] == pytest.approx(0.0, abs=1e-4)
    assert distinct["diversity"] > 0.2 and distinct["pairs"] == 10
    assert distinct["settings"]["kernel_size"] == [7, 7, 3]
    assert ms_ssim_diversity(x[:1])["diversity"] is None


def test_memorisation_flags_copies_and_near_copies_not_fresh_samples(extractor):
    train = blobs(24, seed=10)
    fresh = blobs(10, seed=11)
    synthetic = torch.cat([train[3:4], noisy(train[7:8], 0.01), fresh])
    result = memorisation(
        {"feature": extractor.extract(synthetic), "voxel": voxel_signature(synthetic)},
        {"feature": extractor.extract(train), "voxel": voxel_signature(train)},
        synthetic_ids=["copy", "near", *[f"fresh{i}" for i in range(10)]],
        train_ids=[f"t{i}" for i in range(24)])
    flagged = {p["synthetic_id"]: p for p in result["pairs"] if p["likely_copy"]}
    assert set(flagged) == {"copy", "near"}
    assert flagged["copy"]["voxel_train_id"] == "t3" and flagged["near"]["feature_train_id"] == "t7"
    assert [p["synthetic_id"] for p in result["pairs"][:2]] == ["copy", "near"]  # most suspicious first
    assert result["n_likely_copies"] == 2 and result["spaces"]["voxel"]["threshold"] > 0


def test_nearest_train_label_agreement_tells_class_by_training_case_from_class_blind_anatomy():
    train = blobs(40, seed=20)
    train_labels = [i % 2 for i in range(40)]
    picks = torch.arange(0, 40, 3)
    memorised = noisy(train[picks], 0.05)  # "class 1" drawn as a class-1 training case, and so on
    assert nearest_train_label_agreement(memorised, [train_labels[i] for i in picks], train, train_labels) == 1.0
    fresh = blobs(200, seed=21)  # anatomy independent of the label, like held-out real cases
    fresh_labels = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(22)).tolist()
    assert 0.35 < nearest_train_label_agreement(fresh, fresh_labels, train, train_labels) < 0.65
    with pytest.raises(InputError, match="one label per volume"):
        nearest_train_label_agreement(fresh, fresh_labels[:-1], train, train_labels)


def test_nearest_train_cases_skips_the_excluded_case():
    train = blobs(12, seed=30)
    copies = noisy(train[[2, 5]], 0.01)
    assert nearest_train_cases(copies, train).tolist() == [2, 5]
    skipped = nearest_train_cases(copies, train, exclude=[2, None])
    assert skipped[0] != 2 and skipped[1] == 5
    labels = [0] * 12
    labels[2] = 1  # only the excluded case has the volume's label
    assert nearest_train_label_agreement(copies[:1], [1], train, labels) == 1.0
    assert nearest_train_label_agreement(copies[:1], [1], train, labels, exclude=[2]) == 0.0
    with pytest.raises(InputError, match="one exclusion"):
        nearest_train_cases(copies, train, exclude=[2])


def test_conditioning_fidelity_by_requested_label():
    out = conditioning_fidelity([0.9, 0.8, 0.2, 0.6], [1, 1, 0, 0])
    assert out["accuracy"] == 0.75 and out["auroc"] == 1.0
    assert out["by_label"]["0"] == {"n": 2, "accuracy": 0.5, "mean_probability": pytest.approx(0.4)}
    one_class = conditioning_fidelity([0.9, 0.1], [1, 1])
    assert one_class["auroc"] is None and "only one class" in one_class["auroc_note"]
    with pytest.raises(InputError, match="probabilities"):
        conditioning_fidelity([0.5], [0, 1])
