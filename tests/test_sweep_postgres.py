"""Two `synthaug sweep` workers sharing one study in a real PostgreSQL server (Optuna RDB storage).

The server is started here, on loopback, from the Debian `postgresql` package's binaries (`.ci/run`
installs the package when they are missing); the test skips, saying why, only where no server can be had.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.test_sweep import FAST


def _binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `.ci/run` installs Debian's postgresql")
    pytest.importorskip("psycopg2", reason="the psycopg2 driver is not installed (pip install psycopg2-binary)")
    root = tmp_path_factory.mktemp("postgres")
    data, sockets, port = root / "data", root / "sockets", _free_port()
    sockets.mkdir()
    run_as = []
    if os.geteuid() == 0:  # the server refuses to run as root: use the package's postgres user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o777)
        os.chmod(sockets, 0o777)
        for parent in list(root.parents)[:-1]:
            os.chmod(parent, os.stat(parent).st_mode | 0o011)  # let the postgres user reach the folder
    init = subprocess.run([*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "synthaug"], capture_output=True,
                          text=True)
    if init.returncode:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-200:]}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    start = subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                           capture_output=True, text=True)
    if start.returncode:
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-200:]}")
    try:
        created = subprocess.run([_binary("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U",
                                  "synthaug", "sweeps"], capture_output=True, text=True)
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg2://synthaug@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)


def test_two_workers_share_a_postgresql_study(small_phantom, small_cache, tmp_path, postgres_url):
    import optuna

    workers = []
    for i in range(2):
        command = [sys.executable, "-m", "synthaug", "sweep", "--data", str(small_phantom), "--synthetic",
                   str(small_cache), "--out", str(tmp_path / f"worker{i}"), "--ratios", "0,0.5,1,synthetic-only",
                   "--storage", postgres_url, "--study-name", "shared", *FAST]
        workers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"}))
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read().decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    done = Counter(t.user_attrs["schedule"] for t in study.trials
                   if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs.get("duplicate"))
    assert done == Counter({"0": 1, "0.5": 1, "1": 1, "synthetic-only": 1})
    assert Path(tmp_path / "worker0" / "summary.json").is_file() and Path(tmp_path / "worker1" / "report.md").is_file()
