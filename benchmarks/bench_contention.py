"""A shared CPU: `synthaug demo --quick` alone vs beside one busy process, per OpenMP wait policy.

    python benchmarks/bench_contention.py                       # PASSIVE (the command's default) and ACTIVE
    python benchmarks/bench_contention.py --policies PASSIVE    # only the default

The busy neighbour is one CPU-bound Python process (a spin loop, one core), started before the demo and
stopped after it. ``ACTIVE`` is OpenMP's spin-waiting policy, what torch did before the command set
``OMP_WAIT_POLICY=PASSIVE``; a run that exceeds ``--timeout`` is recorded as at least that long. Prints a
table and writes benchmarks/results/bench_contention.json. Run it on an otherwise idle machine.
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
SPIN = "import time\nwhile True:\n    pass\n"


def run_demo(policy: str, busy: bool, timeout: float) -> dict:
    """Wall time of one fresh `synthaug demo --quick` with ``policy``, alone or beside a spinning process."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONUNBUFFERED": "1"}
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, "-m", "synthaug", "demo", "--quick", "--out", f"{tmp}/demo"],
                                      env=env, capture_output=True, text=True, timeout=timeout)
                seconds, ok = time.perf_counter() - start, done.returncode == 0
                if not ok:
                    sys.stderr.write(done.stderr[-2000:])
            except subprocess.TimeoutExpired:
                seconds, ok = timeout, False
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return {"policy": policy, "busy_neighbour": busy, "seconds": round(seconds, 1), "finished": ok,
            "load_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="PASSIVE,ACTIVE", help="OMP_WAIT_POLICY values to compare")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before a run is cut off")
    args = parser.parse_args()
    rows = []
    for policy in [p.strip().upper() for p in args.policies.split(",") if p.strip()]:
        alone = run_demo(policy, busy=False, timeout=args.timeout)
        beside = run_demo(policy, busy=True, timeout=args.timeout)
        beside["slowdown"] = round(beside["seconds"] / alone["seconds"], 2)
        rows += [alone, beside]
    print(f"{'OMP_WAIT_POLICY':<16}{'neighbour':<12}{'seconds':>9}{'slowdown':>10}  finished")
    for r in rows:
        cut = "" if r["finished"] else " (cut off)"
        print(f"{r['policy']:<16}{'busy' if r['busy_neighbour'] else 'none':<12}{r['seconds']:>9.1f}"
              f"{r.get('slowdown', 1.0):>9.2f}x  {r['finished']}{cut}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_contention.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
                               "machine": platform.processor() or platform.machine(), "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
