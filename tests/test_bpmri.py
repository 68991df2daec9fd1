"""Biparametric MRI (T2W + ADC + high-b) end to end: synthetic items shaped like real ones (a file per
sequence under the real items' keys), a user's MONAI chain on a mixed batch, the sweep and evaluate on a
multi-sequence cache, and the bad inputs that mix sequence sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from synthaug.errors import InputError
from tests.test_cli import assert_one_line_error
from tests.test_generate import in_process

SEQUENCES = "data.modalities=[t2w,adc,hbv]"
FAST = ["--sampler", "ddim", "--steps", "2", "--precision", "fp32"]


@pytest.fixture(scope="module")
def bp_phantom(tmp_path_factory) -> Path:
    """16 cases of the biparametric phantom at the small test geometry; returns the manifest."""
    from synthaug.data.phantom import write_phantom_dataset
    from tests.helpers import small_config

    cfg = small_config(SEQUENCES)
    return write_phantom_dataset(tmp_path_factory.mktemp("bp") / "ph", cfg.data, cfg.phantom)


@pytest.fixture(scope="module")
def bp_bundle(bp_phantom, tmp_path_factory) -> Path:
    from synthaug.ldm.train import train_generator
    from tests.helpers import small_config

    out = tmp_path_factory.mktemp("bp_bundle") / "bundle"
    train_generator(bp_phantom, out, small_config(SEQUENCES, "train.steps=10"))
    return out


@pytest.fixture(scope="module")
def bp_cache(bp_bundle, tmp_path_factory) -> Path:
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import SyntheticCache

    generator = CCELLAGenerator.from_bundle(bp_bundle, sampler="ddim", steps=2, precision="fp32")
    folder = tmp_path_factory.mktemp("bp_cache") / "cache"
    SyntheticCache.create(folder, generator).pregenerate(generator, n=12, batch_size=6)
    return folder


def real_chain():
    """The transform a user wrote for PI-CAI-like real items: load T2W, ADC and high-b, resample the DWI
    onto T2W, stack them as channels. Nothing in it knows about synthetic data."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        EnsureChannelFirstd,
        LoadImaged,
        ResampleToMatchd,
        ResizeWithPadOrCropd,
        ScaleIntensityd,
    )

    keys = ["image", "adc", "hbv"]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                    ResampleToMatchd(["adc", "hbv"], key_dst="image"), ResizeWithPadOrCropd(keys, (32, 32, 16)),
                    ScaleIntensityd(keys), ConcatItemsd(keys, name="image")])


def test_the_cache_holds_a_file_per_sequence_under_the_real_keys(bp_cache):
    from synthaug.mix.cache import SyntheticCache

    cache = SyntheticCache(bp_cache)
    assert cache.sequences == ["t2w", "adc", "hbv"] and cache.sequence_keys == ["image", "adc", "hbv"]
    item = cache.items()[0]
    assert all(Path(item[k]).is_file() for k in ("image", "adc", "hbv")) and len({item[k] for k in cache.sequence_keys}) == 3
    from synthaug.data.io import read_volume

    assert read_volume(item["adc"]).array.shape == read_volume(item["image"]).array.shape == (32, 32, 16)
    assert cache.verify().ok
    Path(item["hbv"]).unlink()  # one sequence lost: the volume is incomplete
    report = cache.verify()
    assert report.missing == [item["synthetic_id"]]
    from synthaug.mix import SyntheticMixDataset

    with pytest.raises(InputError, match="missing"):  # the dataset refuses it before any epoch
        SyntheticMixDataset([], bp_cache, ratio=1.0)
    shutil.copy(item["adc"], item["hbv"])  # wrong bytes for hbv: corrupt
    assert cache.verify().corrupt == [item["synthetic_id"]]


def test_a_users_real_chain_runs_unchanged_on_a_mixed_batch(bp_phantom, bp_cache):
    from monai.data import DataLoader

    from synthaug.data.manifest import load_manifest
    from synthaug.mix import SyntheticMixDataset

    real = load_manifest(bp_phantom).items("train")
    ds = SyntheticMixDataset(real, bp_cache, ratio=1.0, transform=real_chain(), seed=0)
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    assert batch["image"].shape == (len(ds), 3, 32, 32, 16)
    assert batch["is_synthetic"].any() and not batch["is_synthetic"].all()
    assert torch.isfinite(batch["image"]).all()


def test_the_sweep_and_evaluate_take_a_multi_sequence_cache(bp_phantom, bp_cache, tmp_path, capsys):
    done = in_process(capsys, "sweep", "--data", bp_phantom, "--synthetic", bp_cache, "--out", tmp_path / "sweep",
                      "--ratios", "0,1", "--model", "tiny-cnn", "--epochs", "1", "--seeds", "1", "--batch-size", "4",
                      "--no-prune")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert {r["schedule"] for r in summary["per_arm"].values()} == {"0", "1"}
    done = in_process(capsys, "evaluate", "--real", bp_phantom, "--synthetic", bp_cache, "--out", tmp_path / "q",
                      "--fidelity-epochs", "1")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert set(metrics["sequences"]) == {"t2w", "adc", "hbv"} and "FID 3D" in metrics["sequences"]["adc"]
    assert (tmp_path / "q" / "sequences" / "hbv" / "metrics.json").is_file()
    assert "class_signal" in metrics and "## Per sequence" in (tmp_path / "q" / "report.md").read_text()


