"""Progress output of the CLI: live rich bars on a terminal, plain whole lines in a log file or a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import synthaug.console as console_module
from synthaug.console import progress_bar, stage_progress


def log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, force_jupyter=False, width=80), out


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(console_module, "monotonic", lambda: now[0])
    return now


def test_a_log_gets_whole_lines_with_counts_times_and_losses(clock) -> None:
    console, out = log_console()
    with stage_progress(console) as update:
        update("ldm", 0, 900, {})
        clock[0] += 150
        update("ldm", 900, 900, {"loss": 0.7406, "l1": 0.7406, "focal": 0.0004004, "it_s": 5.748})
        update("ldm", 900, 900, {"loss": 0.7406})  # a stage reports its end once
    assert out.getvalue().splitlines() == [
        "ldm: 0/900 0:00:00",
        "ldm: 900/900 0:02:30  loss 0.7406  l1 0.7406  focal 0.0004004  it_s 5.748",
    ]


def test_a_log_gets_at_most_one_line_per_interval_with_an_eta(clock) -> None:
    console, out = log_console()
    with progress_bar("generate: 600 volumes", console) as update:
        update(0, 600)
        for done in range(1, 300):  # within the first interval: no line
            clock[0] += 0.1
            update(done, 600)
        clock[0] = 100.0 + console_module.LINE_INTERVAL_S
        update(300, 600)
        clock[0] += 1
        update(310, 600)
        update(600, 600)
    assert out.getvalue().splitlines() == [
        "generate: 600 volumes: 0/600 0:00:00",
        "generate: 600 volumes: 300/600 0:00:30 eta 0:00:30",
        "generate: 600 volumes: 600/600 0:00:31",
    ]


def test_a_resumed_stage_times_its_eta_from_where_it_resumed(clock) -> None:
    console, out = log_console()
    with stage_progress(console) as update:
        update("ldm", 3000, 6000, {})  # resumed at step 3000
        clock[0] += console_module.LINE_INTERVAL_S
        update("ldm", 3100, 6000, {})
    assert out.getvalue().splitlines()[-1] == "ldm: 3100/6000 0:00:30 eta 0:14:30"


def test_a_terminal_keeps_the_live_bars() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_jupyter=False, width=120)
    with stage_progress(console) as update:
        update("ldm", 450, 900, {"loss": 0.74})
    assert "━" in out.getvalue() and "450/900" in out.getvalue()
    assert "ldm: 450/900" not in out.getvalue()
