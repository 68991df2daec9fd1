"""Generators scored as `synthaug demo` scores its own: the demo's cache, then its evaluate stage.

    python benchmarks/bench_demo_judge.py --manifest PHANTOM/manifest.jsonl --bundles NAME=BUNDLE,...

For each bundle (trained on that phantom, e.g. LDM variants on one VAE with `synthaug train --autoencoder`),
the script pregenerates the cache the demo would (`DemoPlan.cache_size` volumes, half per class, the
bundle's default sampler) and runs the demo's evaluate stage on it (`evaluate_synthetic` with the plan's
fidelity epochs, crop and evaluated-set size): the judge is a tiny-cnn trained on the phantom's own train
split, the demo's judge. `bench_guidance.py` scores the same bundles with a judge trained on a separate,
larger draw; where the two disagree, neither settles a choice alone.

Prints the table and writes benchmarks/results/bench_demo_judge.json. One heavy process: run it alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def score(manifest: Path, bundle: Path, work: Path) -> dict:
    """The demo's cache and evaluate stage for ``bundle``: its class-signal chain and quality metrics."""
    from synthaug.apps.demo.run import DemoPlan
    from synthaug.apps.evaluate import evaluate_synthetic
    from synthaug.data.manifest import load_manifest
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import SyntheticCache

    plan = DemoPlan()
    generator = CCELLAGenerator.from_bundle(bundle, sampler=plan.sampler, steps=plan.sampler_steps)
    n = plan.cache_size(len(load_manifest(manifest).split("train")))
    started = time.perf_counter()
    SyntheticCache.create(work / "cache", generator).pregenerate(generator, n=n)
    generated_s = time.perf_counter() - started
    metrics = evaluate_synthetic(manifest, work / "cache", work / "quality", split="test",
                                 fidelity_epochs=plan.fidelity_epochs, fidelity_crop=plan.crop,
                                 max_synthetic=plan.evaluate_max)
    return {"bundle": str(bundle), "sampler": generator.settings(), "volumes": n,
            "pregenerate_s": round(generated_s, 1), "metrics": metrics}


def _row(name: str, result: dict) -> list[str]:
    metrics = result["metrics"]
    links = {link["link"]: link for link in metrics["class_signal"]["links"]}

    def auroc(link: str) -> str:
        value = links.get(link, {}).get("auroc", {})
        return "-" if value.get("estimate") is None else (
            f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]")

    pr = metrics["precision_recall_3d"]
    return [name, auroc("fidelity"), auroc("cas"), auroc("cas-real"), f"{metrics['fid_3d']:.2f}",
            f"{pr['precision']:.3f} / {pr['recall']:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="the phantom the bundles were trained on")
    parser.add_argument("--bundles", required=True, help="NAME=BUNDLE folder, comma-separated")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/demo_judge_work"))
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()
    bundles = dict(part.split("=", 1) for part in args.bundles.split(","))

    from rich.console import Console
    from rich.table import Table

    results = {}
    for name, bundle in bundles.items():
        work = args.work / name
        if work.exists():
            raise SystemExit(f"error: {work} exists: remove it or pass another --work")
        results[name] = score(args.manifest, Path(bundle), work)
        print(f"{name}: " + " | ".join(_row(name, results[name])[1:]), flush=True)
    table = Table(title=f"the demo's judge on the demo's cache ({os.cpu_count()} cores)")
    for header in ("bundle", "fidelity AUROC", "CAS AUROC", "CAS, real cases", "FID 3D (judge features)",
                   "precision / recall"):
        table.add_column(header)
    for name, result in results.items():
        table.add_row(*_row(name, result))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_demo_judge{args.tag}.json"
    out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "manifest": str(args.manifest), "bundles": bundles,
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_at_end": os.getloadavg()[0], "results": results}, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
