"""The `synthaug` command, run as a user would (subprocess): tables on success, one line and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_nifti, write_jsonl


def synthaug(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthaug", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_help_lists_the_commands():
    result = synthaug("--help")
    assert result.returncode == 0
    for command in ("phantom", "data", "picai", "config"):
        assert command in result.stdout


def test_data_check_prints_counts_reports_and_geometry(small_dataset):
    path, _ = small_dataset
    result = synthaug("data", "check", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "manifest OK" in out
    assert "train" in out and "val" in out and "test" in out
    assert "1 (17%)" in out  # one empty report of six
    assert "8 x 8 x 4" in out and "spacing 1.5 x 1.5 x 3 mm" in out


def test_data_check_lists_every_problem_and_exits_2(small_dataset):
    path, rows = small_dataset
    base = path.parent
    rows[1]["image"] = "images/missing.nii.gz"
    bad = np.ones((8, 8, 4))
    bad[0, 0, 0] = np.nan
    save_nifti(base / "images" / "nan.nii.gz", bad)
    rows[2]["image"] = "images/nan.nii.gz"
    save_nifti(base / "images" / "flat.nii.gz", np.ones((8, 8)))
    rows[3]["image"] = "images/flat.nii.gz"
    rows[4]["spacing"] = [1.0, 1.0, 1.0]
    rows[5]["case_id"] = rows[0]["case_id"]
    write_jsonl(path, rows)
    result = synthaug("data", "check", path)
    assert result.returncode == 2
    out = " ".join(result.stdout.split())
    assert "5 problem(s)" in out
    for words in ("case_1", "image file not found"), ("case_2", "NaN or Inf"), ("case_3", "expected a 3D volume"), \
                 ("case_4", "'spacing'"), ("case_0", "duplicate id"):
        for word in words:
            assert word in out


def test_data_check_no_images_reads_headers_only(small_dataset):
    path, rows = small_dataset
    bad = np.ones((8, 8, 4))
    bad[0, 0, 0] = np.nan
    save_nifti(path.parent / rows[0]["image"], bad)
    assert synthaug("data", "check", path, "--no-images").returncode == 0
    assert synthaug("data", "check", path).returncode == 2


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", ["manifest has no cases"]),
        ('{"case_id": "a", "image": "x.nii.gz", "label": 3}\n', ["case 'a'", "'label'"]),
        ('{"case_id": "a", "image": "x.nii.gz", "label": 1, "split": "dev"}\n', ["'split'", "unknown split"]),
        ("not json\n", ["m.jsonl:1", "not valid JSON"]),
    ],
)
def test_data_check_bad_manifest_is_one_line(tmp_path, content, words):
    (tmp_path / "m.jsonl").write_text(content)
    assert_one_line_error(synthaug("data", "check", tmp_path / "m.jsonl"), *words)


def test_data_check_refuses_paths_out_of_the_folder(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"case_id": "a", "image": "../x.nii.gz", "label": 1}\n')
    result = synthaug("data", "check", tmp_path / "m.jsonl")
    assert result.returncode == 2
    assert "case 'a', field 'image': relative path '../x.nii.gz' climbs out" in " ".join(result.stdout.split())


def test_missing_manifest(tmp_path):
    assert_one_line_error(synthaug("data", "check", tmp_path / "none.jsonl"), "manifest not found")


def test_usage_errors_are_one_line():
    assert_one_line_error(synthaug("phantom"), "--out", "synthaug phantom --help")
    assert_one_line_error(synthaug("frobnicate"), "invalid choice")


def test_config_show_is_a_loadable_file(tmp_path):
    result = synthaug("config", "show", "--preset", "small", "--set", "phantom.seed=4", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["preset"] == "small" and data["phantom"]["seed"] == 4
    (tmp_path / "c.json").write_text(result.stdout)
    again = synthaug("config", "show", "--config", tmp_path / "c.json", "--format", "json")
    assert json.loads(again.stdout) == data


def test_bad_setting_is_one_line():
    assert_one_line_error(synthaug("config", "show", "--set", "phantom.difficulty=3"), "phantom.difficulty")


def test_phantom_writes_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ph"
    result = synthaug("phantom", "--out", out, "--n", "10", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "manifest OK" in result.stdout and "64 x 64 x 32" in result.stdout
    assert len(list((out / "images").glob("*.nii.gz"))) == 10
    assert_one_line_error(synthaug("phantom", "--out", out, "--n", "10"), str(out), "--overwrite")
    again = synthaug("phantom", "--out", out, "--n", "12", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert len(list((out / "images").glob("*.nii.gz"))) == 12
