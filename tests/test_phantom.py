"""The procedural prostate-MRI phantom: determinism, consistency of labels/reports/images, geometry,
the diffusion sequences (ADC, high b) of biparametric MRI, and the dataset folder it writes."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthaug.config import DataConfig, PhantomConfig
from synthaug.data import phantom_anatomy as anatomy
from synthaug.data.io import read_header, read_volume
from synthaug.data.manifest import load_manifest
from synthaug.data.phantom import (
    _case_rng,
    _plan,
    _positive_flags,
    _splits,
    _withheld,
    make_phantom_case,
    phantom_affine,
    write_phantom_dataset,
)
from synthaug.data.phantom_dwi import dwi_geometry
from synthaug.data.reports import parse_overall_pirads
from synthaug.data.transforms import preprocessing_transforms
from synthaug.errors import InputError
from tests.test_cli import assert_one_line_error
from tests.test_generate import in_process

DATA = DataConfig()  # 64 x 64 x 32 at 1.5 x 1.5 x 3 mm
BPMRI = DataConfig(modalities=["t2w", "adc", "hbv"])  # + ADC and high-b DWI, 32 x 32 x 32 at 3 mm
PHANTOM = PhantomConfig(n_cases=12, seed=3, prevalence=0.5, artifact_probability=0.3)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A 12-case phantom written once for the tests that only read it; returns the manifest path."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "ds", DATA, PHANTOM)


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    config = PhantomConfig(n_cases=4, seed=11, artifact_probability=1.0)  # motion/ghosting in every case
    first = file_bytes(write_phantom_dataset(tmp_path / "a", DATA, config).parent)
    second = file_bytes(write_phantom_dataset(tmp_path / "b", DATA, config).parent)
    assert set(first) == {"manifest.jsonl", "phantom.json", *(f"images/phantom_{i:04d}.nii.gz" for i in range(4))}
    assert first == second
    other = file_bytes(write_phantom_dataset(tmp_path / "c", DATA, config.model_copy(update={"seed": 12})).parent)
    assert all(other[f"images/phantom_{i:04d}.nii.gz"] != first[f"images/phantom_{i:04d}.nii.gz"] for i in range(4))
    assert other["manifest.jsonl"] != first["manifest.jsonl"]


def test_case_is_pure_and_leaves_global_generators_alone() -> None:
    import torch

    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = make_phantom_case(5, DATA, PHANTOM, positive=True)
    b = make_phantom_case(5, DATA, PHANTOM, positive=True)
    assert np.array_equal(a.array, b.array) and a.report == b.report and a.meta == b.meta
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------- labels, reports, lesions


def test_labels_reports_and_findings_agree(dataset: Path) -> None:
    manifest = load_manifest(dataset)
    for r in manifest:
        meta = r.meta
        lesions = meta["lesions"]
        assert r.label == int(r.pirads >= 3) == int(meta["positive"])
        if r.report:
            assert parse_overall_pirads(r.report) == r.pirads, r.case_id
            assert f"{meta['age']}-year-old" in r.report
        if meta["positive"]:
            assert 1 <= len(lesions) <= 3 and r.pirads == max(les["pirads"] for les in lesions) >= 3
            for les in lesions:
                assert 4.0 <= les["size_mm"] <= 25.0 and les["zone"] in ("PZ", "TZ")
                dx = les["center_mm"][0] - meta["gland_center_mm"][0]  # RAS+: +x is the patient's right
                if abs(dx) > 4:
                    assert les["side"] == ("right" if dx > 0 else "left")
                if les["size_mm"] >= 15 or les["epe"]:
                    assert les["t2_score"] == 5
        else:
            assert lesions == []
            assert r.pirads == (2 if any(b["kind"] != "cyst" for b in meta["benign"]) else 1)
        assert 20 <= meta["prostate_volume_ml"] <= 95 and 50 <= meta["age"] <= 80


def test_lesions_are_drawn_where_the_metadata_says() -> None:
    """A positive and a negative case with the same index differ only inside the lesions, which are darker."""
    config = PHANTOM.model_copy(update={"artifact_probability": 0.0})  # motion would spread differences
    inverse = np.linalg.inv(phantom_affine(DATA))
    for index in range(4):
        pos = make_phantom_case(index, DATA, config, positive=True)
        neg = make_phantom_case(index, DATA, config, positive=False)
        diff = pos.array.astype(np.float64) - neg.array
        changed = np.argwhere(diff != 0)
        assert len(changed) > 0 and diff.sum() < 0
        world = changed @ pos.affine[:3, :3].T + pos.affine[:3, 3]
        centers = np.array([les["center_mm"] for les in pos.meta["lesions"]])
        reach = np.array([les["size_mm"] / 2 + 7.0 for les in pos.meta["lesions"]])
        distance = np.linalg.norm(world[:, None, :] - centers[None], axis=2)
        assert np.all((distance <= reach).any(axis=1)), "signal changed away from every stated lesion"
        for les in pos.meta["lesions"]:
            i, j, k = np.round(inverse @ [*les["center_mm"], 1.0])[:3].astype(int)
            near = (slice(i - 1, i + 2), slice(j - 1, j + 2), slice(k - 1, k + 2))
            assert (diff[near] / neg.array[near]).min() < -0.08, (index, les)  # darker at the stated centre


def test_label_rules_pirads4_and_cspca() -> None:
    seen = Counter()
    for rule in ("pirads4", "cspca"):
        data = DATA.model_copy(update={"label_rule": rule})
        for index in range(6):
            case = make_phantom_case(index, data, PHANTOM, positive=index % 3 != 0)
            expected = case.pirads >= 4 if rule == "pirads4" else case.meta["cspca"]
            assert case.label == int(expected)
            seen[(rule, case.label)] += 1
            if case.meta["lesions"]:
                assert case.meta["cspca"] == any(les["significant"] for les in case.meta["lesions"])
    assert seen[("pirads4", 0)] and seen[("pirads4", 1)] and seen[("cspca", 1)]


def test_difficulty_controls_contrast_and_mimics() -> None:
    easy = PHANTOM.model_copy(update={"difficulty": 0.0})
    hard = PHANTOM.model_copy(update={"difficulty": 1.0})
    easy_plans = [_plan(i, easy, True) for i in range(8)]
    hard_plans = [_plan(i, hard, True) for i in range(8)]
    assert sum(len(p.mimics) for p in easy_plans) == 0
    assert sum(len(p.mimics) for p in hard_plans) >= 8
    easy_contrast = np.mean([les["contrast"] for p in easy_plans for les, _ in p.lesions])
    hard_contrast = np.mean([les["contrast"] for p in hard_plans for les, _ in p.lesions])
    assert easy_contrast > 1.5 * hard_contrast and hard_contrast > 0.2  # still visible when hardest
    easy_size = np.median([les["size_mm"] for p in easy_plans for les, _ in p.lesions])
    hard_size = np.median([les["size_mm"] for p in hard_plans for les, _ in p.lesions])
    assert easy_size > 1.4 * hard_size and min(les["size_mm"] for p in easy_plans for les, _ in p.lesions) >= 8.0


# ---------------------------------------------------------------- dataset-level draws


def test_prevalence_splits_and_withheld_reports_are_exact_and_stratified() -> None:
    config = PhantomConfig(n_cases=200, seed=5, prevalence=0.35, split_fractions=(0.6, 0.2, 0.2))
    flags = _positive_flags(config)
    assert flags.sum() == 70 and np.array_equal(flags, _positive_flags(config))
    labels = flags.astype(int).tolist()
    splits = _splits(labels, config)
    assert splits == _splits(labels, config) and Counter(splits) == {"train": 120, "val": 40, "test": 40}
    for label, n in ((1, 70), (0, 130)):
        counts = Counter(s for s, lab in zip(splits, labels) if lab == label)
        for split, fraction in zip(("train", "val", "test"), config.split_fractions):
            assert abs(counts[split] - fraction * n) <= 1
    withheld = _withheld(labels, 0.15, config)
    assert sum(withheld) == 30
    assert abs(sum(w for w, lab in zip(withheld, labels) if lab == 1) - 0.15 * 70) <= 1
    other = _splits(labels, config.model_copy(update={"seed": 6}))
    assert other != splits


def test_written_dataset_has_configured_prevalence_splits_and_empty_reports(dataset: Path) -> None:
    records = load_manifest(dataset).records
    assert len(records) == 12 and sum(r.label for r in records) == 6
    assert Counter(r.split for r in records) == {"train": 7, "val": 3, "test": 2}
    for label in (0, 1):
        group = [r for r in records if r.label == label]
        assert all(Counter(r.split for r in group)[s] >= 1 for s in ("train", "val", "test"))
    assert sum(not r.has_report for r in records) == round(0.15 * 12)
    assert all(r.meta["report_withheld"] == (not r.has_report) for r in records)


def test_written_images_match_the_configured_geometry(dataset: Path) -> None:
    manifest = load_manifest(dataset)
    record = manifest.records[0]
    header = read_header(manifest.resolve(record.image))
    assert header.shape == DATA.image_shape and header.spacing == pytest.approx(DATA.spacing)
    assert np.allclose(header.affine, phantom_affine(DATA))
    centre = header.affine @ [*(np.array(DATA.image_shape) - 1) / 2, 1.0]
    assert np.allclose(centre[:3], 0.0)  # the volume is centred on the origin
    assert record.spacing == DATA.spacing
    volume = read_volume(manifest.resolve(record.image))
    assert volume.array.dtype == np.float32 and volume.array.min() >= 0 and np.isfinite(volume.array).all()
    assert 300 < np.percentile(volume.array, 99) < 5000  # scanner-like units


def test_anatomy_is_where_it_belongs() -> None:
    """Urine brightest, muscle dark, rectal air darkest, PZ brighter than TZ, gland centred."""
    config = PHANTOM.model_copy(update={"artifact_probability": 0.0})
    seen_air = False
    for index in range(3):
        case = make_phantom_case(index, DATA, config, positive=False)
        plan = _plan(index, config, positive=False)
        masks = anatomy.render(plan.anatomy, plan.foci, DATA.image_shape, DATA.spacing,
                               _case_rng(config, index, "texture"), with_masks=True).masks
        mean = {k: case.array[m > 0.9].mean() for k, m in masks.items() if (m > 0.9).sum() > 10}
        assert mean["urine"] > mean["pz"] > mean["tz"] > mean["muscle"]
        if "rectal_air" in mean:  # unless stool fills the rectum
            assert mean["rectal_air"] < 0.6 * mean["muscle"]  # air: only the noise floor
            seen_air = True
        gland = masks["gland"]
        centroid = np.array(np.nonzero(gland > 0.5)).mean(axis=1)
        world = case.affine @ [*centroid, 1.0]
        assert np.linalg.norm(world[:3] - case.meta["gland_center_mm"]) < 4.0
        assert np.linalg.norm(world[:3]) < 12.0
        # The rectum lies behind the gland and the bladder above and in front of it.
        for name, axis, sign in (("rectum", 1, -1), ("urine", 2, 1)):
            other = np.array(np.nonzero(masks[name] > 0.5)).mean(axis=1)
            assert sign * (other[axis] - centroid[axis]) > 5
    assert seen_air


def test_finer_grid_renders_the_same_anatomy() -> None:
    fine = DataConfig(image_shape=(128, 128, 64), spacing=(0.75, 0.75, 1.5))
    coarse_case = make_phantom_case(2, DATA, PHANTOM, positive=True)
    fine_case = make_phantom_case(2, fine, PHANTOM, positive=True)
    assert fine_case.array.shape == (128, 128, 64)
    assert fine_case.report == coarse_case.report and fine_case.meta == coarse_case.meta
    plan = _plan(2, PHANTOM, positive=True)
    coarse = anatomy.render(plan.anatomy, plan.foci, DATA.image_shape, DATA.spacing, _case_rng(PHANTOM, 2, "texture"))
    sharp = anatomy.render(plan.anatomy, plan.foci, fine.image_shape, fine.spacing, _case_rng(PHANTOM, 2, "texture"))
    pooled = sharp.image.reshape(64, 2, 64, 2, 32, 2).mean(axis=(1, 3, 5))
    assert np.corrcoef(pooled.ravel(), coarse.image.ravel())[0, 1] > 0.95


# ---------------------------------------------------------------- the folder


def test_manifest_and_config_record_are_valid(dataset: Path) -> None:
    manifest = load_manifest(dataset)
    assert {r.split for r in manifest} <= {"train", "val", "test"}
    assert all(not Path(r.image).is_absolute() and r.image.startswith("images/") for r in manifest)
    info = json.loads((dataset.parent / "phantom.json").read_text())
    assert info["phantom"]["seed"] == 3 and info["data"]["image_shape"] == [64, 64, 32]
    assert info["synthaug_version"]


def test_existing_folder_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    config = PhantomConfig(n_cases=2)
    with pytest.raises(InputError) as err:
        write_phantom_dataset(out, DATA, config)
    assert str(out) in err.value.message and "overwrite" in err.value.message
    assert (out / "keep.txt").exists()
    write_phantom_dataset(out, DATA, config, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folders left


def test_interrupted_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path / "ds", DATA, PhantomConfig(n_cases=4), progress=stop)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- diffusion (biparametric MRI)


def dwi_case(index: int, config: PhantomConfig, positive: bool = True):
    """A case with ADC and high-b images, and its render masks on the DWI grid (pairs of T2W voxels averaged)."""
    case = make_phantom_case(index, BPMRI, config, positive)
    plan = _plan(index, config, positive)
    masks = anatomy.render(plan.anatomy, plan.foci, BPMRI.image_shape, BPMRI.spacing,
                           _case_rng(config, index, "texture"), with_masks=True).masks
    return case, {k: anatomy.upsample(m, case.sequences["adc"].shape) for k, m in masks.items()}


def weighted_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``image`` weighted by a partial-volume ``mask`` (squared: the core counts most)."""
    return float((image * mask**2).sum() / (mask**2).sum())


