"""SyntheticMixDataset: counts per ratio and balance, epochs, workers, DDP sampling, MONAI loops, generation."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityd
from torch.utils.data import DistributedSampler

from synthaug.data.manifest import load_manifest
from synthaug.errors import InputError
from synthaug.generate import CCELLAGenerator
from synthaug.mix import SyntheticCache, SyntheticMixDataset, synthetic_quotas
from synthaug.mix.cache import MANIFEST_FILE


@pytest.fixture(scope="module")
def real(small_phantom) -> list[dict]:
    return load_manifest(small_phantom).items("train")


def counts(ds: SyntheticMixDataset) -> tuple[dict, dict]:
    s = ds.summary()
    return s["real"], s["synthetic"]


def test_quotas_for_each_balance_mode():
    real = {0: 6, 1: 2}
    assert synthetic_quotas(real, 8, "equal") == {0: 4, 1: 4}
    assert synthetic_quotas(real, 8, "match_real") == {0: 6, 1: 2}
    assert synthetic_quotas(real, 8, "fill_minority") == {0: 2, 1: 6}  # combined 8 + 8
    assert synthetic_quotas(real, 3, "fill_minority") == {0: 0, 1: 3}  # all to the minority while it lags
    assert synthetic_quotas(real, 9, {0: 1, 1: 2}) == {0: 3, 1: 6}
    assert synthetic_quotas({0: 0, 1: 0}, 5, "equal") == {0: 2, 1: 3}


@pytest.mark.parametrize("ratio", [0, 0.5, 1.0, 1.5])
def test_length_and_class_counts_follow_ratio_and_balance(real, small_cache, ratio):
    for balance in ("equal", "match_real", "fill_minority"):
        ds = SyntheticMixDataset(real, small_cache, ratio=ratio, class_balance=balance)
        n_syn = round(ratio * len(real))
        assert len(ds) == len(real) + n_syn
        real_counts, syn_counts = counts(ds)
        assert syn_counts == synthetic_quotas(real_counts, n_syn, balance)
        kinds = [ds[i]["is_synthetic"] for i in range(len(ds))]
        assert kinds == [False] * len(real) + [True] * n_syn


def test_synthetic_only_uses_the_whole_cache(small_cache):
    ds = SyntheticMixDataset([], small_cache)
    assert len(ds) == 12 and all(ds[i]["is_synthetic"] for i in range(len(ds)))
    assert SyntheticMixDataset([], small_cache, num_synthetic=4).summary()["synthetic"] == {0: 2, 1: 2}


def test_same_seed_same_items_and_epochs_redraw_only_synthetic(real, small_cache):
    a = SyntheticMixDataset(real, small_cache, ratio=0.5, seed=3)
    b = SyntheticMixDataset(real, small_cache, ratio=0.5, seed=3)
    ids = lambda ds: [ds[i]["case_id"] for i in range(len(ds))]  # noqa: E731
    assert ids(a) == ids(b)
    first = ids(a)
    draws = set()
    for epoch in range(1, 6):
        a.set_epoch(epoch)
        assert ids(a)[: len(real)] == first[: len(real)]
        draws.add(tuple(ids(a)[len(real):]))
    assert len(draws) > 1
    a.set_epoch(2)
    b.set_epoch(2)
    assert ids(a) == ids(b)


def tutorial_transform(keys=("image",)):
    """A training transform as written in the MONAI tutorials; knows nothing of synthetic data."""
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), ScaleIntensityd(keys),
                    EnsureTyped(keys, dtype=torch.float32)])


def test_a_monai_tutorial_loop_runs_unchanged_with_workers(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio=1.0, transform=tutorial_transform())
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == math.ceil(len(ds) / 4)
    first = batches[0][0]
    assert first["image"].shape == (4, 1, 32, 32, 16) and first["label"].shape == (4,)
    for x, y in zip(batches[0], batches[2]):
        assert torch.equal(x["image"], y["image"]) and x["case_id"] == y["case_id"]
    assert any(b["is_synthetic"].any() for b in batches[0]) and not batches[0][0]["is_synthetic"].all()


def test_distributed_sampler_covers_every_index_once(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio=1.0)
    seen, loaded = [], []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        sampler.set_epoch(1)
        seen += list(sampler)
        for batch in DataLoader(ds, batch_size=4, sampler=sampler):  # what each rank's loader yields
            loaded += [s or c for s, c in zip(batch["synthetic_id"], batch["case_id"])]
    assert set(seen) == set(range(len(ds)))  # every index; padding repeats at most one to even the ranks
    assert len(seen) == 2 * math.ceil(len(ds) / 2)
    everything = {ds[i]["synthetic_id"] or ds[i]["case_id"] for i in range(len(ds))}
    assert set(loaded) == everything and len(loaded) == len(seen)


def test_cache_dataset_wrapping(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio=0.5)
    cached = CacheDataset(ds, transform=tutorial_transform(), progress=False)
    assert len(cached) == len(ds) and cached[len(ds) - 1]["image"].shape == (1, 32, 32, 16)


def test_generator_source_generates_writes_through_and_is_reused(real, small_bundle, tmp_path):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2)
    ds = SyntheticMixDataset(real, generator, ratio=0.5, cache_dir=tmp_path / "wt", pool_size=4)
    ds.wait()
    cache = SyntheticCache(tmp_path / "wt")
    made = len(cache)
    assert made == round(0.5 * len(real)) and cache.verify().ok
    assert all(ds[i]["is_synthetic"] for i in range(len(real), len(ds)))
    for epoch in range(1, 4):  # later epochs draw from the 4-per-class pool, generating only what is new
        ds.set_epoch(epoch)
        ds.wait()
    assert made <= len(cache) <= 8
    again = SyntheticMixDataset(real, tmp_path / "wt", ratio=0.5)  # a later run: reads, never generates
    assert again.generator is None and len(again) == len(ds)


def test_a_generator_source_makes_new_volumes_every_epoch(real, small_bundle, tmp_path):
    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2)
    ds = SyntheticMixDataset(real, generator, ratio=0.5, cache_dir=tmp_path / "fresh")
    first = list(ds.synthetic_ids)
    loaded = [ds[i]["synthetic_id"] for i in range(len(real), len(ds))]  # reads wait for the producer
    assert loaded == first and len(first) == round(0.5 * len(real))
    ds.set_epoch(1)
    assert not set(ds.synthetic_ids) & set(first) and len(ds.synthetic_ids) == len(first)
    ds.wait()
    assert len(SyntheticCache(tmp_path / "fresh")) == 2 * len(first)
    ds.set_epoch(0)
    assert ds.synthetic_ids == first  # deterministic in the epoch


def test_close_stops_generation_after_its_batch_and_joins_the_thread(real, small_bundle, tmp_path):
    import threading

    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, batch_size=1)
    started, calls = threading.Event(), []
    generate = generator.generate

    def slow(*args, **kwargs):
        calls.append(1)
        started.set()
        return generate(*args, **kwargs)

    generator.generate = slow
    with SyntheticMixDataset(real, generator, ratio=1.0, cache_dir=tmp_path / "c") as ds:
        assert started.wait(timeout=60)
    assert ds.pool._producer is None and not any(t.name == "synthaug-producer" for t in threading.enumerate())
    assert 1 <= len(calls) < len(ds.synthetic_ids)  # stopped after the batch in progress, not at the end
    assert len(SyntheticCache(tmp_path / "c")) == len(calls)  # what was made is kept, whole


SCRIPT = """
import sys, time
from synthaug.generate import CCELLAGenerator
from synthaug.mix import SyntheticMixDataset
generator = CCELLAGenerator.from_bundle(sys.argv[1], sampler="ddim", steps=50, batch_size=4)
real = [{"image": "x", "label": i % 2} for i in range(8)]
ds = SyntheticMixDataset(real, generator, ratio=2.0, cache_dir=sys.argv[2])
time.sleep(2)  # the producer is now inside torch's kernels
print("exiting while the producer generates")
"""


def test_a_program_that_forgets_close_still_exits_0(small_bundle, tmp_path):
    """A generation thread alive at interpreter exit must not abort the process (exit 134, 'terminate called')."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SCRIPT, str(small_bundle), str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    assert SyntheticCache(tmp_path / "c").verify().ok


