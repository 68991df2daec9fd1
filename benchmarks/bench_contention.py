"""A shared CPU: the quick demo alone vs beside one busy process, per OpenMP wait setting.

    python benchmarks/bench_contention.py                                   # every setting x every neighbour
    python benchmarks/bench_contention.py --settings default,passive --neighbours none,python

Each run is a fresh process running ``synthaug.apps.demo.run.run_demo(quick=True)`` with only the named environment
(the `synthaug` command chooses a wait policy itself, so it is bypassed here except for ``auto``):

- ``auto``: ``synthaug demo --quick`` with nothing set: the command's own choice (``synthaug/threads.py``:
  PASSIVE when other processes keep half a core busy at its start, else the default);
- ``default``: nothing set, libgomp's own policy (spin a while, then sleep): what torch did before;
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once): what the command sets now;
- ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (idle threads spin forever);
- ``spin-10k`` / ``spin-1k``: ``GOMP_SPINCOUNT=10000`` / ``1000`` (a short spin, then sleep).

Neighbours, started before the run and stopped after it: ``none``; ``python``, a one-core spin loop; ``torch``,
a process doing matrix products with torch's default threads and wait policy (as a second torch job, e.g. a
test suite, would). A run past ``--timeout`` is recorded as at least that long. Prints a table and writes
benchmarks/results/bench_contention.json. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"auto": {}, "default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "active": {"OMP_WAIT_POLICY": "ACTIVE"},
            "spin-10k": {"GOMP_SPINCOUNT": "10000"}, "spin-1k": {"GOMP_SPINCOUNT": "1000"}}
NEIGHBOURS = {
    "none": None,
    "python": "while True:\n    pass\n",
    "torch": "import torch\nx = torch.randn(512, 512)\nwhile True:\n    x = (x @ x).tanh()\n",
}
DEMO = "import sys\nfrom synthaug.apps.demo.run import run_demo\nrun_demo(sys.argv[1], quick=True, log=lambda *a: None)\n"
OMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def run_demo(setting: str, neighbour: str, timeout: float) -> dict:
    """Wall time of one fresh quick demo under ``setting``, beside ``neighbour``."""
    base = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
    code = NEIGHBOURS[neighbour]
    other = subprocess.Popen([sys.executable, "-c", code], env=base) if code else None
    try:
        time.sleep(1.0 if other else 0.0)  # let the neighbour get going
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            try:
                command = ([sys.executable, "-m", "synthaug", "demo", "--quick", "--out", f"{tmp}/demo"]
                           if setting == "auto" else [sys.executable, "-c", DEMO, f"{tmp}/demo"])
                done = subprocess.run(command, env={**base, **SETTINGS[setting]}, capture_output=True, text=True,
                                      timeout=timeout)
                seconds, ok = time.perf_counter() - start, done.returncode == 0
                if not ok:
                    sys.stderr.write(done.stderr[-2000:])
            except subprocess.TimeoutExpired:
                seconds, ok = timeout, False
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return {"setting": setting, "neighbour": neighbour, "seconds": round(seconds, 1), "finished": ok,
            "load_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="auto,default,passive", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--neighbours", default="none,python,torch", help=f"of {', '.join(NEIGHBOURS)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is cut off")
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    neighbours = [n.strip() for n in args.neighbours.split(",") if n.strip()]
    unknown = [s for s in settings if s not in SETTINGS] + [n for n in neighbours if n not in NEIGHBOURS]
    if unknown:
        parser.error(f"unknown setting or neighbour {unknown[0]!r}")
    rows = [run_demo(s, n, args.timeout) for s in settings for n in neighbours]
    alone = {r["setting"]: r["seconds"] for r in rows if r["neighbour"] == "none"}
    print(f"{'setting':<10}{'neighbour':<11}{'seconds':>9}{'vs alone':>10}  finished")
    for r in rows:
        if r["setting"] in alone:
            r["slowdown"] = round(r["seconds"] / alone[r["setting"]], 2)
        print(f"{r['setting']:<10}{r['neighbour']:<11}{r['seconds']:>9.1f}{r.get('slowdown', float('nan')):>9.2f}x"
              f"  {r['finished']}{'' if r['finished'] else ' (cut off)'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_contention.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
                               "machine": platform.processor() or platform.machine(), "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
