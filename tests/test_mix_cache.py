"""SyntheticCache: pregeneration, resume after SIGKILL, concurrent shards, verify, foreign caches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from synthaug.data.io import read_volume
from synthaug.errors import InputError
from synthaug.generate import CCELLAGenerator
from synthaug.mix.balance import pregeneration_quotas
from synthaug.mix.cache import CACHE_FILE, MANIFEST_FILE, SyntheticCache, volume_id
from tests.test_cli import assert_one_line_error, synthaug

FAST = ["--sampler", "ddim", "--steps", "2", "--precision", "fp32"]


@pytest.fixture(scope="module")
def generator(small_bundle) -> CCELLAGenerator:
    # fp32: batch-size independence below is fp32's promise (bf16's tolerance: tests/test_generate.py)
    return CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, precision="fp32")


def manifest_ids(folder) -> list[str]:
    return [json.loads(line)["id"] for line in (folder / MANIFEST_FILE).read_text().splitlines() if line.strip()]


def test_pregenerate_fills_per_class_pools_and_resumes_without_repeats(generator, tmp_path):
    cache = SyntheticCache.create(tmp_path / "c", generator)
    assert cache.pregenerate(generator, n=5, class_balance={0: 2, 1: 3}, batch_size=2) == 5
    assert cache.ids(0) == [volume_id(0, j) for j in range(2)] and cache.ids(1) == [volume_id(1, j) for j in range(3)]
    assert cache.pregenerate(generator, n=5, class_balance={0: 2, 1: 3}) == 0  # nothing missing: nothing made
    assert cache.pregenerate(generator, n=8) == 3  # equal 4 + 4: two more of class 0, one more of class 1
    assert sorted(manifest_ids(tmp_path / "c")) == sorted(set(manifest_ids(tmp_path / "c")))
    report = cache.verify()
    assert report.ok and report.volumes == 8
    info = cache.info()
    assert info["per_class"] == {"0": 4, "1": 4} and info["generator"]["steps"] == 2 and info["bytes"] > 0
    item = cache.item(volume_id(1, 0))
    assert item["is_synthetic"] and item["label"] == 1 and os.path.isfile(item["image"]) and item["report"]


def test_the_same_plan_makes_the_same_volumes_anywhere(generator, tmp_path):
    a = SyntheticCache.create(tmp_path / "a", generator)
    b = SyntheticCache.create(tmp_path / "b", generator)
    c = SyntheticCache.create(tmp_path / "c", generator)
    a.pregenerate(generator, n=4, batch_size=4)
    b.pregenerate(generator, n=4, batch_size=4)
    c.pregenerate(generator, n=4, batch_size=1)
    assert {k: r["sha256"] for k, r in a.rows().items()} == {k: r["sha256"] for k, r in b.rows().items()}
    for row_id in a.ids():  # another batch size: the same volumes up to float reordering in batched convolutions
        x, y = (read_volume(cache.file(cache.rows()[row_id])).array for cache in (a, c))
        assert np.allclose(x, y, rtol=0, atol=1e-5 * np.abs(x).max())
        assert a.rows()[row_id]["report"] == c.rows()[row_id]["report"]


def test_shards_and_restarts_make_the_same_bytes_as_one_process(generator, tmp_path):
    whole = SyntheticCache.create(tmp_path / "whole", generator)
    whole.pregenerate(generator, n=8, batch_size=2)
    sharded = SyntheticCache.create(tmp_path / "sharded", generator)
    for i in (1, 0):  # any order
        sharded.pregenerate(generator, n=8, batch_size=2, shard=(i, 2))
    restarted = SyntheticCache.create(tmp_path / "restarted", generator)

    def stop_after_a_batch(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restarted.pregenerate(generator, n=8, batch_size=2, progress=stop_after_a_batch)
    assert len(restarted.rows(refresh=True)) == 2
    restarted.pregenerate(generator, n=8, batch_size=2)
    digests = [{k: r["sha256"] for k, r in c.rows(refresh=True).items()} for c in (whole, sharded, restarted)]
    assert len(digests[0]) == 8 and digests[0] == digests[1] == digests[2]


def test_two_processes_on_two_shards_make_one_valid_cache(small_bundle, tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "synthaug", "pregenerate", "--bundle", str(small_bundle), "--out", str(out),
               "--n", "8", "--batch-size", "2", *FAST]
    workers = [subprocess.Popen([*command, "--shard", f"{i}/2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read().decode()
    ids = manifest_ids(out)
    assert len(ids) == len(set(ids)) == 8
    assert SyntheticCache(out).verify().ok


def test_a_cache_another_process_is_creating_is_not_foreign(small_bundle, tmp_path):
    # the race of two shards starting together: one sees the other's cache.json temporary before its rename
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, precision="fp32")
    racing = tmp_path / "racing"
    racing.mkdir()
    (racing / f".{CACHE_FILE.removesuffix('.json')}.k3x9q2ab.tmp.json").write_text("{")  # atomic_path's naming
    assert SyntheticCache.create(racing, generator).meta["bundle_fingerprint"] == generator.fingerprint
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.tmp.txt").write_text("mine")  # not hidden: someone's file, even with .tmp in its name
    with pytest.raises(InputError, match="not empty and is not a synthetic cache"):
        SyntheticCache.create(foreign, generator)
    assert [p.name for p in foreign.iterdir()] == ["notes.tmp.txt"]  # nothing written there


def test_a_killed_pregeneration_resumes_to_the_exact_count(small_bundle, generator, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "synthaug", "pregenerate", "--bundle", str(small_bundle), "--out", str(out),
               "--n", "10", "--batch-size", "1", *FAST]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / MANIFEST_FILE).is_file() and len(manifest_ids(out)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    made_before = len(manifest_ids(out))
    assert 2 <= made_before < 10
    cache = SyntheticCache(out)
    assert cache.pregenerate(generator, n=10) == 10 - made_before
    ids = manifest_ids(out)
    assert len(ids) == len(set(ids)) == 10
    assert cache.verify().ok


def test_verify_finds_corrupt_and_missing_volumes(small_cache, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(small_cache, folder)
    cache = SyntheticCache(folder)
    first, second = cache.ids()[:2]
    path = cache.file(cache.rows()[first])
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    cache.file(cache.rows()[second]).unlink()
    with open(folder / MANIFEST_FILE, "a") as handle:
        handle.write('{"id": "torn", "label": 1, "fi')
    report = cache.verify()
    assert report.corrupt == [first] and report.missing == [second] and report.bad_lines and not report.ok
    done = synthaug("cache", "verify", folder)
    assert done.returncode == 2 and "corrupt" in done.stdout and "Traceback" not in done.stderr
    assert synthaug("cache", "verify", small_cache).returncode == 0


def test_a_volume_recorded_by_another_writer_meanwhile_is_never_overwritten(generator, tmp_path, monkeypatch):
    import synthaug.generate

    first, second = SyntheticCache.create(tmp_path / "c", generator), SyntheticCache(tmp_path / "c")
    write, raced = synthaug.generate.write_volume, []

    def slow_write(volume, affine, path):  # the other writer records the same volume while this one writes
        if not raced:
            raced.append(True)
            monkeypatch.setattr(synthaug.generate, "write_volume", write)
            first.make(generator, [(0, 0)])
        return write(volume + 1e-3, affine, path)  # e.g. another batch size: not the same bytes

    monkeypatch.setattr(synthaug.generate, "write_volume", slow_write)
    assert second.make(generator, [(0, 0)]) == []  # recorded by the other writer: nothing new
    report = second.verify()
    assert report.ok and report.volumes == 1 and not report.temp_files and not report.orphans


def test_cache_info_shows_counts_reports_sampler_bundle_and_size(small_cache):
    done = synthaug("cache", "info", small_cache)
    info = SyntheticCache(small_cache).info()
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # rich may wrap the table
    assert f"{info['volumes']} (label 0: {info['per_class']['0']}, label 1: {info['per_class']['1']})" in out
    assert f"{info['distinct_reports']} distinct" in out and "ddim x 2, eta 1," in out
    assert info["bundle_fingerprint"][:16] in out and "MiB" in out


def test_class_guidance_is_a_cache_setting_shown_by_cache_info(small_bundle, small_cache, tmp_path, capsys):
    from synthaug.cli import main

    out = tmp_path / "guided"
    assert main(["pregenerate", "--bundle", str(small_bundle), "--out", str(out), "--n", "2", *FAST,
                 "--class-guidance", "2"]) == 0
    assert json.loads((out / CACHE_FILE).read_text())["generator"]["class_guidance"] == 2.0
    capsys.readouterr()
    assert main(["cache", "info", str(out)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "guidance 1.0, class guidance 2.0" in shown and "fp32" in shown
    code = main(["pregenerate", "--bundle", str(small_bundle), "--out", str(tmp_path / "bad"), "--n", "2",
                 "--class-guidance", "-1"])
    assert_one_line_error(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), "--class-guidance")
    assert not (tmp_path / "bad").exists()
    guided = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, class_guidance=2.0, precision="fp32")
    with pytest.raises(InputError, match=r"other generator settings \(class_guidance\)"):
        SyntheticCache.create(small_cache, guided)
    # a cache made before class guidance existed was made without it
    old = tmp_path / "old"
    shutil.copytree(small_cache, old)
    meta = json.loads((old / CACHE_FILE).read_text())
    del meta["generator"]["class_guidance"], meta["generator"]["precision"], meta["generator"]["guidance_interval"]
    (old / CACHE_FILE).write_text(json.dumps(meta))
    made_then = {"sampler": "ddim", "steps": 2, "class_guidance": 1.0, "precision": "fp32", "guidance_interval": (0, 1)}
    SyntheticCache.create(old, CCELLAGenerator.from_bundle(small_bundle, **made_then))
    with pytest.raises(InputError, match=r"other generator settings \(class_guidance\)"):  # today's default: 12
        SyntheticCache.create(old, CCELLAGenerator.from_bundle(small_bundle, **{**made_then, "class_guidance": None}))
    # ... and in fp32, before the precision setting existed
    with pytest.raises(InputError, match=r"other generator settings \(precision\)"):
        SyntheticCache.create(old, CCELLAGenerator.from_bundle(small_bundle, **{**made_then, "precision": "bf16"}))
    # ... and with guidance on every step, before the guidance interval existed (today's default: the noisier half)
    with pytest.raises(InputError, match=r"other generator settings \(guidance_interval\)"):
        SyntheticCache.create(old, CCELLAGenerator.from_bundle(small_bundle, **{**made_then, "guidance_interval": None}))


def test_a_torn_last_line_is_skipped_and_cut_by_the_next_writer(small_cache, generator, tmp_path):
    folder = tmp_path / "torn"
    shutil.copytree(small_cache, folder)
    with open(folder / MANIFEST_FILE, "a") as handle:
        handle.write('{"id": "syn-l1-000099", "lab')
    cache = SyntheticCache(folder)
    assert len(cache) == 12  # the unterminated tail is a write in progress: skipped
    cache.pregenerate(generator, n=14)
    assert cache.verify().ok and len(manifest_ids(folder)) == 14


def test_foreign_or_differently_made_caches_are_refused(small_bundle, small_cache, tmp_path):
    folder = tmp_path / "foreign"
    shutil.copytree(small_cache, folder)
    meta = json.loads((folder / CACHE_FILE).read_text())
    meta["bundle_fingerprint"] = "0" * 64
    (folder / CACHE_FILE).write_text(json.dumps(meta))
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, precision="fp32")
    with pytest.raises(InputError, match="another bundle"):
        SyntheticCache.create(folder, generator)
    SyntheticCache.create(folder, generator, allow_foreign=True)  # asked for: allowed
    other_steps = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=3)
    with pytest.raises(InputError, match="other generator settings"):
        SyntheticCache.create(small_cache, other_steps)


def test_bad_input_is_one_clear_error(small_bundle, small_cache, tmp_path):
    with pytest.raises(InputError, match="no cache.json"):
        SyntheticCache(tmp_path)
    (tmp_path / "bad.json").mkdir()
    (tmp_path / "bad.json" / CACHE_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        SyntheticCache(tmp_path / "bad.json")
    with pytest.raises(InputError, match="n must be >= 0"):
        pregeneration_quotas(-1)
    assert_one_line_error(synthaug("cache", "info", tmp_path), "no cache.json")
    for args, match in ((["--shard", "2/2"], "shard"), (["--class-balance", "most"], "class balance"),
                        (["--class-balance", "match_real"], "--real")):
        done = synthaug("pregenerate", "--bundle", small_bundle, "--out", tmp_path / "x", "--n", "2", *args)
        assert_one_line_error(done, match)
    assert not (tmp_path / "x").exists()


def test_torchrun_ranks_fill_one_cache_like_a_single_process(small_bundle, tmp_path):
    """`torchrun --nproc_per_node 2 -m synthaug pregenerate`: each rank takes its shard; same bytes as one process.

    The guarantee is for equal thread counts (float reductions, hence the last bits, depend on them): both
    sides are fresh processes with one thread each, so nothing an earlier test computed at another thread
    count, on however busy a machine, can reach them.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["pregenerate", "--bundle", str(small_bundle), "--volumes", "8", "--batch-size", "2", *FAST]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "synthaug", *args, "--out", str(tmp_path / "ranks")]
    single = [sys.executable, "-m", "synthaug", *args, "--out", str(tmp_path / "single")]
    for command in (ranks, single):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = SyntheticCache(tmp_path / "ranks"), SyntheticCache(tmp_path / "single")
    assert len(a) == 8 and {k: r["sha256"] for k, r in a.rows().items()} == {k: r["sha256"] for k, r in b.rows().items()}


def test_pregenerate_follows_the_real_classes_with_match_real(small_bundle, small_phantom, tmp_path):
    """Every class-balance mode works in the command too: match_real takes the train split's proportions."""
    from synthaug.data.manifest import load_manifest

    labels = [case["label"] for case in load_manifest(small_phantom).items("train")]
    assert labels.count(0) != labels.count(1)  # else match_real could not be told from equal
    done = synthaug("pregenerate", "--bundle", small_bundle, "--out", tmp_path / "c", "--n", "10", *FAST,
                    "--class-balance", "match_real", "--real", small_phantom)
    assert done.returncode == 0, done.stderr
    made = Counter(row["label"] for row in SyntheticCache(tmp_path / "c").rows().values())
    assert made == Counter({c: round(10 * labels.count(c) / len(labels)) for c in (0, 1)})
