"""torchrun data parallelism on CPU (gloo): 2 processes train the same model as 1 on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from synthaug.ldm.bundle import LDM_FILE, read_bundle_info
from synthaug.ldm.model import CCELLALDM
from synthaug.ldm.train import train_generator
from tests.helpers import SMALL, small_config, torch_threads

# Teacher forcing, the null class and the class head's report variants are drawn per case of the global batch,
# like the noise and text dropout.
STEPS = ["train.steps=4", "train.batch_size=4", "train.log_every=2", "loss.p_label=0.5", "loss.p_null=0.25",
         "loss.report_variants=2"]


def test_two_gloo_processes_train_the_parameters_one_process_does(small_phantom, tmp_path):
    single = tmp_path / "single"
    with torch_threads(1):  # as each rank below
        train_generator(small_phantom, single, small_config(*STEPS))
    sets = [a for s in [*SMALL, *STEPS] for a in ("--set", s)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "synthaug", "train", "--data", str(small_phantom), "--out", str(tmp_path / "ddp"), *sets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(single / LDM_FILE)), load_file(str(tmp_path / "ddp" / LDM_FILE))
    cfg = small_config(*STEPS)
    torch.manual_seed(cfg.train.seed)  # the trainer's parameter initialisation
    initial = CCELLALDM.from_config(cfg, text_dim=384).state_dict()  # MiniLM's width
    assert a.keys() == b.keys() == initial.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert sum(not torch.equal(a[k], initial[k]) for k in a) > len(a) // 2  # the 4 steps trained most tensors
    info, _ = read_bundle_info(tmp_path / "ddp")
    assert info["training"]["ldm_steps"] == 4
    log = (tmp_path / "ddp.work" / "ldm_log.jsonl").read_text().splitlines()
    assert len(log) == 3  # rank 0 alone writes the log: step 0, 2, 4
    single_log = (tmp_path / "single.work" / "ldm_log.jsonl").read_text().splitlines()
    for ddp_line, single_line in zip(log[1:], single_log[1:]):  # the global batch's losses, variants included
        ddp_step, single_step = json.loads(ddp_line), json.loads(single_line)
        assert ddp_step["focal_variants"] == pytest.approx(single_step["focal_variants"], rel=1e-4)


FIT_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from classifiers import FitConfig, build_model, fit
from classifiers.distributed import init_from_env

rank, world = init_from_env()
g = torch.Generator().manual_seed(0)
def items(n):
    out = []
    for i in range(n):
        x = torch.rand(1, 16, 16, 8, generator=g)
        x[:, 6:10, 6:10, 3:5] += 0.8 * (i % 2)
        out.append({"image": x, "label": i % 2})
    return out
train, val = items(16), items(8)
model = build_model("tiny-cnn", in_channels=1, num_classes=2, seed=0)
result = fit(model, train, val, FitConfig(epochs=2, batch_size=4, lr=1e-3, patience=None, augment=False,
                                          device="cpu"), progress=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{sys.argv[1]}/rank{rank}.safetensors")
# one file per rank: both ranks share the launcher's stdout, where their lines can interleave
with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as f:
    f.write(f"world {world} best {result.best_epoch}")
"""


def test_fit_under_torchrun_keeps_the_ranks_in_step(tmp_path):
    script = tmp_path / "fit_ddp.py"
    script.write_text(FIT_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith("world 2 best ")
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    from classifiers import build_model

    initial = build_model("tiny-cnn", in_channels=1, num_classes=2, seed=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # DDP kept both ranks identical
    assert any(not torch.equal(a[k], initial[k]) for k in a if a[k].is_floating_point())  # and they trained


def test_epoch_shards_deal_one_global_order_to_the_ranks():
    from classifiers.distributed import EpochShardSampler

    for n, samples in ((10, None), (10, 25), (7, 7)):
        shards = [EpochShardSampler(n, samples, seed=3, rank=r, world=2) for r in range(2)]
        for s in shards:
            s.set_epoch(4)
        a, b = (list(s) for s in shards)
        assert len(a) == len(b) == len(shards[0]) == -(-(samples or n) // 2)  # equal shares, padded
        one = EpochShardSampler(n, 2 * len(a), seed=3, rank=0, world=1)  # one process, the same global batch
        one.set_epoch(4)
        merged = [i for pair in zip(a, b) for i in pair]  # round-robin back into one order
        assert merged == list(one)
        counts = [merged.count(i) for i in range(n)]  # every item as often as the epoch asks, give or take one
        assert max(counts) - min(counts) <= 1
        shards[0].set_epoch(5)
        assert list(shards[0]) != a  # a new order every epoch
