"""Does the autoencoder keep the class? Link (b) of the class-signal chain, per autoencoder setting.

    python benchmarks/bench_autoencoder.py --steps 120                # every variant at the demo's size
    python benchmarks/bench_autoencoder.py --variants "patches 32x32x16, lr 1e-3 (the tiny preset)" --steps 960 1920

The phantoms in ``--work`` are reused when present: delete the folder after changing the phantom.

Each variant (a set of ``autoencoder.*`` overrides) trains the autoencoder as ``synthaug train`` does on the
train split of the demo's phantom (48x48x32 at 2x2x3 mm) for each of ``--steps`` and is scored on the test
splits of both phantom draws (112 cases):
- the judge's AUROC on the real test volumes (ceiling) and on their round trip (encode, decode); the judge is
  a tiny-cnn trained on a separate phantom draw (seed 1, ``--judge-cases`` cases), never on this phantom;
- mean L1 over the whole volume and inside the lesions (the phantom's ground truth: a positive case minus
  its lesion-free twin), and the lesion contrast kept: the lesion's drop below its 2-voxel rim in the round
  trip over the same drop in the real volume (1 = kept, 0 = erased);
- training seconds (one process; state the machine's load beside any number you quote).
Prints a table, writes benchmarks/results/bench_autoencoder.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
# Every variant names all the settings it differs by, so a change of the tiny preset does not rename a row.
WHOLE = ["autoencoder.patch_size=null"]
PATCHES = ["autoencoder.patch_size=[32,32,16]"]
VARIANTS: dict[str, list[str]] = {
    "whole volumes, lr 1e-4 (the reference)": [*WHOLE, "autoencoder.lr=1e-4"],
    "whole volumes, lr 1e-3": [*WHOLE, "autoencoder.lr=1e-3"],
    "whole volumes, lr 1e-3 + edge 1": [*WHOLE, "autoencoder.lr=1e-3", "autoencoder.edge_weight=1.0"],
    "whole volumes, lr 1e-3 + 8 latent ch.": [*WHOLE, "autoencoder.lr=1e-3", "autoencoder.latent_channels=8"],
    "patches 32x32x16, lr 1e-3 (the tiny preset)": [*PATCHES, "autoencoder.lr=1e-3"],
    "patches, lr 1e-3 + edge 1": [*PATCHES, "autoencoder.lr=1e-3", "autoencoder.edge_weight=1.0"],
    "patches, lr 2e-3 + edge 1": [*PATCHES, "autoencoder.lr=2e-3", "autoencoder.edge_weight=1.0"],
    "patches, lr 1e-3 + 8 latent ch.": [*PATCHES, "autoencoder.lr=1e-3", "autoencoder.latent_channels=8"],
    "patches, lr 1e-3, 2x downsampling": [*PATCHES, "autoencoder.lr=1e-3", "autoencoder.channels=[16,32]"],
    "patches, batch 8, lr 1e-3 + edge 1": [*PATCHES, "autoencoder.lr=1e-3", "autoencoder.edge_weight=1.0",
                                           "autoencoder.batch_size=8"],
}


def lesion_masks(items: list[dict], cfg) -> dict[str, np.ndarray]:
    """Image path -> boolean lesion mask (X, Y, Z) of every positive phantom case: where it differs from its twin."""
    from synthaug.data.phantom import make_phantom_case

    masks = {}
    for item in items:
        if int(item["label"]) != 1:
            continue
        index = int(str(item["case_id"]).rsplit("_", 1)[-1])
        pos = make_phantom_case(index, cfg.data, cfg.phantom, True).array
        neg = make_phantom_case(index, cfg.data, cfg.phantom, False).array
        diff = np.abs(pos.astype(np.float64) - neg)
        masks[str(item["image"])] = diff > 0.25 * diff.max()
    return masks


def lesion_scores(real, recon, masks: list[np.ndarray]) -> dict[str, float]:
    """Mean L1 inside the lesions and the fraction of each lesion's contrast to its rim that the round trip keeps."""
    from scipy.ndimage import binary_dilation

    l1, kept = [], []
    for x, y, mask in zip(real, recon, masks):
        x, y = x[0].numpy(), y[0].numpy()
        rim = binary_dilation(mask, iterations=2) & ~mask
        l1.append(float(np.abs(x - y)[mask].mean()))
        drop = x[rim].mean() - x[mask].mean()
        kept.append(float((y[rim].mean() - y[mask].mean()) / drop) if drop > 1e-3 else float("nan"))
    return {"lesion_l1": float(np.mean(l1)), "lesion_contrast_kept": float(np.nanmean(kept))}


