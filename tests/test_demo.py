"""`synthaug demo --quick` end to end, re-use of finished stages, and the README's MONAI-loop example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from synthaug.apps.demo.report import ratio_table
from tests.test_generate import in_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    from synthaug.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_every_artefact(quick_demo):
    for name in ("phantom/manifest.jsonl", "bundle/fingerprint", "cache/cache.json", "quality/metrics.json",
                 "quality/montage_class1.png", "sweep/summary.json", "sweep/ratio_vs_metric.png", "report.md",
                 "report.html", "demo_state.json"):
        assert (quick_demo / name).is_file(), name
    state = json.loads((quick_demo / "demo_state.json").read_text())
    assert list(state) == ["phantom", "train", "pregenerate", "evaluate", "sweep", "report"]
    cache_ids = json.loads((quick_demo / "cache" / "cache.json").read_text())["train_case_ids"]
    held_out = [json.loads(line)["case_id"] for line in (quick_demo / "phantom" / "manifest.jsonl").read_text()
                .splitlines() if '"split": "train"' not in line]
    assert not set(cache_ids) & set(held_out)  # the generator never saw a validation or test case
    # the demo's generator is trained with rectified flow and its cache sampled with the flow sampler
    bundle_config = json.loads((quick_demo / "bundle" / "config.json").read_text())["config"]
    assert bundle_config["diffusion"]["prediction"] == "flow"
    assert json.loads((quick_demo / "cache" / "cache.json").read_text())["generator"]["sampler"] == "flow"
    assert "rectified-flow objective" in (quick_demo / "report.md").read_text()


def test_report_table_matches_summary(quick_demo):
    summary = json.loads((quick_demo / "sweep" / "summary.json").read_text())
    info = summary["per_model"][summary["models"][0]]
    assert [info["labels"][k] for k in info["arms"]] == ["0", "0.5", "1", "2", "synthetic-only"]
    header, rows = ratio_table(summary)
    report = (quick_demo / "report.md").read_text()
    for row in rows:
        assert "| " + " | ".join(row) + " |" in report
    auroc = summary["per_arm"][info["arms"][2]]["test"]["auroc"]["mean"]
    assert f"{auroc:.3f}" in rows[2][2]
    assert summary["verdict"] in report and summary["verdict"] in (quick_demo / "report.html").read_text()


def test_report_says_which_link_carries_the_class(quick_demo):
    from synthaug.metrics.class_signal import ClassSignalChain

    chain = ClassSignalChain.from_dict(json.loads((quick_demo / "quality" / "metrics.json").read_text())["class_signal"])
    assert [s.link for s in chain.links][:3] == ["ceiling", "autoencoder", "adapter"]
    report, page = (quick_demo / "report.md").read_text(), (quick_demo / "report.html").read_text()
    assert "## Do the synthetic volumes carry their class?" in report and chain.sentence() in report
    assert all("| " + " | ".join(row) + " |" in report for row in chain.rows())
    assert "carry their class?" in page


def test_rerun_reuses_finished_stages(quick_demo, capsys):
    done = in_process(capsys, "demo", "--quick", "--out", quick_demo)
    assert done.returncode == 0, done.stderr
    state = json.loads((quick_demo / "demo_state.json").read_text())
    assert all(state[s]["reused"] for s in ("phantom", "train", "pregenerate", "evaluate", "sweep"))
    assert "reused" in done.stdout


def run_readme_example(name: str, small_phantom, small_cache, tmp_path, monkeypatch) -> dict:
    """Run the README's ``<!-- example: NAME -->`` block in a folder laid out like the demo's; its namespace."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "demo_out").mkdir()
    (tmp_path / "demo_out" / "phantom").symlink_to(small_phantom.parent)
    (tmp_path / "demo_out" / "cache").symlink_to(small_cache)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_readme_monai_loop_example_runs(small_phantom, small_cache, tmp_path, monkeypatch):
    namespace = run_readme_example("monai-loop", small_phantom, small_cache, tmp_path, monkeypatch)
    batch = namespace["batch"]
    assert batch["image"].shape[1:] == (1, 32, 32, 16) and len(namespace["train_ds"]) == 2 * len(
        namespace["train_items"])


def test_readme_ratio_schedule_example_runs(small_phantom, small_cache, tmp_path, monkeypatch, capsys):
    namespace = run_readme_example("ratio-schedule", small_phantom, small_cache, tmp_path, monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "'ratio': inf" in printed[1] and "'ratio': 0.0" in printed[2]
    assert namespace["train_ds"].summary()["synthetic"] == {0: 0, 1: 0}  # real only after pretraining
    assert bool(namespace["batch"]["is_synthetic"].any()) is False
