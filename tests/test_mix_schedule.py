"""Ratio schedules: the grammar, per-epoch counts, resume, workers, DistributedSampler, generator offsets."""

from __future__ import annotations

import math

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from synthaug.data.manifest import load_manifest
from synthaug.errors import InputError
from synthaug.mix import SyntheticMixDataset
from synthaug.mix.ratio import Ratio
from synthaug.mix.schedule import arm_schedules, parse_schedule, parse_templates

SYNTHETIC_ONLY = Ratio.synthetic_only().label


@pytest.fixture(scope="module")
def real(small_phantom) -> list[dict]:
    return load_manifest(small_phantom).items("train")


def kinds(ds: SyntheticMixDataset) -> tuple[int, int]:
    """(real, synthetic) items of the current epoch, counted from what __getitem__ returns."""
    flags = [ds[i]["is_synthetic"] for i in range(len(ds))]
    return flags.count(False), flags.count(True)


def ids(ds: SyntheticMixDataset) -> list[str]:
    return [ds[i]["synthetic_id"] or ds[i]["case_id"] for i in range(len(ds))]


def test_the_grammar_parses_and_labels_round_trip():
    assert parse_schedule(0.5).ratio(7) == 0.5 and parse_schedule("0.5").label == "0.5"
    assert math.isinf(parse_schedule(SYNTHETIC_ONLY).ratio(3)) and parse_schedule(math.inf).label == SYNTHETIC_ONLY
    pretrain = parse_schedule("pretrain:3")
    assert [pretrain.ratio(e) for e in range(5)] == [math.inf] * 3 + [0.0, 0.0]
    linear = parse_schedule("linear:2", epochs=5)
    assert [linear.ratio(e) for e in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    cosine = parse_schedule("cosine:2", epochs=3)
    assert [round(cosine.ratio(e), 6) for e in range(3)] == [2.0, 1.0, 0.0]
    assert parse_schedule("decay:1", epochs=4).label == "linear:1"
    for label in ("0", "1.5", SYNTHETIC_ONLY, "pretrain:4", "linear:1", "cosine:0.5"):
        assert parse_schedule(label, epochs=10).label == label
    assert parse_schedule(lambda e: 1.0 / (e + 1)).ratio(3) == 0.25


@pytest.mark.parametrize("spec, match", [
    ("sometimes", "unknown ratio schedule"), ("pretrain:0", "whole number of epochs >= 1"),
    ("pretrain:-2", "whole number"), ("linear:-1", "not a number >= 0"), ("cosine:1", "pass epochs="),
    (-0.5, "not a number >= 0"), (float("nan"), "not a number >= 0")])
def test_bad_schedules_are_one_clear_error(spec, match):
    with pytest.raises(InputError, match=match):
        parse_schedule(spec)


def test_a_callable_that_returns_nonsense_names_the_epoch(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio=lambda e: 1.0 if e < 2 else -1.0)
    with pytest.raises(InputError, match="returned -1.0 at epoch 2"):
        ds.set_epoch(2)


def test_pretrain_is_synthetic_only_then_real_only(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio="pretrain:2")
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert len(ds) == len(real)  # one length for the whole run
        assert kinds(ds) == ((0, len(real)) if epoch < 2 else (len(real), 0))
    assert sorted(ids(ds)) == sorted(r["case_id"] for r in real)  # after pretraining: each real item once


def test_a_linear_decay_moves_the_synthetic_share_at_a_fixed_length(real, small_cache):
    n = len(real)
    ds = SyntheticMixDataset(real, small_cache, ratio="linear:1", epochs=5)
    constant = SyntheticMixDataset(real, small_cache, ratio=1.0)
    assert ids(ds) == ids(constant)  # epoch 0 is exactly the constant ratio 1
    for epoch, r in enumerate([1.0, 0.75, 0.5, 0.25, 0.0]):
        ds.set_epoch(epoch)
        synthetic = round(2 * n * r / (1 + r))
        assert len(ds) == 2 * n and kinds(ds) == (2 * n - synthetic, synthetic)
        summary = ds.summary()
        assert sum(summary["synthetic"].values()) == synthetic and summary["ratio"] == r
    assert sorted(ids(ds)) == sorted([r["case_id"] for r in real] * 2)  # real only: every real item twice


def test_a_callable_schedule_drives_the_counts(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio=lambda e: [1.0, math.inf, 0.0][e % 3])
    n = len(real)
    expected = [(n, n), (0, 2 * n), (2 * n, 0)]
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert kinds(ds) == expected[epoch]


def test_resuming_mid_schedule_gives_the_items_of_an_uninterrupted_run(real, small_cache):
    run = SyntheticMixDataset(real, small_cache, ratio="cosine:1.5", epochs=6, seed=3)
    per_epoch = []
    for epoch in range(6):
        run.set_epoch(epoch)
        per_epoch.append(ids(run))
    resumed = SyntheticMixDataset(real, small_cache, ratio="cosine:1.5", epochs=6, seed=3)
    resumed.set_epoch(4)
    assert ids(resumed) == per_epoch[4]
    other_seed = SyntheticMixDataset(real, small_cache, ratio="cosine:1.5", epochs=6, seed=4)
    other_seed.set_epoch(4)
    assert ids(other_seed) != per_epoch[4]  # the draw depends on the seed (repeated real items, synthetic picks)


def test_workers_and_a_distributed_sampler_see_the_schedule(real, small_cache):
    ds = SyntheticMixDataset(real, small_cache, ratio="linear:1", epochs=3)
    samplers = [DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    for epoch in range(3):  # built once, like a training loop: the fixed length keeps the sampler valid
        ds.set_epoch(epoch)
        expected = sorted(ids(ds))
        for workers in (0, 2):
            seen = []
            for sampler in samplers:
                sampler.set_epoch(epoch)
                loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers, collate_fn=list)
                seen += [item["synthetic_id"] or item["case_id"] for batch in loader for item in batch]
            assert sorted(seen) == expected, (epoch, workers)  # 2 x n items split evenly: nothing padded


def test_a_generator_source_takes_new_volumes_after_the_earlier_epochs(real, small_bundle, tmp_path):
    from synthaug.generate import CCELLAGenerator

    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2)
    ds = SyntheticMixDataset(real, generator, ratio="linear:0.5", epochs=3, cache_dir=tmp_path / "wt")
    drawn = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        drawn.append(list(ds.synthetic_ids))
    ds.close()
    assert [len(d) for d in drawn] == [round(0.5 * len(real)), round(ds.length * 0.25 / 1.25), 0]
    assert drawn[1] and not set(drawn[0]) & set(drawn[1])  # epoch 1 starts after epoch 0's indices
    with SyntheticMixDataset(real, generator, ratio="linear:0.5", epochs=3, cache_dir=tmp_path / "wt") as resumed:
        resumed.set_epoch(1)  # a resumed run: the same volumes, found in the write-through cache
        assert resumed.synthetic_ids == drawn[1]


def test_schedules_that_cannot_work_are_refused(real, small_cache):
    with pytest.raises(InputError, match="needs real items"):
        SyntheticMixDataset([], small_cache, ratio="pretrain:2")
    with pytest.raises(InputError, match="pass epochs="):
        SyntheticMixDataset(real, small_cache, ratio="linear:1")
    with pytest.raises(InputError, match="needs a synthetic source"):
        SyntheticMixDataset(real, None, ratio="pretrain:1")


def test_sweep_templates_cross_with_ratios_without_repeats():
    assert parse_templates("constant, pretrain:5,decay") == ["constant", "pretrain:5", "linear"]
    assert arm_schedules(["constant", "linear", "pretrain:3"], [0, 0.5, 1, SYNTHETIC_ONLY]) == \
        ["0", "0.5", "1", SYNTHETIC_ONLY, "linear:0.5", "linear:1", "pretrain:3"]
    for bad in ("constant,sometimes", "pretrain:0", ""):
        with pytest.raises(InputError, match="--schedules"):
            parse_templates(bad)
