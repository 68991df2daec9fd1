"""Ratio: the one type that parses, labels and checks a constant synthetic:real ratio."""

from __future__ import annotations

import math

import pytest

from synthaug.errors import InputError
from synthaug.mix import Ratio
from synthaug.mix.schedule import parse_schedule


def test_text_and_numbers_parse_to_a_ratio():
    assert Ratio.parse("0.5") == Ratio(0.5) == Ratio.parse(0.5) and Ratio.parse(2).value == 2.0
    assert Ratio.parse(" 0 ").is_real_only and Ratio.parse(0) == Ratio.real_only()
    for synthetic_only in ("synthetic-only", " Synthetic-Only ", "inf", math.inf):
        ratio = Ratio.parse(synthetic_only)
        assert ratio.is_synthetic_only and not ratio.is_real_only and ratio == Ratio.synthetic_only()
    assert Ratio.parse(Ratio(1.5)) == Ratio(1.5)


def test_the_label_is_the_text_that_parses_back():
    assert [Ratio.parse(r).label for r in (0, 0.25, "0.5", 1, 2.0, 4, "synthetic-only", math.inf)] == \
        ["0", "0.25", "0.5", "1", "2", "4", "synthetic-only", "synthetic-only"]
    for ratio in (Ratio(0), Ratio(0.125), Ratio(3), Ratio.synthetic_only()):
        assert Ratio.parse(ratio.label) == ratio
    assert parse_schedule(math.inf).label == Ratio.synthetic_only().label  # schedules label constants alike


@pytest.mark.parametrize("value", [-1, -0.5, "-0.5", float("nan"), "nan", -math.inf, "many", "", True, None,
                                   "infinity", "1e999"])
def test_anything_else_is_one_clear_error(value):
    with pytest.raises(InputError, match="is not a number >= 0") as caught:
        Ratio.parse(value, where="--ratios")
    assert caught.value.where == "--ratios" and "synthetic-only" in caught.value.fix


def test_a_ratio_is_checked_when_made():
    with pytest.raises(InputError, match="not a number >= 0"):
        Ratio(-2)
    with pytest.raises(InputError, match="not a number >= 0"):
        Ratio("1")  # text goes through Ratio.parse


def test_synthetic_items_for_n_real_items():
    assert Ratio(0.5).synthetic_count(7) == 4 and Ratio(0).synthetic_count(7) == 0 and Ratio(2).synthetic_count(3) == 6
    assert Ratio.synthetic_only().synthetic_count(7) == 7  # an epoch as long as the real set, all synthetic


def test_only_ratio_text_is_written_as_a_ratio():
    assert all(Ratio.is_written_as_ratio(t) for t in ("0.5", "-1", "nan", "synthetic-only", "inf"))
    assert not any(Ratio.is_written_as_ratio(t) for t in ("sometimes", "pretrain:5", ""))
