"""Filtered pregeneration: only volumes the filter gives their requested class are cached, exactly as many as asked."""

from __future__ import annotations

import json

import pytest
import torch

from synthaug.data.manifest import load_manifest
from synthaug.errors import InputError
from synthaug.generate import CCELLAGenerator
from synthaug.ldm.bundle import load_bundle
from synthaug.mix.cache import FILTER_FILE, MANIFEST_FILE, SyntheticCache
from synthaug.mix.filter import VolumeFilter, check_confidence
from tests.test_cli import assert_one_line_error
from tests.test_generate import in_process


class EveryOtherFilter:
    """Keeps candidates whose index is odd (a stand-in classifier with a known verdict per candidate)."""

    confidence = 0.8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def describe(self) -> dict:
        return {"model": "every-other", "weights_sha256": "0" * 64, "confidence": self.confidence, "crop": None}

    def probabilities(self, volumes, labels) -> list[float]:
        names = [v["image"].name.split(".")[1] for v in volumes]  # .syn-l{c}-{j}.image.xxx.staged.nii.gz
        self.seen += names
        return [0.9 if int(n.rsplit("-", 1)[1]) % 2 else 0.1 for n in names]


@pytest.fixture(scope="module")
def generator(small_bundle) -> CCELLAGenerator:
    return CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=1, batch_size=3)


def test_rejected_volumes_never_enter_the_manifest(generator, tmp_path):
    vf = EveryOtherFilter()
    cache = SyntheticCache.create(tmp_path / "c", generator, volume_filter=vf)
    cache.pregenerate(generator, counts={0: 3, 1: 2}, batch_size=3, volume_filter=vf)
    rows = cache.rows(refresh=True)
    assert sorted(rows) == ["syn-l0-000001", "syn-l0-000003", "syn-l0-000005", "syn-l1-000001", "syn-l1-000003"]
    assert all(r["filter_prob"] == 0.9 for r in rows.values())
    rejected = cache.rejected()
    assert set(rejected) >= {"syn-l0-000000", "syn-l0-000002", "syn-l0-000004", "syn-l1-000000", "syn-l1-000002"}
    assert not set(rejected) & set(rows) and cache.verify().ok
    assert sorted(p.name for p in (tmp_path / "c" / "volumes").iterdir()) == sorted(r["file"][8:] for r in rows.values())
    info = cache.info()
    assert info["filter"]["model"] == "every-other" and info["rejected"]["0"] >= 3
    with pytest.raises(InputError, match="made with filter every-other"):
        SyntheticCache.create(tmp_path / "c", generator)  # unfiltered volumes into a filtered cache


def test_a_killed_filtered_run_resumes_to_the_exact_count(generator, tmp_path):
    vf = EveryOtherFilter()
    cache = SyntheticCache.create(tmp_path / "c", generator, volume_filter=vf)
    real_make = cache.make
    calls = []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_make(*args, **kwargs)

    cache.make = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        cache.pregenerate(generator, counts={0: 4, 1: 4}, batch_size=3, volume_filter=vf)
    made_before = set(cache.rows(refresh=True))
    resumed = SyntheticCache(tmp_path / "c")
    again = EveryOtherFilter()
    resumed.pregenerate(generator, counts={0: 4, 1: 4}, batch_size=3, volume_filter=again)
    rows = resumed.rows(refresh=True)
    assert len(resumed.ids(0)) == 4 and len(resumed.ids(1)) == 4 and made_before <= set(rows)
    assert not set(again.seen) & made_before  # decided candidates are not made again
    # the same cache made in one go has the same volumes, byte for byte
    whole = SyntheticCache.create(tmp_path / "w", generator, volume_filter=EveryOtherFilter())
    whole.pregenerate(generator, counts={0: 4, 1: 4}, batch_size=3, volume_filter=EveryOtherFilter())
    assert {k: r["sha256"] for k, r in whole.rows().items()} == {k: r["sha256"] for k, r in rows.items()}


def test_a_filter_that_keeps_nothing_stops_with_one_error(generator, tmp_path):
    class NoFilter(EveryOtherFilter):
        def probabilities(self, paths, labels):
            return [0.0] * len(paths)

    vf = NoFilter()
    cache = SyntheticCache.create(tmp_path / "c", generator, volume_filter=vf)
    with pytest.raises(InputError, match="refused 50 class-0 candidates and kept 0 of 1"):
        cache.pregenerate(generator, counts={0: 1, 1: 0}, batch_size=10, volume_filter=vf)
    assert not (tmp_path / "c" / MANIFEST_FILE).is_file() or not cache.rows(refresh=True)


