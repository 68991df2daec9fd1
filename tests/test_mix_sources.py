"""The mix dataset's synthetic sources: a cache is a CachePool, a generator a GeneratorPool, behind one interface."""

from __future__ import annotations

import threading

import pytest

from synthaug.data.manifest import load_manifest
from synthaug.generate import CCELLAGenerator
from synthaug.mix import SyntheticCache, SyntheticMixDataset
from synthaug.mix.sources import CachePool, GeneratorPool, open_pool, open_synthetic_folder


@pytest.fixture(scope="module")
def real(small_phantom) -> list[dict]:
    return load_manifest(small_phantom).items("train")


@pytest.fixture(scope="module")
def generator(small_bundle) -> CCELLAGenerator:
    return CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2)


def test_a_cache_or_its_folder_is_a_cache_pool(real, small_cache):
    for source in (small_cache, str(small_cache), SyntheticCache(small_cache)):
        ds = SyntheticMixDataset(real, source, ratio=0.5)
        assert isinstance(ds.pool, CachePool) and ds.generator is None and ds.cache.path == small_cache
        assert all(ds[i]["is_synthetic"] for i in range(len(real), len(ds)))
    assert isinstance(open_synthetic_folder(small_cache), SyntheticCache)
    assert SyntheticMixDataset(real, None, ratio=0).pool is None and open_pool(None) is None


def test_a_generator_is_a_generator_pool_unless_told_not_to_generate(real, generator, tmp_path):
    with SyntheticMixDataset(real, generator, ratio=0.5, cache_dir=tmp_path / "wt", pool_size=0) as ds:
        assert isinstance(ds.pool, GeneratorPool) and ds.generator is generator
        ds.wait()
        assert len(ds.cache) == len(ds.synthetic_ids) and ds.cache.path == tmp_path / "wt"
    reading = SyntheticMixDataset(real, generator, ratio=0.5, cache_dir=tmp_path / "wt", generate=False)
    assert isinstance(reading.pool, CachePool) and reading.generator is None
    assert reading.synthetic_ids == ds.synthetic_ids  # the same draw from the same volumes


def test_drawn_volumes_carry_their_class_before_they_exist(real, generator, tmp_path):
    release = threading.Event()
    generate = generator.generate

    def held(*args, **kwargs):
        release.wait(timeout=60)
        return generate(*args, **kwargs)

    generator.generate = held
    try:
        ds = SyntheticMixDataset(real, generator, ratio=1.0, cache_dir=tmp_path / "held")
        assert len(ds.cache) == 0 and ds.summary()["synthetic"] == ds.quotas  # counted from the draw, not the ids
        assert ds.synthetic_labels == [0] * ds.quotas[0] + [1] * ds.quotas[1]
    finally:
        release.set()
        generator.generate = generate
    ds.close()
