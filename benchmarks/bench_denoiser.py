"""How well the LDM denoises held-out latents at each noise level, against predicting the mean training latent.

    python benchmarks/bench_denoiser.py --bundles NAME=WORK[,NAME=WORK...] [--levels 1,0.9,0.75,0.5,0.25,0.1]

WORK is a folder with a flow generator's ``bundle`` and the ``phantom`` it was trained on (a
`bench_class_signal.py` or `bench_guidance.py` work folder). For every held-out (val + test) case the bundle's
VAE encodes the volume to its scaled latent x0; at each noise level s = t/T the EMA LDM sees
x_t = (1 - s) x0 + s noise (fixed noise per case) with the case's own report and its label in the class slot
(no guidance) and predicts x0_hat = x_t + s v_hat. The table gives

- error ratio: mean squared error of x0_hat over that of the mean training latent (the best guess that
  ignores x_t and the report). At s = 1, where x_t is pure noise, a trained denoiser predicts the mean of
  the data given the report: a ratio at or below 1. Above 1, the first sampler step starts from a worse
  guess than the mean image, and the layout of every sample is lost there;
- spread: the std of x0_hat over that of x0 (a mean-like prediction has a small spread at high noise).

Prints the table and writes benchmarks/results/bench_denoiser.json. One heavy process: run it alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def latents(generator, items: list[dict]):
    """The bundle VAE's scaled latents of the volumes of ``items``."""
    import torch

    from synthaug.data.volume_store import VolumeStore
    from synthaug.ldm.autoencoder import encode_volumes

    load = VolumeStore(generator.bundle.config.data)
    x = torch.stack([load(item)["image"] for item in items])
    with torch.no_grad():
        return encode_volumes(generator.autoencoder, list(x), batch_size=8) * generator.bundle.scale_factor


def denoiser_row(name: str, work: Path, levels: list[float]) -> dict:
    """Error ratio and spread of one bundle's x0 prediction per noise level, on its phantom's held-out cases."""
    import torch
    import torch.nn.functional as F

    from synthaug.data.manifest import load_manifest
    from synthaug.generate import CCELLAGenerator
    from synthaug.ldm.objective import training_scheduler, training_target

    generator = CCELLAGenerator.from_bundle(work / "bundle", precision="fp32")
    bundle, cfg = generator.bundle, generator.bundle.config.diffusion
    if cfg.prediction != "flow":
        raise SystemExit(f"{work}: a {cfg.prediction} bundle; this benchmark reads flow bundles")
    manifest = load_manifest(work / "phantom" / "manifest.jsonl")
    held_out = [c for c in manifest.items("val") + manifest.items("test") if c["report"]]
    x0, mean = latents(generator, held_out), latents(generator, manifest.items("train")).mean(0, keepdim=True)
    baseline = float(((x0 - mean) ** 2).mean())
    labels = [c["label"] for c in held_out]
    cond = generator._conditioning(labels, [c["report"] for c in held_out])  # the generator's own text features
    onehot = F.one_hot(torch.tensor(labels), 2).float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    scheduler = training_scheduler(cfg)
    row = {"name": name, "work": str(work), "cases": len(held_out), "preconditioning": cfg.preconditioning,
           "loss": bundle.config.loss.diffusion_loss, "ldm_steps": bundle.config.train.steps,
           "lr": bundle.config.train.lr, "seed": bundle.config.train.seed, "levels": {}}
    for s in levels:
        t = torch.full((len(held_out),), round(s * cfg.num_train_timesteps))
        x_t, _ = training_target(cfg, scheduler, x0, noise, t)
        with torch.no_grad():
            velocity, _ = generator.ldm(x_t, t, cond.text, cond.mask, cond.spacing, class_probs=onehot)
        x0_hat = x_t + s * velocity
        row["levels"][f"{s:g}"] = {"error_ratio": float(((x0_hat - x0) ** 2).mean()) / baseline,
                                   "spread": float(x0_hat.std() / x0.std())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", required=True, help="NAME=WORK, comma-separated")
    parser.add_argument("--levels", default="1,0.9,0.75,0.5,0.25,0.1", help="noise levels s = t/T")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()

    from synthaug.markdown import markdown_table

    started = time.perf_counter()
    levels = [float(v) for v in args.levels.split(",")]
    results = []
    for spec in args.bundles.split(","):
        name, _, work = spec.partition("=")
        row = denoiser_row(name, Path(work), levels)
        results.append(row)
        print(f"{name}: " + ", ".join(f"s={k} {v['error_ratio']:.3f}" for k, v in row["levels"].items()), flush=True)
    table = [[r["name"], *(f"{r['levels'][f'{s:g}']['error_ratio']:.3f} ({r['levels'][f'{s:g}']['spread']:.2f})"
                           for s in levels)] for r in results]
    print("\n".join(markdown_table(["generator", *(f"s = {s:g}" for s in levels)], table)))
    print("each cell: error ratio against the mean training latent (spread of x0_hat over that of x0)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_denoiser{args.tag}.json"
    out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_at_end": os.getloadavg()[0], "total_s": round(time.perf_counter() - started, 1),
        "bundles": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
