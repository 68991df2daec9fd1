"""The ``synthaug`` command. Thin: each ``cmd_*`` parses its arguments, makes one library call and prints
the result; ``build_parser`` assembles one small parser function per command.

Library modules are imported inside each command so that ``synthaug --help`` stays instant.
User mistakes (``synthaug.errors.InputError``) print one line and exit with code 2. Logging levels of
the libraries underneath (transformers, Optuna) are set here, never in library code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from synthaug import cli_types as T

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and where to look) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _config(args: argparse.Namespace, extra: Sequence[str] = ()):  # -> synthaug.config.SynthaugConfig
    from synthaug.config import load_config

    return load_config(args.config, preset=args.preset, overrides=[*args.overrides, *extra])


def _console():  # -> rich.console.Console
    from rich.console import Console

    return Console()


def _print_rows(console, title: str, rows: Sequence[tuple[str, str | None]]) -> None:
    """A two-column rich table of (what, value); rows whose value is None are left out."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for what, value in rows:
        if value is not None:
            table.add_row(what, value)
    console.print(table)


def _print_table(console, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _quiet_libraries(optuna: bool = False) -> None:
    """Our own bars say what is loading and training: off go transformers' bars (and Optuna's per-trial log)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if optuna:
        import optuna as optuna_module

        optuna_module.logging.set_verbosity(optuna_module.logging.WARNING)


GENERATOR_OPTIONS = ("device", "sampler", "steps", "eta", "guidance", "class_guidance", "guidance_interval",
                     "class_source", "report_source", "batch_size", "precision", "trust_remote_code")


def _generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """``CCELLAGenerator.from_bundle`` keywords from the options a command has and the user gave."""
    options = {k: getattr(args, k) for k in GENERATOR_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "no_ema", False):
        options["ema"] = False
    return options


# ---------------------------------------------------------------- commands


def cmd_phantom(args: argparse.Namespace) -> int:
    from synthaug.console import progress_bar
    from synthaug.data.phantom import write_phantom_dataset

    extra = [f"phantom.{key}={value}" for key, value in (("n_cases", args.n), ("seed", args.seed)) if value is not None]
    if args.sequences is not None:  # one owner: data.modalities
        extra.append(f"data.modalities=[{','.join(args.sequences)}]")
    cfg = _config(args, extra)
    console = _console()
    with progress_bar(f"phantom: {cfg.phantom.n_cases} cases", console) as update:
        manifest = write_phantom_dataset(args.out, cfg.data, cfg.phantom, progress=update, overwrite=args.overwrite)
    return _show_dataset(manifest, console, read_images=False)


def cmd_data_check(args: argparse.Namespace) -> int:
    return _show_dataset(args.manifest, _console(), read_images=not args.no_images)


def _show_dataset(manifest: Path, console, read_images: bool) -> int:
    from synthaug.console import dataset_tables, progress_bar
    from synthaug.data.check import check_dataset

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
    result = picai_to_manifest(
        args.images, args.labels, args.out, label_rule=args.label_rule or cfg.data.label_rule,
        modalities=tuple(T.comma_list(args.modalities)), splits_json=args.splits, fold=args.fold, seed=args.seed,
        split_fractions=cfg.phantom.split_fractions, reports=cfg.data.reports,
        on_missing="skip" if args.skip_missing else "error")
    console = _console()
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} case(s) without images: "
                      f"{', '.join(result.skipped[:10])}{' ...' if len(result.skipped) > 10 else ''}[/yellow]")
    return _show_dataset(result.manifest, console, read_images=False)


def cmd_train(args: argparse.Namespace) -> int:
    from synthaug.console import stage_progress
    from synthaug.ldm.train import train_generator

    _quiet_libraries()
    cfg = _config(args)
    console = _console()
    with stage_progress(console) as update:
        result = train_generator(args.data, args.out, cfg, autoencoder=args.autoencoder, work_dir=args.work,
                                 resume=args.resume, overwrite=args.overwrite, device=args.device, progress=update)
    _print_rows(console, "Trained bundle", [
        ("bundle", str(result.bundle)), ("fingerprint", result.fingerprint[:16]), ("LDM steps", str(result.steps)),
        ("final loss", f"{result.final_loss:.4f}"), ("wall time", f"{result.seconds / 60:.1f} min")])
    return 0


def _labels_for(label: str, n: int) -> list[int]:
    from synthaug.errors import InputError

    if label == "both":
        return [i % 2 for i in range(n)]
    if label in ("0", "1"):
        return [int(label)] * n
    raise InputError(f"must be 0, 1 or both, got {label!r}", where="--label", fix="ask for class 0 or 1")


def _sampler_line(g: dict[str, Any]) -> str:
    """The sampler settings of a generator or cache, as one line."""
    return (f"{g['sampler']} x {g['steps']}" + (f", eta {g.get('eta', 0):g}" if g["sampler"] == "ddim" else "")
            + f", guidance {g['guidance']}, class guidance {g['class_guidance']}"
            + (f" on t/T in [{g['guidance_interval'][0]:g}, {g['guidance_interval'][1]:g}]"
               if g.get("guidance_interval", [0, 1]) != [0, 1] else "")
            + f", class from {g['class_source']}, {g['precision']}")


def cmd_generate(args: argparse.Namespace) -> int:
    from synthaug.console import progress_bar
    from synthaug.export import export_volumes
    from synthaug.generate import CCELLAGenerator

    _check_variation_options(args)  # the options alone, before the bundle is loaded
    labels = _labels_for(args.label, args.n) if args.vary is None else []
    generator = CCELLAGenerator.from_bundle(args.bundle, **_generator_options(args))
    reports = [args.report] * args.n if args.report is not None else None
    variations = None
    if args.vary is not None:
        labels, reports, variations = _variation_request(args, generator)
    console = _console()
    what = "variations" if variations else "volumes"
    with progress_bar(f"generate: {args.n} {what}, {generator.sampler.name} x {generator.sampler.steps}",
                      console) as update:
        provenance = export_volumes(generator, labels, args.out, seeds=range(args.seed, args.seed + args.n),
                                    reports=reports, overwrite=args.overwrite, progress=update, variations=variations)
    rows = [(what, f"{args.n} (label 0: {labels.count(0)}, label 1: {labels.count(1)})")]
    if variations:
        rows.append(("of", f"the train split of {args.vary} ({len(set(variations[1]))} cases), strength "
                           f"{variations[2]:g}: the last {generator.sampler.steps - _start(generator, variations[2])} "
                           f"of {generator.sampler.steps} steps"))
    _print_rows(console, "synthaug generate", [
        *rows, ("sampler", _sampler_line(generator.settings())), ("class input", _class_input_line(
            generator, provenance, "each case's label" if variations else "--label")),
        ("bundle", generator.fingerprint[:16]), ("written to", str(args.out))])
    return 0


def _start(generator, strength: float) -> int:
    from synthaug.ldm.sampling import start_step

    return start_step(generator.sampler.steps, strength)


def _check_variation_options(args: argparse.Namespace) -> None:
    """``--strength`` needs ``--vary``; ``--vary`` takes each case's label and report, so no ``--label``/``--report``."""
    from synthaug.errors import InputError

    if args.vary is None:
        if args.strength is not None:
            raise InputError("--strength sets how far a variation departs from a given volume", where="--strength",
                             fix="add --vary MANIFEST (the cases to vary), or leave --strength out")
        return
    for given, option in ((args.label != "both", "--label"), (args.report is not None, "--report")):
        if given:
            raise InputError("a variation keeps its case's label and report", where=option,
                             fix=f"leave {option} out with --vary")


def _variation_request(args: argparse.Namespace, generator) -> tuple[list[int], list[str], tuple]:
    """``--vary MANIFEST``: volume i varies train case i (cycling), under that case's label and report."""
    import torch

    from synthaug.data.manifest import load_manifest
    from synthaug.data.volume_store import VolumeStore
    from synthaug.errors import InputError

    strength = 0.5 if args.strength is None else args.strength
    _start(generator, strength)  # refuses a bad strength before any volume is read
    cases = load_manifest(args.vary).items("train")
    if not cases:
        raise InputError("the manifest has no train split cases to vary", where=str(args.vary),
                         fix="give a manifest with split 'train' cases")
    chosen = [cases[i % len(cases)] for i in range(args.n)]
    load = VolumeStore(generator.bundle.config.data)
    volumes = torch.stack([load(c)["image"] for c in chosen])
    return ([int(c["label"]) for c in chosen], [c.get("report") or "" for c in chosen],
            (volumes, [c["case_id"] for c in chosen], strength))


def _class_input_line(generator, rows: Sequence[dict], follows: str = "--label") -> str:
    """What the U-Net's class input was; from the report, how often the adapter read the requested class."""
    if generator.class_source == "label":
        return "the requested label"
    agree = sum(r["predicted_label"] == r["label"] for r in rows)
    line = f"read from the report by the adapter: the requested class for {agree} of {len(rows)}"
    return line if agree == len(rows) else line + f" (the others follow their report; --class-source label follows {follows})"


def _real_class_counts(manifest: Path | None, balance: Any) -> dict[int, int] | None:
    """The train split's cases per class, which ``match_real`` and ``fill_minority`` follow."""
    from synthaug.mix.balance import NEEDS_REAL

    if manifest is None:
        if isinstance(balance, str) and balance in NEEDS_REAL:
            from synthaug.errors import InputError

            raise InputError(f"class balance {balance!r} follows the real training set's classes", where="--real",
                             fix="pass --real MANIFEST (its train split's class counts), or use equal or weights")
        return None
    from synthaug.data.manifest import load_manifest

    labels = [case["label"] for case in load_manifest(manifest).items("train")]
    return {c: labels.count(c) for c in (0, 1)}


def cmd_pregenerate(args: argparse.Namespace) -> int:
    from synthaug.apps.pregenerate import FilterOptions, pregenerate_cache
    from synthaug.console import progress_bar
    from synthaug.distributed import process_device, torchrun_shard
    from synthaug.mix.balance import parse_class_balance, pregeneration_quotas
    from synthaug.mix.filter import check_confidence

    shard = args.shard or torchrun_shard() or (0, 1)
    balance = parse_class_balance(args.class_balance, where="--class-balance")
    counts = pregeneration_quotas(args.n, balance, _real_class_counts(args.real, balance))
    check_confidence(args.filter_confidence)
    filter_options = FilterOptions(args.filter, args.filter_data, args.filter_model, args.filter_confidence,
                                   args.filter_epochs, args.filter_crop) if args.filter else None
    console = _console()
    with progress_bar(f"pregenerate shard {shard[0]}/{shard[1]}", console) as update:
        cache, made = pregenerate_cache(
            args.bundle, args.out, counts, shard=shard, filter_options=filter_options, file_format=args.format,
            seed=args.seed, allow_foreign=args.allow_foreign, progress=update,
            generator_options={**_generator_options(args), "device": process_device(args.device)})
    return _show_cache(cache, console, made=made)


def _show_cache(cache, console, made: int | None = None) -> int:
    info = cache.info()
    rejected = ", ".join(f"label {c}: {n}" for c, n in info["rejected"].items()) or "none"
    kept = info["filter"] and (f"{info['filter']['model']} {info['filter']['weights_sha256'][:12]}, confidence "
                               f"{info['filter']['confidence']:g}; rejected {rejected}")
    _print_rows(console, f"synthetic cache {info['path']}", [
        ("volumes", f"{info['volumes']} (" + ", ".join(f"label {c}: {n}" for c, n in info["per_class"].items()) + ")"),
        ("made now", None if made is None else str(made)),
        ("reports", f"{info['distinct_reports']} distinct; sources {info['report_sources']}"),
        ("predicted = requested", "-" if info["predicted_agrees"] is None else f"{info['predicted_agrees']:.0%}"),
        ("sampler", _sampler_line(info["generator"])), ("filter", kept or None),
        ("bundle", info["bundle_fingerprint"][:16]), ("format", f"{info['file_format']} {info['shape']}"),
        ("size on disk", f"{info['bytes'] / 2**20:.1f} MiB")])
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


def _sweep_settings(args: argparse.Namespace):  # -> synthaug.apps.sweep.SweepSettings
    """``SweepSettings`` from the options named like its fields (each option's parser is its type)."""
    from synthaug.apps.sweep import SweepSettings

    given = {f.name: getattr(args, f.name) for f in fields(SweepSettings) if getattr(args, f.name, None) is not None}
    if args.ratio_range is not None:
        given["ratio_min"], given["ratio_max"] = args.ratio_range
    return SweepSettings(**given)


def cmd_sweep(args: argparse.Namespace) -> int:
    from synthaug.apps.sweep import run_sweep
    from synthaug.apps.sweep.report import HEADER, table_rows
    from synthaug.console import stage_progress

    _quiet_libraries(optuna=True)
    settings = _sweep_settings(args)
    data = _config(args).data if (args.preset or args.config or args.overrides) else None  # None: the generator's
    console = _console()
    with stage_progress(console) as progress:
        summary = run_sweep(args.data, [Path(p) for p in args.synthetic], args.out, settings, data, progress=progress)
    for model in summary["per_model"]:
        _print_table(console, f"synthaug sweep: {model}, {summary['seeds']} seeds", HEADER, table_rows(summary, model))
    console.print(f"result: {summary['verdict']}")
    if summary["unfinished"]:
        console.print(f"not finished: arm {', '.join(summary['unfinished'])} (running in another worker, or "
                      "left by one that stopped under 2 minutes ago): run the same command again to finish")
    console.print(f"wrote {args.out}/report.md, summary.json, trials.csv, ratio_vs_metric.png, arms_heatmap.png")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from synthaug.apps.evaluate import evaluate_synthetic
    from synthaug.console import stage_progress
    from synthaug.metrics import headline

    options = {k: v for k, v in _generator_options(args).items() if k != "trust_remote_code"}
    console = _console()
    with stage_progress(console) as progress:
        metrics = evaluate_synthetic(
            args.real, args.synthetic, args.out, split=args.split, bundle=args.bundle,
            paper_protocol=args.paper_protocol, generator_options=options, medicalnet=args.medicalnet,
            radimagenet=args.radimagenet, fidelity_model=None if args.fidelity_model == "none" else args.fidelity_model,
            fidelity_epochs=args.fidelity_epochs, resize=args.resize, max_synthetic=args.max_synthetic,
            features=args.features, progress=progress)
    _print_rows(console, "synthaug evaluate", headline(metrics))
    console.print(f"wrote {args.out}/metrics.json, report.md, montages, memorisation.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from synthaug.apps.demo.report import ratio_table
    from synthaug.apps.demo.run import run_demo
    from synthaug.console import stage_progress

    _quiet_libraries(optuna=True)
    console = _console()
    with stage_progress(console) as progress:
        summary = run_demo(args.out, quick=args.quick, force=args.force, progress=progress, log=console.print,
                           sequences=args.sequences)
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


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset: tiny (CPU, default), small, paper, reference (the paper's code), bpmri (paper sizes, T2W+ADC+high-b)")
    p.add_argument("--config", type=Path, help="YAML/JSON config file (see `synthaug config show`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set phantom.difficulty=0.7 (repeatable)")


def _add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the bundle's text model run its own Python code (never taken from the bundle; "
                        "only for a model folder you trust)")


def _add_sampler_options(p: argparse.ArgumentParser, note: str = "") -> None:
    """The sampling options of every command that generates (``note``: when they apply)."""
    from synthaug.ldm.samplers import sampler_names  # the registry loads without torch: --help stays instant

    p.add_argument("--sampler", type=T.sampler, help=f"auto or a registered sampler ({', '.join(sampler_names())}); "
                                                     f"default: the bundle's{note}")
    p.add_argument("--steps", type=T.count(1), help=f"sampling steps (default: the sampler's){note}")
    p.add_argument("--guidance", type=T.finite(0), help=f"classifier-free text guidance scale (default 1 = unguided){note}")
    p.add_argument("--class-guidance", type=T.finite(0),
                   help="class guidance scale: the class against the null class (default: 12 for a bundle trained "
                        f"with loss.p_null > 0, else 1 = none){note}")
    p.add_argument("--guidance-interval", type=T.interval, metavar="LOW:HIGH",
                   help="guide only the steps whose t/T (1 = pure noise) lies in [LOW, HIGH]; the others make one "
                        f"plain pass (default: the bundle's, 0.5:1; 0:1 guides every step){note}")


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class-source", choices=["report", "label"],
                   help="report: the adapter predicts the class from the report (default); label: the requested one")
    p.add_argument("--report-source", choices=["train", "template", "empty"],
                   help="where reports come from when none is given (default: train); empty needs --class-source "
                        "label, and so does template with a bundle trained with loss.report_variants 0")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    """--batch-size and --precision of the commands that generate."""
    p.add_argument("--batch-size", type=T.count(1), help="volumes per batch (default: the bundle's, 32 at the tiny size)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="the networks' precision (default: the bundle's, auto = bf16 on a CPU with native bf16, "
                        "fp32 on other CPUs, fp16 on CUDA; fp32 reproduces earlier versions)")


def _add_device_option(p: argparse.ArgumentParser, help: str = "cpu (default) or cuda[:N]") -> None:
    p.add_argument("--device", type=T.device, default="cpu", help=help)


def _phantom_parser(sub) -> None:
    p = sub.add_parser("phantom", help="write the procedural prostate-MRI phantom dataset + manifest")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder (images/ + manifest.jsonl)")
    p.add_argument("--n", type=T.count(1), help="number of cases (default: phantom.n_cases = 200)")
    p.add_argument("--seed", type=T.count(0), help="random seed (default: phantom.seed = 0)")
    p.add_argument("--sequences", type=T.sequences, help="comma-separated, t2w first: t2w,adc,hbv writes ADC and "
                   "high-b DWI too (sets data.modalities; default: t2w)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_config_options(p)
    p.set_defaults(func=cmd_phantom)


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", metavar="COMMAND",
                                                                       parser_class=_Parser)
    p = data.add_parser("check", help="validate a manifest and its images; print a summary")
    p.add_argument("manifest", type=Path, help="manifest (.jsonl or .csv)")
    p.add_argument("--no-images", action="store_true", help="check files exist and read headers only")
    p.set_defaults(func=cmd_data_check)


def _picai_parser(sub) -> None:
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


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the CCELLA generator (VAE, then LDM) and write a bundle")
    p.add_argument("--data", type=Path, required=True, help="manifest; its 'train' split is used")
    p.add_argument("--out", type=T.out_folder, required=True, help="bundle folder to write")
    p.add_argument("--autoencoder", type=Path, help="a trained bundle or autoencoder .safetensors to reuse")
    p.add_argument("--work", type=T.out_folder, help="folder for caches and checkpoints (default: OUT.work)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle / discard checkpoints")
    _add_device_option(p)
    _add_config_options(p)
    p.set_defaults(func=cmd_train)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample volumes from a trained bundle: NIfTI + provenance.jsonl + montage.png")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `synthaug train`")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder")
    p.add_argument("--n", type=T.count(1), default=4, help="number of volumes (default 4)")
    p.add_argument("--label", default="both", help="0, 1 or both (alternating; default)")
    p.add_argument("--report", help="one report for every volume (default: the report source)")
    p.add_argument("--vary", type=Path, metavar="MANIFEST",
                   help="make variations of this manifest's train cases instead (SDEdit: each noised part-way and "
                        "denoised under its own label and report; volume i varies case i, cycling)")
    p.add_argument("--strength", type=float,
                   help="with --vary: the fraction of the sampler's chain run again, in (0, 1] (default 0.5); "
                        "1 keeps nothing of the case")
    _add_sampler_options(p)
    p.add_argument("--eta", type=T.finite(0), help="DDIM noise (default: the bundle's, 1 = DDPM's variance; 0: deterministic)")
    _add_source_options(p)
    p.add_argument("--seed", type=T.count(0), default=0, help="seed of the first volume; volume i uses seed+i")
    _add_batch_options(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw LDM weights instead of the EMA ones")
    _add_device_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_trust_option(p)
    p.set_defaults(func=cmd_generate)


def _pregenerate_parser(sub) -> None:
    p = sub.add_parser("pregenerate", help="fill a synthetic cache from a bundle (resumable, shardable)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `synthaug train`")
    p.add_argument("--out", type=T.out_folder, required=True, help="cache folder (created, or resumed)")
    p.add_argument("--n", "--volumes", dest="n", type=T.count(1), required=True,
                   help="volumes in the cache when every shard is done (under torchrun write --volumes: torchrun "
                        "reads --n as one of its own options)")
    p.add_argument("--class-balance", default="equal",
                   help="equal (default), match_real, fill_minority (these two need --real) or weights, e.g. 0:1,1:2")
    p.add_argument("--real", type=Path, help="manifest whose train split's class counts match_real and fill_minority "
                                             "follow")
    p.add_argument("--shard", type=T.shard, help="I/N: make only shard I of N (run N processes or nodes on one "
                                                 "folder); under torchrun the default is RANK/WORLD_SIZE")
    _add_batch_options(p)
    p.add_argument("--format", choices=["nifti-gz", "nifti"], default="nifti-gz",
                   help="nifti-gz (default, smaller) or nifti (uncompressed, faster to load)")
    p.add_argument("--seed", type=T.count(0), default=0, help="cache seed: volume seeds derive from it (default 0)")
    _add_sampler_options(p)
    _add_source_options(p)
    p.add_argument("--allow-foreign", action="store_true", help="write into a cache made by another bundle")
    _add_filter_options(p)
    _add_trust_option(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_pregenerate)


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", metavar="train|WEIGHTS",
                   help="keep only volumes a real-data classifier gives the requested class: 'train' trains one on "
                        "--filter-data's train split, or a classifiers model's .safetensors weights")
    p.add_argument("--filter-data", type=Path, help="manifest whose train split trains the filter (--filter train)")
    p.add_argument("--filter-model", default="tiny-cnn", help="the filter's classifier (default tiny-cnn)")
    p.add_argument("--filter-confidence", type=T.finite(), default=0.8,
                   help="keep a volume when P(requested class) >= this, in (0.5, 1) (default 0.8)")
    p.add_argument("--filter-epochs", type=T.count(1), default=10, help="epochs of --filter train (default 10)")
    p.add_argument("--filter-crop", type=T.crop, help="X,Y,Z: the filter sees a centred box of this many voxels")


