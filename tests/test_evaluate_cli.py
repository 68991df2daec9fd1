"""`synthaug evaluate`: a cache or the paper protocol against a manifest split, written to a folder."""

from __future__ import annotations

import json

from tests.test_cli import assert_one_line_error
from tests.test_generate import in_process


def test_evaluate_a_cache_against_the_test_split(small_phantom, small_cache, tmp_path, capsys):
    out = tmp_path / "quality"
    done = in_process(capsys, "evaluate", "--real", small_phantom, "--synthetic", small_cache, "--out", out,
                      "--fidelity-epochs", "1")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid_3d"] >= 0 and metrics["comparable_to_published"] is False
    assert metrics["extractors"]["3d"]["name"].startswith("judge features: tiny-cnn trained on the real train split")
    assert metrics["conditioning"]["n"] == 12
    for name in ("report.md", "montage_class0.png", "montage_class1.png", "memorisation.csv"):
        assert (out / name).is_file(), name
    assert "FID" in done.stdout
    chain = metrics["class_signal"]  # the small cache's bundle is still where cache.json says: every link
    links = [row["link"] for row in chain["links"]]
    assert links == ["ceiling", "autoencoder", "adapter", "fidelity", "cas", "cas-real"]
    assert chain["judge"].startswith("tiny-cnn (seed 0") and "## Class-signal chain" in (out / "report.md").read_text()
    assert all(row["auroc"]["estimate"] is None or 0 <= row["auroc"]["estimate"] <= 1 for row in chain["links"])


def test_paper_protocol_makes_one_volume_per_case_from_its_report(small_phantom, small_bundle, tmp_path, capsys):
    out = tmp_path / "paper"
    done = in_process(capsys, "evaluate", "--real", small_phantom, "--split", "test", "--paper-protocol", "--bundle",
                      small_bundle, "--sampler", "ddim", "--steps", "2", "--class-guidance", "2", "--out", out,
                      "--fidelity-model", "none")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "paper_protocol" / "provenance.jsonl").read_text().splitlines()]
    assert {r["class_guidance"] for r in rows} == {2.0}
    real = [json.loads(line) for line in small_phantom.read_text().splitlines() if '"split": "test"' in line]
    assert [(r["case_id"], r["report"], r["label"]) for r in rows] == [(c["case_id"], c["report"], c["label"])
                                                                       for c in real]


def test_bad_input(small_phantom, small_cache, tmp_path, capsys):
    base = ["evaluate", "--real", small_phantom, "--out", tmp_path / "o"]
    assert_one_line_error(in_process(capsys, *base), "nothing to evaluate")
    assert_one_line_error(in_process(capsys, *base, "--paper-protocol"), "--bundle")
    assert_one_line_error(in_process(capsys, *base, "--synthetic", tmp_path), "no cache.json")
    assert_one_line_error(in_process(capsys, *base, "--synthetic", small_cache, "--split", "dev"), "unknown split")


def test_a_seed_offset_makes_another_twin_of_every_case(small_phantom, small_bundle, tmp_path):
    import nibabel as nib

    from synthaug.apps.evaluate import paper_protocol_items
    from synthaug.generate import CCELLAGenerator

    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, precision="fp32", batch_size=2)
    cases = [json.loads(line) for line in small_phantom.read_text().splitlines()][:3]
    first = paper_protocol_items(generator, cases, tmp_path / "k0")
    second = paper_protocol_items(generator, cases, tmp_path / "k1", seed_offset=len(cases))
    seeds = [[json.loads(line)["seed"] for line in (tmp_path / k / "provenance.jsonl").read_text().splitlines()]
             for k in ("k0", "k1")]
    assert seeds == [[0, 1, 2], [3, 4, 5]]
    assert [i["label"] for i in first] == [i["label"] for i in second] == [c["label"] for c in cases]
    assert not (nib.load(first[0]["image"]).get_fdata() == nib.load(second[0]["image"]).get_fdata()).all()
