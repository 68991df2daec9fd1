"""What the CLI user sees: rich progress bars (each drives a ``synthaug.progress.Progress``) and the tables
of ``synthaug data check``.

On a console that is not interactive (output to a file or a pipe: a cluster job's log, CI), rich's live bars
print nothing until the display closes, and then one line per bar cut to 80 columns ("ldm ━━ 9… 0… eta 0…");
there the same callbacks print plain lines instead (``ProgressLines``): one when a stage starts, at most one
every ``LINE_INTERVAL_S`` seconds, and one when it ends.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from time import monotonic

from rich import get_console
from rich import progress as rich_progress
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from synthaug.data.check import DatasetSummary
from synthaug.data.manifest import SPLITS
from synthaug.progress import Progress

LINE_INTERVAL_S = 30.0


def _plain(console: Console) -> bool:
    """Print lines, not live bars: output to a file or a pipe (a notebook keeps rich's own display)."""
    return not console.is_interactive and not console.is_jupyter


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressLines:
    """Plain progress lines for a console that is not interactive: ``stage: done/total elapsed eta ETA logs``,
    printed on a stage's first update, at most every ``interval_s`` seconds after, and when it is done."""

    def __init__(self, console: Console, interval_s: float = LINE_INTERVAL_S) -> None:
        self.console, self.interval_s = console, interval_s
        self.started: dict[str, tuple[float, int]] = {}  # stage -> (time, done) of its first update
        self.printed: dict[str, float] = {}
        self.finished: set[str] = set()

    def __call__(self, stage: str, done: int, total: int, shown: str = "") -> None:
        now = monotonic()
        start, done_at_start = self.started.setdefault(stage, (now, done))  # a resumed stage starts above 0
        complete = done >= total
        due = stage not in self.printed or now - self.printed[stage] >= self.interval_s
        if stage in self.finished or not (complete or due):
            return
        self.printed[stage] = now
        if complete:
            self.finished.add(stage)
        elapsed = now - start
        rate_known = done_at_start < done < total
        eta = f" eta {_clock(elapsed / (done - done_at_start) * (total - done))}" if rate_known else ""
        line = f"{stage}: {done}/{total} {_clock(elapsed)}{eta}{'  ' + shown if shown else ''}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, console: Console | None = None) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``(done, total)`` callback that drives a rich progress bar with ETA (plain lines when the
    console is not interactive)."""
    console = console or get_console()
    if _plain(console):
        lines = ProgressLines(console)
        yield lambda done, total: lines(description, done, total)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with rich_progress.Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def stage_progress(console: Console | None = None) -> Iterator[Progress]:
    """Yield a ``(stage, done, total, logs)`` callback: one bar per stage, with loss and it/s when given
    (plain lines when the console is not interactive)."""
    console = console or get_console()
    if _plain(console):
        lines = ProgressLines(console)
        yield lambda stage, done, total, logs: lines(stage, done, total, _shown(logs))
        return
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[logs]}"))
    with rich_progress.Progress(*columns, console=console) as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int, logs: dict) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, logs="")
            progress.update(tasks[stage], completed=done, total=total, logs=_shown(logs))

        yield update


def _shown(logs: dict) -> str:
    """The training logs a progress display shows: loss terms and it/s."""
    return "  ".join(f"{k} {logs[k]:.4g}" for k in ("loss", "l1", "mse", "focal", "it_s") if k in logs)


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