@pytest.fixture(scope="module")
def focus_contrast() -> list[dict]:
    """Per lesion and mimic of 18 positive cases: ADC difference and high-b ratio to the surrounding zone."""
    config = PHANTOM.model_copy(update={"difficulty": 0.5, "artifact_probability": 0.0})
    rows = []
    for index in range(18):
        case, masks = dwi_case(index, config)
        adc, hbv = case.sequences["adc"], case.sequences["hbv"]
        findings = case.meta["benign"] + case.meta["lesions"]  # the renderer's focus order
        foci = np.max([masks[f"focus{i}"] for i in range(len(findings))], axis=0)
        for i, finding in enumerate(findings):
            m, around = masks[f"focus{i}"], masks[finding["zone"].lower()] * (1 - foci)
            rows.append({"kind": finding.get("kind", "lesion"), "dwi_score": finding.get("dwi_score"),
                         "adc": finding["adc"], "d_adc": weighted_mean(adc, m) - weighted_mean(adc, around),
                         "hbv_ratio": weighted_mean(hbv, m) / weighted_mean(hbv, around)})
    return rows


def test_dwi_tissues_have_their_diffusion() -> None:
    """ADC: urine > PZ > TZ, muscle between, suppressed fat near 0; high b: urine dark, fat at the noise floor."""
    config = PHANTOM.model_copy(update={"artifact_probability": 0.0})
    for index in range(3):
        case, masks = dwi_case(index, config, positive=False)
        adc, hbv = case.sequences["adc"], case.sequences["hbv"]
        mean = {k: (adc[m > 0.9].mean(), hbv[m > 0.9].mean()) for k, m in masks.items() if (m > 0.9).sum() > 5}
        fat = sum(masks.values()) < 0.01  # no tissue mask: fat, bone, air
        assert 2600 < mean["urine"][0] < 3200 and 1450 < mean["pz"][0] < 1900 and 1100 < mean["tz"][0] < 1450
        assert 1200 < mean["muscle"][0] < 1600 and adc[fat].mean() < 300
        assert mean["urine"][1] < 0.5 * mean["pz"][1] and hbv[fat].mean() < 0.5 * mean["pz"][1]
        assert case.sequences["adc"].dtype == np.float32 and np.array_equal(adc, np.round(adc)) and adc.min() >= 0


