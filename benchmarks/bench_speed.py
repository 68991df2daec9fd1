"""CPU speed of this tree against a git revision, side by side: VAE and LDM training steps, generation
volumes/s (the default sampler, decoding included), a classifier epoch and the whole `synthaug demo --quick`.

    python benchmarks/bench_speed.py --baseline a1f4c45            # the commit before the speed work
    python benchmarks/bench_speed.py --baseline HEAD~3 --reps 3 --skip-demo

The revision is checked out into a temporary `git worktree`; both trees run with this environment's
Python and packages (each as its own process, its `synthaug` first on PYTHONPATH). Every measurement
alternates between the trees (A B, then B A, ...) so that machine noise hits both alike; each number is
the median over repetitions. The training steps are the real `train_generator` path on the demo's
geometry (48x48x32, tiny preset, flow, the demo's VAE patches), timed step by step from its progress
callback; generation uses the bundle that run wrote, with the bundle's default sampler, steps and batch
size, after one warm-up batch; the classifier epoch is the median epoch of a `classifiers.fit` with the demo
sweep's model, crop, batch and lr on the phantom's train split (240 items an epoch; loading, augmentation and
validation included). Prints a table with ratios (baseline / this tree: > 1 is faster here) and writes
benchmarks/results/bench_speed.json. Needs an idle machine: the script prints the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def measure(tree: str, phantom: str, work: str, steps: int, warmup: int, volumes: int) -> dict:
    """Runs in a child process whose PYTHONPATH starts with ``tree``: train briefly, then generate."""
    import torch

    import synthaug
    from synthaug.config import load_config
    from synthaug.generate import CCELLAGenerator
    from synthaug.ldm.train import train_generator

    try:
        from synthaug.apps.demo.run import DemoPlan
    except ImportError:  # a revision before the apps/ layout
        from synthaug.demo import DemoPlan
    here = Path(synthaug.__file__).resolve()
    if not here.is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"imported synthaug from {here}, not from the tree {tree}")
    plan = DemoPlan()
    overrides = [o for o in plan.train_overrides() if o.split("=")[0] not in ("autoencoder.steps", "train.steps")]
    cfg = load_config(preset="tiny", overrides=[*overrides, f"autoencoder.steps={warmup + steps}",
                                                f"train.steps={warmup + steps}", "train.log_every=100000"])
    stamps: dict[str, list[float]] = {"autoencoder": [], "ldm": []}

    def progress(stage: str, done: int, total: int, logs: dict) -> None:
        if stage in stamps:
            stamps[stage].append(time.perf_counter())

    bundle = Path(work) / "bundle"
    train_generator(Path(phantom) / "manifest.jsonl", bundle, cfg, work_dir=Path(work) / "bundle.work",
                    overwrite=True, progress=progress)
    step_s = {stage: statistics.median(b - a for a, b in zip(t[warmup:], t[warmup + 1:])) for stage, t in stamps.items()}
    generator = CCELLAGenerator.from_bundle(bundle)
    generator.generate([0, 1] * (generator.batch_size // 2 or 1))  # warm-up batch
    labels = [i % 2 for i in range(volumes)]
    start = time.perf_counter()
    generator.generate(labels)
    seconds = time.perf_counter() - start
    return {"vae_step_s": step_s["autoencoder"], "ldm_step_s": step_s["ldm"], "generation_vol_s": volumes / seconds,
            "classifier_epoch_s": _classifier_epoch_s(Path(phantom) / "manifest.jsonl", cfg.data, plan),
            "sampler": generator.settings(), "batch_size": generator.batch_size, "threads": torch.get_num_threads()}


def _classifier_epoch_s(manifest_path: Path, data, plan, epochs: int = 8, samples: int = 240) -> float:
    """The median epoch of a classifier fit with the demo sweep's settings (its model, crop, batch and lr on the
    phantom's train split, ``samples`` items an epoch, validation on val), after two warm-up epochs: seconds,
    loading, augmentation and the optimiser included."""
    from monai.data import Dataset

    from classifiers import FitConfig, build_model, fit
    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore

    manifest = load_manifest(manifest_path)
    load = VolumeStore(data, plan.crop)
    net = build_model(plan.model, in_channels=len(data.modalities), num_classes=2, seed=0)
    stamps: list[float] = []
    fit(net, Dataset(manifest.items("train"), transform=load), Dataset(manifest.items("val"), transform=load),
        FitConfig(epochs=epochs, seed=0, patience=None, device="cpu", lr=plan.lr, batch_size=plan.batch_size,
                  samples_per_epoch=samples), on_epoch=lambda epoch, val: stamps.append(time.perf_counter()),
        progress=False)
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))


def _run_child(tree: Path, args: argparse.Namespace, phantom: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    call = json.dumps([str(tree), str(phantom), str(work), args.steps, args.warmup, args.volumes])
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_speed; "
            f"print(json.dumps(bench_speed.measure(*json.loads({call!r}))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        _fail(f"the measurement failed in {tree} ({(done.stderr.strip().splitlines() or ['no output'])[-1]}); "
              "does that revision build and run `synthaug train`?")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fail(message: str) -> None:
    print(f"bench_speed: {message}", file=sys.stderr)
    raise SystemExit(2)


def _run_demo(tree: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "synthaug", "demo", "--quick", "--out", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        _fail(f"`synthaug demo --quick` failed in {tree} ({(done.stderr.strip().splitlines() or ['no output'])[-1]})")
    return time.perf_counter() - start


def _checkout(revision: str, folder: Path) -> str:
    """``revision`` checked out (detached) into ``folder``; returns its commit. Exits 2 when it does not exist."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        _fail(f"--baseline {revision!r} is not a commit of {ROOT}; give a hash, tag or e.g. HEAD~1")
    commit = found.stdout.strip()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(folder), commit], check=True,
                   capture_output=True)
    if not (folder / "synthaug" / "__init__.py").is_file():
        _fail(f"--baseline {revision!r} has no synthaug package")
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (hash, tag, HEAD~N)")
    parser.add_argument("--reps", type=int, default=2, help="alternating repetitions per tree (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--volumes", type=int, default=32, help="volumes generated per timing (default 32)")
    parser.add_argument("--skip-demo", action="store_true", help="do not time `synthaug demo --quick`")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_speed.json")
    args = parser.parse_args()

    from _record import write_record
    from rich.console import Console
    from rich.table import Table

    console = Console()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        commit = _checkout(args.baseline, baseline)
        try:
            phantom = tmp / "phantom"
            subprocess.run([sys.executable, "-m", "synthaug", "phantom", "--out", str(phantom), "--n", "40"], check=True,
                           capture_output=True, cwd=ROOT)
            trees = {"baseline": baseline, "this tree": ROOT}
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for rep in range(args.reps):
                for name in (list(trees) if rep % 2 == 0 else list(trees)[::-1]):
                    row = _run_child(trees[name], args, phantom, tmp / f"{name.replace(' ', '_')}-{rep}")
                    if not args.skip_demo:
                        row["demo_quick_s"] = _run_demo(trees[name], tmp / f"demo-{name.replace(' ', '_')}-{rep}")
                    runs[name].append(row)
                    console.print(f"rep {rep}, {name}: {row}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True)
    metrics = [("vae_step_s", "VAE train step (s)", False), ("ldm_step_s", "LDM train step (s)", False),
               ("generation_vol_s", "generation (volumes/s)", True),
               ("classifier_epoch_s", "classifier epoch, 240 items, the demo sweep's settings (s)", False)]
    if not args.skip_demo:
        metrics.append(("demo_quick_s", "`synthaug demo --quick` (s)", False))
    summary = {}
    table = Table(title=f"bench_speed: this tree vs {args.baseline} ({commit[:10]}), median of {args.reps}, "
                        f"{os.cpu_count()} cores, load before {load_before:.2f}")
    for col in ("measure", "baseline", "this tree", "speed-up"):
        table.add_column(col, justify="right")
    for key, name, higher_is_better in metrics:
        base = statistics.median(r[key] for r in runs["baseline"])
        ours = statistics.median(r[key] for r in runs["this tree"])
        speedup = ours / base if higher_is_better else base / ours
        summary[key] = {"baseline": base, "this_tree": ours, "speedup": speedup}
        table.add_row(name, f"{base:.3f}", f"{ours:.3f}", f"{speedup:.2f}x")
    console.print(table)
    write_record(args.out, {"baseline": args.baseline, "baseline_commit": commit, "summary": summary, "runs": runs},
                 args, load_before)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
