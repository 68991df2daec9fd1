"""`synthaug sweep`: a small grid end to end, resume, two workers on one storage, statistics, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from synthaug.apps.sweep.statistics import holm, mean_ci, paired_difference
from synthaug.data.manifest import load_manifest
from synthaug.errors import InputError
from tests.test_cli import assert_one_line_error
from tests.test_generate import in_process

SHAPE = ["--set", "data.image_shape=[32,32,16]", "--set", "data.spacing=[3,3,6]"]
# No pruning: which trial the median pruner stops depends on timing between workers, and the tests count trials.
FAST = ["--model", "tiny-cnn", "--epochs", "2", "--seeds", "2", "--batch-size", "4", "--no-prune", *SHAPE]


def complete_trials(out) -> Counter:
    import optuna

    study = optuna.load_study(study_name="synthaug-sweep", storage=f"sqlite:///{out / 'study.db'}")
    return Counter(t.user_attrs["arm"] for t in study.trials
                   if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("duplicate"))


def schedules(counter: Counter) -> Counter:
    """complete_trials keyed by schedule only (one source, one model)."""
    return Counter({key.split("|")[-1]: n for key, n in counter.items()})


def test_a_small_sweep_writes_every_output_and_resumes(small_phantom, small_cache, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--data", small_phantom, "--synthetic", small_cache, "--out", out, "--ratios", "0,1", *FAST]
    done = in_process(capsys, *args)
    assert done.returncode == 0, done.stderr
    for name in ("trials.csv", "summary.json", "ratio_vs_metric.png", "report.md", "study.db"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    info = summary["per_model"]["tiny-cnn"]
    assert [info["labels"][k] for k in info["arms"]] == ["0", "1"] and summary["seeds"] == 2
    one = summary["per_arm"][info["arms"][1]]
    assert [s["seed"] for s in one["per_seed"]] == [0, 1] and one["vs_real_only"]["auroc"]["seeds"] == [0, 1]
    assert "result" in done.stdout.lower() and summary["verdict"] in (out / "report.md").read_text()
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + one row per (arm, seed)
    again = in_process(capsys, *args)
    assert again.returncode == 0 and schedules(complete_trials(out)) == Counter({"0": 1, "1": 1})  # nothing retrained


def test_two_workers_on_one_storage_cover_the_grid_once(small_phantom, small_cache, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    command = [sys.executable, "-m", "synthaug", "sweep", "--data", str(small_phantom), "--synthetic",
               str(small_cache), "--out", str(out), "--ratios", "0,0.5,1,synthetic-only", *FAST]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read().decode()
    assert schedules(complete_trials(out)) == Counter({"0": 1, "0.5": 1, "1": 1, "synthetic-only": 1})


def test_two_caches_and_two_models_cover_the_grid_once_on_their_own_items(small_phantom, small_cache, tmp_path,
                                                                          capsys):
    guided = tmp_path / "guided"
    shutil.copytree(small_cache, guided)
    meta = json.loads((guided / "cache.json").read_text())
    meta["generator"]["class_guidance"] += 1.0  # a second source that differs in one setting (12 -> 13)
    (guided / "cache.json").write_text(json.dumps(meta))
    out = tmp_path / "grid"
    args = ["sweep", "--data", small_phantom, "--synthetic", f"{small_cache},{guided}", "--out", out,
            "--models", "tiny-cnn,resnet10", "--ratios", "0,1", "--schedules", "constant,pretrain:1", "--epochs", "2",
            "--seeds", "1", "--batch-size", "4", "--no-prune", *SHAPE]
    done = in_process(capsys, *args)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = sorted(summary["sources"])
    assert len(names) == 2 and all(n.startswith("class_guidance=") for n in names)
    arms = [f"{m}|{s}|{r}" for m in ("tiny-cnn", "resnet10") for s, r in
            [("", "0"), *[(n, r) for n in names for r in ("1", "pretrain:1")]]]
    assert complete_trials(out) == Counter(arms) and sorted(summary["per_arm"]) == sorted(arms)
    report = (out / "report.md").read_text()
    assert "## tiny-cnn" in report and "## resnet10" in report and (out / "arms_heatmap.png").is_file()
    assert "Holm" in report and "count-matched real control" in report and "CAS" in report

    from synthaug.apps.sweep.arms import Arm
    from synthaug.apps.sweep.objective import items_file

    train_ids = sorted(r["case_id"] for r in load_manifest(small_phantom).items("train"))
    for model in ("tiny-cnn", "resnet10"):
        seen = {key: json.loads(items_file(out, Arm.from_key(key), 0).read_text())
                for key in arms if key.startswith(model + "|")}
        real_only = seen[f"{model}||0"]
        assert real_only["real"] == train_ids and real_only["synthetic"] == []
        for name, folder in zip(names, (small_cache, guided)):  # names sort in the order of the guidance
            mixed, pretrained = seen[f"{model}|{name}|1"], seen[f"{model}|{name}|pretrain:1"]
            assert mixed["real"] == train_ids and mixed["synthetic"]
            assert all(path.startswith(str(folder)) for path in mixed["synthetic"] + pretrained["synthetic"])
            assert pretrained["real"] == train_ids and pretrained["synthetic"]  # epoch 0 synthetic, epoch 1 real
    before = complete_trials(out)
    assert in_process(capsys, *args).returncode == 0 and complete_trials(out) == before  # resumed: nothing retrained


def test_the_pruner_compares_arms_of_one_classifier_only():
    import optuna

    from synthaug.apps.sweep.study import PerModelMedianPruner

    def trial(model: str, value: float, done: bool = True, real_only: bool = False):
        state = optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.RUNNING
        return optuna.trial.create_trial(state=state, value=value if done else None, intermediate_values={0: value},
                                         user_attrs={"model": model, "real_only": real_only})

    class Study:
        def __init__(self, trials: list) -> None:
            self.trials = trials

        def get_trials(self, deepcopy: bool = False, states: tuple = ()) -> list:
            return [t for t in self.trials if not states or t.state in states]

    finished = Study([trial("a", 0.8), trial("a", 0.9), trial("b", 0.5), trial("b", 0.56)])
    pruner = PerModelMedianPruner(n_startup_trials=2)
    assert not pruner.prune(finished, trial("b", 0.6, done=False))  # above b's median, although below a's
    assert pruner.prune(finished, trial("b", 0.52, done=False))
    assert not pruner.prune(finished, trial("a", 0.1, done=False, real_only=True))  # the reference always completes
    assert not pruner.prune(Study(finished.trials[:1]), trial("a", 0.1, done=False))  # one finished trial of a: wait


def test_statistics_of_seeds():
    assert mean_ci([0.6, 0.7, 0.8])["mean"] == pytest.approx(0.7)
    ci = mean_ci([0.6, 0.7, 0.8])
    assert ci["low"] < 0.7 < ci["high"]
    assert mean_ci([0.5])["low"] is None and mean_ci([])["mean"] is None
    diff = paired_difference({0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.7, 1: 0.75, 2: 0.7})
    assert diff["mean"] == pytest.approx(0.1333, abs=1e-3) and diff["p"] < 0.05 and diff["seeds"] == [0, 1, 2]
    # Cohen's d_z by hand: differences 0.1, 0.15, 0.15 -> mean 0.1333, sd 0.02887
    assert diff["effect_size"] == pytest.approx(0.13333 / 0.028868, rel=1e-3)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.02, 0.04 (of 3 tests, one untested): x3, x2 (then monotone), x1
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    assert holm([0.01, 0.04, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_bad_input_is_one_clear_error(small_phantom, small_cache, tmp_path, capsys):
    base = ["sweep", "--data", small_phantom, "--synthetic", small_cache, "--out", tmp_path / "o", *SHAPE]
    for extra, match in ((["--model", "vgg99"], "unknown model"), (["--ratios", "0,-1"], "ratio '-1' is not a number >= 0"),
                         (["--models", "tiny-cnn,vgg99"], "--models: unknown model 'vgg99'"),
                         (["--schedules", "constant,sometimes"], "--schedules: unknown schedule 'sometimes'"),
                         (["--schedules", "pretrain:0"], "pretrain needs a whole number of epochs >= 1"),
                         (["--schedules", "pretrain:-3"], "whole number"), (["--ratios", "0,pretrain:2"], "is a schedule"),
                         (["--search", "tpe", "--models", "tiny-cnn,resnet10"], "one constant ratio for one classifier"),
                         (["--synthetic", f"{small_cache},{tmp_path}"], "neither a synthetic cache"),
                         (["--seeds", "0"], "seeds"), (["--ratios", "0,lots"], "'lots'"),
                         (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the study storage"),
                         (["--tune-lr"], "--search tpe"), (["--tune-epochs"], "--search tpe"),
                         (["--metric", "loss"], "higher is better"), (["--metric", "f2"], "unknown metric 'f2'"),
                         (["--epochs", "0"], "epochs"), (["--lr", "0"], "--lr: must be > 0"),
                         (["--set", "data.modalities=[t2w,adc]"], "the sequences it was trained on")):
        assert_one_line_error(in_process(capsys, *base, *extra), match)
        assert not (tmp_path / "o").exists(), extra  # nothing written
    os.symlink(small_phantom.parent / "images", tmp_path / "images")
    for split in ("test", "val"):
        missing = tmp_path / f"no_{split}.jsonl"
        missing.write_text("".join(line + "\n" for line in small_phantom.read_text().splitlines()
                                   if f'"split": "{split}"' not in line))
        done = in_process(capsys, "sweep", "--data", missing, "--synthetic", small_cache, "--out", tmp_path / "o2", *SHAPE)
        assert_one_line_error(done, f"no '{split}' cases")

    other_size = tmp_path / "other_size"
    shutil.copytree(small_cache, other_size)
    meta = json.loads((other_size / "cache.json").read_text())
    meta["shape"][-1], meta["data"]["image_shape"][-1] = 8, 8
    (other_size / "cache.json").write_text(json.dumps(meta))
    assert_one_line_error(in_process(capsys, *base, "--synthetic", f"{small_cache},{other_size}"),
                          str(other_size), "other data settings")

    leaky = tmp_path / "leaky"
    shutil.copytree(small_cache, leaky)
    meta = json.loads((leaky / "cache.json").read_text())
    val_case = next(json.loads(line)["case_id"] for line in small_phantom.read_text().splitlines()
                    if '"split": "val"' in line)
    meta["train_case_ids"].append(val_case)
    (leaky / "cache.json").write_text(json.dumps(meta))
    base_leaky = ["sweep", "--data", small_phantom, "--synthetic", leaky, "--out", tmp_path / "o3", *FAST]
    assert_one_line_error(in_process(capsys, *base_leaky, "--ratios", "0"), "validation/test case")
    assert in_process(capsys, *base_leaky, "--ratios", "0", "--allow-leakage").returncode == 0

    changed = in_process(capsys, *base_leaky, "--ratios", "0,1", "--allow-leakage")
    assert_one_line_error(changed, "another search space")


def test_a_bundle_trained_on_a_held_out_case_is_refused(small_phantom, small_bundle, tmp_path, capsys):
    rows = [json.loads(line) for line in small_phantom.read_text().splitlines()]
    moved = next(r for r in rows if r["split"] == "train")
    moved["split"] = "val"  # the bundle was trained on it
    for r in rows:
        r["image"] = str(small_phantom.parent / r["image"])
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = in_process(capsys, "sweep", "--data", leaky, "--synthetic", small_bundle, "--out", tmp_path / "o", *FAST)
    assert_one_line_error(done, "validation/test case")
    assert moved["case_id"] in done.stderr


def test_settings_check_refuses_an_empty_grid():
    from synthaug.apps.sweep import SweepSettings

    with pytest.raises(InputError, match="empty"):
        SweepSettings(ratios=[]).check()


def test_grid_labels_and_arm_keys_are_the_ones_studies_and_reports_already_hold():
    """Optuna grid values and summary.json keys are these strings: a resumed study must find its arms again."""
    from synthaug.apps.sweep import DEFAULT_GRID, SweepSettings
    from synthaug.apps.sweep.arms import Arm, arm_order
    from synthaug.apps.sweep.settings import ratio_label

    settings = SweepSettings(models=("tiny-cnn",), schedules=("constant", "decay", "pretrain:3"))
    settings.check()
    assert DEFAULT_GRID[-1] == "synthetic-only" and ratio_label(float("inf")) == "synthetic-only"
    assert settings.ratios == ("0", "0.25", "0.5", "1", "2", "4", "synthetic-only")
    arms = sorted(settings.arms(["cache"]), key=arm_order)
    assert [a.key for a in arms] == [
        "tiny-cnn||0", *(f"tiny-cnn|cache|{r}" for r in ("0.25", "0.5", "1", "2", "4", "synthetic-only")),
        *(f"tiny-cnn|cache|linear:{r}" for r in ("0.25", "0.5", "1", "2", "4")), "tiny-cnn|cache|pretrain:3"]
    roles = {a.schedule: a.role for a in arms}
    assert roles["0"].startswith("real only") and roles["synthetic-only"].startswith("synthetic only: CAS")
    assert roles["0.5"] == "real + synthetic at 0.5:1" and roles["pretrain:3"].startswith("pretrain on synthetic")
    assert Arm("tiny-cnn", "cache", "2").role == "real + synthetic at 2:1"


def test_tpe_search_on_a_log_range(small_phantom, small_cache, tmp_path, capsys):
    out = tmp_path / "tpe"
    done = in_process(capsys, "sweep", "--data", small_phantom, "--synthetic", small_cache, "--out", out,
                      "--search", "tpe", "--ratio-range", "0.2:2", "--trials", "2", *FAST[:-4], "--seeds", "1",
                      "--tune-lr", "--tune-epochs", *SHAPE)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["per_arm"]) == 2 and all(0.2 <= float(r["schedule"]) <= 2 for r in summary["per_arm"].values())
    for row in summary["per_arm"].values():  # the learning rate and epochs were searched too
        assert 1e-5 <= row["params"]["lr"] <= 1e-3 and row["params"]["epochs"] in (1, 2)
    assert "real-only (ratio 0) was not run" in summary["verdict"]


def test_the_arm_s_ratio_sets_its_training_items(small_phantom, small_cache, tmp_path):
    """The sweep's ratio is what changes between arms: the training set of each arm holds the real training
    cases and ratio x as many synthetic volumes (real only: none; synthetic only: no real)."""
    from synthaug.apps.sweep import SweepSettings
    from synthaug.apps.sweep.arms import Arm
    from synthaug.apps.sweep.inputs import prepare
    from synthaug.apps.sweep.objective import train_set

    settings = SweepSettings(ratios=(0, 0.25, 0.5, "synthetic-only"), models=("tiny-cnn",), seeds=1, epochs=1)
    settings.check()
    data = prepare(small_phantom, small_cache, tmp_path, settings)
    source, n_real = next(iter(data.sources)), len(data.real_train)
    seen = {}
    for arm in settings.arms([source]):
        train = train_set(arm, data, settings, seed=0, epochs=1)
        seen[arm.schedule] = {kind: sum(train.summary()[kind].values()) for kind in ("real", "synthetic")}
        assert len(train) == sum(seen[arm.schedule].values())
    assert seen["0"] == {"real": n_real, "synthetic": 0}
    for ratio in (0.25, 0.5):
        assert seen[str(ratio)]["real"] == n_real and abs(seen[str(ratio)]["synthetic"] - ratio * n_real) < 1
    assert seen["synthetic-only"]["real"] == 0 and seen["synthetic-only"]["synthetic"] > 0
    assert Arm("tiny-cnn", "", "0").is_real_only
