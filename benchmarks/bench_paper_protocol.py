"""The paper's protocol on the phantom: 50 real training cases, a generator trained on exactly those 50, and
five arms scored on a held-out test split with the paper's classifier (MONAI EfficientNet-B0 3D).

    python benchmarks/bench_paper_protocol.py                     # EfficientNet-B0, 5 seeds (hours on 2 cores)
    python benchmarks/bench_paper_protocol.py --model tiny-cnn --seeds 3 --epochs 10   # the CPU-sized check

Arms (Grabke et al., 2025): real only; real + synthetic 1:1 (one synthetic volume per real training case,
generated from that case's own report and label); synthetic only with the real labels; synthetic only
with the labels the adapter predicts from the reports; and pretraining on the synthetic twins, then
fine-tuning on the real cases (``--pretrain-epochs`` of the ``--epochs``, each phase selected on validation,
the fine-tune with a fresh optimiser, as in the chest X-ray study that found it beats mixing). Every arm
trains with the same number of samples per epoch and the same number of epochs. The generator never sees a validation or test case (that would leak the scoring data into the
synthetic arms). Prints accuracy, balanced accuracy, AUROC and AP (mean and 95% CI over seeds) next to the
paper's numbers and writes benchmarks/results/bench_paper_protocol.json.

``--generator-pool N`` is the shared-generator protocol of the follow-up study (CCELLA++, Grabke et al., 2025:
a generator trained at one site, a classifier with few cases at another): the generator trains on N other cases
of the same phantom draw and never on the classifier's cases, whose twins it then draws from reports it has not
seen. Five arms join: real + synthetic drawn from the pool's reports and labels, pretraining on those then
fine-tuning on the real cases, and three references for what sharing the pool's real volumes instead would give:
pretraining on them, mixing them in, and mixing in their round trips through the generator's autoencoder (what
the LDM could at best produce: the autoencoder's share of the loss). ``--pool-ratio R`` mixes R class-balanced
pool twins per real case instead (the paper's knob); ``--pool-controls`` adds, per ratio, the same twins with labels
decoupled from their class (is it the class that helps?) and the pool's real volumes and round trips at that ratio.
``--pool-filter-confidence C`` adds, per ratio, the pool twins a filter classifier gives at least C for their
class, the most confident first: trained on the generator's site's own cases (``--pool-filter-on pool``: a filter
that site could ship with its bundle; four fifths train it, a fifth selects it) or on the classifier's train split
(``real``: what ``synthaug pregenerate --filter train`` does at the user's site). ``--pool-twins K`` draws K twins
per pool case for it to choose from; ``--arms REGEX`` trains real only and the matching arms only (seeded: every
other arm would repeat an earlier run's numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PAPER = {"real only": {"accuracy": 0.69}, "real + synthetic 1:1": {"accuracy": 0.74},
         "synthetic only (real labels)": {"accuracy": None}, "synthetic only (predicted labels)": {"accuracy": None},
         "pretrain synthetic, fine-tune real": {"accuracy": None}}
PAPER_NOTE = "paper: real-only 69% accuracy -> real+synthetic 74%; synthetic-only comparable to real-only"
METRICS = ("accuracy", "balanced_accuracy", "auroc", "ap")


def split_pool(manifest: Path, n_train: int, seed: int = 0) -> tuple[Path, Path]:
    """Split the phantom's train split into the classifier's ``n_train`` cases (a seeded pick, stratified by
    label) and the generator's pool (the rest); write ``classifier.jsonl`` (those cases, val and test) and
    ``generator.jsonl`` (the pool as its train split, nothing else) beside ``manifest``."""
    import dataclasses

    import numpy as np

    from synthaug.data.manifest import read_manifest, write_manifest

    records = read_manifest(manifest).records
    train = [r for r in records if r.split == "train"]
    rng, chosen = np.random.default_rng(seed), set()
    for label in sorted({r.label for r in train}):
        ids = [r.case_id for r in train if r.label == label]
        take = round(n_train * len(ids) / len(train))
        chosen.update(ids[i] for i in rng.permutation(len(ids))[:take])
    classifier = write_manifest([r for r in records if r.split != "train" or r.case_id in chosen],
                                manifest.with_name("classifier.jsonl"))
    generator = write_manifest([dataclasses.replace(r, split="train") for r in train if r.case_id not in chosen],
                               manifest.with_name("generator.jsonl"))
    return classifier, generator


def build_data(work: Path, n_train: int, n_val: int, n_test: int, ldm_steps: int, vae_steps: int,
               prediction: str = "eps", overrides: tuple[str, ...] = (),
               autoencoder: Path | None = None, pool: int = 0, device: str = "cpu") -> tuple[Path, Path]:
    """A phantom with exactly ``n_train`` training cases and a generator bundle trained on those only
    (its VAE reused from ``autoencoder``, one trained on the same phantom, when given); with ``pool`` > 0,
    a generator trained on ``pool`` other cases of the same draw instead (``split_pool``). Returns the
    classifier's manifest and the bundle."""
    from synthaug.config import load_config
    from synthaug.data.phantom import write_phantom_dataset
    from synthaug.ldm.train import train_generator

    n = pool + n_train + n_val + n_test
    cfg = load_config(preset="tiny", overrides=[
        f"phantom.n_cases={n}", f"phantom.split_fractions=[{(pool + n_train) / n}, {n_val / n}, {n_test / n}]",
        f"train.steps={ldm_steps}", f"autoencoder.steps={vae_steps}", f"diffusion.prediction={prediction}",
        *overrides])
    manifest = work / "phantom" / "manifest.jsonl"
    if not manifest.is_file():
        write_phantom_dataset(work / "phantom", cfg.data, cfg.phantom, overwrite=True)
    generator_manifest = manifest
    if pool:
        manifest, generator_manifest = split_pool(manifest, n_train)
    bundle = work / "bundle"
    if (bundle / "fingerprint").is_file():
        from synthaug.ldm.bundle import read_bundle_info

        made = read_bundle_info(bundle, verify=False)[0]["config"]
        made["diffusion"].setdefault("preconditioning", "none")  # bundles from before the setting
        asked = cfg.model_dump(mode="json")
        changed = [f"{a}.{b} {made[a][b]!r}, not {asked[a][b]!r}" for a, b in
                   (("diffusion", "prediction"), ("diffusion", "preconditioning"), ("train", "steps"),
                    ("train", "lr"), ("autoencoder", "steps"), ("phantom", "n_cases"))
                   if made[a][b] != asked[a][b]]
        if changed:
            raise SystemExit(f"{bundle} was trained with {'; '.join(changed)}: pass another --work folder")
    else:
        train_generator(generator_manifest, bundle, cfg, work_dir=work / "bundle.work", autoencoder=autoencoder,
                        overwrite=True, device=device)
    return manifest, bundle


