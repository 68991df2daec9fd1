"""Manifests: round-trips, MONAI items, and one clear error per kind of bad record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_nifti, write_jsonl

from synthaug.data.manifest import (
    CaseRecord,
    load_manifest,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from synthaug.errors import ManifestError


def test_jsonl_round_trip_keeps_every_field(small_dataset, tmp_path):
    path, rows = small_dataset
    manifest = load_manifest(path)
    assert [r.to_dict() for r in manifest] == rows
    again = write_manifest(manifest.records, tmp_path / "again.jsonl")
    assert again.read_text() == path.read_text()


def test_csv_round_trip_with_multimodal_images(tmp_path):
    for m in ("t2w", "adc", "hbv"):
        save_nifti(tmp_path / f"a_{m}.nii.gz", [[[1.0, 2.0]] * 2] * 2)
    records = [
        CaseRecord("a", {"t2w": "a_t2w.nii.gz", "adc": "a_adc.nii.gz", "hbv": "a_hbv.nii.gz"}, 1, 5,
                   'Lesion, "quoted", with commas.\nSecond line.', (0.5, 0.5, 3.0), "test", {"center": "X"}),
        CaseRecord("b", {"t2w": "a_t2w.nii.gz"}, 0, None, "", None, "train", {}),
    ]
    path = write_manifest(records, tmp_path / "m.csv")
    assert read_manifest(path).records == records


def test_items_are_monai_dicts_with_absolute_paths(small_dataset):
    path, _ = small_dataset
    items = load_manifest(path).items("val")
    assert [i["case_id"] for i in items] == ["case_2", "case_3"]
    assert Path(items[0]["image"]).is_absolute() and Path(items[0]["image"]).is_file()
    assert items[1]["label"] == 1 and items[1]["report"].startswith("Report 3")


def test_csv_accepts_string_cells(tmp_path):
    save_nifti(tmp_path / "x.nii.gz", [[[0.0, 1.0]] * 2] * 2)
    (tmp_path / "m.csv").write_text(
        "case_id,image,label,pirads,report,spacing,split,meta\n"
        'x,x.nii.gz,1,4,"PI-RADS 4.","1.5, 1.5, 3",val,\n', encoding="utf-8")
    (record,) = load_manifest(tmp_path / "m.csv").records
    assert (record.label, record.pirads, record.spacing, record.split) == (1, 4, (1.5, 1.5, 3.0), "val")


def _one_bad(tmp_path: Path, **change) -> Path:
    save_nifti(tmp_path / "ok.nii.gz", [[[0.0, 1.0]] * 2] * 2)
    row = {"case_id": "c1", "image": "ok.nii.gz", "label": 0, "split": "train"}
    row.update(change)
    return write_jsonl(tmp_path / "m.jsonl", [row])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"label": 2}, ["c1", "'label'", "not 0 or 1"]),
        ({"label": "yes"}, ["c1", "'label'"]),
        ({"split": "training"}, ["c1", "'split'", "unknown split", "train, val, test"]),
        ({"pirads": 7}, ["c1", "'pirads'", "1-5"]),
        ({"spacing": [1, 1]}, ["c1", "'spacing'"]),
        ({"spacing": [1, -1, 2]}, ["c1", "'spacing'"]),
        ({"report": 5}, ["c1", "'report'"]),
        ({"image": {"adc": "ok.nii.gz"}}, ["c1", "'image'", "t2w"]),
        ({"image": {"t2w": "ok.nii.gz", "dwi": "x"}}, ["c1", "unknown modality 'dwi'"]),
        ({"colour": "red"}, ["c1", "'colour'", "unknown field"]),
        ({"case_id": "has space"}, ["'case_id'", "letters"]),
        ({"case_id": ""}, ["'case_id'"]),
        ({"meta": [1]}, ["'meta'"]),
    ],
)
def test_bad_record_names_case_and_field(tmp_path, change, words):
    with pytest.raises(ManifestError) as err:
        load_manifest(_one_bad(tmp_path, **change))
    message = err.value.message
    assert "m.jsonl:1" in message
    for word in words:
        assert word in message
    assert "\n" not in message


def test_missing_image_file(tmp_path):
    path = _one_bad(tmp_path, image="nope.nii.gz")
    with pytest.raises(ManifestError, match=r"case 'c1', field 'image': image file not found"):
        load_manifest(path)
    assert load_manifest(path, check_files=False).records[0].image == "nope.nii.gz"


def test_missing_modality_file_names_the_modality(tmp_path):
    path = _one_bad(tmp_path, image={"t2w": "ok.nii.gz", "adc": "adc.nii.gz"})
    with pytest.raises(ManifestError, match=r"field 'image.adc': image file not found"):
        load_manifest(path)


@pytest.mark.parametrize("escape", ["../outside.nii.gz", "images/../../outside.nii.gz", ".."])
def test_relative_path_escaping_the_manifest_folder_is_refused(tmp_path, escape):
    inner = tmp_path / "inner"
    inner.mkdir()
    save_nifti(tmp_path / "outside.nii.gz", [[[0.0, 1.0]] * 2] * 2)
    path = write_jsonl(inner / "m.jsonl", [{"case_id": "c1", "image": escape, "label": 0}])
    with pytest.raises(ManifestError, match="climbs out of the manifest's folder.*absolute path"):
        load_manifest(path)


def test_absolute_path_outside_the_folder_is_allowed(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    image = save_nifti(tmp_path / "outside.nii.gz", [[[0.0, 1.0]] * 2] * 2)
    path = write_jsonl(inner / "m.jsonl", [{"case_id": "c1", "image": str(image), "label": 0}])
    assert load_manifest(path).items()[0]["image"] == str(image)


def test_duplicate_case_id(tmp_path):
    save_nifti(tmp_path / "ok.nii.gz", [[[0.0, 1.0]] * 2] * 2)
    row = {"case_id": "c1", "image": "ok.nii.gz", "label": 0}
    path = write_jsonl(tmp_path / "m.jsonl", [row, row, {**row, "case_id": "c2"}, row])
    problems = validate_manifest(read_manifest(path))
    assert [p.field for p in problems] == ["case_id", "case_id"]
    with pytest.raises(ManifestError, match=r"case 'c1', field 'case_id': duplicate id \(and 1 more"):
        load_manifest(path)


def test_empty_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="manifest has no cases"):
        load_manifest(tmp_path / "m.jsonl")


def test_line_that_is_not_json(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"case_id": "a"\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: line is not valid JSON"):
        read_manifest(tmp_path / "m.jsonl")


def test_non_utf8_report_bytes(tmp_path):
    line = json.dumps({"case_id": "c7", "image": "x.nii.gz", "label": 0, "report": "PLACEHOLDER"})
    raw = line.encode().replace(b"PLACEHOLDER", "Läsion".encode("latin-1"))
    (tmp_path / "m.jsonl").write_bytes(b'{"case_id": "c6", "image": "x.nii.gz", "label": 0}\n' + raw + b"\n")
    with pytest.raises(ManifestError, match=r"line 2 \(case 'c7'\) is not valid UTF-8.*re-save the manifest as UTF-8"):
        read_manifest(tmp_path / "m.jsonl")


def test_manifest_not_found(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")