def test_a_generation_failure_reaches_loader_workers(real, small_bundle, tmp_path):
    import pickle
    import threading

    from synthaug.errors import GenerationError

    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2)
    release = threading.Event()

    def broken(*args, **kwargs):
        release.wait(timeout=60)
        raise RuntimeError("out of memory")

    generator.generate = broken
    ds = SyntheticMixDataset(real, generator, ratio=0.5, cache_dir=tmp_path / "broken")
    worker_copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker holds: no producer of its own
    release.set()
    with pytest.raises(RuntimeError, match="out of memory"):
        ds.wait()
    with pytest.raises(GenerationError, match="out of memory"):
        worker_copy[len(real)]


def test_a_short_pool_without_generation_repeats_with_a_warning(real, small_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="synthaug.mix.sources"):
        ds = SyntheticMixDataset(real, small_cache, ratio=2.0, class_balance="equal")
    assert len(ds) == 3 * len(real) and "repeating" in caplog.text


def test_bad_input_is_one_clear_error(real, small_cache, tmp_path):
    for ratio in (-1, float("nan"), "many"):
        with pytest.raises(InputError, match="ratio"):
            SyntheticMixDataset(real, small_cache, ratio=ratio)
    with pytest.raises(InputError, match="not valid"):
        SyntheticMixDataset(real, small_cache, class_balance={2: 1.0})
    with pytest.raises(InputError, match="unknown class balance"):
        SyntheticMixDataset(real, small_cache, class_balance="most")
    with pytest.raises(InputError, match="has no 'label'"):
        SyntheticMixDataset([{"image": "x.nii.gz"}], small_cache)
    with pytest.raises(InputError, match="'case_9' has no 'image'"):
        SyntheticMixDataset([{"case_id": "case_9", "label": 1}], small_cache, ratio=0)[0]
    with pytest.raises(InputError, match="needs a synthetic source"):
        SyntheticMixDataset(real, None, ratio=1.0)
    one_class = tmp_path / "one_class"
    shutil.copytree(small_cache, one_class)
    lines = (one_class / MANIFEST_FILE).read_text().splitlines()
    (one_class / MANIFEST_FILE).write_text("".join(line + "\n" for line in lines if '"label": 0' in line))
    with pytest.raises(InputError, match="class 1 but the cache has none"):
        SyntheticMixDataset(real, one_class, ratio=1.0)
    empty = tmp_path / "empty"
    shutil.copytree(small_cache, empty)
    (empty / MANIFEST_FILE).write_text("")
    with pytest.raises(InputError, match="empty synthetic pool"):
        SyntheticMixDataset([], empty)
    broken = tmp_path / "broken"
    shutil.copytree(small_cache, broken)
    lines = (broken / MANIFEST_FILE).read_text().splitlines()
    (broken / MANIFEST_FILE).write_text("".join(line + "\n" for line in [lines[0], "{oops", *lines[1:]]))
    with pytest.raises(InputError, match="line 2 is not a complete JSON object"):
        SyntheticMixDataset(real, broken, ratio=1.0)
    missing = tmp_path / "missing"
    shutil.copytree(small_cache, missing)
    next((missing / "volumes").glob("syn-l1-*")).unlink()
    with pytest.raises(InputError, match="missing"):
        SyntheticMixDataset(real, missing, ratio=1.0)
    with pytest.raises(InputError, match="neither a synthetic cache"):
        SyntheticMixDataset(real, tmp_path, ratio=1.0)
