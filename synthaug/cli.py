"""The ``synthaug`` command. Thin: parses arguments, calls library functions, prints results.

Library modules are imported inside each command so that ``synthaug --help`` stays instant.
User mistakes (``synthaug.errors.InputError``) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and where to look) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset: tiny (CPU, default), small, paper, reference (the paper's code)")
    p.add_argument("--config", type=Path, help="YAML/JSON config file (see `synthaug config show`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set phantom.difficulty=0.7 (repeatable)")


def _add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the bundle's text model run its own Python code (never taken from the bundle; "
                        "only for a model folder you trust)")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    """--batch-size and --precision of the commands that generate."""
    from synthaug import cli_types as T

    p.add_argument("--batch-size", type=T.count(1), help="volumes per batch (default: the bundle's, 32 at the tiny size)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="the networks' precision (default: the bundle's, auto = bf16 on a CPU with native bf16, "
                        "fp32 on other CPUs, fp16 on CUDA; fp32 reproduces earlier versions)")


def _config(args: argparse.Namespace, extra: Sequence[str] = ()):  # noqa: ANN202 - lazy import of the type
    from synthaug.config import load_config

    return load_config(args.config, preset=args.preset, overrides=[*args.overrides, *extra])


def _console():  # noqa: ANN202
    from rich.console import Console

    return Console()


# ---------------------------------------------------------------- commands


def cmd_phantom(args: argparse.Namespace) -> int:
    from synthaug.data.phantom import write_phantom_dataset
    from synthaug.report import progress_bar

    extra = []
    if args.n is not None:
        extra.append(f"phantom.n_cases={args.n}")
    if args.seed is not None:
        extra.append(f"phantom.seed={args.seed}")
    cfg = _config(args, extra)
    console = _console()
    with progress_bar(f"phantom: {cfg.phantom.n_cases} cases", console) as update:
        manifest = write_phantom_dataset(args.out, cfg.data, cfg.phantom, progress=update, overwrite=args.overwrite)
    return _show_dataset(manifest, console, read_images=False)


def cmd_data_check(args: argparse.Namespace) -> int:
    return _show_dataset(args.manifest, _console(), read_images=not args.no_images)


def _show_dataset(manifest: Path, console, read_images: bool) -> int:  # noqa: ANN001
    from synthaug.data.check import check_dataset
    from synthaug.report import dataset_tables, progress_bar

    with progress_bar("checking images" if read_images else "checking files", console) as update:
        summary = check_dataset(manifest, read_images=read_images, progress=update)
    for table in dataset_tables(summary):
        console.print(table)
    if summary.problems:
        console.print(f"[red]{len(summary.problems)} problem(s) in {manifest}[/red]")
        return EXIT_BAD_INPUT
    console.print(f"manifest OK: {manifest}")
    return 0


def cmd_picai(args: argparse.Namespace) -> int:
    from synthaug.data.picai import picai_to_manifest

    cfg = _config(args)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    result = picai_to_manifest(
        args.images, args.labels, args.out,
        label_rule=args.label_rule or cfg.data.label_rule,
        modalities=modalities,
        splits_json=args.splits, fold=args.fold, seed=args.seed,
        split_fractions=cfg.phantom.split_fractions,
        reports=cfg.data.reports,
        on_missing="skip" if args.skip_missing else "error",
    )
    console = _console()
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} case(s) without images: "
                      f"{', '.join(result.skipped[:10])}{' ...' if len(result.skipped) > 10 else ''}[/yellow]")
    return _show_dataset(result.manifest, console, read_images=False)


def cmd_train(args: argparse.Namespace) -> int:
    from rich.table import Table

    from synthaug.ldm.train import train_generator
    from synthaug.report import stage_progress

    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bars say what is loading
    cfg = _config(args)
    console = _console()
    with stage_progress(console) as update:
        result = train_generator(args.data, args.out, cfg, autoencoder=args.autoencoder, work_dir=args.work,
                                 resume=args.resume, overwrite=args.overwrite, device=args.device, progress=update)
    table = Table(title="Trained bundle")
    table.add_column("what")
    table.add_column("value")
    for what, value in (("bundle", str(result.bundle)), ("fingerprint", result.fingerprint[:16]),
                        ("LDM steps", str(result.steps)), ("final loss", f"{result.final_loss:.4f}"),
                        ("wall time", f"{result.seconds / 60:.1f} min")):
        table.add_row(what, value)
    console.print(table)
    return 0


def _labels_for(label: str, n: int) -> list[int]:
    from synthaug.errors import InputError

    if label == "both":
        return [i % 2 for i in range(n)]
    if label in ("0", "1"):
        return [int(label)] * n
    raise InputError(f"must be 0, 1 or both, got {label!r}", where="--label", fix="ask for class 0 or 1")


def cmd_generate(args: argparse.Namespace) -> int:
    import json
    import shutil

    from rich.table import Table

    from synthaug.data.io import make_temp_dir
    from synthaug.errors import InputError
    from synthaug.generate import CCELLAGenerator, write_volume
    from synthaug.metrics.montage import save_volumes
    from synthaug.report import progress_bar

    labels = _labels_for(args.label, args.n)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty", where=str(out),
                         fix="choose another --out or pass --overwrite")
    generator = CCELLAGenerator.from_bundle(
        args.bundle, device=args.device, sampler=args.sampler, steps=args.steps, eta=args.eta,
        guidance=args.guidance, class_guidance=args.class_guidance, ema=not args.no_ema,
        class_source=args.class_source, report_source=args.report_source, batch_size=args.batch_size,
        precision=args.precision, trust_remote_code=args.trust_remote_code)
    reports = [args.report] * args.n if args.report is not None else None
    console = _console()
    with progress_bar(f"generate: {args.n} volumes, {generator.sampler.name} x {generator.sampler.steps}",
                      console) as update:
        result = generator.generate(labels, reports=reports, seeds=range(args.seed, args.seed + args.n),
                                    progress=update)
    tmp = make_temp_dir(out)
    try:
        lines = []
        for i, (volume, record) in enumerate(zip(result.volumes, result.provenance)):
            name = f"synthetic_{i:05d}_label{record['label']}.nii.gz"
            write_volume(volume, result.affine, tmp / name)
            lines.append(json.dumps({"file": name, **record}, sort_keys=True) + "\n")
        (tmp / "provenance.jsonl").write_text("".join(lines), encoding="utf-8")
        shown = min(args.n, 8)
        save_volumes([v[0].numpy() for v in result.volumes[:shown]],
                     [f"#{i} label {r['label']} p={r['predicted_prob']:.2f}"
                      for i, r in enumerate(result.provenance[:shown])], tmp / "montage.png")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    table = Table(title="synthaug generate", show_header=False)
    for what, value in (("volumes", f"{args.n} (label 0: {labels.count(0)}, label 1: {labels.count(1)})"),
                        ("sampler", f"{generator.sampler.name}, {generator.sampler.steps} steps"
                                    + (f", eta {generator.sampler.eta:g}" if generator.sampler.name == "ddim" else "")
                                    + f", guidance {generator.guidance}, class guidance {generator.class_guidance}"
                                    + f", class from {generator.class_source}, {generator.precision}"),
                        ("bundle", generator.fingerprint[:16]), ("written to", str(out))):
        table.add_row(what, value)
    console.print(table)
    return 0


def _print_table(console, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _shard(text: str | None) -> tuple[int, int]:
    from synthaug.errors import InputError

    if text is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard {text!r} is not I/N with 0 <= I < N", where="--shard", fix="e.g. --shard 0/4")
    return i, n


def _class_balance(text: str):  # noqa: ANN202 - str or {label: weight}
    from synthaug.errors import InputError

    if text in ("equal",):
        return text
    try:
        weights = {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        weights = None
    if not weights:
        raise InputError(f"class balance {text!r} is not 'equal' or weights like 0:1,1:2", where="--class-balance",
                         fix="use equal, or LABEL:WEIGHT pairs such as 0:1,1:2")
    return weights


def _torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by torchrun with more than one process, else None."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def cmd_pregenerate(args: argparse.Namespace) -> int:

    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import FILTER_FILE, SyntheticCache, class_counts
    from synthaug.mix.filter import VolumeFilter, check_confidence
    from synthaug.report import progress_bar

    shard = _shard(args.shard) if args.shard or not _torchrun_shard() else _torchrun_shard()  # type: ignore[assignment]
    balance = _class_balance(args.class_balance)
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    counts = class_counts(args.n, balance)
    check_confidence(args.filter_confidence)
    generator = CCELLAGenerator.from_bundle(
        args.bundle, device=args.device, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
        class_guidance=args.class_guidance, class_source=args.class_source, report_source=args.report_source,
        batch_size=args.batch_size, precision=args.precision, trust_remote_code=args.trust_remote_code)
    kept = args.out / FILTER_FILE
    volume_filter = VolumeFilter.from_option(
        args.filter, kept, generator.bundle.config.data, manifest=args.filter_data, model=args.filter_model,
        confidence=args.filter_confidence, epochs=args.filter_epochs, crop=_crop(args.filter_crop, "--filter-crop")) \
        if args.filter else None
    cache = SyntheticCache.create(args.out, generator, file_format=args.format, seed=args.seed,
                                  allow_foreign=args.allow_foreign, volume_filter=volume_filter)
    if args.filter == "train" and not kept.is_file():
        volume_filter.save(kept)
    console = _console()
    with progress_bar(f"pregenerate shard {shard[0]}/{shard[1]}", console) as update:
        made = cache.pregenerate(generator, counts=counts, shard=shard, batch_size=generator.batch_size,
                                 progress=update, allow_foreign=args.allow_foreign, volume_filter=volume_filter)
    return _show_cache(cache, console, made=made)


def _show_cache(cache, console, made: int | None = None) -> int:  # noqa: ANN001
    from rich.table import Table

    info = cache.info()
    g = info["generator"]
    table = Table(title=f"synthetic cache {info['path']}", show_header=False)
    rows = [("volumes", f"{info['volumes']} (" + ", ".join(f"label {c}: {n}" for c, n in info["per_class"].items())
             + ")"), ("made now", None if made is None else str(made)),
            ("reports", f"{info['distinct_reports']} distinct; sources {info['report_sources']}"),
            ("predicted = requested", "-" if info["predicted_agrees"] is None else f"{info['predicted_agrees']:.0%}"),
            ("sampler", f"{g['sampler']} x {g['steps']}" + (f", eta {g.get('eta', 0):g}" if g["sampler"] == "ddim" else "")
             + f", guidance {g['guidance']}, class guidance {g['class_guidance']}"
             + f", class from {g['class_source']}, {g['precision']}"),
            ("filter", None if not info["filter"] else
             f"{info['filter']['model']} {info['filter']['weights_sha256'][:12]}, confidence "
             f"{info['filter']['confidence']:g}; rejected " + (", ".join(f"label {c}: {n}" for c, n in
                                                                    info["rejected"].items()) or "none")),
            ("bundle", info["bundle_fingerprint"][:16]), ("format", f"{info['file_format']} {info['shape']}"),
            ("size on disk", f"{info['bytes'] / 2**20:.1f} MiB")]
    for what, value in rows:
        if value is not None:
            table.add_row(what, value)
    console.print(table)
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    from synthaug.mix.cache import SyntheticCache

    return _show_cache(SyntheticCache(args.cache), _console())


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from synthaug.mix.cache import SyntheticCache

    report = SyntheticCache(args.cache).verify()
    console = _console()
    problems = [("missing files", report.missing), ("corrupt files (sha256)", report.corrupt),
                ("duplicate ids", report.duplicates), ("invalid manifest lines", report.bad_lines)]
    for what, found in problems:
        if found:
            console.print(f"[red]{what}:[/red] {len(found)} (first: {', '.join(map(str, found[:5]))})")
    if report.bad_lines:
        first = report.bad_lines[0]
        console.print(f"manifest line {first} {report.why[first]}", markup=False)
    for what, found in (("files without a manifest line", report.orphans), ("temporary files", report.temp_files)):
        if found:
            console.print(f"{what} (harmless, left by killed writers): {len(found)}")
    if report.ok:
        console.print(f"cache OK: {report.volumes} volumes verified")
        return 0
    sys.stderr.write(f"synthaug: error: {args.cache}: cache has problems (see above); re-run `synthaug pregenerate` "
                     "with the same settings to remake missing or corrupt volumes\n")
    return EXIT_BAD_INPUT


def _comma_list(text: str) -> list[str]:
    """A comma-separated option as its parts (ratios, models and sources are checked by SweepSettings.check)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _crop(text: str | None, where: str = "--crop") -> tuple[int, int, int] | None:
    from synthaug.errors import InputError

    if not text:
        return None
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 3 or min(box) < 1:
        raise InputError(f"crop {text!r} is not X,Y,Z voxels", where=where, fix=f"e.g. {where} 32,32,16")
    return box  # type: ignore[return-value]