def synthetic_twins(bundle: Path, real: list[dict], out: Path, sampling: dict, round_: int = 0,
                    seed_offset: int | None = None, device: str = "cpu") -> list[dict]:
    """One synthetic volume per real training case from its own report and label; cached in ``out``.

    ``sampling``: the generator's options (sampler, steps, eta, guidance, class_guidance; None = the bundle's).
    ``round_`` k > 0 makes every case's k-th twin: the same report and label with seeds k x len(real) on
    (or from ``seed_offset`` on, when given).
    """
    from synthaug.apps.evaluate import paper_protocol_items
    from synthaug.generate import CCELLAGenerator

    provenance = out / "provenance.jsonl"
    generator = CCELLAGenerator.from_bundle(bundle, device=device, batch_size=8, **sampling)
    if not provenance.is_file():
        paper_protocol_items(generator, real, out,
                             seed_offset=round_ * len(real) if seed_offset is None else seed_offset)
    rows = {r["case_id"]: r for r in map(json.loads, provenance.read_text().splitlines())}
    made = {k: next(iter(rows.values())).get(k) for k in generator.settings()}
    if made != generator.settings():  # e.g. twins made with an earlier version's sampling defaults
        changed = sorted(k for k in made if made[k] != generator.settings()[k])
        raise SystemExit(f"{out}: twins made with other generator settings ({', '.join(changed)}); "
                         "remove the folder or use another --work")
    return [{"image": str(out / rows[c["case_id"]]["file"]), "label": c["label"],
             "predicted_label": rows[c["case_id"]]["predicted_label"],
             "case_id": c["case_id"] + "_synthetic" + (f"{round_}" if round_ else "")} for c in real]


