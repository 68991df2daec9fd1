"""Data-parallel LDM training: step time and throughput with 1 vs N processes (torchrun, gloo on CPU or
NCCL on GPU) at a fixed global batch.

    python benchmarks/bench_ddp.py                      # tiny preset, CPU, 1 vs 2 processes
    python benchmarks/bench_ddp.py --preset paper --device cuda --nproc 1,2 --steps 10   # on GPUs

On 2 CPU cores expect little or no gain (each process gets one core, and gloo all-reduces the gradients);
the point here is that the distributed path runs and what it costs. Prints a table and writes
benchmarks/results/bench_ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def worker(args: argparse.Namespace) -> None:
    """Runs in every process: time ``steps`` LDM steps (after ``warmup``) on random latents and text."""
    import resource
    from types import SimpleNamespace

    import torch

    from synthaug.config import load_config
    from synthaug.distributed import Dist
    from synthaug.ldm.autoencoder import downsample_factor
    from synthaug.ldm.train import LDMTrainer

    dist = Dist.from_env(args.device)
    device = dist.device(args.device)
    cfg = load_config(preset=args.preset, overrides=[f"train.batch_size={args.batch}", "train.ema_decay=0"])
    g = torch.Generator().manual_seed(0)
    n, text_dim, tokens = 32, 384, cfg.text.max_tokens
    latent = [s // downsample_factor(cfg) for s in cfg.data.image_shape]
    latents = torch.randn((n, cfg.autoencoder.latent_channels, *latent), generator=g)
    text = SimpleNamespace(features=torch.randn((n, tokens, text_dim), generator=g),
                           mask=torch.ones(n, tokens, dtype=torch.bool), isnull=torch.zeros(n, dtype=torch.bool))
    null = SimpleNamespace(features=torch.zeros(1, tokens, text_dim), mask=torch.ones(1, tokens, dtype=torch.bool))
    with tempfile.TemporaryDirectory() as work:
        trainer = LDMTrainer(cfg, latents, torch.arange(n) % 2, text, null, device, "bench", Path(work), dist)
        for _ in range(args.warmup):
            trainer.train_step()
        times = []
        for _ in range(args.steps):
            dist.barrier()
            start = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    if dist.is_main:
        times.sort()
        peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        Path(args.result).write_text(json.dumps({"median_s": times[len(times) // 2], "peak_gib": peak,
                                                 "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", default="1,2", help="process counts to compare")
    parser.add_argument("--batch", type=int, default=4, help="global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    cores = os.cpu_count() or 1
    for nproc in (int(v) for v in args.nproc.split(",")):
        result = Path(tempfile.mkstemp(suffix=".json")[1])
        tail = [__file__, "--worker", "--result", str(result), "--preset", args.preset, "--device", args.device,
                "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command = [sys.executable, *tail] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *tail]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
        subprocess.run(command, check=True, env=env)
        row = {"processes": nproc, "threads_per_process": max(1, cores // nproc), **json.loads(result.read_text())}
        row["samples_per_s"] = args.batch / row["median_s"]
        rows.append(row)
    table = Table(title=f"LDM training, {args.preset} preset, global batch {args.batch}, {args.device}")
    for col in ("processes", "threads each", "median s/step", "samples/s", "speed-up", "peak memory (GiB)"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["processes"]), str(r["threads_per_process"]), f"{r['median_s']:.3f}",
                      f"{r['samples_per_s']:.1f}", f"{rows[0]['median_s'] / r['median_s']:.2f}x", f"{r['peak_gib']:.2f}")
    Console(width=max(Console().width, 120)).print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_ddp.json"
    out.write_text(json.dumps({"rows": rows, "preset": args.preset, "device": args.device, "batch": args.batch,
                               "machine": platform.platform(), "cpus": cores, "date": time.strftime("%Y-%m-%d")},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