def main() -> None:  # noqa: PLR0915 - one straight script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, nargs="+", default=[120])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    parser.add_argument("--judge-cases", type=int, default=400)
    parser.add_argument("--judge-epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=RESULTS / "autoencoder_work")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_autoencoder.json")
    args = parser.parse_args()

    import torch

    from synthaug.apps.demo.run import DemoPlan
    from synthaug.apps.evaluate import train_classifier
    from synthaug.config import load_config
    from synthaug.data.manifest import load_manifest
    from synthaug.data.phantom import write_phantom_dataset
    from synthaug.data.volume_store import VolumeStore
    from synthaug.ldm.autoencoder import build_autoencoder, decode_latents, encode_volumes, train_autoencoder
    from synthaug.metrics.class_signal import score_link

    plan = DemoPlan()
    base = [*plan.train_overrides(), *args.set]
    cfg = load_config(preset="tiny", overrides=base)
    manifest_path = args.work / "phantom" / "manifest.jsonl"
    if not manifest_path.is_file():
        write_phantom_dataset(args.work / "phantom", cfg.data, cfg.phantom, overwrite=True)
    judge_cfg = load_config(preset="tiny", overrides=[*base, f"phantom.n_cases={args.judge_cases}", "phantom.seed=1"])
    judge_path = args.work / "judge_phantom" / "manifest.jsonl"
    if not judge_path.is_file():
        write_phantom_dataset(args.work / "judge_phantom", judge_cfg.data, judge_cfg.phantom, overwrite=True)
    manifest, judge_manifest = load_manifest(manifest_path), load_manifest(judge_path)
    t = time.perf_counter()
    judge = train_classifier(judge_manifest.items("train"), judge_manifest.items("val"), cfg.data, "tiny-cnn",
                             args.judge_epochs, 0, plan.crop)
    print(f"judge trained in {time.perf_counter() - t:.0f} s (weights {judge.weights_sha256[:12]})", flush=True)
    load = VolumeStore(cfg.data)
    train = [load(item)["image"] for item in manifest.items("train")]
    # scored on both test splits (112 cases): neither the autoencoder nor the judge has seen one of them
    test_items = manifest.items("test") + judge_manifest.items("test")
    test = torch.stack([load(item)["image"] for item in test_items])
    labels = [int(item["label"]) for item in test_items]
    masks = {**lesion_masks(manifest.items("test"), cfg), **lesion_masks(judge_manifest.items("test"), judge_cfg)}
    positive = [i for i, item in enumerate(test_items) if str(item["image"]) in masks]
    ceiling = score_link("ceiling", "real test volumes", "judge", labels, judge(test), n_boot=1000)

    rows = []
    for name in args.variants:
        for steps in args.steps:
            vcfg = load_config(preset="tiny", overrides=[*base, *VARIANTS[name], f"autoencoder.steps={steps}"])
            model = build_autoencoder(vcfg.autoencoder, seed=0)
            t = time.perf_counter()
            history = train_autoencoder(model, train, vcfg.autoencoder, seed=0)
            seconds = time.perf_counter() - t
            with torch.no_grad():
                recon = decode_latents(model, encode_volumes(model, list(test)), batch_size=8).clamp(0, 1)
            link = score_link("autoencoder", name, "judge", labels, judge(recon), n_boot=1000)
            row = {"variant": name, "overrides": VARIANTS[name], "steps": steps, "train_s": round(seconds, 1),
                   "final_train_l1": history[-1]["l1"], "test_l1": float((recon - test).abs().mean()),
                   **lesion_scores(test[positive], recon[positive], [masks[str(test_items[i]["image"])] for i in positive]),
                   "auroc": link.auroc, "balanced_accuracy": link.balanced_accuracy,
                   "of_ceiling": (link.auroc["estimate"] / ceiling.auroc["estimate"])}
            rows.append(row)
            print(f"{name:44s} {steps:5d} steps: {seconds:5.0f} s, L1 {row['test_l1']:.4f}, lesion L1 "
                  f"{row['lesion_l1']:.4f}, contrast kept {row['lesion_contrast_kept']:.2f}, judge AUROC "
                  f"{link.auroc['estimate']:.3f} ({row['of_ceiling']:.2f} of the ceiling)", flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"autoencoder round trip on {len(test_items)} test cases; judge ceiling AUROC "
                        f"{ceiling.auroc['estimate']:.3f} [{ceiling.auroc['low']:.3f}, {ceiling.auroc['high']:.3f}]")
    for col in ("variant", "steps", "train s", "test L1", "lesion L1", "contrast kept", "judge AUROC [95% CI]",
                "of ceiling"):
        table.add_column(col, justify="right")
    for r in rows:
        a = r["auroc"]
        table.add_row(r["variant"], str(r["steps"]), f"{r['train_s']:.0f}", f"{r['test_l1']:.4f}",
                      f"{r['lesion_l1']:.4f}", f"{r['lesion_contrast_kept']:.2f}",
                      f"{a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]", f"{r['of_ceiling']:.2f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "plan": dataclasses.asdict(plan), "overrides": base,
        "judge": f"tiny-cnn seed 0, {len(judge_manifest.split('train'))} train cases of phantom seed 1, "
                 f"{args.judge_epochs} epochs, crop {list(plan.crop)}",
        "ceiling": {"auroc": ceiling.auroc, "balanced_accuracy": ceiling.balanced_accuracy},
        "rows": rows, "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_at_end": os.getloadavg()[0]}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
