"""Does the phantom have a data-scarce regime? Real-only test AUROC and balanced accuracy of a classifier
(default: ``tiny-cnn``) against the number of real training cases, at one phantom difficulty.

    python benchmarks/bench_phantom_difficulty.py                       # difficulty from PhantomConfig
    python benchmarks/bench_phantom_difficulty.py --difficulty 0 --sizes 50 400 --seeds 0 1

Writes (once per difficulty, then reuses) a phantom under benchmarks/results/phantoms/ with enough
training cases for the largest size, preprocesses it with ``preprocessing_transforms(cfg.data)``, centre-
crops the prostate (``--crop``) and optionally resizes (``--image-size``). Each (size, seed) run trains on a
label-stratified subset of the train split (nested: the 50 cases contain the 25), selects its epoch on the
val split (AUROC), chooses a Youden threshold there, and is scored on the test split. Small subsets are
repeated within an epoch to ``--min-epoch-samples`` items (each draw augmented anew), so every run gets
a comparable number of optimiser steps. Prints a table, writes benchmarks/results/bench_phantom_difficulty_d*.json.
Target (issue 6): at ~50 cases clearly below the 400-case figure, neither chance nor perfect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


class Repeated:
    """A list of items repeated to at least ``min_len`` (index ``i`` -> item ``i % n``)."""

    def __init__(self, items: list[dict], min_len: int) -> None:
        self.items, self.length = items, max(len(items), min_len)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.items[i % len(self.items)]


def phantom_code_digest() -> str:
    """Short digest of the phantom's source files."""
    import synthaug.data

    source = Path(synthaug.data.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(source.glob("phantom*.py")) + [source / "reports.py"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def load_phantom(args: argparse.Namespace) -> tuple[dict[str, list[dict]], dict]:
    """Write (or reuse) the phantom and return its preprocessed, cropped items per split, plus configs."""
    import torch
    from monai.transforms import CenterSpatialCrop, Resize

    from synthaug.config import load_config
    from synthaug.data.manifest import load_manifest
    from synthaug.data.phantom import write_phantom_dataset
    from synthaug.data.transforms import preprocessing_transforms

    cfg = load_config(preset="tiny", overrides=args.set)
    phantom = cfg.phantom.model_copy(update={"seed": args.phantom_seed})
    if args.difficulty is not None:
        phantom.difficulty = args.difficulty
    phantom.n_cases = args.n_cases or math.ceil(max(args.sizes) / phantom.split_fractions[0]) + 1
    shape = "x".join(str(v) for v in cfg.data.image_shape)
    code = phantom_code_digest()  # a phantom written by older phantom code is not reused
    folder = RESULTS / "phantoms" / f"d{phantom.difficulty:g}_n{phantom.n_cases}_s{phantom.seed}_{shape}_{code}"
    info = folder / "phantom.json"
    same = info.exists() and all(json.loads(info.read_text()).get(key) == value.model_dump(mode="json")
                                 for key, value in (("phantom", phantom), ("data", cfg.data)))
    start = time.perf_counter()
    if not same:
        write_phantom_dataset(folder, cfg.data, phantom, overwrite=True)
    manifest = load_manifest(folder / "manifest.jsonl")
    preprocess = preprocessing_transforms(cfg.data)
    crop = CenterSpatialCrop(args.crop)
    resize = Resize(args.image_size, mode="area") if args.image_size else None
    splits = {}
    for split in ("train", "val", "test"):
        items = []
        for item in manifest.items(split):
            image = crop(preprocess(item)["image"])
            image = resize(image) if resize else image
            items.append({"image": torch.as_tensor(image.as_tensor()).clone(), "label": item["label"]})
        splits[split] = items
    print(f"phantom difficulty {phantom.difficulty:g}: {phantom.n_cases} cases "
          f"({'written' if not same else 'reused'}, loaded in {time.perf_counter() - start:.0f} s), image "
          f"{tuple(splits['train'][0]['image'].shape)}", flush=True)
    return splits, {"phantom": phantom.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json")}


def stratified_order(labels: list[int], seed: int) -> list[int]:
    """Indices shuffled within each label and interleaved, so every prefix keeps the label ratio."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    position = np.zeros(len(labels))
    for label in (0, 1):
        members = np.flatnonzero(labels_arr == label)
        position[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / max(len(members), 1)
    return np.argsort(position, kind="stable").tolist()


def run_one(splits: dict[str, list[dict]], size: int, seed: int, args: argparse.Namespace) -> dict:
    """Train on ``size`` real cases with ``seed``; score the val-selected model on the test split."""
    from classifiers import FitConfig, build_model, evaluate, fit

    train = splits["train"]
    subset = [train[i] for i in stratified_order([x["label"] for x in train], seed)[:size]]
    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                       seed=seed, threshold_rule="youden", amp=args.amp, device="cpu")
    model = build_model(args.model, in_channels=1, num_classes=2, seed=seed)
    result = fit(model, Repeated(subset, args.min_epoch_samples), splits["val"], config, progress=False)
    test = evaluate(model, splits["test"], config, threshold=result.threshold)
    return {"size": size, "seed": seed, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "val_auroc": result.best_metric, "threshold": result.threshold,
            "test_auroc": test.metrics["auroc"], "test_balanced_accuracy": test.metrics["balanced_accuracy"],
            "seconds": round(result.seconds, 1)}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        group = [r for r in rows if r["size"] == size]
        entry = {"size": size, "runs": len(group)}
        for key in ("val_auroc", "test_auroc", "test_balanced_accuracy"):
            values = np.array([r[key] for r in group if r[key] is not None], dtype=float)
            entry[key] = {"mean": float(values.mean()) if values.size else None,
                          "sd": float(values.std(ddof=1)) if values.size > 1 else None}
        entry["seconds"] = float(np.mean([r["seconds"] for r in group]))
        out.append(entry)
    return out


def print_table(summary: list[dict], difficulty: float, model: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(stat: dict) -> str:
        if stat["mean"] is None:
            return "undefined"
        return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat["sd"] is not None else "")

    table = Table(title=f"real-only {model} on the phantom, difficulty {difficulty:g} (mean ± sd over seeds)")
    for col in ("train cases", "runs", "val AUROC", "test AUROC", "test balanced acc.", "s/run"):
        table.add_column(col, justify="right")
    for e in summary:
        table.add_row(str(e["size"]), str(e["runs"]), fmt(e["val_auroc"]), fmt(e["test_auroc"]),
                      fmt(e["test_balanced_accuracy"]), f"{e['seconds']:.0f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--difficulty", type=float, default=None, help="default: PhantomConfig's")
    parser.add_argument("--phantom-seed", type=int, default=0)
    parser.add_argument("--n-cases", type=int, default=None,
                        help="phantom size; default: enough training cases for the largest --sizes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. the demo's size: --set 'data.image_shape=[48,48,32]' "
                             "--set 'data.spacing=[2,2,3]' --crop 32 32 16")
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=None, help="early stopping (epochs); default: off")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="1e-3 for a small model from scratch")
    parser.add_argument("--min-epoch-samples", type=int, default=200)
    parser.add_argument("--crop", type=int, nargs=3, default=[40, 40, 20], help="centre crop (X Y Z) voxels")
    parser.add_argument("--image-size", type=int, nargs=3, default=None, help="resize after the crop")
    parser.add_argument("--amp", choices=["auto", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path; default benchmarks/results/bench_phantom_difficulty_d<difficulty>.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    splits, configs = load_phantom(args)
    difficulty = configs["phantom"]["difficulty"]
    rows = []
    for size in sorted(args.sizes):
        for seed in args.seeds:
            rows.append(run_one(splits, size, seed, args))
            r = rows[-1]
            print(f"  n={size:4d} seed={seed}: test AUROC {r['test_auroc']:.3f}, balanced acc "
                  f"{r['test_balanced_accuracy']:.3f} (best epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)
    summary = summarise(rows)
    print_table(summary, difficulty, args.model)
    out = args.out or RESULTS / f"bench_phantom_difficulty_d{difficulty:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "difficulty": difficulty, **configs,
        "split_sizes": {k: len(v) for k, v in splits.items()}, "summary": summary, "runs": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__},
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