def test_lesions_are_dark_on_adc_and_bright_at_high_b_as_their_dwi_score_says(focus_contrast) -> None:
    lesions = [r for r in focus_contrast if r["kind"] == "lesion"]
    assert all(r["d_adc"] < -80 and r["hbv_ratio"] > 1.15 for r in lesions)
    assigned = {score: [r["adc"] for r in lesions if r["dwi_score"] == score] for score in (3, 4, 5)}
    assert all(assigned.values()) and max(assigned[5]) < min(assigned[4]) < max(assigned[4]) < min(assigned[3])
    assert 600 < min(assigned[5]) and max(assigned[3]) < 1250
    marked = [r for r in lesions if r["dwi_score"] >= 4]  # DWI 4-5: marked; 3: mild to moderate
    mild = [r for r in lesions if r["dwi_score"] == 3]
    assert np.mean([r["d_adc"] for r in marked]) < np.mean([r["d_adc"] for r in mild]) - 150
    assert np.mean([r["hbv_ratio"] for r in marked]) > np.mean([r["hbv_ratio"] for r in mild]) + 0.3


def test_mimics_differ_from_lesions_on_dwi(focus_contrast) -> None:
    """BPH nodules and prostatitis: mildly low ADC, not bright at high b; cysts: high ADC, dark at high b."""
    by_kind = {k: [r for r in focus_contrast if r["kind"] == k] for k in ("bph_nodule", "prostatitis", "cyst")}
    assert all(by_kind.values())
    cancers = [r for r in focus_contrast if r["kind"] == "lesion" and r["dwi_score"] >= 4]
    benign = by_kind["bph_nodule"] + by_kind["prostatitis"]
    assert np.mean([r["d_adc"] for r in benign]) > np.mean([r["d_adc"] for r in cancers]) + 250
    assert all(r["hbv_ratio"] < 1.5 for r in benign) and np.median([r["hbv_ratio"] for r in cancers]) > 1.8
    assert all(950 < r["adc"] < 1200 for r in by_kind["bph_nodule"])
    assert all(1150 < r["adc"] < 1400 for r in by_kind["prostatitis"])
    assert all(r["d_adc"] > 100 and r["hbv_ratio"] < 0.95 and 2250 < r["adc"] < 2750 for r in by_kind["cyst"])