def variations(bundle: Path, cases: list[dict], out: Path, sampling: dict, strength: float,
               seed_offset: int, device: str = "cpu") -> list[dict]:
    """One variation of every case (``CCELLAGenerator.vary``: its volume noised to ``strength`` of the chain and
    denoised under its own report and label; seed = ``seed_offset`` + its index), as NIfTI in the training data's
    units; cached in ``out`` with the generator's settings."""
    import torch

    from synthaug.data.volume_store import VolumeStore
    from synthaug.generate import CCELLAGenerator, write_volume

    generator = CCELLAGenerator.from_bundle(bundle, device=device, batch_size=8, **sampling)
    settings = {**generator.settings(), "strength": strength, "seed_offset": seed_offset}
    items = [{"image": str(out / f"{c['case_id']}_variation.nii.gz"), "label": c["label"],
              "case_id": f"{c['case_id']}_variation{seed_offset}"} for c in cases]
    done = out / "settings.json"
    if done.is_file():
        if json.loads(done.read_text()) != settings:
            raise SystemExit(f"{out}: variations made with other settings; remove the folder or use another --work")
        return items
    out.mkdir(parents=True, exist_ok=True)
    load = VolumeStore(generator.bundle.config.data)
    for start in range(0, len(cases), generator.batch_size):
        part = cases[start:start + generator.batch_size]
        result = generator.vary(torch.stack([load(c)["image"] for c in part]), [c["label"] for c in part],
                                reports=[c["report"] for c in part], strength=strength,
                                seeds=list(range(seed_offset + start, seed_offset + start + len(part))))
        for volume, item in zip(result.volumes, items[start:start + len(part)]):
            write_volume(volume, result.affine, Path(item["image"]))
    done.write_text(json.dumps(settings, sort_keys=True))
    return items


def round_trips(bundle: Path, cases: list[dict], out: Path, device: str = "cpu") -> list[dict]:
    """The generator's VAE round trip of every case (encode, decode), written as NIfTI in the training data's units
    as generated volumes are; cached in ``out``. What the LDM could at best hand a classifier."""
    import torch

    from synthaug.data.volume_store import VolumeStore
    from synthaug.generate import CCELLAGenerator, write_volume

    items = [{"image": str(out / f"{c['case_id']}_round_trip.nii.gz"), "label": c["label"],
              "case_id": c["case_id"] + "_round_trip"} for c in cases]
    if (out / "done").is_file():
        return items
    out.mkdir(parents=True, exist_ok=True)
    generator = CCELLAGenerator.from_bundle(bundle, device=device)
    load = VolumeStore(generator.bundle.config.data)
    for start in range(0, len(cases), 16):
        x = torch.stack([load(c)["image"] for c in cases[start:start + 16]])
        for v, item in zip(generator.round_trip(x), items[start:start + 16]):
            write_volume(generator.to_intensity(v[None])[0], generator.affine, Path(item["image"]))
    (out / "done").write_text("")
    return items


def class_by_training_case(twins: list[dict], real: list[dict], test: list[dict], load) -> dict[str, float]:
    """How often a twin's nearest real training case (``synthaug.metrics.nearest_train_cases``, whole volumes as
    ``load`` reads them) is its own case; how often the nearest other one has its label; the same agreement for
    the test cases (chance)."""
    import numpy as np
    import torch

    from synthaug.metrics import nearest_train_cases, nearest_train_label_agreement

    def stack(items: list[dict]) -> torch.Tensor:
        return torch.stack([load(item)["image"] for item in items])

    train, train_labels, synthetic = stack(real), [c["label"] for c in real], stack(twins)
    own = list(range(len(real)))  # twin i was drawn from case i's report and label
    return {"twins_nearest_own_case": float(np.mean(nearest_train_cases(synthetic, train) == np.arange(len(real)))),
            "twins": nearest_train_label_agreement(synthetic, [t["label"] for t in twins], train, train_labels,
                                                   exclude=own),
            "test": nearest_train_label_agreement(stack(test), [c["label"] for c in test], train, train_labels)}


def balanced_subset(items: list[dict], n: int) -> list[dict]:
    """The first of ``items`` of each label in ``synthaug.mix.balance.class_quotas(n, "equal")`` (half per class, as
    ``SyntheticMixDataset`` serves synthetic items); too few of a class is an error, not a silent imbalance."""
    from synthaug.mix.balance import class_quotas

    wanted = class_quotas(n, "equal")
    chosen = {c: [t for t in items if t["label"] == c][:k] for c, k in wanted.items()}
    if any(len(chosen[c]) < k for c, k in wanted.items()):
        raise SystemExit(f"{n} balanced items need {wanted} per class; the pool has fewer: lower --pool-ratio "
                         "(or raise --pool-twins)")
    return [t for c in sorted(chosen) for t in chosen[c]]


