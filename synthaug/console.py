"""What the CLI user sees: rich progress bars (each drives a ``synthaug.progress.Progress``) and the tables
of ``synthaug data check``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich import progress as rich_progress
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from synthaug.data.check import DatasetSummary
from synthaug.data.manifest import SPLITS
from synthaug.progress import Progress


@contextlib.contextmanager
def progress_bar(description: str, console: Console | None = None) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``(done, total)`` callback that drives a rich progress bar with ETA."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with rich_progress.Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def stage_progress(console: Console | None = None) -> Iterator[Progress]:
    """Yield a ``(stage, done, total, logs)`` callback: one bar per stage, with loss and it/s when given."""
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[logs]}"))
    with rich_progress.Progress(*columns, console=console) as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int, logs: dict) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, logs="")
            shown = "  ".join(f"{k} {logs[k]:.4g}" for k in ("loss", "l1", "mse", "focal", "it_s") if k in logs)
            progress.update(tasks[stage], completed=done, total=total, logs=shown)

        yield update


def _labels(summary: DatasetSummary) -> list[int]:
    return sorted({label for (_, label) in summary.cases})


def dataset_tables(summary: DatasetSummary) -> list[Table]:
    """Cases per split and class with report coverage; geometry seen; problems and warnings."""
    labels = _labels(summary)
    counts = Table(title=f"Cases in {summary.manifest.path}")
    counts.add_column("split")
    for label in labels:
        counts.add_column(f"label {label}", justify="right")
    counts.add_column("total", justify="right")
    counts.add_column("empty reports", justify="right")
    for split in SPLITS:
        total = summary.split_total(split)
        empty = summary.empty_reports.get(split, 0)
        cells = [str(summary.cases.get((split, label), 0)) for label in labels]
        counts.add_row(split, *cells, str(total), f"{empty} ({100 * empty / total:.0f}%)" if total else "0")
    all_total = sum(summary.cases.values())
    all_empty = sum(summary.empty_reports.values())
    counts.add_row("all", *[str(sum(n for (_, lab), n in summary.cases.items() if lab == label)) for label in labels],
                   str(all_total), f"{all_empty} ({100 * all_empty / all_total:.0f}%)", style="bold")

    pirads = Table(title="PI-RADS")
    order = sorted(summary.pirads, key=lambda p: (p is None, p or 0))
    for p in order:
        pirads.add_column("none" if p is None else str(p), justify="right")
    pirads.add_row(*[str(summary.pirads[p]) for p in order])

    geometry = Table(title="Image geometry")
    geometry.add_column("modality")
    geometry.add_column("shape (X, Y, Z)")
    geometry.add_column("cases", justify="right")
    for (modality, shape), n in sorted(summary.shapes.items()):
        geometry.add_row(modality, " x ".join(map(str, shape)), str(n))
    geometry.add_section()
    for (modality, spacing), n in sorted(summary.spacings.items()):
        geometry.add_row(modality, "spacing " + " x ".join(f"{s:g}" for s in spacing) + " mm", str(n))

    tables = [counts, pirads, geometry]
    if summary.problems or summary.warnings:
        issues = Table(title=f"{len(summary.problems)} problem(s), {len(summary.warnings)} warning(s)")
        issues.add_column("kind")
        issues.add_column("what, where, what to do")
        for problem in summary.problems:
            issues.add_row("[red]problem[/red]", str(problem))
        for warning in summary.warnings:
            issues.add_row("[yellow]warning[/yellow]", warning)
        tables.append(issues)
    return tables

