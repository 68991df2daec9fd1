"""Samplers: steps vs time vs quality on tiny-preset bundles trained on the phantom.

    python benchmarks/bench_sampling.py --eps-bundle benchmarks/results/sampling/bundle_eps \
        --flow-bundle benchmarks/results/sampling/bundle_flow --data benchmarks/results/sampling/phantom/manifest.jsonl

For DDPM-1000 (the reference), DDIM-50/20/10 deterministic (eta 0) and stochastic (eta 1),
DPM-Solver++-20/10 (eps model) and rectified flow 30/10 (flow-trained model): network evaluations, seconds per volume (median over batches, same run), FID and
KID to the held-out real volumes (val + test splits) with the offline seeded 3D extractor (named in the
output; not comparable to published FIDs), and conditioning fidelity (accuracy and AUROC, by requested
label, of a classifier trained on the real train split). The same requests (labels, reports, seeds)
go to every sampler. Prints a table and writes benchmarks/results/bench_sampling.json
(bench_sampling_guidance{W}.json with --guidance W != 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# (model, sampler, steps, eta): eta > 0 makes DDIM stochastic (eta 1 is DDPM's posterior variance).
CONFIGS = [("eps", "ddpm", 1000, 0.0), ("eps", "ddim", 50, 0.0), ("eps", "ddim", 20, 0.0), ("eps", "ddim", 10, 0.0),
           ("eps", "ddim", 50, 1.0), ("eps", "ddim", 20, 1.0), ("eps", "ddim", 10, 1.0),
           ("eps", "dpm++", 20, 0.0), ("eps", "dpm++", 10, 0.0), ("flow", "flow", 30, 0.0), ("flow", "flow", 10, 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps-bundle", type=Path, required=True)
    parser.add_argument("--flow-bundle", type=Path, help="a bundle trained with diffusion.prediction=flow")
    parser.add_argument("--data", type=Path, required=True, help="the phantom manifest the bundles were trained on")
    parser.add_argument("--n", type=int, default=32, help="volumes per sampler (half per class)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--only", help="comma-separated sampler-steps[-eta] to run, e.g. dpm++-20,ddim-10,ddim-20-eta1")
    parser.add_argument("--fidelity-epochs", type=int, default=15)
    args = parser.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from synthaug.apps.evaluate import fidelity_classifier
    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore
    from synthaug.generate import CCELLAGenerator
    from synthaug.metrics import SeededResNet3D, conditioning_fidelity, fid, kid, normalise_volume

    console = Console(width=max(Console().width, 160))
    manifest = load_manifest(args.data)
    eps_gen = CCELLAGenerator.from_bundle(args.eps_bundle)
    data = eps_gen.bundle.config.data
    store = VolumeStore(data)
    held_out = [store(i)["image"] for i in manifest.items("val") + manifest.items("test")]
    extractor = SeededResNet3D(seed=0)
    real_features = extractor.extract(torch.stack(held_out))
    train_real = [store(i)["image"] for i in manifest.items("train")[: args.n]]
    floor = fid(real_features, extractor.extract(torch.stack(train_real)))
    console.print(f"held-out real volumes: {len(held_out)}; FID(real train {len(train_real)} vs held-out) = "
                  f"{floor:.4f} (the noise floor at this n)")
    predict = fidelity_classifier(manifest, data, "tiny-cnn", args.fidelity_epochs)

    labels = [i % 2 for i in range(args.n)]
    seeds = list(range(1000, 1000 + args.n))
    reports = [eps_gen.choose_report(label, seed) for label, seed in zip(labels, seeds)]
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for kind, sampler, steps, eta in CONFIGS:
        name = f"{sampler}-{steps}" + (f"-eta{eta:g}" if eta else "")
        if only and name not in only:
            continue
        bundle = args.eps_bundle if kind == "eps" else args.flow_bundle
        if bundle is None:
            continue
        gen = CCELLAGenerator.from_bundle(bundle, sampler=sampler, steps=steps, eta=eta, guidance=args.guidance,
                                          batch_size=args.batch_size)
        volumes, per_volume = [], []
        for start in range(0, args.n, args.batch_size):
            part = slice(start, start + args.batch_size)
            begin = time.perf_counter()
            out = gen.generate(labels[part], reports=reports[part], seeds=seeds[part])
            per_volume.append((time.perf_counter() - begin) / len(out.volumes))
            volumes += [torch.from_numpy(normalise_volume(v[0].numpy()))[None] for v in out.volumes]
        x = torch.stack(volumes)
        feats = extractor.extract(x)
        k = kid(real_features, feats, subsets=50, subset_size=min(len(held_out), args.n))
        probs = np.concatenate([predict(x[i:i + 8]).numpy() for i in range(0, len(x), 8)])
        fidelity = conditioning_fidelity(probs, labels)
        evals = steps * (1 if args.guidance == 1.0 else 2)
        rows.append({"model": kind, "sampler": sampler, "steps": steps, "eta": eta, "network_evaluations": evals,
                     "s_per_volume": statistics.median(per_volume), "fid": fid(real_features, feats),
                     "kid_mean": k["mean"], "kid_std": k["std"], "fidelity_accuracy": fidelity.get("accuracy"),
                     "fidelity_auroc": fidelity.get("auroc")})
        r = rows[-1]
        console.print(f"{name}: {r['s_per_volume']:.3f} s/volume, FID {r['fid']:.4f}, "
                      f"fidelity acc {r['fidelity_accuracy']}")

    reference = next((r for r in rows if r["sampler"] == "ddpm"), None)
    table = Table(title=f"sampling: {args.n} volumes per sampler, batch {args.batch_size}, guidance {args.guidance}; "
                        f"FID/KID with {extractor.name}")
    for col in ("model", "sampler", "steps", "eta", "NFE", "s/volume", "speed-up vs DDPM-1000", "FID", "FID vs DDPM",
                "KID", "fidelity acc", "fidelity AUROC"):
        table.add_column(col)
    for r in rows:
        speed = reference["s_per_volume"] / r["s_per_volume"] if reference else None
        rel = r["fid"] / reference["fid"] - 1 if reference else None
        r["speedup_vs_ddpm"], r["fid_rel_vs_ddpm"] = speed, rel
        table.add_row(r["model"], r["sampler"], str(r["steps"]), f"{r['eta']:g}", str(r["network_evaluations"]),
                      f"{r['s_per_volume']:.3f}", "-" if speed is None else f"{speed:.0f}x", f"{r['fid']:.4f}",
                      "-" if rel is None else f"{rel:+.0%}", f"{r['kid_mean']:.4f}",
                      "-" if r["fidelity_accuracy"] is None else f"{r['fidelity_accuracy']:.2f}",
                      "-" if r["fidelity_auroc"] is None else f"{r['fidelity_auroc']:.2f}")
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("bench_sampling.json" if args.guidance == 1.0 else f"bench_sampling_guidance{args.guidance:g}.json")
    out.write_text(json.dumps({"rows": rows, "extractor": extractor.name, "fid_noise_floor": floor,
                               "held_out": len(held_out), "n": args.n, "guidance": args.guidance,
                               "machine": platform.platform(), "cpus": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
                               "date": time.strftime("%Y-%m-%d")}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
