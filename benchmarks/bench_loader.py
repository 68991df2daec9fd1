"""DataLoader throughput: a plain MONAI Dataset of real phantom NIfTI items vs SyntheticMixDataset
(ratio 1 over half as many real items plus a cache), for each cache file format; and pregeneration
speed (volumes/s) on this machine.

    python benchmarks/bench_loader.py --bundle benchmarks/results/sampling/bundle_eps \
        --data benchmarks/results/sampling/phantom/manifest.jsonl

Both datasets go through the same MONAI transform (LoadImaged, EnsureChannelFirstd, percentile
scaling, EnsureTyped), batch 4, 2 workers; items/s is the median over repeated full passes. Prints a
table and writes benchmarks/results/bench_loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def transform():
    import torch
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityRangePercentilesd

    keys = ["image"]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                    ScaleIntensityRangePercentilesd(keys, lower=0, upper=99.5, b_min=0, b_max=1, clip=True),
                    EnsureTyped(keys, dtype=torch.float32)])


def throughput(dataset, workers: int, batch_size: int, repeats: int) -> list[float]:
    from monai.data import DataLoader

    rates = []
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        start = time.perf_counter()
        seen = sum(len(batch["label"]) for batch in loader)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="trained bundle (tiny preset)")
    parser.add_argument("--data", type=Path, required=True, help="phantom manifest whose images the bundle matches")
    parser.add_argument("--n", type=int, default=64, help="items per pass (default 64)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default="nifti-gz,nifti")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps for pregeneration (dpm++)")
    parser.add_argument("--cache-root", type=Path, help="where the caches go (default: a temporary folder)")
    args = parser.parse_args()

    import torch
    from monai.data import Dataset
    from rich.console import Console
    from rich.table import Table

    from synthaug.data.manifest import load_manifest
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix import SyntheticCache, SyntheticMixDataset

    real = [i for i in load_manifest(args.data).items() if i["split"] == "train"][: args.n]
    if len(real) < args.n:
        raise SystemExit(f"the manifest has {len(real)} training items, fewer than --n {args.n}")
    root = args.cache_root or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    generator = CCELLAGenerator.from_bundle(args.bundle, sampler="dpm++", steps=args.steps, batch_size=4)
    rows, caches = [], {}
    pregeneration = {}
    for fmt in args.formats.split(","):
        cache = SyntheticCache.create(root / fmt, generator, file_format=fmt)
        start = time.perf_counter()
        made = cache.pregenerate(generator, n=args.n // 2, batch_size=4)
        seconds = time.perf_counter() - start
        if made:
            pregeneration[fmt] = {"volumes": made, "seconds": seconds, "volumes_per_s": made / seconds}
        caches[fmt] = cache
    size = {fmt: sum(f.stat().st_size for f in (c.path / "volumes").iterdir()) / len(c) for fmt, c in caches.items()}

    tf = transform()
    plain = throughput(Dataset(real, transform=tf), args.workers, args.batch_size, args.repeats)
    rows.append({"dataset": "MONAI Dataset, real only", "items": len(real), "items_per_s": statistics.median(plain),
                 "all": plain, "relative": 1.0})
    for fmt, cache in caches.items():
        mix = SyntheticMixDataset(real[: args.n // 2], cache, ratio=1.0, transform=tf)
        rates = throughput(mix, args.workers, args.batch_size, args.repeats)
        rows.append({"dataset": f"SyntheticMixDataset ratio 1, cache {fmt}", "items": len(mix),
                     "items_per_s": statistics.median(rates), "all": rates,
                     "relative": statistics.median(rates) / statistics.median(plain),
                     "bytes_per_volume": size[fmt]})

    table = Table(title=f"DataLoader throughput ({args.workers} workers, batch {args.batch_size}, "
                        f"median of {args.repeats} passes)")
    for col in ("dataset", "items", "items/s", "vs real-only", "bytes/synthetic volume"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], str(r["items"]), f"{r['items_per_s']:.1f}", f"{r['relative']:.2f}x",
                      f"{r['bytes_per_volume'] / 1024:.0f} KiB" if "bytes_per_volume" in r else "-")
    console = Console(width=max(Console().width, 160))
    console.print(table)
    for fmt, p in pregeneration.items():
        console.print(f"pregeneration ({fmt}, dpm++ {args.steps} steps, batch 4): {p['volumes']} volumes in "
                      f"{p['seconds']:.1f} s = {p['volumes_per_s']:.2f} volumes/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_loader.json"
    out.write_text(json.dumps({"rows": rows, "pregeneration": pregeneration, "machine": platform.platform(),
                               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