def cmd_sweep(args: argparse.Namespace) -> int:

    from synthaug.errors import InputError
    from synthaug.report import stage_progress
    from synthaug.sweep import SweepSettings, run_sweep
    from synthaug.sweep_report import HEADER, table_rows

    low, _, high = (args.ratio_range or "0.1:4").partition(":")
    try:
        ratio_min, ratio_max = float(low), float(high)  # their range is checked by SweepSettings.check
    except ValueError:
        raise InputError(f"ratio range {args.ratio_range!r} is not MIN:MAX", where="--ratio-range",
                         fix="e.g. --ratio-range 0.1:4") from None
    settings = SweepSettings(
        ratios=_comma_list(args.ratios), search=args.search, ratio_min=ratio_min, ratio_max=ratio_max,
        n_trials=args.trials, tune_lr=args.tune_lr, tune_epochs=args.tune_epochs, seeds=args.seeds,
        models=_comma_list(args.models), schedules=args.schedules, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, patience=args.patience,
        metric=args.metric, class_balance=args.class_balance, label_from=args.label_from, storage=args.storage,
        samples_per_epoch=args.samples_per_epoch, crop=_crop(args.crop), prune=not args.no_prune,
        study_name=args.study_name, allow_leakage=args.allow_leakage, device=args.device)
    data = _config(args).data if (args.preset or args.config or args.overrides) else None  # None: the generator's
    console = _console()
    with stage_progress(console) as progress:
        summary = run_sweep(args.data, [Path(p) for p in _comma_list(args.synthetic)], args.out, settings, data,
                            progress=progress)
    for model in summary["per_model"]:
        _print_table(console, f"synthaug sweep: {model}, {summary['seeds']} seeds", HEADER, table_rows(summary, model))
    console.print(f"result: {summary['verdict']}")
    if summary["unfinished"]:
        console.print(f"not finished: arm {', '.join(summary['unfinished'])} (running in another worker, or "
                      "left by one that stopped under 2 minutes ago): run the same command again to finish")
    console.print(f"wrote {args.out}/report.md, summary.json, trials.csv, ratio_vs_metric.png, arms_heatmap.png")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from synthaug.evaluate import evaluate_synthetic
    from synthaug.metrics import headline
    from synthaug.report import stage_progress

    options = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("guidance", args.guidance),
                                 ("class_guidance", args.class_guidance), ("device", args.device)) if v is not None}
    console = _console()
    with stage_progress(console) as progress:
        metrics = evaluate_synthetic(
            args.real, args.synthetic, args.out, split=args.split, bundle=args.bundle,
            paper_protocol=args.paper_protocol, generator_options=options, medicalnet=args.medicalnet,
            radimagenet=args.radimagenet, fidelity_model=None if args.fidelity_model == "none" else args.fidelity_model,
            fidelity_epochs=args.fidelity_epochs, resize=args.resize, max_synthetic=args.max_synthetic,
            features=args.features,
            progress=progress)
    table = Table(title="synthaug evaluate", show_header=False)
    for what, value in headline(metrics):
        table.add_row(what, value)
    console.print(table)
    console.print(f"wrote {args.out}/metrics.json, report.md, montages, memorisation.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:

    from synthaug.demo import run_demo
    from synthaug.demo_report import ratio_table
    from synthaug.report import stage_progress

    console = _console()
    with stage_progress(console) as progress:
        summary = run_demo(args.out, quick=args.quick, force=args.force, progress=progress, log=console.print)
    header, rows = ratio_table(summary)
    _print_table(console, f"synthaug demo: {summary['models'][0]}, {summary['seeds']} seeds per ratio (test split)",
                 header, rows)
    console.print(f"[bold]Result:[/bold] {summary['verdict']}.")
    console.print(f"report: {args.out / 'report.html'} and {args.out / 'report.md'}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from synthaug.config import dump_config

    sys.stdout.write(dump_config(_config(args), fmt=args.format))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from synthaug import __version__
    from synthaug import cli_types as T

    parser = _Parser(prog="synthaug", description="Synthetic 3D MRI (CCELLA latent diffusion) for classifier training.")
    parser.add_argument("--version", action="version", version=f"synthaug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("phantom", help="write the procedural prostate-MRI phantom dataset + manifest")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder (images/ + manifest.jsonl)")
    p.add_argument("--n", type=T.count(1), help="number of cases (default: phantom.n_cases = 200)")
    p.add_argument("--seed", type=T.count(0), help="random seed (default: phantom.seed = 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_config_options(p)
    p.set_defaults(func=cmd_phantom)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", metavar="COMMAND",
                                                                       parser_class=_Parser)
    p = data.add_parser("check", help="validate a manifest and its images; print a summary")
    p.add_argument("manifest", type=Path, help="manifest (.jsonl or .csv)")
    p.add_argument("--no-images", action="store_true", help="check files exist and read headers only")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("picai", help="PI-CAI layout (images/*.mha + marksheet.csv) -> manifest")
    p.add_argument("--images", type=Path, required=True, help="folder with {patient_id}/{patient_id}_{study_id}_t2w.mha")
    p.add_argument("--labels", type=Path, required=True, help="picai_labels folder (clinical_information/marksheet.csv)")
    p.add_argument("--out", type=T.out_file, required=True, help="manifest to write (.jsonl or .csv)")
    p.add_argument("--label-rule", choices=["pirads3", "pirads4", "cspca"], help="default: data.label_rule (pirads3)")
    p.add_argument("--modalities", default="t2w,adc,hbv", help="comma-separated, t2w first (default: t2w,adc,hbv)")
    p.add_argument("--splits", type=Path, help="picai_baseline-style splits.json (list of {train, val})")
    p.add_argument("--fold", type=T.count(0), default=0, help="fold of --splits to use (default 0)")
    p.add_argument("--seed", type=T.count(0), default=0, help="seed for the split and report phrasing")
    p.add_argument("--skip-missing", action="store_true", help="skip marksheet cases without images")
    _add_config_options(p)
    p.set_defaults(func=cmd_picai)

    p = sub.add_parser("train", help="train the CCELLA generator (VAE, then LDM) and write a bundle")
    p.add_argument("--data", type=Path, required=True, help="manifest; its 'train' split is used")
    p.add_argument("--out", type=T.out_folder, required=True, help="bundle folder to write")
    p.add_argument("--autoencoder", type=Path, help="a trained bundle or autoencoder .safetensors to reuse")
    p.add_argument("--work", type=T.out_folder, help="folder for caches and checkpoints (default: OUT.work)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle / discard checkpoints")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu (default) or cuda[:N]")
    _add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="sample volumes from a trained bundle: NIfTI + provenance.jsonl + montage.png")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `synthaug train`")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder")
    p.add_argument("--n", type=T.count(1), default=4, help="number of volumes (default 4)")
    p.add_argument("--label", default="both", help="0, 1 or both (alternating; default)")
    p.add_argument("--report", help="one report for every volume (default: the report source)")
    p.add_argument("--report-source", choices=["train", "template", "empty"],
                   help="where reports come from when --report is not given (default: train)")
    p.add_argument("--sampler", choices=["auto", "ddpm", "ddim", "dpm++", "flow"], help="default: the bundle's (auto)")
    p.add_argument("--steps", type=T.count(1), help="sampling steps (default: all training steps for ddpm, 20 ddim/dpm++, 30 flow)")
    p.add_argument("--eta", type=T.finite(0), help="DDIM noise (default: the bundle's, 1 = DDPM's variance; 0: deterministic)")
    p.add_argument("--guidance", type=T.finite(0), help="classifier-free guidance scale (default 1 = unguided)")
    p.add_argument("--class-guidance", type=T.finite(0),
                   help="class guidance scale: the class against the null class (default: 4 for a bundle trained "
                        "with loss.p_null > 0, else 1 = none)")
    p.add_argument("--class-source", choices=["report", "label"],
                   help="report: the adapter predicts the class from the report (default); label: use --label")
    p.add_argument("--seed", type=T.count(0), default=0, help="seed of the first volume; volume i uses seed+i")
    _add_batch_options(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw LDM weights instead of the EMA ones")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_trust_option(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("pregenerate", help="fill a synthetic cache from a bundle (resumable, shardable)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `synthaug train`")
    p.add_argument("--out", type=T.out_folder, required=True, help="cache folder (created, or resumed)")
    p.add_argument("--n", "--volumes", dest="n", type=T.count(1), required=True,
                   help="volumes in the cache when every shard is done (under torchrun write --volumes: torchrun "
                        "reads --n as one of its own options)")
    p.add_argument("--class-balance", default="equal", help="equal (default) or weights, e.g. 0:1,1:2")
    p.add_argument("--shard", help="I/N: make only shard I of N (run N processes or nodes on one folder); "
                                   "under torchrun the default is RANK/WORLD_SIZE")
    _add_batch_options(p)
    p.add_argument("--format", choices=["nifti-gz", "nifti"], default="nifti-gz",
                   help="nifti-gz (default, smaller) or nifti (uncompressed, faster to load)")
    p.add_argument("--seed", type=T.count(0), default=0, help="cache seed: volume seeds derive from it (default 0)")
    p.add_argument("--sampler", choices=["auto", "ddpm", "ddim", "dpm++", "flow"], help="default: the bundle's (auto)")
    p.add_argument("--steps", type=T.count(1), help="sampling steps (default: the sampler's)")
    p.add_argument("--guidance", type=T.finite(0), help="classifier-free guidance scale (default 1)")
    p.add_argument("--class-guidance", type=T.finite(0),
                   help="class guidance scale (default: 4 for a bundle trained with a null class, else 1 = none)")
    p.add_argument("--class-source", choices=["report", "label"], help="default: report")
    p.add_argument("--report-source", choices=["train", "template", "empty"], help="default: train")
    p.add_argument("--allow-foreign", action="store_true", help="write into a cache made by another bundle")
    p.add_argument("--filter", metavar="train|WEIGHTS",
                   help="keep only volumes a real-data classifier gives the requested class: 'train' trains one on "
                        "--filter-data's train split, or a classifiers model's .safetensors weights")
    p.add_argument("--filter-data", type=Path, help="manifest whose train split trains the filter (--filter train)")
    p.add_argument("--filter-model", default="tiny-cnn", help="the filter's classifier (default tiny-cnn)")
    p.add_argument("--filter-confidence", type=T.finite(), default=0.8,
                   help="keep a volume when P(requested class) >= this, in (0.5, 1) (default 0.8)")
    p.add_argument("--filter-epochs", type=T.count(1), default=10, help="epochs of --filter train (default 10)")
    p.add_argument("--filter-crop", help="X,Y,Z: the filter sees a centred box of this many voxels")
    _add_trust_option(p)
    p.add_argument("--device", type=T.device, default="cpu", help="cpu (default) or cuda[:N]")
    p.set_defaults(func=cmd_pregenerate)

    cache = sub.add_parser("cache", help="synthetic cache tools").add_subparsers(dest="cache_command", metavar="COMMAND",
                                                                                parser_class=_Parser)
    p = cache.add_parser("verify", help="check every volume against the manifest (missing, corrupt, duplicates)")
    p.add_argument("cache", type=Path, help="cache folder")
    p.set_defaults(func=cmd_cache_verify)
    p = cache.add_parser("info", help="counts per class, reports, sampler, bundle, size on disk")
    p.add_argument("cache", type=Path, help="cache folder")
    p.set_defaults(func=cmd_cache_info)

    p = sub.add_parser("evaluate", help="quality of synthetic volumes: FID/KID (3D, 2.5D), diversity, memorisation, "
                                        "conditioning fidelity, montages")
    p.add_argument("--real", type=Path, required=True, help="manifest of the real data")
    p.add_argument("--split", default="test", help="real split to compare with (default: test)")
    p.add_argument("--synthetic", type=Path, help="cache folder (synthaug pregenerate)")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder")
    p.add_argument("--paper-protocol", action="store_true",
                   help="instead of a cache: one synthetic volume per real case of --split, from its report (--bundle)")
    p.add_argument("--bundle", type=Path, help="bundle for --paper-protocol")
    p.add_argument("--sampler", choices=["auto", "ddpm", "ddim", "dpm++", "flow"], help="for --paper-protocol")
    p.add_argument("--steps", type=T.count(1), help="for --paper-protocol")
    p.add_argument("--guidance", type=T.finite(0), help="for --paper-protocol")
    p.add_argument("--class-guidance", type=T.finite(0), help="for --paper-protocol (default: the bundle's)")
    p.add_argument("--device", type=T.device, help="for --paper-protocol generation: cpu or cuda[:N]")
    p.add_argument("--medicalnet", type=Path, help="MedicalNet ResNet-50 weights (local file) for 3D FID")
    p.add_argument("--radimagenet", type=Path, help="RadImageNet ResNet-50 weights (local file) for 2.5D FID")
    p.add_argument("--fidelity-model", default="tiny-cnn",
                   help="classifier trained on real train/val to score conditioning fidelity, or none")
    p.add_argument("--fidelity-epochs", type=T.count(1), default=10)
    p.add_argument("--max-synthetic", type=T.count(1), help="evaluate at most this many cache volumes (evenly spaced)")
    p.add_argument("--resize", action="store_true", help="resample volumes of another shape instead of refusing")
    p.add_argument("--features", choices=["judge", "seeded"], default="judge",
                   help="3D features for FID/KID/memorisation without --medicalnet: judge (the fidelity classifier's, "
                        "trained on the real train split; default) or seeded (random weights)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="Optuna study of the synthetic:real ratio -> classifier metrics, with statistics")
    p.add_argument("--data", type=Path, required=True, help="manifest with train, val and test splits")
    p.add_argument("--synthetic", required=True,
                   help="cache folder (pregenerate) or bundle folder; several, comma-separated, are compared as a "
                        "dimension of the grid (e.g. caches made at guidance 1, 2 and 4), named by their settings")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder (study.db, trials.csv, report.md, ...)")
    p.add_argument("--ratios", default="0,0.25,0.5,1,2,4,synthetic-only", help="grid (default: %(default)s)")
    p.add_argument("--schedules", default="constant",
                   help="ratio schedules crossed with the ratios: constant, decay (linear from the ratio to 0 over "
                        "the run), cosine, pretrain:K (synthetic only for K epochs, then real only; one arm) "
                        "(default: %(default)s)")
    p.add_argument("--search", choices=["grid", "tpe"], default="grid", help="grid (default) or TPE on a log range")
    p.add_argument("--ratio-range", help="MIN:MAX for --search tpe (default 0.1:4)")
    p.add_argument("--trials", type=T.count(1), default=10, help="trials for --search tpe (default 10)")
    p.add_argument("--tune-lr", action="store_true", help="also search the learning rate")
    p.add_argument("--tune-epochs", action="store_true", help="also search the number of epochs")
    p.add_argument("--seeds", type=T.count(1), default=5, help="classifiers per ratio (default 5)")
    p.add_argument("--models", "--model", dest="models", default="efficientnet-b0",
                   help="classifiers, comma-separated: every arm trains with each, one table per classifier "
                        "(default: efficientnet-b0, the paper's)")
    p.add_argument("--epochs", type=T.count(1), default=30)
    p.add_argument("--batch-size", type=T.count(1), default=4)
    p.add_argument("--lr", type=T.finite(0, above=True), default=1e-4)
    p.add_argument("--patience", type=T.count(1), default=10, help="early-stopping patience in epochs")
    p.add_argument("--crop", help="X,Y,Z: the classifier sees a centred box of this many voxels (default: all)")
    p.add_argument("--no-prune", action="store_true",
                   help="train every seed of every arm (no median pruner within each classifier)")
    p.add_argument("--samples-per-epoch", type=T.count(0),
                   help="items per epoch for every ratio, so that ratios get equal optimiser steps "
                        "(default: 2 x the real training items; 0: one pass over each ratio's set)")
    p.add_argument("--metric", default="auroc", help="validation metric that selects models and ranks ratios")
    p.add_argument("--class-balance", default="equal", choices=["equal", "match_real", "fill_minority"])
    p.add_argument("--label-from", default="requested", choices=["requested", "predicted"],
                   help="synthetic labels: the class asked for, or the adapter's prediction from the report")
    p.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite in --out)")
    p.add_argument("--study-name", default="synthaug-sweep")
    p.add_argument("--allow-leakage", action="store_true", help="accept a generator trained on val/test cases")
    p.add_argument("--device", type=T.device_or_auto, default="auto", help="auto (default), cpu or cuda[:N]")
    _add_config_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="everything on the embedded phantom on a CPU: data, train, pregenerate, "
                                    "evaluate, sweep, report")
    p.add_argument("--out", type=T.out_folder, default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="~2 minutes: fewer cases, steps and seeds; same stages")
    p.add_argument("--force", action="store_true", help="redo every stage (default: reuse finished ones)")
    p.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_command",
                                                                                 metavar="COMMAND", parser_class=_Parser)
    p = config.add_parser("show", help="print the resolved configuration (a valid config file)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    _add_config_options(p)
    p.set_defaults(func=cmd_config_show)
    return parser


def _output_paths(args: argparse.Namespace) -> list[Path | None]:
    """The files and folders a command writes (train's default work folder included)."""
    out, work = getattr(args, "out", None), getattr(args, "work", None)
    if args.func is cmd_train and work is None and out is not None:
        work = out.with_name(out.name + ".work")
    return [out, work]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``synthaug`` and ``python -m synthaug``; returns the exit code.

    The one guard between a user and a traceback: ``SynthaugError`` becomes one line and its exit code;
    an input error (exit 2) also removes the output folders this command created, so a refused command
    leaves nothing behind. An interrupted command keeps them (checkpoints there resume with --resume).
    """
    parser = build_parser()
    try:  # usage errors, --help and --version end here with their exit code (called as a function too)
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:  # a command group without its subcommand, or nothing at all
            parser.parse_args([args.command, "--help"] if args.command else ["--help"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    from synthaug.threads import choose_wait_policy

    # Before torch (imported lazily by the commands) starts OpenMP: on a CPU other processes are using, idle
    # threads sleep instead of spinning (synthaug/threads.py, benchmarks/bench_contention.py).
    choose_wait_policy()
    from synthaug.cli_types import new_paths, remove_new
    from synthaug.errors import SynthaugError

    created = new_paths(_output_paths(args))
    try:
        return func(args)
    except SynthaugError as exc:
        sys.stderr.write(f"synthaug: error: {exc.message}\n")
        if exc.exit_code == EXIT_BAD_INPUT:
            remove_new(created)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("synthaug: interrupted\n")
        return 130
    except OSError as exc:  # the file system said no (disk full, permissions, a path that vanished)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"synthaug: error: {where}{exc.strerror or exc}; check the path, its permissions and "
                         "free space, then run the command again\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