def test_generate_writes_a_file_per_sequence(bp_bundle, tmp_path, capsys):
    done = in_process(capsys, "generate", "--bundle", bp_bundle, "--out", tmp_path / "g", "--n", "2", *FAST)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "g" / "provenance.jsonl").read_text().splitlines()]
    assert all(set(r["files"]) == {"image", "adc", "hbv"} for r in rows)
    assert all((tmp_path / "g" / name).is_file() for r in rows for name in r["files"].values())


def test_variations_vary_every_sequence_of_a_case(bp_bundle, bp_phantom, tmp_path, capsys):
    from synthaug.data.io import read_volume
    from synthaug.data.manifest import load_manifest

    done = in_process(capsys, "generate", "--bundle", bp_bundle, "--out", tmp_path / "v", "--n", "2", "--vary",
                      bp_phantom, "--strength", "0.5", *FAST)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "v" / "provenance.jsonl").read_text().splitlines()]
    cases = load_manifest(bp_phantom).items("train")[:2]
    assert [r["source_case"] for r in rows] == [c["case_id"] for c in cases]
    for r in rows:
        assert set(r["files"]) == {"image", "adc", "hbv"}
        arrays = [read_volume(tmp_path / "v" / name).array for name in r["files"].values()]
        assert all(a.shape == arrays[0].shape and a.std() > 0 for a in arrays)


def test_mixed_sequence_sets_are_refused(bp_phantom, bp_cache, small_phantom, small_cache, tmp_path, capsys):
    from synthaug.data.manifest import load_manifest
    from synthaug.mix import SyntheticMixDataset

    t2w_only = load_manifest(small_phantom).items("train")
    with pytest.raises(InputError, match="has no 'adc' image"):  # a bpMRI cache with T2W-only real items
        SyntheticMixDataset(t2w_only, bp_cache, ratio=1.0)
    with pytest.raises(InputError, match="synthetic volumes have no 'adc'"):  # the reverse, asked for by name
        SyntheticMixDataset(load_manifest(bp_phantom).items("train"), small_cache, ratio=1.0, keep_keys=["adc"])
    done = in_process(capsys, "sweep", "--data", small_phantom, "--synthetic", bp_cache, "--out", tmp_path / "a",
                      "--model", "tiny-cnn", "--epochs", "1", "--seeds", "1")
    assert_one_line_error(done, "has no 'adc' image")
    done = in_process(capsys, "sweep", "--data", bp_phantom, "--synthetic", bp_cache, "--out", tmp_path / "b",
                      "--model", "tiny-cnn", "--epochs", "1", "--seeds", "1", "--set", "data.modalities=[t2w]",
                      "--set", "data.image_shape=[32,32,16]", "--set", "data.spacing=[3,3,6]")
    assert_one_line_error(done, "the sequences it was trained on")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_filter_judges_all_sequences_of_a_candidate(bp_phantom, bp_cache):
    from synthaug.data.manifest import load_manifest
    from synthaug.mix.cache import SyntheticCache
    from synthaug.mix.filter import VolumeFilter

    cache = SyntheticCache(bp_cache)
    vf = VolumeFilter.train(load_manifest(bp_phantom), cache.data_config(), epochs=1, confidence=0.8)
    assert next(vf.net.parameters()).shape[1] == 3  # one input channel per sequence
    items = cache.items()[:4]
    files = [{k: item[k] for k in cache.sequence_keys} for item in items]
    probs = vf.probabilities(files, [item["label"] for item in items])
    flipped = vf.probabilities(files, [1 - item["label"] for item in items])
    assert all(0 <= p <= 1 for p in probs) and all(abs(p + q - 1) < 1e-5 for p, q in zip(probs, flipped))


def test_data_check_expects_dwi_on_its_own_grid(bp_phantom):
    from synthaug.data.check import check_dataset

    summary = check_dataset(bp_phantom, read_images=True)
    assert {m for (m, _) in summary.shapes} == {"t2w", "adc", "hbv"} and not summary.problems
    assert not [w for w in summary.warnings if "differ in shape" in w]


def test_a_manifest_line_naming_other_sequence_files_is_refused(bp_cache, tmp_path):
    """Someone else's manifest: a row whose sequence entries are not its own files (or not objects) is a bad
    line that verify names, never a file read from elsewhere nor a traceback."""
    from synthaug.mix.cache import MANIFEST_FILE, SyntheticCache

    copy = tmp_path / "cache"
    shutil.copytree(bp_cache, copy)
    lines = (copy / MANIFEST_FILE).read_text().splitlines()
    row = json.loads(lines[0])
    tampered = [{**row, "sequences": {k: e["file"] for k, e in row["sequences"].items()}},
                {**row, "sequences": {**row["sequences"], "adc": {"file": "../../etc/passwd", "sha256": "0"}}}]
    for bad in tampered:
        (copy / MANIFEST_FILE).write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
        report = SyntheticCache(copy).verify()
        assert report.bad_lines == [1] and "sequence files" in report.why[1]
