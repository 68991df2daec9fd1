"""Class balance: how many synthetic volumes of each class, pinned to the numbers synthaug has always made."""

from __future__ import annotations

import shutil

import pytest

from synthaug.data.manifest import load_manifest
from synthaug.errors import InputError
from synthaug.mix import SyntheticCache, SyntheticMixDataset, synthetic_quotas
from synthaug.mix.balance import class_quotas, parse_class_balance, pregeneration_quotas
from synthaug.mix.cache import MANIFEST_FILE

NS = (0, 1, 2, 3, 5, 8, 9, 13)
WEIGHTS = {0: 1, 1: 2}
# (real class counts, balance) -> the (class 0, class 1) quotas for each n in NS, as the mix dataset draws them.
PINNED = {
    ("6:2", "equal"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (4, 4), (4, 5), (6, 7)],
    ("6:2", "match_real"): [(0, 0), (1, 0), (2, 0), (2, 1), (4, 1), (6, 2), (7, 2), (10, 3)],
    ("6:2", "fill_minority"): [(0, 0), (0, 1), (0, 2), (0, 3), (0, 5), (2, 6), (2, 7), (4, 9)],
    ("6:2", "weights"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 5), (3, 6), (4, 9)],
    ("3:5", "match_real"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 5), (3, 6), (5, 8)],
    ("3:5", "fill_minority"): [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 3), (6, 3), (8, 5)],
    ("4:4", "match_real"): [(0, 0), (1, 0), (1, 1), (1, 2), (3, 2), (4, 4), (5, 4), (7, 6)],
    ("4:4", "fill_minority"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (4, 4), (4, 5), (6, 7)],
    ("0:0", "equal"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (4, 4), (4, 5), (6, 7)],
    ("0:0", "fill_minority"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (4, 4), (4, 5), (6, 7)],
    ("0:0", "weights"): [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 5), (3, 6), (4, 9)],
}
# balance -> the (class 0, class 1) counts a cache is filled with for each n in NS. Its ``equal`` is the
# weights 1:1 rounded half to even, so an odd n does not always give class 1 the extra volume (1 -> 1 + 0).
PINNED_PREGENERATION = {
    "equal": [(0, 0), (1, 0), (1, 1), (1, 2), (3, 2), (4, 4), (5, 4), (7, 6)],
    "weights": [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 5), (3, 6), (4, 9)],
    "3:1": [(0, 0), (1, 0), (2, 0), (2, 1), (4, 1), (6, 2), (7, 2), (10, 3)],
}


def real_counts(text: str) -> dict[int, int]:
    zeros, ones = text.split(":")
    return {0: int(zeros), 1: int(ones)}


def balance_of(name: str):
    return WEIGHTS if name == "weights" else {0: 3, 1: 1} if name == "3:1" else name


@pytest.mark.parametrize("real, balance", list(PINNED))
def test_dataset_quotas_are_pinned(real, balance):
    got = [class_quotas(n, balance_of(balance), real_counts(real)) for n in NS]
    assert [(q[0], q[1]) for q in got] == PINNED[real, balance]
    assert got == [synthetic_quotas(real_counts(real), n, balance_of(balance)) for n in NS]  # the older name


@pytest.mark.parametrize("balance", list(PINNED_PREGENERATION))
def test_pregeneration_counts_are_pinned(balance):
    got = [pregeneration_quotas(n, balance_of(balance)) for n in NS]
    assert [(q[0], q[1]) for q in got] == PINNED_PREGENERATION[balance]


def test_command_line_text_parses_to_a_balance():
    assert parse_class_balance("equal") == "equal" and parse_class_balance(" match_real ") == "match_real"
    assert parse_class_balance("fill_minority") == "fill_minority"
    assert parse_class_balance("0:1,1:2") == {0: 1.0, 1: 2.0} and parse_class_balance("0:0,1:1") == {0: 0.0, 1: 1.0}


@pytest.mark.parametrize("text, match", [
    ("most", "class balance 'most' is not a mode"), ("0:1,1", "is not a mode"), ("0:1,2:1", "class weight 2"),
    ("0:-1,1:1", "class weight 0"), ("0:0,1:0", "sum to 0")])
def test_bad_command_line_text_is_one_clear_error(text, match):
    with pytest.raises(InputError, match=match) as caught:
        parse_class_balance(text)
    assert caught.value.where == "--class-balance"


def test_a_balance_that_needs_real_counts_says_so():
    for balance in ("match_real", "fill_minority"):
        with pytest.raises(InputError, match="needs the real training set's class counts") as caught:
            class_quotas(4, balance)
        assert "real_counts=" in caught.value.fix
    with pytest.raises(InputError, match="needs real items"):
        class_quotas(4, "match_real", {0: 0, 1: 0})
    with pytest.raises(InputError, match="unknown class balance"):
        class_quotas(4, "most")
    with pytest.raises(InputError, match="n must be >= 0"):
        class_quotas(-1)


@pytest.fixture
def empty_cache(small_cache, tmp_path) -> SyntheticCache:
    """A copy of the small cache with an empty manifest: pregeneration has everything to make."""
    folder = tmp_path / "cache"
    shutil.copytree(small_cache, folder)
    (folder / MANIFEST_FILE).write_text("")
    return SyntheticCache(folder)


class Planned:
    """Stands in for a generator: pregenerate() asks the cache to make (label, index) pairs, recorded here."""

    batch_size = 4

    def __init__(self, cache: SyntheticCache) -> None:
        self.pairs: list[tuple[int, int]] = []
        cache.make = lambda generator, pairs, **kwargs: self.pairs.extend(pairs) or []

    def per_class(self) -> tuple[int, int]:
        return sum(c == 0 for c, _ in self.pairs), sum(c == 1 for c, _ in self.pairs)


@pytest.mark.parametrize("balance, real, expected", [
    ("equal", None, (3, 2)), ({0: 1, 1: 2}, None, (2, 3)), ("match_real", {0: 1, 1: 4}, (1, 4)),
    ("fill_minority", {0: 6, 1: 2}, (0, 5))])
def test_pregenerate_takes_every_balance(empty_cache, balance, real, expected):
    planned = Planned(empty_cache)
    empty_cache.pregenerate(planned, n=5, class_balance=balance, real_counts=real, allow_foreign=True)
    assert planned.per_class() == expected == tuple(pregeneration_quotas(5, balance, real).values())


def test_pregenerate_refuses_match_real_without_real_counts(empty_cache):
    with pytest.raises(InputError, match="real_counts="):
        empty_cache.pregenerate(Planned(empty_cache), n=5, class_balance="match_real", allow_foreign=True)


@pytest.mark.parametrize("balance", ["equal", "match_real", "fill_minority", {0: 1, 1: 3}])
def test_the_dataset_draws_class_quotas(small_phantom, small_cache, balance):
    real = load_manifest(small_phantom).items("train")
    ds = SyntheticMixDataset(real, small_cache, ratio=1.0, num_synthetic=5, class_balance=balance)
    counts = {c: sum(item["label"] == c for item in real) for c in (0, 1)}
    assert ds.quotas == class_quotas(5, balance, counts) == ds.summary()["synthetic"]  # 5: odd, unlike a cache's