def decoupled_labels(items: list[dict], seed: int = 0) -> list[dict]:
    """``items`` (binary labels) with their labels made independent of the class each was drawn for: in each class,
    half of its items (a seeded pick; the odd one out stays) take the other label. The same volumes, about the same
    class counts, and a label that agrees with the volume's class exactly as often as not (a plain permutation agrees
    by chance for anywhere between 30 and 70% of 50). The control of a synthetic arm: what the gain is without the
    class in the volumes."""
    import numpy as np

    if {item["label"] for item in items} - {0, 1}:
        raise SystemExit("decoupled labels: binary labels only")
    rng, flip = np.random.default_rng(seed), set()
    for label in (0, 1):
        ids = [i for i, item in enumerate(items) if item["label"] == label]
        flip.update(ids[j] for j in rng.permutation(len(ids))[:len(ids) // 2])
    return [{**item, "label": 1 - item["label"] if i in flip else item["label"], "case_id": item["case_id"] + "_decoupled"}
            for i, item in enumerate(items)]


def paired_gains(results: dict[str, list[dict]], against: dict[str, str], console) -> dict[str, dict[str, dict]]:
    """Per metric (balanced accuracy, AUROC), each arm of ``against`` minus its reference arm, paired over classifier
    seeds (``synthaug.apps.sweep.statistics.paired_difference``) and Holm-corrected across the arms; printed."""
    from synthaug.apps.sweep.statistics import holm, paired_difference

    gains = {m: {arm: paired_difference({r["seed"]: r[m] for r in results[arm]},
                                        {r["seed"]: r[m] for r in results[reference]})
                 for arm, reference in against.items()} for m in ("balanced_accuracy", "auroc")}
    for metric, per_arm in gains.items():
        for arm, adjusted in zip(per_arm, holm([d["p"] for d in per_arm.values()])):
            per_arm[arm]["p_holm"] = adjusted
            d = per_arm[arm]
            console.print(f"{arm} - {against[arm]}, {metric}: {d['mean']:+.3f} "
                          + (f"[{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else "")
                          + (f", paired p {d['p']:.3g}, Holm {adjusted:.3g}" if d["p"] is not None else ""))
    return gains


def parse_pool_ratio(text: str, pool: int):
    """A ``--pool-ratio``: a ``synthaug.mix.ratio.Ratio`` > 0 and finite, given with ``--generator-pool``."""
    from synthaug.errors import InputError
    from synthaug.mix.ratio import Ratio

    try:
        ratio = Ratio.parse(text, where="--pool-ratio")
    except InputError as error:
        raise SystemExit(str(error)) from None
    if not pool or ratio.is_real_only or ratio.is_synthetic_only:
        raise SystemExit(f"--pool-ratio {text}: give a number > 0 with --generator-pool")
    return ratio


def filtered(twins: list[dict], manifest, data, crop, confidence: float,
             test: list[dict] = ()) -> tuple[list[dict], dict]:
    """The twins a filter classifier (tiny-cnn, ``synthaug.mix.filter``: trained on the real train split,
    selected on val; never the evaluated classifier's seeds 0-4 with these weights) gives at least
    ``confidence`` for the requested class, the most confident first (ties in their order), and the acceptance per
    class; with ``test``, also the filter's own AUROC and balanced accuracy (threshold 0.5) on those cases."""
    from classifiers.metrics import auroc, balanced_accuracy
    from synthaug.mix.filter import VolumeFilter

    vf = VolumeFilter.train(manifest, data, model="tiny-cnn", confidence=confidence, crop=crop)
    own = {}
    if test:  # the filter as a classifier: what its knowledge alone does on the test split
        y, p1 = [c["label"] for c in test], vf.probabilities([c["image"] for c in test], [1] * len(test))
        own = {"test_auroc": auroc(y, p1), "test_balanced_accuracy": balanced_accuracy(y, p1)}
    p = vf.probabilities([t["image"] for t in twins], [t["label"] for t in twins])
    kept = [t for q, _, t in sorted(((q, -i, t) for i, (t, q) in enumerate(zip(twins, p)) if q >= confidence),
                                    key=lambda row: row[:2], reverse=True)]  # the most confident first
    rate = {c: sum(q >= confidence for t, q in zip(twins, p) if t["label"] == c) /
            max(1, sum(t["label"] == c for t in twins)) for c in (0, 1)}
    return kept, {"kept": len(kept), "of": len(twins), "rate_by_class": rate, "filter": vf.describe(), **own}


def pool_filter_manifest(pool_manifest: Path, out: Path, every: int = 5) -> Path:
    """The generator's site's own cases as a filter's training data: every ``every``-th case of each class (in the
    pool's order) selects the filter (val), the rest train it. Only the pool's cases: the filter never sees the
    classifier's train, val or test cases."""
    from collections import Counter
    from dataclasses import replace

    from synthaug.data.manifest import load_manifest, write_manifest

    pool, seen, records = load_manifest(pool_manifest), Counter(), []
    for record in pool:
        seen[record.label] += 1
        image = (str(pool.resolve(record.image)) if isinstance(record.image, str)  # the copy lives elsewhere:
                 else {k: str(pool.resolve(v)) for k, v in record.image.items()})  # absolute paths
        records.append(replace(record, image=image, split="val" if seen[record.label] % every == 0 else "train"))
    return write_manifest(records, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="data, bundle and volumes (default: results/paper_protocol_PREDICTION)")
    parser.add_argument("--n-train", type=int, default=50)
    parser.add_argument("--n-val", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--ldm-steps", type=int, help="default: 2000, or the --budget's")
    parser.add_argument("--vae-steps", type=int, help="default: 300, or the --budget's")
    parser.add_argument("--prediction", default="eps", choices=("eps", "v", "flow"),
                        help="the generator's training objective (eps: the reference)")
    parser.add_argument("--sampler", default="auto", help="auto: the bundle's default (DDIM eta 1 for eps, flow for flow)")
    parser.add_argument("--steps", type=int, help="default: the sampler's (20 for DDIM, 6 for flow)")
    parser.add_argument("--eta", type=float, help="DDIM noise (default: the bundle's, 1)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--class-guidance", type=float, help="default: the bundle's (12 with a null class)")
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, help="synthetic epochs of the pretrain arm (default: half)")
    parser.add_argument("--fine-tune-lr", type=float,
                        help="learning rate of the pretrain arms' fine-tune phase (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--samples-per-epoch", type=int, default=100)
    parser.add_argument("--crop", help="X,Y,Z: the classifier sees a centred box of this many voxels")
    parser.add_argument("--budget", choices=("bench",),
                        help="bench: the class-signal benchmark's bench-budget generator (the demo's 48x48x32 "
                             "geometry, flow, bench_class_signal.BUDGETS: VAE 1920 patch steps, LDM 6000 steps at "
                             "lr 1e-4); --ldm-steps and --vae-steps, where given, replace its steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="generator config override")
    parser.add_argument("--autoencoder", type=Path,
                        help="reuse this autoencoder (an earlier work folder's bundle/autoencoder.safetensors, trained on "
                             "the same phantom: link its phantom folder into --work) and train the LDM only")
    parser.add_argument("--twins", type=int, default=1,
                        help="K > 1 adds the arm real + synthetic K:1 (K twins per case, new seeds)")
    parser.add_argument("--filter-confidence", type=float,
                        help="adds the arm real + filtered synthetic: of the K twins per case, those a filter "
                             "classifier trained on the real train split gives at least this P(requested class)")
    parser.add_argument("--pool-filter-confidence", type=float,
                        help="with --pool-ratio: per ratio, the arm real + filtered pool twins (balanced): a filter "
                             "classifier trained on the generator's site's own cases (--pool-filter-on pool) or on "
                             "the classifier's real train split (real) keeps the pool twins it gives at least this "
                             "P(requested class); with --pool-controls also the same twins with decoupled labels")
    parser.add_argument("--pool-filter-on", choices=("pool", "real"), default="pool",
                        help="whose real cases train the pool filter: the generator's site's (pool: it could ship "
                             "the filter with its bundle) or the classifier's (real: what `pregenerate --filter "
                             "train` does at the user's site)")
    parser.add_argument("--pool-twins", type=int, default=1, metavar="K",
                        help="with --generator-pool: K twins per pool case (new seeds per round), the supply the "
                             "--pool-ratio arms and the pool filter pick from; the arms of all the pool's twins "
                             "(mixed in, pretraining) then take all K x N")
    parser.add_argument("--generator-pool", type=int, default=0, metavar="N",
                        help="train the generator on N other cases of the phantom draw, never on the classifier's "
                             "(the shared-generator protocol; adds the pool arms)")
    parser.add_argument("--pool-ratio", action="append", default=[], metavar="R",
                        help="with --generator-pool: adds the arm real + R synthetic per real case from the pool's "
                             "reports, half per class as SyntheticMixDataset serves them (the first of the pool's "
                             "twins of each class); repeat for several ratios")
    parser.add_argument("--pool-controls", action="store_true",
                        help="with --pool-ratio: per ratio, three more arms: the same twins with half of each "
                             "class's labels flipped (control: the gain without the class in the volumes; each ratio "
                             "arm is also compared with it), and as many of the pool's real volumes and of their "
                             "VAE round trips, balanced the same way (references at this ratio)")
    parser.add_argument("--strength", type=float, action="append", default=[],
                        help="adds the arm real + variations: each real case's volume noised to this fraction of "
                             "the sampler's chain and denoised under its own report and label (SDEdit), as many "
                             "per case as --twins; repeat for several strengths")
    parser.add_argument("--only-new-arms", action="store_true",
                        help="train real only and the --twins/--filter/pool arms, not the paper's other three")
    parser.add_argument("--arms", metavar="REGEX",
                        help="train real only and the arms whose name matches (e.g. 'filtered'): the others' "
                             "seeds give the same numbers as in an earlier run of the same work folder")
    parser.add_argument("--device", default="cpu",
                        help="where the generator trains and samples and the classifiers train (cuda: a GPU machine)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_paper_protocol.json")
    args = parser.parse_args()
    pool_ratios = [parse_pool_ratio(text, args.generator_pool) for text in args.pool_ratio]  # before hours of training
    if args.pool_controls and not pool_ratios:
        raise SystemExit("--pool-controls: give the ratios to control with --pool-ratio")
    if args.pool_filter_confidence is not None:
        from synthaug.errors import InputError
        from synthaug.mix.filter import check_confidence

        if not pool_ratios:
            raise SystemExit("--pool-filter-confidence: give the ratios to fill with --pool-ratio")
        try:
            check_confidence(args.pool_filter_confidence)
        except InputError as error:
            raise SystemExit(str(error).replace("--filter-confidence", "--pool-filter-confidence")) from None
    try:
        re.compile(args.arms or "")
    except re.error as error:
        raise SystemExit(f"--arms {args.arms!r}: not a regular expression ({error})") from None
    if args.pool_twins < 1 or (args.pool_twins > 1 and not args.generator_pool):
        raise SystemExit(f"--pool-twins {args.pool_twins}: give K >= 1, and K > 1 only with --generator-pool")
    vae_steps, ldm_steps = 300, 2000  # the step options' defaults, unless a --budget sets its own
    if args.budget == "bench":
        from bench_class_signal import BUDGETS

        from synthaug.apps.demo.run import DemoPlan

        plan, budget = DemoPlan(), BUDGETS["bench"]
        vae_steps, ldm_steps, args.prediction = budget["autoencoder_steps"], budget["ldm_steps"], "flow"
        args.set = [f"data.image_shape={list(plan.image_shape)}", *plan.extra_train, f"train.lr={budget['ldm_lr']}",
                    *args.set]
    args.vae_steps = vae_steps if args.vae_steps is None else args.vae_steps
    args.ldm_steps = ldm_steps if args.ldm_steps is None else args.ldm_steps

    import torch
    from monai.data import Dataset
    from rich.console import Console
    from rich.table import Table

    from classifiers import FitConfig, build_model, evaluate, fit
    from synthaug.apps.sweep.statistics import mean_ci
    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore
    from synthaug.ldm.bundle import load_bundle

    console = Console(width=max(Console().width, 160))
    args.work = args.work or RESULTS / (f"paper_protocol_{args.prediction}"
                                        + (f"_{args.budget}" if args.budget else ""))
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest_path, bundle = build_data(args.work, args.n_train, args.n_val, args.n_test, args.ldm_steps, args.vae_steps,
                                        args.prediction, tuple(args.set), args.autoencoder, args.generator_pool,
                                        args.device)
    manifest = load_manifest(manifest_path)
    real = manifest.items("train")
    seen = load_bundle(bundle, verify=False).train_case_ids
    if args.generator_pool:
        pool = load_manifest(manifest_path.with_name("generator.jsonl")).items("train")
        assert seen == {c["case_id"] for c in pool} and not seen & {c["case_id"] for c in manifest.items()}, \
            "generator leakage"
    else:
        assert seen == {c["case_id"] for c in real}, "generator leakage"
    sampling = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "guidance": args.guidance,
                "class_guidance": args.class_guidance}
    folder = f"synthetic-{args.sampler}-{args.steps}-{args.eta}-{args.guidance:g}" + (
        f"-cg{args.class_guidance:g}" if args.class_guidance is not None else "")
    twins = synthetic_twins(bundle, real, args.work / folder, sampling, device=args.device)
    console.print(f"data + generator + {len(twins)} synthetic twins ready in {time.perf_counter() - started:.0f} s")
    crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else None
    store = VolumeStore(load_bundle(bundle, verify=False).config.data, crop)
    predicted = [{**t, "label": t["predicted_label"]} for t in twins]
    every_twin = twins + [t for k in range(1, args.twins) for t in synthetic_twins(
        bundle, real, args.work / f"{folder}-round{k}", sampling, round_=k, device=args.device)]
    filter_record = pool_filter_record = None
    pretrain_epochs = args.epochs // 2 if args.pretrain_epochs is None else args.pretrain_epochs
    if not 0 < pretrain_epochs < args.epochs:
        raise SystemExit(f"--pretrain-epochs {pretrain_epochs}: give 1 .. {args.epochs - 1}")
    arms = {"real only": [(real, args.epochs)], "real + synthetic 1:1": [(real + twins, args.epochs)],
            "synthetic only (real labels)": [(twins, args.epochs)],
            "synthetic only (predicted labels)": [(predicted, args.epochs)],
            "pretrain synthetic, fine-tune real": [(twins, pretrain_epochs), (real, args.epochs - pretrain_epochs)]}
    if args.only_new_arms:
        arms = {"real only": arms["real only"]}
    if args.twins > 1:
        arms[f"real + synthetic {args.twins}:1"] = [(real + every_twin, args.epochs)]
    if args.generator_pool:  # seeds after every round of the real cases' twins
        pool_twins = [t for k in range(args.pool_twins) for t in synthetic_twins(  # seeds after the real cases' rounds
            bundle, pool, args.work / (f"{folder}-pool" + (f"-round{k}" if k else "")), sampling, round_=k,
            seed_offset=max(args.twins, 1) * len(real) + k * len(pool), device=args.device)]
        pool_round_trips = round_trips(bundle, pool, args.work / "pool-round-trips", args.device)
        arms.update({
            "real + synthetic from the pool's reports": [(real + pool_twins, args.epochs)],
            "pretrain synthetic from the pool's reports, fine-tune real": [(pool_twins, pretrain_epochs),
                                                                           (real, args.epochs - pretrain_epochs)],
            "pretrain the pool's real volumes, fine-tune real (reference)": [(pool, pretrain_epochs),
                                                                              (real, args.epochs - pretrain_epochs)],
            "real + the pool's real volumes (reference)": [(real + pool, args.epochs)],
            "real + the pool's VAE round trips (reference)": [(real + pool_round_trips, args.epochs)]})
    controls: dict[str, str] = {}  # ratio arm -> its decoupled-label control
    for ratio in pool_ratios:  # the paper's knob: how much synthetic data per real case
        arm, n = f"real + synthetic from the pool's reports {ratio.label}:1, balanced", ratio.synthetic_count(len(real))
        chosen = balanced_subset(pool_twins, n)
        arms[arm] = [(real + chosen, args.epochs)]
        if args.pool_controls:
            controls[arm] = f"{arm}, labels decoupled from the class (control)"
            arms[controls[arm]] = [(real + decoupled_labels(chosen), args.epochs)]
            arms[f"real + the pool's real volumes {ratio.label}:1, balanced (reference)"] = [
                (real + balanced_subset(pool, n), args.epochs)]
            arms[f"real + the pool's VAE round trips {ratio.label}:1, balanced (reference)"] = [
                (real + balanced_subset(pool_round_trips, n), args.epochs)]
    if args.pool_filter_confidence is not None:  # the class the volumes show, checked before they are mixed in
        trained_on = (load_manifest(pool_filter_manifest(manifest_path.with_name("generator.jsonl"),
                                                args.work / "pool-filter.jsonl"))
                      if args.pool_filter_on == "pool" else manifest)
        kept, pool_filter_record = filtered(pool_twins, trained_on, load_bundle(bundle, verify=False).config.data,
                                            crop, args.pool_filter_confidence, test=manifest.items("test"))
        pool_filter_record["trained_on"] = args.pool_filter_on
        console.print(f"pool filter ({args.pool_filter_on}) kept {pool_filter_record['kept']} of "
                      f"{pool_filter_record['of']} pool twins (class 0: {pool_filter_record['rate_by_class'][0]:.0%}, "
                      f"class 1: {pool_filter_record['rate_by_class'][1]:.0%}); the filter itself on the test split: "
                      f"AUROC {pool_filter_record['test_auroc']:.3f}, balanced accuracy "
                      f"{pool_filter_record['test_balanced_accuracy']:.3f} (threshold 0.5)")
        for ratio in pool_ratios:
            arm = (f"real + filtered synthetic from the pool's reports {ratio.label}:1, balanced "
                   f"(filter on {args.pool_filter_on} >= {args.pool_filter_confidence:g})")
            chosen = balanced_subset(kept, ratio.synthetic_count(len(real)))
            arms[arm] = [(real + chosen, args.epochs)]
            if args.pool_controls:
                controls[arm] = f"{arm}, labels decoupled from the class (control)"
                arms[controls[arm]] = [(real + decoupled_labels(chosen), args.epochs)]
    for strength in args.strength:  # seeds apart from the twins', one round per --twins
        rounds = [variations(bundle, real, args.work / (f"{folder}-variations-s{strength:g}" + (f"-round{k}" if k else "")),
                             sampling, strength, seed_offset=10**6 + k * len(real), device=args.device)
                  for k in range(max(args.twins, 1))]
        arms[f"real + variations (strength {strength:g})" + (f" {args.twins}:1" if args.twins > 1 else "")] = [
            (real + [v for r in rounds for v in r], args.epochs)]
    if args.strength:  # the limit of small strength: what the autoencoder alone does to the same cases
        arms["real + their VAE round trips (reference)"] = [
            (real + round_trips(bundle, real, args.work / "real-round-trips", args.device), args.epochs)]
    if args.filter_confidence is not None:
        kept, filter_record = filtered(every_twin, manifest, load_bundle(bundle, verify=False).config.data, crop,
                                       args.filter_confidence)
        console.print(f"filter kept {filter_record['kept']} of {filter_record['of']} twins "
                      f"(class 0: {filter_record['rate_by_class'][0]:.0%}, class 1: {filter_record['rate_by_class'][1]:.0%})")
        arms[f"real + filtered synthetic (>= {args.filter_confidence:g})"] = [(real + kept, args.epochs)]
    if args.arms:
        arms = {arm: phases for arm, phases in arms.items() if arm == "real only" or re.search(args.arms, arm)}
        controls = {arm: control for arm, control in controls.items() if arm in arms and control in arms}
    val, test = Dataset(manifest.items("val"), transform=store), Dataset(manifest.items("test"), transform=store)
    results: dict[str, list[dict]] = {}
    for arm, phases in arms.items():
        results[arm] = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            model = build_model(args.model, in_channels=1, num_classes=2, seed=seed)
            for phase, (items, epochs) in enumerate(phases):  # one phase, or pretraining then fine-tuning
                lr = args.fine_tune_lr if phase and args.fine_tune_lr is not None else args.lr
                config = FitConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, seed=seed, patience=None,
                                   samples_per_epoch=args.samples_per_epoch, device=args.device)
                fitted = fit(model, Dataset(items, transform=store), val, config, progress=False)
            scored = evaluate(model, test, config, threshold=fitted.threshold)
            results[arm].append({"seed": seed, **{m: scored.metrics.get(m) for m in METRICS},
                                 "best_epoch": fitted.best_epoch, "seconds": time.perf_counter() - t0})
            console.print(f"{arm}, seed {seed}: " + ", ".join(f"{m} {scored.metrics.get(m)}" for m in METRICS)
                          + f" ({time.perf_counter() - t0:.0f} s)")
    agree = sum(t["predicted_label"] == t["label"] for t in twins) / len(twins)
    by_case = class_by_training_case(twins, real, manifest.items("test"),
                                     VolumeStore(load_bundle(bundle, verify=False).config.data))
    table = Table(title=f"paper protocol on the phantom: {args.n_train} real training cases, "
                        + (f"a generator trained on {args.generator_pool} other cases, " if args.generator_pool else "")
                        + f"{args.model}, "
                        f"{args.seeds} seeds, test n={len(test)} (mean [95% CI])")
    for col in ("arm", *METRICS, "paper accuracy"):
        table.add_column(col)
    summary = {}
    for arm, rows in results.items():
        summary[arm] = {m: mean_ci([r[m] for r in rows]) for m in METRICS}
        cells = [f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]" if s["low"] is not None else
                 (f"{s['mean']:.3f}" if s["mean"] is not None else "n/a") for s in summary[arm].values()]
        paper = PAPER.get(arm, {}).get("accuracy")
        table.add_row(arm, *cells, "-" if paper is None else f"{paper:.2f}")
    console.print(table)
    # paired over seeds against real only, Holm-corrected across the other arms; then does the class in the volumes
    # matter? each ratio arm against the same volumes with decoupled labels
    gains = paired_gains(results, {arm: "real only" for arm in results if arm != "real only"}, console)
    versus_control = paired_gains(results, controls, console)
    console.print(f"{PAPER_NOTE}. Predicted label = real label for {agree:.0%} of the synthetic twins. The nearest "
                  f"real training case of {by_case['twins_nearest_own_case']:.0%} of the twins is their own case; "
                  f"class by training case (the nearest other one has the label): twins {by_case['twins']:.3f}, "
                  f"test cases {by_case['test']:.3f} (chance).")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out
    out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                               "paired_vs_real_only": gains, "paired_vs_decoupled_labels": versus_control,
                               "runs": results, "predicted_label_agreement": agree, "class_by_training_case": by_case,
                               "paper": PAPER_NOTE,
                               "filter": filter_record, "pool_filter": pool_filter_record,
                               "machine": platform.platform(), "cpus": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - started,
                               "date": time.strftime("%Y-%m-%d")}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