def _cache_parser(sub) -> None:
    cache = sub.add_parser("cache", help="synthetic cache tools").add_subparsers(dest="cache_command", metavar="COMMAND",
                                                                                parser_class=_Parser)
    p = cache.add_parser("verify", help="check every volume against the manifest (missing, corrupt, duplicates)")
    p.add_argument("cache", type=Path, help="cache folder")
    p.set_defaults(func=cmd_cache_verify)
    p = cache.add_parser("info", help="counts per class, reports, sampler, bundle, size on disk")
    p.add_argument("cache", type=Path, help="cache folder")
    p.set_defaults(func=cmd_cache_info)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="quality of synthetic volumes: FID/KID (3D, 2.5D), diversity, memorisation, "
                                        "conditioning fidelity, montages")
    p.add_argument("--real", type=Path, required=True, help="manifest of the real data")
    p.add_argument("--split", default="test", help="real split to compare with (default: test)")
    p.add_argument("--synthetic", type=Path, help="cache folder (synthaug pregenerate)")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder")
    p.add_argument("--paper-protocol", action="store_true",
                   help="instead of a cache: one synthetic volume per real case of --split, from its report (--bundle)")
    p.add_argument("--bundle", type=Path, help="bundle for --paper-protocol")
    _add_sampler_options(p, note="; for --paper-protocol")
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


