"""torchrun data parallelism on CPU (gloo): 2 processes train the same model as 1 on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from synthaug.ldm.bundle import LDM_FILE, read_bundle_info
from synthaug.ldm.train import train_generator
from tests.helpers import SMALL, small_config

STEPS = ["train.steps=4", "train.batch_size=4", "train.log_every=2"]


def test_two_gloo_processes_train_the_parameters_one_process_does(small_phantom, tmp_path):
    single = tmp_path / "single"
    train_generator(small_phantom, single, small_config(*STEPS))
    sets = [a for s in [*SMALL, *STEPS] for a in ("--set", s)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "synthaug", "train", "--data", str(small_phantom), "--out", str(tmp_path / "ddp"), *sets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(single / LDM_FILE)), load_file(str(tmp_path / "ddp" / LDM_FILE))
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
        moved += int(not torch.equal(a[key], torch.zeros_like(a[key])))
    assert moved > 0
    info, _ = read_bundle_info(tmp_path / "ddp")
    assert info["training"]["ldm_steps"] == 4
    log = (tmp_path / "ddp.work" / "ldm_log.jsonl").read_text().splitlines()
    assert len(log) == 3  # rank 0 alone writes the log: step 0, 2, 4
