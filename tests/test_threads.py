"""The command's OpenMP wait policy: passive on a shared CPU, the default on an idle one, the user's when set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from synthaug import threads


@pytest.mark.parametrize("busy,expected", [(0.0, None), (0.4, None), (0.5, "PASSIVE"), (1.7, "PASSIVE"),
                                           (None, "PASSIVE")])
def test_the_policy_follows_the_load_at_start(monkeypatch, busy, expected):
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.1: busy)
    environ: dict[str, str] = {}
    assert threads.choose_wait_policy(environ) == expected
    assert environ.get("OMP_WAIT_POLICY") == expected


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}])
def test_the_users_own_setting_is_kept(monkeypatch, given):
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.1: 2.0)
    environ = dict(given)
    assert threads.choose_wait_policy(environ) is None and environ == given


def test_a_spinning_neighbour_is_measured_as_busy():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        busy = threads.busy_cores(interval=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= threads.BUSY_CORES


def test_the_command_sets_it_before_torch_is_imported():
    code = ("import os, sys\nfrom synthaug import threads\nthreads.busy_cores = lambda interval=0.1: 1.0\n"
            "from synthaug.cli import main\ncode = main(['config', 'show'])\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "PASSIVE False"