def test_a_trained_filter_keeps_volumes_of_the_requested_class(small_phantom, small_bundle, tmp_path):
    data = load_bundle(small_bundle).config.data
    vf = VolumeFilter.train(load_manifest(small_phantom), data, epochs=1, confidence=0.6)
    vf.save(tmp_path / "f.safetensors")
    again = VolumeFilter.load(tmp_path / "f.safetensors", data, confidence=0.6)
    assert again.weights_sha256 == vf.weights_sha256 and again.describe()["confidence"] == 0.6
    items = load_manifest(small_phantom).items("test")
    probs = vf.probabilities([i["image"] for i in items], [i["label"] for i in items])
    flipped = vf.probabilities([i["image"] for i in items], [1 - i["label"] for i in items])
    assert all(0 <= p <= 1 for p in probs) and all(abs(p + q - 1) < 1e-6 for p, q in zip(probs, flipped))


def sure_of_class_1(path) -> None:
    """tiny-cnn weights whose every answer is class 1 with P ~ 1 (zeroed last layer, bias +-10)."""
    from classifiers import build_model
    from synthaug.data.io import save_weights

    net = build_model("tiny-cnn")
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-10.0, 10.0]))
    save_weights({k: v.contiguous() for k, v in net.state_dict().items()}, path)


def test_the_cli_filters_records_the_filter_and_evaluate_refuses_it_as_judge(small_phantom, small_bundle, tmp_path,
                                                                            capsys):
    sure_of_class_1(tmp_path / "f.safetensors")
    out = tmp_path / "cache"
    done = in_process(capsys, "pregenerate", "--bundle", small_bundle, "--out", out, "--n", "2", "--sampler", "ddim",
                      "--steps", "1", "--class-balance", "0:0,1:1", "--filter", tmp_path / "f.safetensors")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "cache.json").read_text())
    assert meta["filter"]["model"] == "tiny-cnn" and meta["filter"]["confidence"] == 0.8
    assert len(SyntheticCache(out).ids(1)) == 2 and "filter" in done.stdout
    # a judge with the filter's very weights (same architecture, seed, data, epochs) is refused
    meta["filter"]["weights_sha256"] = VolumeFilter.train(load_manifest(small_phantom), load_bundle(small_bundle)
                                                          .config.data, epochs=1, seed=0).weights_sha256
    (out / "cache.json").write_text(json.dumps(meta))
    done = in_process(capsys, "evaluate", "--real", small_phantom, "--synthetic", out, "--out", tmp_path / "q",
                      "--fidelity-epochs", "1")
    assert_one_line_error(done, "judge's weights are the filter's")


def test_filter_train_trains_once_and_a_resumed_run_reuses_it(small_phantom, small_bundle, tmp_path):
    data = load_bundle(small_bundle).config.data
    kept = tmp_path / FILTER_FILE
    first = VolumeFilter.from_option("train", kept, data, manifest=small_phantom, epochs=1)
    first.save(kept)
    resumed = VolumeFilter.from_option("train", kept, data, manifest=None, epochs=1)
    assert resumed.weights_sha256 == first.weights_sha256
    with pytest.raises(InputError, match="--filter-data"):
        VolumeFilter.from_option("train", tmp_path / "none.safetensors", data)


@pytest.mark.parametrize("args,words", [
    (["--filter-confidence", "0.5"], "--filter-confidence"), (["--filter-confidence", "1"], "--filter-confidence"),
    (["--filter", "train"], "--filter-data"),
    (["--filter", "{pickle}"], "not safetensors"), (["--filter", "{other}"], "is not a tiny-cnn"),
])
def test_bad_filter_input_is_one_line_and_writes_nothing(small_bundle, tmp_path, capsys, args, words):
    from classifiers import build_model
    from synthaug.data.io import save_weights

    torch.save(build_model("tiny-cnn").state_dict(), tmp_path / "pickle.safetensors")
    save_weights({k: v.contiguous() for k, v in build_model("resnet10").state_dict().items()}, tmp_path / "o.safetensors")
    args = [a.format(pickle=tmp_path / "pickle.safetensors", other=tmp_path / "o.safetensors") for a in args]
    done = in_process(capsys, "pregenerate", "--bundle", small_bundle, "--out", tmp_path / "c", "--n", "2", *args)
    assert_one_line_error(done, words)
    assert not (tmp_path / "c").exists()


def test_confidence_is_checked_in_one_place():
    assert check_confidence(0.8) == 0.8
    for bad in (0.5, 1.0, float("nan"), -1):
        with pytest.raises(InputError, match="between 0.5 and 1"):
            check_confidence(bad)
