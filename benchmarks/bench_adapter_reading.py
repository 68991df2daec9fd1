"""What class the adapter reads from which reports: the U-Net's class input when `class_source` is `report`.

    python benchmarks/bench_adapter_reading.py --work WORK [--templates 48]

WORK is a folder with a generator's ``bundle`` and the ``phantom`` it was trained on (a `bench_class_signal.py`
work folder). Per group of reports, per class, the adapter's mean P(class 1) (EMA weights, as generation reads
it) and its accuracy at 0.5:

- the bundle's training reports, and the phantom's held-out (val + test) reports: reports written like the ones
  it learnt from;
- template reports (`synthaug.data.reports.template_report`, what `--report-source template` writes), per
  PI-RADS score for class 1;
- the empty report (`--report-source empty`);
- twelve short reports as a user might type them, six per class (``SHORT`` below).

Prints the table and writes benchmarks/results/bench_adapter_reading.json. Light: seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from _record import write_record

RESULTS = Path(__file__).parent / "results"
SHORT = [  # (label under the phantom's rule, PI-RADS >= 3 is class 1; report)
    (0, "Findings: No focal lesion. PI-RADS 1."),
    (0, "Impression: PI-RADS 2. No suspicious lesion."),
    (0, "Normal prostate. PI-RADS 1."),
    (0, "Benign prostatic hyperplasia of the transition zone, no focal abnormality. Overall PI-RADS 2."),
    (0, "PI-RADS 2: diffuse mild T2 hypointensity in the peripheral zone, likely prostatitis."),
    (0, "Impression: PI-RADS category 1."),
    (1, "PI-RADS 5. 20 mm lesion in the left peripheral zone."),
    (1, "Impression: PI-RADS 4 lesion in the right mid peripheral zone, marked restricted diffusion (DWI score 4)."),
    (1, "Equivocal 8 mm focus in the left apex, PI-RADS 3."),
    (1, "PI-RADS 4. Lesion right base."),
    (1, "Impression: PI-RADS category 3 lesion in the anterior transition zone."),
    (1, "Large lesion with extraprostatic extension, PI-RADS 5."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder with `bundle` and `phantom`")
    parser.add_argument("--templates", type=int, default=48, help="template reports per class")
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_adapter_reading.json")
    args = parser.parse_args()
    load = os.getloadavg()[0]

    from synthaug.data.manifest import load_manifest
    from synthaug.generate import CCELLAGenerator
    from synthaug.markdown import markdown_table

    generator = CCELLAGenerator.from_bundle(args.work / "bundle")
    manifest = load_manifest(args.work / "phantom" / "manifest.jsonl")
    held_out = [c for c in manifest.items("val") + manifest.items("test") if c["report"]]
    groups: dict[str, list[tuple[int, str]]] = {
        "training reports": [(c["label"], c["report"]) for c in generator.bundle.train_cases if c["report"]],
        "held-out reports": [(c["label"], c["report"]) for c in held_out],
        "empty report": [(0, "")],  # no class: shown as "-"
        "short typed reports": SHORT,
    }
    for label in (0, 1):
        for seed in range(args.templates):
            report = generator.choose_report(label, seed, "template")  # what --report-source template asks with
            score = re.search(r"PI-RADS (\d)", report).group(1)  # a class-1 template names one lesion, one score
            name = f"template reports, PI-RADS {score}" if label else "template reports"
            groups.setdefault(name, []).append((label, report))

    rows, table = [], []
    for name, pairs in groups.items():
        probs = generator.predict_class([report for _, report in pairs]).tolist()
        for label in (0, 1):
            p = [q for (y, _), q in zip(pairs, probs) if y == label]
            if not p:
                continue
            row = {"reports": name, "label": None if name == "empty report" else label, "n": len(p),
                   "mean_p_class1": sum(p) / len(p),
                   "accuracy": None if name == "empty report" else sum((q >= 0.5) == bool(label) for q in p) / len(p)}
            rows.append(row)
            table.append([name, "-" if row["label"] is None else str(label), str(len(p)), f"{row['mean_p_class1']:.3f}",
                          "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}"])
    print("\n".join(markdown_table(["reports", "class", "n", "mean P(class 1)", "accuracy at 0.5"], table)))
    write_record(args.json, {"work": str(args.work), "bundle": generator.fingerprint, "rows": rows}, args, load)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