def test_t2w_is_the_same_bytes_with_or_without_dwi() -> None:
    """The DWI sequences draw from their own stream: T2W, report, label and findings do not change."""
    for index in range(3):
        alone = make_phantom_case(index, DATA, PHANTOM, positive=True)
        both = make_phantom_case(index, BPMRI, PHANTOM, positive=True)
        assert hashlib.sha256(alone.array.tobytes()).hexdigest() == hashlib.sha256(both.array.tobytes()).hexdigest()
        assert (alone.report, alone.label, alone.pirads) == (both.report, both.label, both.pirads)
        without_adc = {k: [{f: v for f, v in x.items() if f != "adc"} for x in both.meta[k]] for k in ("lesions", "benign")}
        assert {**both.meta, **without_adc} == alone.meta and alone.sequences == {}
        assert list(both.sequences) == ["adc", "hbv"]


def test_dwi_files_are_coarser_and_resample_onto_t2w(tmp_path: Path) -> None:
    config = PhantomConfig(n_cases=3, seed=3, prevalence=0.5, artifact_probability=0.0)
    manifest = load_manifest(write_phantom_dataset(tmp_path / "ds", BPMRI, config))
    record = manifest.records[0]
    assert record.image == {m: f"images/{record.case_id}{s}.nii.gz" for m, s in (("t2w", ""), ("adc", "_adc"),
                                                                                 ("hbv", "_hbv"))}
    shape, spacing = dwi_geometry(BPMRI)
    assert shape == (32, 32, 32) and spacing == (3.0, 3.0, 3.0)  # in-plane doubled, same slices, same field of view
    for key in ("adc", "hbv"):
        header = read_header(manifest.resolve(record.image[key]))
        assert header.shape == shape and header.spacing == pytest.approx(spacing)
        assert np.allclose(header.affine @ [*(np.array(shape) - 1) / 2, 1.0], [0, 0, 0, 1])  # centred like T2W
    info = json.loads((tmp_path / "ds" / "phantom.json").read_text())
    assert info["data"]["modalities"] == ["t2w", "adc", "hbv"]

    out = preprocessing_transforms(BPMRI)(manifest.items()[0])["image"]
    assert tuple(out.shape) == (3, 64, 64, 32) and bool(out.isfinite().all())
    plan = _plan(0, config, bool(record.meta["positive"]))  # the T2W grid's masks: the ADC channel lines up
    masks = anatomy.render(plan.anatomy, plan.foci, BPMRI.image_shape, BPMRI.spacing, _case_rng(config, 0, "texture"),
                           with_masks=True).masks
    adc = np.asarray(out[1]) * 3000.0  # data.normalisation.adc_window
    assert adc[masks["urine"] > 0.9].mean() > 2500 and 1400 < adc[masks["pz"] > 0.9].mean() < 2000
    assert adc[sum(masks.values()) < 0.01].mean() < 400


def test_cli_phantom_sequences_writes_dwi_and_refuses_bad_lists(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bp"
    done = in_process(capsys, "phantom", "--out", out, "--n", "2", "--sequences", "t2w,adc,hbv")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"phantom_000{i}{s}.nii.gz" for i in range(2) for s in ("", "_adc", "_hbv")]
    assert json.loads((out / "phantom.json").read_text())["data"]["modalities"] == ["t2w", "adc", "hbv"]
    same = in_process(capsys, "phantom", "--out", tmp_path / "set", "--n", "2", "--set", "data.modalities=[t2w,adc,hbv]")
    assert same.returncode == 0 and file_bytes(tmp_path / "set") == file_bytes(out)  # one owner: data.modalities
    for bad in ("t2w,dwi", "adc,t2w", "t2w,adc,adc", "hbv"):
        assert_one_line_error(in_process(capsys, "phantom", "--out", tmp_path / "no", "--sequences", bad),
                              "--sequences", bad)
        assert not (tmp_path / "no").exists()
