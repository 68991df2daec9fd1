"""evaluate_quality end to end on NIfTI files: every output written, bad input refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_nifti

from synthaug.errors import InputError
from synthaug.metrics import evaluate_quality, headline

SHAPE = (16, 16, 8)


def items(folder, n, seed, *, synthetic=False, shape=SHAPE):
    """``n`` MONAI-style items of smooth random volumes written as NIfTI (intensities in scanner-like units)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        coarse = rng.random((8, 8, 4))
        volume = np.kron(coarse, np.ones((2, 2, 2)))[: shape[0], : shape[1], : shape[2]] * 400 + 50
        if volume.shape != shape:
            volume = np.resize(volume, shape)
        path = save_nifti(folder / f"{'syn' if synthetic else 'case'}_{i}.nii.gz", volume)
        item = {"image": str(path), "label": i % 2}
        if synthetic:
            item.update(requested_label=i % 2, synthetic_id=f"syn{i:03d}")
        else:
            item["case_id"] = f"case{i}"
        out.append(item)
    return out


def test_evaluate_quality_writes_metrics_report_montages_and_memorisation(tmp_path):
    real = items(tmp_path / "real", 8, seed=0)
    synthetic = items(tmp_path / "syn", 6, seed=1, synthetic=True)
    synthetic[0]["image"] = real[2]["image"]  # a planted copy of a training case
    synthetic[0]["requested_label"] = 0
    stages = []

    def predict(x: torch.Tensor) -> torch.Tensor:  # a stand-in classifier: P(class 1) from mean intensity
        return x.mean(dim=(1, 2, 3, 4))

    metrics = evaluate_quality(real, synthetic, tmp_path / "out", predict=predict, kid_subset_size=4,
                               kid_subsets=10, progress=lambda stage, done, total, logs: stages.append(done))
    out = tmp_path / "out"
    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics
    for name in ("metrics.json", "report.md", "memorisation.csv", "memorisation_pairs.png",
                 "montage_class0.png", "montage_class1.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stages[0] == 0 and stages[-1] == 8

    assert metrics["fid_3d"] >= 0 and set(metrics["fid_2_5d"]) == {"x", "y", "z", "mean"}
    assert metrics["extractors"]["3d"]["name"].startswith("seeded-resnet10-3d")
    assert len(metrics["extractors"]["3d"]["weights_sha256"]) == 64
    assert metrics["comparable_to_published"] is False
    assert metrics["ms_ssim_settings"]["kernel_size"] == [7, 7, 3]
    assert set(metrics["diversity"]["synthetic"]) == {"0", "1"}
    assert metrics["memorisation"]["n_likely_copies"] >= 1
    assert metrics["conditioning"]["n"] == 6 and "auroc" in metrics["conditioning"]
    assert set(metrics["by_class"]) == {"0", "1"} and "fid_3d" in metrics["by_class"]["0"]

    csv_lines = (out / "memorisation.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,synthetic_id,likely_copy") and len(csv_lines) == 7
    assert csv_lines[1].split(",")[1:4] == ["syn000", "True", "case2"]
    report = (out / "report.md").read_text()
    assert "Not comparable to published numbers" in report and metrics["extractors"]["3d"]["weights_sha256"] in report
    assert "![memorisation pairs](memorisation_pairs.png)" in report
    rows = dict(headline(metrics))
    assert rows["FID 3D"] == f"{metrics['fid_3d']:.4g}"
    assert metrics["extractors"]["3d"]["weights_sha256"][:12] in rows["3d features"]
    assert "not comparable" in rows["3d features"].lower()


def test_arrays_are_accepted_and_train_items_used_for_memorisation(tmp_path):
    rng = np.random.default_rng(0)
    real = [{"image": rng.random(SHAPE), "label": 0} for _ in range(4)]
    synthetic = [{"image": torch.rand(1, *SHAPE)} for _ in range(3)]  # channel-first, no labels
    train = [{"image": rng.random(SHAPE), "case_id": f"t{i}"} for i in range(3)]
    metrics = evaluate_quality(real, synthetic, tmp_path, train_items=train, kid_subsets=5)
    assert metrics["n_train"] == 3 and metrics["memorisation"]["reference"] == "train_items"
    assert "skipped" in metrics["conditioning"]["note"]
    assert (tmp_path / "montage_class0.png").is_file()


def test_mismatched_shapes_are_refused_or_resized(tmp_path):
    real = items(tmp_path / "real", 3, seed=0)
    synthetic = items(tmp_path / "syn", 2, seed=1, synthetic=True, shape=(16, 16, 6))
    with pytest.raises(InputError, match=r"shape \(16, 16, 6\), the real volumes \(16, 16, 8\)") as err:
        evaluate_quality(real, synthetic, tmp_path / "out")
    assert "syn_0.nii.gz" in err.value.message and "resize=True" in err.value.message
    metrics = evaluate_quality(real, synthetic, tmp_path / "out", resize=True, kid_subsets=5)
    assert metrics["resized"] is True and metrics["shape"] == [16, 16, 8]


def test_fewer_than_two_volumes_are_refused(tmp_path):
    real = items(tmp_path / "real", 3, seed=0)
    with pytest.raises(InputError, match="1 synthetic volume"):
        evaluate_quality(real, real[:1], tmp_path / "out")
    with pytest.raises(InputError, match="0 real volume"):
        evaluate_quality([], real, tmp_path / "out")
    with pytest.raises(InputError, match="no 'image' entry"):
        evaluate_quality(real, [{"img": "x"}, {"img": "y"}], tmp_path / "out")


def test_class_by_training_case_compares_synthetic_with_held_out_real(tmp_path):
    train = items(tmp_path / "train", 8, seed=0)
    held_out = items(tmp_path / "held", 6, seed=2)
    synthetic = items(tmp_path / "syn", 6, seed=1, synthetic=True)
    for i, case in enumerate(train):
        case["report"] = f"report of case {i}"
    for i, item in enumerate(synthetic):  # every synthetic volume drawn as a training case of its class
        item["image"], item["requested_label"] = train[i]["image"], train[i]["label"]
    synthetic[0]["report"] = train[2]["report"]  # drawn from another case's report: that case may not match
    synthetic[5]["image"], synthetic[5]["requested_label"] = train[3]["image"], train[3]["label"]  # two on one case
    metrics = evaluate_quality(held_out, synthetic, tmp_path / "out", train_items=train, kid_subsets=5)
    by_case = metrics["memorisation"]["class_by_training_case"]
    assert by_case["synthetic"] == 1.0 and 0.0 <= by_case["held_out_real"] <= 1.0
    assert by_case["report_source_excluded"] == 1 and by_case["synthetic_distinct_nearest"] == 5
    assert dict(headline(metrics))["class by training case: synthetic / held-out real (chance)"].startswith("1 /")
    assert "**Class by training case.**" in (tmp_path / "out" / "report.md").read_text()
    without_train = evaluate_quality(held_out, synthetic, tmp_path / "out2", kid_subsets=5)
    assert "skipped" in without_train["memorisation"]["class_by_training_case"]["note"]
    unlabelled = [{k: v for k, v in c.items() if k != "label"} for c in train]
    no_labels = evaluate_quality(held_out, synthetic, tmp_path / "out3", train_items=unlabelled, kid_subsets=5)
    assert "lacks its label" in no_labels["memorisation"]["class_by_training_case"]["note"]
