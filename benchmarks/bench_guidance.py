"""Where on the chain to guide, how hard, how many steps: class fidelity, distance and CAS against U-Net passes.

    python benchmarks/bench_guidance.py --work WORK [--n 96] [--rows 30/4/0:1,8/8/0.5:1,6/12/0.5:1/empty/label,...]

WORK is a `bench_class_signal.py` work folder (its `bundle`, the generator's `phantom` and the separate
`judge_phantom` draw). For each row, flow steps / class guidance / guidance interval (`sample.guidance_interval`,
the t/T range where guidance applies; other steps make one plain pass) and, optionally, the report source
(`sample.report_source`: `train` by default, `template` or `empty`) and the class source (`sample.class_source`:
`report` by default, or `label`; with empty reports only `label` carries the class), the script generates the same
`--n` requests (half per class, the same seeds and, per report source, the same reports for every row) and measures:

- U-Net passes per volume (counted at the U-Net) and volumes/s (decoding included; the generator's batch);
- fidelity: the judge (tiny-cnn seed 0 on the judge draw's train split, as in `bench_class_signal.py`) on the
  generated volumes against the requested class, AUROC and balanced accuracy with bootstrap CIs;
- FID and KID to the generator phantom's held-out (val + test) volumes in the judge's features (a distance that
  sees the anatomy the judge learnt; train vs held-out is the floor);
- class by training case: how often a volume's nearest training case of the generator (class-blind voxel distance,
  `synthaug.metrics.nearest_train_label_agreement`; the case whose report the volume was drawn from excluded) has
  the volume's requested label, beside the same figure for the held-out real volumes (chance: their anatomy does
  not depend on their class). Far above it, the generator draws a class as "that class's training cases"; and
  how many distinct training cases the row's volumes are nearest to (a few: they pile up on a few anatomies);
- CAS (with `--cas`): tiny-cnns (seeds 1..`--cas-seeds`) trained on the row's volumes only, AUROC on the judge
  draw's val + test splits (cases no generator or CAS classifier saw), beside the same classifiers trained on as
  many real training cases: the mean over seeds, its range, and the mean of the per-seed ratio synthetic / real.

Prints the table and writes benchmarks/results/bench_guidance.json. One heavy process: run it alone.
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
# the previous default (flow 30 steps, class guidance 4 on every step) first, then fewer steps and the interval
ROWS = "30/4/0:1,8/4/0:1,8/4/0.5:1,8/4/0:0.5,8/8/0.5:1,8/12/0.5:1,8/16/0.5:1,8/20/0.5:1"


def parse_rows(text: str) -> list[dict]:
    rows = []
    for part in text.split(","):
        steps, guidance, interval, *sources = part.split("/")
        low, high = interval.split(":")
        report_source = sources[0] if sources else "train"
        class_source = sources[1] if len(sources) > 1 else "report"
        rows.append({"steps": int(steps), "class_guidance": float(guidance), "guidance_interval": (float(low), float(high)),
                     "report_source": report_source, "class_source": class_source})
    return rows


def spread(values: list[float]) -> str:
    """``mean [min, max]`` of per-seed scores."""
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def describe(row: dict) -> str:
    low, high = row["guidance_interval"]
    return (f"{row['steps']} steps, class guidance {row['class_guidance']:g} on t/T in [{low:g}, {high:g}], "
            f"{row['report_source']} reports, class from the {row['class_source']}")


def main() -> None:  # noqa: PLR0915 - one straight script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench_class_signal.py work folder")
    parser.add_argument("--n", type=int, default=96, help="volumes per row, half per class")
    parser.add_argument("--rows", default=ROWS, help="steps/class-guidance/LOW:HIGH[/REPORT-SOURCE[/CLASS-SOURCE]], comma-separated")
    parser.add_argument("--judge-epochs", type=int, default=20)
    parser.add_argument("--cas", action="store_true", help="also train a classifier on each row's volumes (CAS)")
    parser.add_argument("--cas-seeds", type=int, default=3, help="CAS classifier seeds (1..K), averaged")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()

    import tempfile

    import torch

    from classifiers.metrics import auroc
    from synthaug.apps.demo.run import DemoPlan
    from synthaug.apps.evaluate import train_classifier
    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore
    from synthaug.generate import CCELLAGenerator, write_volume
    from synthaug.ldm.bundle import load_bundle
    from synthaug.markdown import markdown_table
    from synthaug.metrics.class_signal import score_link
    from synthaug.metrics.features import ClassifierFeatures
    from synthaug.metrics.quality import fid, kid, nearest_train_cases, nearest_train_label_agreement

    started = time.perf_counter()
    rows = parse_rows(args.rows)
    plan = DemoPlan()
    bundle = load_bundle(args.work / "bundle")  # loaded and verified once; every row's generator shares it
    for row in rows:  # a row the library refuses stops the run here, not after the judge's training
        bundle.config.sample.with_options(**row)
    data = bundle.config.data
    manifest = load_manifest(args.work / "phantom" / "manifest.jsonl")
    judge_manifest = load_manifest(args.work / "judge_phantom" / "manifest.jsonl")
    load = VolumeStore(data)

    def volumes(items: list[dict]) -> torch.Tensor:
        return torch.stack([load(item)["image"] for item in items])

    judge_name = (f"tiny-cnn seed 0, {len(judge_manifest.split('train'))} cases of a separate phantom draw, "
                  f"{args.judge_epochs} epochs")
    print(f"training the judge ({judge_name})", flush=True)
    judge = train_classifier(judge_manifest.items("train"), judge_manifest.items("val"), data, "tiny-cnn",
                             args.judge_epochs, 0, plan.crop)
    features = ClassifierFeatures(judge.net, name="judge features", crop=plan.crop)
    held_out_items = manifest.items("val") + manifest.items("test")
    held_out_volumes = volumes(held_out_items)
    held_out = features.extract(held_out_volumes)
    generator_train = [c for c in manifest.items("train") if c["case_id"] in bundle.train_case_ids]
    train_volumes, train_labels = volumes(generator_train), [c["label"] for c in generator_train]
    report_case = {c["report"]: i for i, c in enumerate(generator_train) if c.get("report")}
    nn_baseline = nearest_train_label_agreement(held_out_volumes, [c["label"] for c in held_out_items], train_volumes,
                                                train_labels)
    real_n = sorted(manifest.items("train"), key=lambda c: c["case_id"])[:args.n]
    floor = fid(held_out, features.extract(volumes(real_n)))
    cas_test = judge_manifest.items("val") + judge_manifest.items("test")  # the judge's val only picks its epoch
    cas_x, cas_y = volumes(cas_test), [c["label"] for c in cas_test]
    cas_seeds = range(1, args.cas_seeds + 1)

    def cas(items: list[dict]) -> list[float]:
        """AUROC on the CAS test cases of a tiny-cnn trained on ``items``, one per CAS seed."""
        return [auroc(cas_y, train_classifier(items, manifest.items("val"), data, "tiny-cnn", args.judge_epochs, seed,
                                              plan.crop)(cas_x).reshape(-1).tolist()) for seed in cas_seeds]

    cas_real = cas(real_n) if args.cas else None

    labels = [i % 2 for i in range(args.n)]
    results = []
    for row in rows:
        generator = CCELLAGenerator(bundle, **row)
        reports = [generator.choose_report(label, seed) for seed, label in enumerate(labels)]
        warm = min(8, args.n)
        generator.generate(labels[:warm], reports=reports[:warm], seeds=range(warm))  # warm-up: not timed
        passes = torch.zeros((), dtype=torch.long)

        def count(module, inputs, output, total=passes) -> None:  # returns None: the output stays as it is
            total += len(output)

        hook = generator.ldm.unet.register_forward_hook(count)
        t0 = time.perf_counter()
        out = generator.generate(labels, reports=reports, seeds=range(args.n))
        seconds = time.perf_counter() - t0
        hook.remove()
        with tempfile.TemporaryDirectory() as tmp:
            items = [{"image": str(write_volume(v, out.affine, Path(tmp) / f"v{i:04d}.nii.gz")), "label": label}
                     for i, (v, label) in enumerate(zip(out.volumes, labels))]
            synthetic = volumes(items)
            exclude = [report_case.get(report) for report in reports]
            fidelity = score_link("fidelity", describe(row), judge_name, labels, judge(synthetic))
            synthetic_features = features.extract(synthetic)
            result = {**row, "setting": describe(row), "unet_passes_per_volume": int(passes) / args.n,
                      "volumes_per_s": args.n / seconds, "fidelity": fidelity.to_dict(),
                      "fid_judge_features": fid(held_out, synthetic_features),
                      "kid_judge_features": kid(held_out, synthetic_features)["mean"],
                      "nearest_train_label_agreement": nearest_train_label_agreement(
                          synthetic, labels, train_volumes, train_labels, exclude=exclude),
                      "distinct_nearest_train_cases": len(set(nearest_train_cases(synthetic, train_volumes,
                                                                                  exclude=exclude).tolist()))}
            if args.cas:
                per_seed = cas(items)
                result["cas"] = {"per_seed": per_seed, "mean": sum(per_seed) / len(per_seed),
                                 "ratio_to_real": sum(s / r for s, r in zip(per_seed, cas_real)) / len(per_seed)}
        results.append(result)
        print(f"{describe(row)}: {result['unet_passes_per_volume']:.0f} passes, {result['volumes_per_s']:.2f} vol/s, "
              f"fidelity {fidelity.auroc['estimate']:.3f}, FID {result['fid_judge_features']:.2f}, "
              f"class by training case {result['nearest_train_label_agreement']:.3f} "
              f"({result['distinct_nearest_train_cases']} distinct nearest training cases)"
              + (f", CAS {spread(result['cas']['per_seed'])}" if args.cas else ""), flush=True)

    def ci(score: dict) -> str:
        return f"{score['estimate']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"

    header = ["steps", "class guidance", "guided t/T", "reports", "class from", "U-Net passes / volume", "volumes/s", "fidelity AUROC",
              "fidelity balanced acc.", "FID (judge features)", "KID", "class by training case", "distinct nearest cases",
              *(["CAS AUROC, mean [range] over seeds", "CAS / real"] if args.cas else [])]
    table = [[str(r["steps"]), f"{r['class_guidance']:g}", "{:g}-{:g}".format(*r["guidance_interval"]), r["report_source"], r["class_source"],
              f"{r['unet_passes_per_volume']:.0f}", f"{r['volumes_per_s']:.2f}", ci(r["fidelity"]["auroc"]),
              ci(r["fidelity"]["balanced_accuracy"]), f"{r['fid_judge_features']:.2f}", f"{r['kid_judge_features']:.4f}",
              f"{r['nearest_train_label_agreement']:.3f}", str(r["distinct_nearest_train_cases"]),
              *([spread(r["cas"]["per_seed"]), f"{r['cas']['ratio_to_real']:.2f}"] if args.cas else [])]
             for r in results]
    print("\n".join(markdown_table(header, table)))
    print(f"FID floor (real train vs held-out, judge features): {floor:.2f}; class by training case of "
          f"{len(held_out_items)} held-out real volumes (chance): {nn_baseline:.3f}"
          + (f"; CAS of {len(real_n)} real cases: {spread(cas_real)}; CAS tests on {len(cas_test)} judge-draw cases, "
             f"classifier seeds {cas_seeds.start}-{cas_seeds.stop - 1}" if cas_real else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / f"bench_guidance{args.tag}.json"
    out_file.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "work": str(args.work), "n": args.n, "judge": judge_name,
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_at_end": os.getloadavg()[0], "total_s": round(time.perf_counter() - started, 1),
        "fid_floor": floor, "nearest_train_label_agreement_held_out": nn_baseline,
        "cas_real": {"per_seed": cas_real, "mean": sum(cas_real) / len(cas_real)} if cas_real else None,
        "cas_test_cases": len(cas_test), "rows": results}, indent=2) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
