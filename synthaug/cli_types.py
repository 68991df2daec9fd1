"""Argument types of the ``synthaug`` command: every number, device and output path is checked here, once.

Each type is an ``argparse`` ``type=`` callable: a bad value becomes one usage line with exit code 2
before any work starts (no traceback, nothing written). Nothing here imports torch unless a CUDA
device is named.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path


def count(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum`` (``--n``, ``--batch-size``, ``--trials``, ...)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def finite(minimum: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite number (never NaN or inf), >= ``minimum`` (or > it when ``above``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against the GPUs this machine has."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.partition(":")[2] or 0)
        if index >= available:
            raise argparse.ArgumentTypeError(
                f"{text} is not available on this machine ({available} CUDA device(s)); use --device cpu")
    return text


def device_or_auto(text: str) -> str:
    """``auto`` (CUDA when there is one, else the CPU) or a device as for ``device``."""
    return text if text == "auto" else device(text)


def comma_list(text: str) -> list[str]:
    """A comma-separated option as its parts (ratios, models, sources; each checked by its owner)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def sequences(text: str) -> list[str]:
    """MRI sequences, T2W first: ``t2w`` or ``t2w,adc,hbv`` (each once; the config checks them again)."""
    names = comma_list(text)
    if names[:1] != ["t2w"] or len(set(names)) != len(names) or not set(names) <= {"t2w", "adc", "hbv"}:
        raise argparse.ArgumentTypeError(f"{text!r} is not t2w then adc and/or hbv, each once, e.g. t2w,adc,hbv")
    return names


def crop(text: str) -> tuple[int, int, int]:
    """``X,Y,Z``: a centred box of this many voxels."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 3 or min(box) < 1:
        raise argparse.ArgumentTypeError(f"crop {text!r} is not X,Y,Z voxels, e.g. 32,32,16")
    return box  # type: ignore[return-value]


def shard(text: str) -> tuple[int, int]:
    """``I/N``: shard I of N, 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r} is not I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def _number_pair(text: str, what: str, form: str) -> tuple[float, float]:
    """Two numbers written ``A:B``; anything else is one usage line naming ``what`` and its ``form``."""
    low, _, high = text.partition(":")
    try:
        return float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not {form}") from None


def ratio_range(text: str) -> tuple[float, float]:
    """``MIN:MAX`` of a log-uniform ratio search (the range itself is checked by ``SweepSettings.check``)."""
    return _number_pair(text, "ratio range", "MIN:MAX, e.g. 0.1:4")


def interval(text: str) -> tuple[float, float]:
    """``LOW:HIGH`` of ``--guidance-interval`` (the bounds themselves are checked by ``SampleConfig``)."""
    return _number_pair(text, "interval", "LOW:HIGH, e.g. 0.5:1")


def sampler(text: str) -> str:
    """``auto`` or a sampler of the registry (``synthaug.ldm.samplers``, which loads without torch)."""
    if text == "auto":
        return text
    from synthaug.ldm.samplers import sampler_names

    if text not in sampler_names():
        raise argparse.ArgumentTypeError(f"unknown sampler {text!r}; choose auto, {', '.join(sampler_names())}")
    return text


def _check_writable(path: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder we may write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: cannot write in {parent}; choose a folder you may write to")


def out_folder(text: str) -> Path:
    """An output folder: new, or an existing folder (never an existing file), in a writable place."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; choose a folder path")
    _check_writable(path)
    return path


def out_file(text: str) -> Path:
    """An output file: new, or an existing file (never a folder), in a writable place."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file; choose a file path")
    _check_writable(path)
    return path


def new_paths(paths: Iterable[Path | None]) -> list[Path]:
    """For each output path that does not exist yet, the topmost folder that running the command would create."""
    out = []
    for path in paths:
        if path is None:
            continue
        path = Path(path).absolute()
        top = None
        while not path.exists():
            top, path = path, path.parent
        if top is not None:
            out.append(top)
    return out


def remove_new(paths: Iterable[Path]) -> None:
    """Remove what a refused command created (paths from ``new_paths``), so it leaves nothing behind."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
