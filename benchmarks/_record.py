"""The JSON record every benchmark writes: its own payload plus settings, machine, load and date."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def write_record(path: Path, payload: dict, args: argparse.Namespace, load_before: float) -> None:
    """Write ``payload`` with the run's settings, the machine, the load before and after, and today's date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "settings": {k: str(v) for k, v in vars(args).items()},
                                "load_before": load_before, "load_after": os.getloadavg()[0],
                                "machine": platform.platform(), "cpus": os.cpu_count(),
                                "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