def _sweep_parser(sub) -> None:
    """Options are named like ``SweepSettings``' fields (``_sweep_settings`` maps them by name)."""
    p = sub.add_parser("sweep", help="Optuna study of the synthetic:real ratio -> classifier metrics, with statistics")
    p.add_argument("--data", type=Path, required=True, help="manifest with train, val and test splits")
    p.add_argument("--synthetic", type=T.comma_list, required=True,
                   help="cache folder (pregenerate) or bundle folder; several, comma-separated, are compared as a "
                        "dimension of the grid (e.g. caches made at guidance 1, 2 and 4), named by their settings")
    p.add_argument("--out", type=T.out_folder, required=True, help="output folder (study.db, trials.csv, report.md, ...)")
    p.add_argument("--ratios", type=T.comma_list, help="grid of constant ratios (default: 0,0.25,0.5,1,2,4,synthetic-only)")
    p.add_argument("--schedules", default="constant",
                   help="ratio schedules crossed with the ratios: constant, decay (linear from the ratio to 0 over "
                        "the run), cosine, pretrain:K (synthetic only for K epochs, then real only; one arm) "
                        "(default: %(default)s)")
    p.add_argument("--search", choices=["grid", "tpe"], default="grid", help="grid (default) or TPE on a log range")
    p.add_argument("--ratio-range", type=T.ratio_range, help="MIN:MAX for --search tpe (default 0.1:4)")
    p.add_argument("--trials", dest="n_trials", type=T.count(1), default=10, help="trials for --search tpe (default 10)")
    p.add_argument("--tune-lr", action="store_true", help="also search the learning rate")
    p.add_argument("--tune-epochs", action="store_true", help="also search the number of epochs")
    p.add_argument("--seeds", type=T.count(1), default=5, help="classifiers per ratio (default 5)")
    p.add_argument("--models", "--model", dest="models", type=T.comma_list, default="efficientnet-b0",
                   help="classifiers, comma-separated: every arm trains with each, one table per classifier "
                        "(default: efficientnet-b0, the paper's)")
    p.add_argument("--epochs", type=T.count(1), default=30)
    p.add_argument("--batch-size", type=T.count(1), default=4)
    p.add_argument("--lr", type=T.finite(0, above=True), default=1e-4)
    p.add_argument("--patience", type=T.count(1), default=10, help="early-stopping patience in epochs")
    p.add_argument("--crop", type=T.crop, help="X,Y,Z: the classifier sees a centred box of this many voxels (default: all)")
    p.add_argument("--no-prune", dest="prune", action="store_false",
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


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="everything on the embedded phantom on a CPU: data, train, pregenerate, "
                                    "evaluate, sweep, report")
    p.add_argument("--out", type=T.out_folder, default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="~2 minutes: fewer cases, steps and seeds; same stages")
    p.add_argument("--force", action="store_true", help="redo every stage (default: reuse finished ones)")
    p.add_argument("--sequences", type=T.sequences, default=["t2w"],
                   help="t2w (default) or t2w,adc,hbv: the biparametric phantom, generator and classifiers")
    p.set_defaults(func=cmd_demo)


def _config_parser(sub) -> None:
    config = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_command",
                                                                                 metavar="COMMAND", parser_class=_Parser)
    p = config.add_parser("show", help="print the resolved configuration (a valid config file)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    _add_config_options(p)
    p.set_defaults(func=cmd_config_show)


COMMANDS = (_phantom_parser, _data_parser, _picai_parser, _train_parser, _generate_parser, _pregenerate_parser,
            _cache_parser, _evaluate_parser, _sweep_parser, _demo_parser, _config_parser)


def build_parser() -> argparse.ArgumentParser:
    from synthaug import __version__

    parser = _Parser(prog="synthaug", description="Synthetic 3D MRI (CCELLA latent diffusion) for classifier training.")
    parser.add_argument("--version", action="version", version=f"synthaug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
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
