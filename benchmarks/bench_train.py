"""Training cost at the tiny preset: VAE and LDM step time and peak RSS (fp32 vs bf16 autocast), and
the wall time of `synthaug train --preset tiny` on the 200-case phantom.

    python benchmarks/bench_train.py                 # step times only (~2 min)
    python benchmarks/bench_train.py --full          # plus the whole training run (~10-15 min on 2 cores)
    python benchmarks/bench_train.py --set autoencoder.channels=[16,32] --kinds ldm   # another model's step

Each measurement runs in its own process so that its peak RSS is its own. Prints a table and writes
benchmarks/results/bench_train.json. Timings need a quiet machine: other processes on the same cores
slow torch's threads down far more than their share (spin-waiting), so the script reports the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _step_times(kind: str, precision: str, steps: int, warmup: int, overrides: tuple[str, ...] = ()) -> dict:
    """Runs inside a child process: time `steps` optimiser steps of the tiny VAE or LDM (with ``overrides``)."""
    import torch

    from synthaug.config import load_config
    from synthaug.ldm.autoencoder import autoencoder_loss, build_autoencoder, downsample_factor
    from synthaug.ldm.model import CCELLALDM, joint_loss

    cfg = load_config(preset="tiny", overrides=list(overrides))
    batch = cfg.autoencoder.batch_size if kind == "vae" else cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else None
    if kind == "vae":
        model = build_autoencoder(cfg.autoencoder, seed=0)
        x = torch.rand((batch, 1, *cfg.data.image_shape), generator=g)

        def loss_fn():
            z_mu, z_sigma = model.encode(x)
            recon = model.decode(z_mu + z_sigma * torch.randn(z_mu.shape, generator=g))
            return autoencoder_loss(recon, x, z_mu, z_sigma, cfg.autoencoder)[0]
    else:
        model = CCELLALDM.from_config(cfg, text_dim=384)
        latent = [s // downsample_factor(cfg.autoencoder) for s in cfg.data.image_shape]
        x = torch.randn((batch, cfg.autoencoder.latent_channels, *latent), generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        text = torch.randn((batch, cfg.text.max_tokens, 384), generator=g)
        mask = torch.ones(batch, cfg.text.max_tokens, dtype=torch.bool)
        spacing = torch.tensor([cfg.data.spacing] * batch)
        labels, isnull = torch.tensor([0, 1] * (batch // 2)), torch.zeros(batch, dtype=torch.bool)

        def loss_fn():
            pred, logits = model(x, t, text, mask, spacing)
            return joint_loss(pred, x, logits, labels, isnull, cfg.loss)[0]

    # fused, as the VAE and LDM trainers step it (rows recorded before 2026-12-07 used the per-tensor loop)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return {"kind": kind, "precision": precision, "batch": batch, "steps": steps, "latent": latent if kind == "ldm" else None,
            "median_s": times[len(times) // 2], "min_s": times[0],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _child(kind: str, precision: str, steps: int, warmup: int, overrides: tuple[str, ...] = ()) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train; "
            f"print(json.dumps(bench_train._step_times({kind!r}, {precision!r}, {steps}, {warmup}, {overrides!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _full_run(workdir: Path) -> dict:
    exe = [sys.executable, "-m", "synthaug"]
    start = time.perf_counter()
    subprocess.run([*exe, "phantom", "--out", str(workdir / "phantom"), "--n", "200"], check=True, capture_output=True)
    phantom_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*exe, "train", "--data", str(workdir / "phantom" / "manifest.jsonl"), "--out",
                    str(workdir / "bundle"), "--preset", "tiny"], check=True, capture_output=True)
    train_s = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"phantom_200_s": phantom_s, "train_tiny_s": train_s, "train_peak_rss_gib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time `synthaug train --preset tiny` (slow)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override over the tiny preset for every step row (not for --full)")
    parser.add_argument("--kinds", nargs="+", default=["vae", "ldm"], choices=["vae", "ldm"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_train.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    load_before = os.getloadavg()[0]
    overrides = tuple(args.set)
    rows = [_child(kind, precision, args.steps, args.warmup, overrides)
            for kind in args.kinds for precision in args.precisions]
    table = Table(title=f"Tiny-preset training step (batch 4){' with ' + ' '.join(overrides) if overrides else ''}, "
                        f"{os.cpu_count()} cores, load {load_before:.1f}")
    for col in ("model", "precision", "params (M)", "median s/step", "min s/step", "peak RSS (GiB)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["kind"], r["precision"], f"{r['params_m']:.2f}", f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                      f"{r['peak_rss_gib']:.2f}")
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "load_before": load_before, "overrides": list(overrides), "steps": rows}
    console = Console()
    console.print(table)
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            full = _full_run(Path(tmp))
        result["full"] = full
        console.print(f"phantom 200 cases: {full['phantom_200_s']:.1f} s; `synthaug train --preset tiny`: "
                      f"{full['train_tiny_s'] / 60:.1f} min, peak RSS {full['train_peak_rss_gib']:.2f} GiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
