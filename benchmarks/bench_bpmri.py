"""Biparametric MRI on the phantom: the demo run with T2W + ADC + high-b, against the T2W demo's budget.

    python benchmarks/bench_bpmri.py                    # the full demo budget (~9 min on 2 cores)
    python benchmarks/bench_bpmri.py --quick            # the quick demo's sizes (~2 min)

Runs ``run_demo(sequences=("t2w", "adc", "hbv"))`` (phantom with DWI, generator on three channels,
class-balanced cache, evaluate, sweep) and reports: each stage's wall time and the total, peak RSS;
the quality of each sequence (FID/KID with the seeded 3D features, MS-SSIM diversity); the class-signal
chain (the judge: the demo's tiny-cnn on three channels, trained on the real train split); and the
sweep's real-only arm against its best arm on the test split. Prints a table and writes
benchmarks/results/bench_bpmri.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from _record import write_record

RESULTS = Path(__file__).parent / "results"
SEQUENCES = ("t2w", "adc", "hbv")


def _sweep_rows(summary: dict) -> list[dict]:
    """Per arm: test balanced accuracy and AUROC, and the paired difference from real only on the sweep's
    metric with its Holm-corrected p."""
    model, metric = summary["models"][0], summary["metric"]
    rows = []
    for key in summary["per_model"][model]["arms"]:
        arm = summary["per_arm"][key]
        diff = (arm["vs_real_only"] or {}).get(metric) or {}
        rows.append({"arm": summary["per_model"][model]["labels"][key], "role": arm["role"],
                     "balanced_accuracy": arm["test"]["balanced_accuracy"]["mean"],
                     "auroc": arm["test"]["auroc"]["mean"], f"diff_{metric}": diff.get("mean"),
                     "p": diff.get("p"), "p_holm": diff.get("p_holm")})
    return rows


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick demo's sizes")
    parser.add_argument("--out", type=Path, help="demo folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_bpmri.json")
    parser.add_argument("--from", dest="done", type=Path, help="summarise a finished bpMRI demo folder instead")
    args = parser.parse_args()

    import optuna

    from synthaug.apps.demo.run import run_demo

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load = os.getloadavg()[0]
    out = args.done or args.out or Path(tempfile.mkdtemp(prefix="bench_bpmri_"))
    start = time.perf_counter()
    if args.done is None:
        run_demo(out, quick=args.quick, force=True, sequences=SEQUENCES, log=lambda *a: None)
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    seconds = time.perf_counter() - start if args.done is None else None
    stages = json.loads((out / "demo_state.json").read_text())
    metrics = json.loads((out / "quality" / "metrics.json").read_text())
    chain = metrics.get("class_signal", {})
    payload = {"seconds": seconds and round(seconds, 1), "stages": {k: v["seconds"] for k, v in stages.items()},
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if seconds else None,
               "sequences": metrics["sequences"], "class_signal": chain, "sweep": _sweep_rows(summary),
               "verdict": summary["verdict"], "quick": args.quick, "folder": str(out)}

    print(f"bpMRI demo in {out}: {sum(payload['stages'].values()):.0f} s of stages"
          + (f", peak RSS {payload['peak_rss_gib']:.2f} GiB" if seconds else "") + f", load before {load:.2f}")
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in payload["stages"].items()))
    from synthaug.markdown import markdown_table
    from synthaug.metrics.class_signal import ClassSignalChain

    names = ["FID 3D", "KID 3D", "MS-SSIM diversity, synthetic class 0", "MS-SSIM diversity, real class 0"]
    print("\n".join(markdown_table(["metric", *SEQUENCES],
                                   [[n, *(metrics["sequences"][s].get(n, "-") for s in SEQUENCES)] for n in names])))
    if chain:
        print(ClassSignalChain.from_dict(chain).markdown())
    keys = tuple(payload["sweep"][0]) if payload["sweep"] else ()
    print("\n".join(markdown_table(keys, [[_cell(row[k]) for k in keys] for row in payload["sweep"]])))
    print(f"verdict: {summary['verdict']}")
    write_record(args.json, payload, args, load)


if __name__ == "__main__":
    main()
