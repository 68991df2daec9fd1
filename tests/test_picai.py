"""PI-CAI layout -> manifest: marksheet parsing, label rules, reports from fields, splits, missing data."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synthaug.config import ReportConfig
from synthaug.data.manifest import load_manifest
from synthaug.data.picai import (
    PicaiCase,
    find_marksheet,
    grouped_stratified_split,
    picai_findings,
    picai_label,
    picai_to_manifest,
    read_marksheet,
    read_splits,
)
from synthaug.errors import PicaiError

COLUMNS = ["patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume", "histopath_type",
           "lesion_PIRADS", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa", "center"]
OLD_COLUMNS = [c for c in COLUMNS if c not in ("lesion_PIRADS", "center")]

# 8 studies of 6 patients; 10000 and 10005 have two studies each.
ROWS = [
    # patient, study, age, psa, volume, lesion_PIRADS, lesion_GS, lesion_ISUP, case_ISUP, case_csPCa
    ("10000", "1000000", "66", "9.2", "45", "4,N/A,3", "3+4,N/A,3+3", "2,N/A,1", "2", "YES"),
    ("10000", "1000001", "67", "N/A", "47", "N/A", "N/A", "N/A", "0", "NO"),
    ("10001", "1000002", "71", "14.5", "60", "5", "4+4", "4", "4", "YES"),
    ("10002", "1000003", "59", "5.1", "", "", "", "", "", "NO"),
    ("10003", "1000004", "63", "7.7", "38", "3", "3+3", "1", "1", "NO"),
    ("10004", "1000005", "70", "11.0", "52", "N/A", "3+4", "2", "2", "YES"),  # lesion found by biopsy only
    ("10005", "1000006", "58", "4.0", "30", "2", "N/A", "N/A", "0", "NO"),
    ("10005", "1000007", "60", "8.8", "33", "4", "4+3", "3", "3", "YES"),
]
CASE_IDS = [f"{r[0]}_{r[1]}" for r in ROWS]
LABELS = {
    "pirads3": [1, 0, 1, 0, 1, 0, 0, 1],
    "pirads4": [1, 0, 1, 0, 0, 0, 0, 1],
    "cspca": [1, 0, 1, 0, 0, 1, 0, 1],
}
SPACING = (0.5, 0.5, 3.0)
HISTOPATHOLOGY_WORDS = re.compile(r"ISUP|Gleason|\bGS\b|histopath|case_csPCa|\b[345]\+[345]\b", re.IGNORECASE)


def write_marksheet(path: Path, rows=ROWS, columns=COLUMNS, overrides: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for pid, sid, age, psa, vol, pirads, gs, isup, case_isup, cspca in rows:
            row = {
                "patient_id": pid, "study_id": sid, "mri_date": "2019-01-01", "patient_age": age, "psa": psa,
                "psad": "0.2", "prostate_volume": vol, "histopath_type": "SB", "lesion_PIRADS": pirads,
                "lesion_GS": gs, "lesion_ISUP": isup, "case_ISUP": case_isup, "case_csPCa": cspca, "center": "RUMC",
            }
            row.update(overrides or {})
            writer.writerow(row)
    return path


def write_volume(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.zeros((4, 8, 8), dtype=np.float32))  # (Z, Y, X) -> 8x8x4 voxels
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def picai(tmp_path: Path) -> Path:
    """A small PI-CAI tree: picai/images/{patient}/..._{t2w,adc,hbv,sag}.mha and picai/labels/clinical_information."""
    root = tmp_path / "picai"
    for pid, sid, *_ in ROWS:
        for modality in ("t2w", "adc", "hbv", "sag"):
            write_volume(root / "images" / pid / f"{pid}_{sid}_{modality}.mha")
    write_marksheet(root / "labels" / "clinical_information" / "marksheet.csv")
    return root


def convert(picai: Path, out: Path | None = None, **kwargs):
    out = out or picai / "manifest.jsonl"
    return picai_to_manifest(picai / "images", picai / "labels", out, **kwargs)


def records_by_id(path: Path) -> dict:
    return {r.case_id: r for r in load_manifest(path)}


# ---------------------------------------------------------------- marksheet


def test_read_marksheet_parses_lesion_lists_and_missing_values(picai: Path) -> None:
    cases = {c.case_id: c for c in read_marksheet(picai / "labels")}
    multi = cases["10000_1000000"]
    assert multi.lesion_pirads == (4, None, 3) and multi.max_pirads == 4
    assert multi.lesion_gs == ("3+4", None, "3+3") and multi.lesion_isup == (2, None, 1)
    assert (multi.age, multi.psa, multi.prostate_volume, multi.cspca, multi.center) == (66, 9.2, 45.0, True, "RUMC")
    na = cases["10000_1000001"]
    assert na.psa is None and na.lesion_pirads == (None,) and na.max_pirads is None and na.cspca is False
    empty = cases["10002_1000003"]
    assert empty.lesion_pirads == () and empty.prostate_volume is None and empty.case_isup is None


def test_marksheet_found_from_labels_repo_folder_or_csv(picai: Path) -> None:
    csv_path = picai / "labels" / "clinical_information" / "marksheet.csv"
    for given in (picai / "labels", csv_path.parent, csv_path):
        assert find_marksheet(given) == csv_path
    with pytest.raises(PicaiError, match="no PI-CAI marksheet"):
        find_marksheet(picai / "images")


def test_unreadable_number_names_line_and_column(tmp_path: Path) -> None:
    rows = [ROWS[0], (*ROWS[1][:3], "high", *ROWS[1][4:])]
    sheet = write_marksheet(tmp_path / "marksheet.csv", rows)
    with pytest.raises(PicaiError, match=r"marksheet\.csv:3: column 'psa': 'high' is not a number"):
        read_marksheet(sheet)


@pytest.mark.parametrize("rule", ["pirads3", "pirads4", "cspca"])
def test_labels_per_rule(picai: Path, rule: str) -> None:
    cases = read_marksheet(picai / "labels", rule)
    assert [picai_label(c, rule) for c in cases] == LABELS[rule]
    result = convert(picai, label_rule=rule, reports=ReportConfig(empty_fraction=0.0))
    records = records_by_id(result.manifest)
    assert [records[i].label for i in CASE_IDS] == LABELS[rule]
    assert result.labels == dict(sorted(Counter(LABELS[rule]).items()))
    assert [records[i].pirads for i in CASE_IDS] == [4, None, 5, None, 3, None, 2, 4]  # max lesion PI-RADS


def test_cspca_rule_refuses_a_case_without_cspca(tmp_path: Path) -> None:
    sheet = write_marksheet(tmp_path / "marksheet.csv", [(*ROWS[0][:9], "")])
    case = read_marksheet(sheet, "cspca")[0]
    with pytest.raises(PicaiError, match="case_csPCa is empty"):
        picai_label(case, "cspca")


# ---------------------------------------------------------------- old marksheets and missing columns


def test_old_marksheet_converts_with_cspca_rule(picai: Path) -> None:
    write_marksheet(picai / "labels" / "clinical_information" / "marksheet.csv", columns=OLD_COLUMNS)
    result = convert(picai, label_rule="cspca")
    records = records_by_id(result.manifest)
    assert [records[i].label for i in CASE_IDS] == LABELS["cspca"]
    assert all(r.pirads is None and r.meta["center"] is None for r in records.values())


@pytest.mark.parametrize("rule", ["pirads3", "pirads4"])
def test_old_marksheet_with_pirads_rule_names_column_rule_and_fix(picai: Path, rule: str) -> None:
    write_marksheet(picai / "labels" / "clinical_information" / "marksheet.csv", columns=OLD_COLUMNS)
    with pytest.raises(PicaiError) as err:
        convert(picai, label_rule=rule)
    message = err.value.message
    assert "marksheet.csv" in message and "'lesion_PIRADS'" in message and f"--label-rule {rule}" in message
    assert "choose --label-rule cspca" in message
    assert not (picai / "manifest.jsonl").exists()


def test_missing_id_column_is_refused(tmp_path: Path) -> None:
    sheet = write_marksheet(tmp_path / "marksheet.csv", columns=[c for c in COLUMNS if c != "study_id"])
    with pytest.raises(PicaiError, match="lacks column.*'study_id'"):
        read_marksheet(sheet)


def test_label_rule_on_a_case_from_an_old_marksheet_is_refused(picai: Path) -> None:
    sheet = write_marksheet(picai / "old.csv", columns=OLD_COLUMNS)
    case = read_marksheet(sheet)[0]
    with pytest.raises(PicaiError, match="lacks column 'lesion_PIRADS' needed by --label-rule pirads3"):
        picai_label(case, "pirads3")


# ---------------------------------------------------------------- images


def test_manifest_has_modalities_spacing_meta_and_loads(picai: Path) -> None:
    result = convert(picai, label_rule="cspca")
    assert result.manifest == picai / "manifest.jsonl" and result.n_cases == 8 and result.skipped == ()
    manifest = load_manifest(result.manifest)  # validates ids, splits and that every file exists
    record = records_by_id(result.manifest)["10000_1000000"]
    assert record.image == {m: f"images/10000/10000_1000000_{m}.mha" for m in ("t2w", "adc", "hbv")}
    assert record.spacing == SPACING
    assert record.meta["lesion_pirads"] == [4, None, 3] and record.meta["lesion_isup"] == [2, None, 1]
    assert (record.meta["cspca"], record.meta["case_isup"], record.meta["center"]) == (True, 2, "RUMC")
    items = manifest.items()
    assert set(items[0]) >= {"image", "adc", "hbv", "label", "report"} and Path(items[0]["image"]).is_file()


def test_modalities_subset_and_absolute_paths_outside_the_manifest_folder(picai: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "picai.jsonl"
    result = convert(picai, out, modalities=("t2w",))
    for record in load_manifest(result.manifest):
        assert list(record.image) == ["t2w"] and Path(record.image["t2w"]).is_absolute()


def test_case_without_images_is_an_error_naming_it(picai: Path) -> None:
    rows = [*ROWS, ("10099", "1000099", "60", "5", "40", "N/A", "N/A", "N/A", "0", "NO")]
    write_marksheet(picai / "labels" / "clinical_information" / "marksheet.csv", rows)
    with pytest.raises(PicaiError) as err:
        convert(picai)
    message = err.value.message
    assert "patient_id=10099" in message and "study_id=1000099" in message and "image folder" in message
    assert "--skip-missing" in message
    assert not (picai / "manifest.jsonl").exists()


def test_missing_t2w_file_is_an_error_naming_the_file(picai: Path) -> None:
    (picai / "images" / "10003" / "10003_1000004_t2w.mha").unlink()
    with pytest.raises(PicaiError, match=r"10003_1000004_t2w\.mha not found"):
        convert(picai)


def test_skip_mode_leaves_out_and_lists_cases_without_images(picai: Path) -> None:
    rows = [*ROWS, ("10099", "1000099", "60", "5", "40", "N/A", "N/A", "N/A", "0", "NO")]
    write_marksheet(picai / "labels" / "clinical_information" / "marksheet.csv", rows)
    (picai / "images" / "10003" / "10003_1000004_hbv.mha").unlink()
    result = convert(picai, on_missing="skip")
    assert result.skipped == ("10003_1000004", "10099_1000099") and result.n_cases == 7
    assert set(records_by_id(result.manifest)) == set(CASE_IDS) - {"10003_1000004"}


# ---------------------------------------------------------------- reports


def test_findings_hold_only_what_a_radiologist_reports() -> None:
    case = PicaiCase("1", "2", age=66, psa=9.2, prostate_volume=45.0, lesion_pirads=(4, None, 3),
                     lesion_isup=(2, None, 1), case_isup=2, cspca=True)
    findings = picai_findings(case)
    assert [les.pirads for les in findings.lesions] == [4, 3] and findings.overall == 4
    assert (findings.age, findings.psa, findings.prostate_volume_ml, findings.field_strength_t) == (66, 9.2, 45.0, None)
    assert picai_findings(PicaiCase("1", "3", lesion_pirads=(None,))).overall is None


def test_reports_state_pirads_but_no_histopathology(picai: Path) -> None:
    records = records_by_id(convert(picai, reports=ReportConfig(empty_fraction=0.0)).manifest)
    assert all(r.report for r in records.values())
    multi = records["10000_1000000"].report
    assert "PI-RADS 4" in multi and "PI-RADS 3" in multi and "66-year-old" in multi
    assert "PI-RADS 5" in records["10001_1000002"].report
    for record in records.values():
        assert not HISTOPATHOLOGY_WORDS.search(record.report), record.report


def test_reports_do_not_depend_on_histopathology_fields(picai: Path) -> None:
    config = ReportConfig(empty_fraction=0.0)
    before = [r.report for r in load_manifest(convert(picai, reports=config).manifest)]
    flipped = [(*r[:6], "5+5", "5", "5", "NO" if r[9] == "YES" else "YES") for r in ROWS]
    sheet = picai / "labels" / "clinical_information" / "marksheet.csv"
    write_marksheet(sheet, flipped, overrides={"histopath_type": "RP"})
    after = [r.report for r in load_manifest(convert(picai, reports=config).manifest)]
    assert before == after


@pytest.mark.parametrize(("fraction", "n_empty"), [(0.0, 0), (0.25, 2), (1.0, 8)])
def test_configured_fraction_of_reports_is_empty(picai: Path, fraction: float, n_empty: int) -> None:
    records = load_manifest(convert(picai, reports=ReportConfig(empty_fraction=fraction)).manifest)
    assert sum(not r.has_report for r in records) == n_empty


def test_default_report_config_leaves_some_reports_empty(picai: Path) -> None:
    records = load_manifest(convert(picai).manifest)
    assert sum(not r.has_report for r in records) == 1  # round(0.15 * 8)


def test_same_seed_same_bytes(picai: Path) -> None:
    first = convert(picai, picai / "a.jsonl", seed=3).manifest.read_bytes()
    second = convert(picai, picai / "b.jsonl", seed=3).manifest.read_bytes()
    other = convert(picai, picai / "c.jsonl", seed=4).manifest.read_bytes()
    assert first == second and first != other


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_each_patient_in_one_split(picai: Path, seed: int) -> None:
    records = load_manifest(convert(picai, seed=seed).manifest)
    by_patient: dict[str, set[str]] = {}
    for r in records:
        by_patient.setdefault(r.meta["patient_id"], set()).add(r.split)
    assert all(len(splits) == 1 for splits in by_patient.values()), by_patient
    assert {r.split for r in records} == {"train", "val", "test"}


def test_grouped_stratified_split_matches_fractions_and_label_rate() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{i}" for i in rng.integers(0, 300, size=400)]
    labels = [int(rng.random() < 0.3) for _ in groups]
    splits = grouped_stratified_split(labels, groups, (0.6, 0.2, 0.2), seed=1)
    assert splits == grouped_stratified_split(labels, groups, (0.6, 0.2, 0.2), seed=1)
    patient_splits: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        patient_splits.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in patient_splits.values())
    overall = np.mean(labels)
    for name, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        members = [label for label, s in zip(labels, splits) if s == name]
        assert abs(len(members) / len(labels) - fraction) < 0.02
        assert abs(np.mean(members) - overall) < 0.02


def test_grouped_stratified_split_never_uses_a_zero_fraction_split() -> None:
    splits = grouped_stratified_split([0, 1] * 10, [str(i) for i in range(20)], (0.8, 0.2, 0.0))
    assert Counter(splits) == {"train": 16, "val": 4}


def test_bad_split_fractions_are_refused(picai: Path) -> None:
    with pytest.raises(PicaiError, match="split fractions"):
        convert(picai, split_fractions=(0.5, 0.2, 0.2))


def test_splits_json_fold_selects_train_and_val(picai: Path) -> None:
    folds = [
        {"train": CASE_IDS[:4], "val": CASE_IDS[4:6]},
        {"train": ["10002_1000003_0000.nii.gz", "nnUNet_raw/10003_1000004.nii.gz", "10004_1000005_t2w.mha"],
         "val": ["10005_1000006", "10005_1000007_0001.nii.gz"]},
    ]
    path = picai / "splits.json"
    path.write_text(json.dumps(folds))
    records = records_by_id(convert(picai, splits_json=path, fold=1).manifest)
    assert [records[i].split for i in CASE_IDS] == ["test", "test", "test", "train", "train", "train", "val", "val"]
    records = records_by_id(convert(picai, splits_json=path, fold=0).manifest)
    assert [records[i].split for i in CASE_IDS] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2


def test_splits_json_errors(picai: Path) -> None:
    path = picai / "splits.json"
    path.write_text(json.dumps([{"train": CASE_IDS[:2], "val": CASE_IDS[2:4]}]))
    with pytest.raises(PicaiError, match="fold 1 does not exist"):
        read_splits(path, 1, CASE_IDS)
    path.write_text(json.dumps([{"train": ["99_1", "99_2"], "val": []}]))
    with pytest.raises(PicaiError, match="none of the 2 ids"):
        read_splits(path, 0, CASE_IDS)
    path.write_text(json.dumps([{"train": CASE_IDS[:2], "val": CASE_IDS[1:3]}]))
    with pytest.raises(PicaiError, match="both 'train' and 'val'"):
        read_splits(path, 0, CASE_IDS)


def test_cli_writes_manifest_and_prints_summary(picai: Path) -> None:
    from test_cli import synthaug

    out = picai / "picai.jsonl"
    result = synthaug("picai", "--images", picai / "images", "--labels", picai / "labels", "--out", out,
                      "--label-rule", "cspca", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "manifest OK" in result.stdout and "t2w" in result.stdout and "adc" in result.stdout
    assert [r.label for r in records_by_id(out).values()] == LABELS["cspca"]


def test_cli_bad_marksheet_is_one_line_exit_2(picai: Path) -> None:
    from test_cli import assert_one_line_error, synthaug

    write_marksheet(picai / "labels" / "clinical_information" / "marksheet.csv", columns=OLD_COLUMNS)
    result = synthaug("picai", "--images", picai / "images", "--labels", picai / "labels", "--out",
                      picai / "m.jsonl")
    assert_one_line_error(result, "lesion_PIRADS", "--label-rule cspca")
    assert not (picai / "m.jsonl").exists()
