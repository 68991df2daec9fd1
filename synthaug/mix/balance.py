"""Class balance: how many synthetic volumes of each class, the one place a balance is parsed and applied.

    class_quotas(8, "equal")                          # {0: 4, 1: 4}
    class_quotas(8, "match_real", {0: 6, 1: 2})       # the real proportions: {0: 6, 1: 2}
    class_quotas(8, "fill_minority", {0: 6, 1: 2})    # the minority first, then evenly: {0: 2, 1: 6}
    class_quotas(9, {0: 1, 1: 2})                     # proportional to the weights: {0: 3, 1: 6}
    parse_class_balance("0:1,1:2")                    # command-line text -> {0: 1.0, 1: 2.0}

``match_real`` and ``fill_minority`` need the real training set's class counts; the mix dataset passes
them, a cache's ``pregenerate`` takes them as ``real_counts=``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from synthaug.errors import InputError

LABELS = (0, 1)
BALANCES = ("equal", "match_real", "fill_minority")
NEEDS_REAL = ("match_real", "fill_minority")
# A balance: one of BALANCES, or {label: weight} with non-negative weights of a positive sum.
ClassBalance = str | Mapping[int, float]
_EXAMPLES = "equal, match_real, fill_minority, or weights such as {0: 1, 1: 2}"


def check_balance(balance: ClassBalance, where: str = "class_balance") -> str | dict[int, float]:
    """``balance`` checked: a mode name, or the weights as ``{label: float}``."""
    if isinstance(balance, Mapping):
        return _check_weights(balance, where)
    if balance not in BALANCES:
        raise InputError(f"unknown class balance {balance!r}", where=where, fix=f"use {_EXAMPLES}")
    return balance


def _check_weights(weights: Mapping, where: str) -> dict[int, float]:
    checked = {}
    for key, value in weights.items():
        try:
            label, weight = int(key), float(value)
        except (TypeError, ValueError):
            label, weight = -1, -1.0
        if label not in LABELS or not weight >= 0:
            raise InputError(f"class weight {key!r}: {value!r} is not valid", where=where,
                             fix="use labels 0 and 1 with non-negative weights, e.g. {0: 1, 1: 2}")
        checked[label] = weight
    if not sum(checked.values()) > 0:
        raise InputError(f"class weights {dict(weights)} are not valid: they sum to 0", where=where,
                         fix="give at least one positive weight, e.g. {0: 1, 1: 2}")
    return checked


def parse_class_balance(text: str, where: str = "--class-balance") -> str | dict[int, float]:
    """Command-line text as a balance: ``equal``, ``match_real``, ``fill_minority`` or ``LABEL:WEIGHT,...``."""
    text = str(text).strip()
    if text in BALANCES:
        return text
    try:
        weights = {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        weights = {}
    if not weights:
        raise InputError(f"class balance {text!r} is not a mode or weights like 0:1,1:2", where=where,
                         fix="use equal, match_real, fill_minority, or LABEL:WEIGHT pairs such as 0:1,1:2")
    return _check_weights(weights, where)


def class_quotas(n: int, balance: ClassBalance = "equal",
                 real_counts: Mapping[int, int] | None = None) -> dict[int, int]:
    """How many of ``n`` synthetic volumes go to each class.

    ``equal``: half each, an odd extra one to class 1 (usually the minority); ``match_real``: the real
    class proportions; ``fill_minority``: as many of the minority class as make real + synthetic balanced,
    the rest split evenly; ``{label: weight}``: proportional to the weights (rounded half to even).
    ``real_counts`` ({label: real items}) is needed by ``match_real`` and ``fill_minority``.
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}", where="n", fix="ask for a non-negative number of volumes")
    balance = check_balance(balance)
    if balance in NEEDS_REAL and real_counts is None:
        raise InputError(f"class balance {balance!r} needs the real training set's class counts", where="class_balance",
                         fix="pass real_counts={0: ..., 1: ...}, or use equal or explicit weights")
    if isinstance(balance, dict):
        ones = round(n * balance.get(1, 0.0) / sum(balance.values()))
    elif balance == "equal":
        ones = n // 2 + (n % 2)
    elif balance == "match_real":
        ones = _matching_real(n, real_counts)
    else:
        ones = _filling_minority(n, real_counts)
    return {0: n - ones, 1: ones}


def pregeneration_quotas(n: int, balance: ClassBalance = "equal",
                         real_counts: Mapping[int, int] | None = None) -> dict[int, int]:
    """``class_quotas`` as a cache is filled, where ``equal`` is the weights 1:1 (an odd ``n`` rounds half to
    even: 5 -> 3 + 2, 7 -> 3 + 4), as every cache so far was made, so the ids asked for stay the same."""
    return class_quotas(n, {0: 1.0, 1: 1.0} if balance == "equal" else balance, real_counts)


def synthetic_quotas(real_counts: Mapping[int, int], n_synthetic: int, class_balance: ClassBalance) -> dict[int, int]:
    """``class_quotas`` with the real counts first (the name ``synthaug.mix`` has always exported)."""
    return class_quotas(n_synthetic, class_balance, real_counts)


def _matching_real(n: int, real_counts: Mapping[int, int]) -> int:
    n_real = sum(real_counts.values())
    if n_real == 0:
        raise InputError("class_balance 'match_real' needs real items", where="class_balance",
                         fix="use 'equal' or explicit weights for a synthetic-only dataset")
    return round(n * real_counts.get(1, 0) / n_real)


def _filling_minority(n: int, real_counts: Mapping[int, int]) -> int:
    r0, r1 = real_counts.get(0, 0), real_counts.get(1, 0)
    gap = abs(r1 - r0)
    to_minority = n if n <= gap else gap + math.ceil((n - gap) / 2)
    return to_minority if r1 <= r0 else n - to_minority
