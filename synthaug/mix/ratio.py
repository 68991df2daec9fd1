"""A constant synthetic:real ratio: synthetic items per real item, ``synthetic-only`` for no real items.

    Ratio.parse("0.5")             # Ratio(0.5): half as many synthetic items as real ones
    Ratio.parse("synthetic-only")  # Ratio(inf): only synthetic items (CAS: train on synthetic, test on real)
    Ratio.parse(0).is_real_only    # True
    Ratio(math.inf).label          # "synthetic-only", the text that parses back to it

The one place that knows how a ratio is written; schedules of the epoch are ``synthaug.mix.schedule``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from synthaug.errors import InputError

_SYNTHETIC_ONLY = "synthetic-only"
_SYNTHETIC_ONLY_TEXTS = (_SYNTHETIC_ONLY, "inf")
_FIX = f"use a number >= 0 (e.g. 0, 0.5, 1) or {_SYNTHETIC_ONLY}"


@dataclass(frozen=True)
class Ratio:
    """Synthetic items per real item: a finite number >= 0, or ``math.inf`` for synthetic only."""

    value: float

    def __post_init__(self) -> None:
        value = self.value
        if not _is_number(value) or math.isnan(value) or value < 0:
            raise InputError(f"ratio {value!r} is not a number >= 0", where="ratio", fix=_FIX)
        object.__setattr__(self, "value", float(value))

    @classmethod
    def synthetic_only(cls) -> Ratio:
        return cls(math.inf)

    @classmethod
    def real_only(cls) -> Ratio:
        return cls(0.0)

    @classmethod
    def parse(cls, value: Ratio | float | int | str, where: str = "ratio") -> Ratio:
        """A ratio from a number (``math.inf``: synthetic only) or its text (``0.5``, ``synthetic-only``)."""
        if isinstance(value, Ratio):
            return value
        if isinstance(value, str):
            return cls._from_text(value, where)
        if _is_number(value) and not math.isnan(value) and value >= 0:
            return cls(value)
        raise InputError(f"ratio {value!r} is not a number >= 0", where=where, fix=_FIX)

    @classmethod
    def _from_text(cls, text: str, where: str) -> Ratio:
        cleaned = text.strip().lower()
        if cleaned in _SYNTHETIC_ONLY_TEXTS:
            return cls.synthetic_only()
        try:
            value = float(cleaned)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):  # "infinity" or "1e999" is not how synthetic-only is written
            raise InputError(f"ratio {text!r} is not a number >= 0 or {_SYNTHETIC_ONLY}", where=where, fix=_FIX)
        return cls(value)

    @staticmethod
    def is_written_as_ratio(text: str) -> bool:
        """Whether ``text`` is written as a ratio at all (a number, or ``synthetic-only``), valid or not."""
        cleaned = str(text).strip().lower()
        if cleaned in _SYNTHETIC_ONLY_TEXTS:
            return True
        try:
            float(cleaned)
        except ValueError:
            return False
        return True

    @property
    def label(self) -> str:
        """The text that parses back to this ratio: ``0``, ``0.5``, ``synthetic-only``."""
        return _SYNTHETIC_ONLY if self.is_synthetic_only else f"{self.value:g}"

    @property
    def is_synthetic_only(self) -> bool:
        return math.isinf(self.value)

    @property
    def is_real_only(self) -> bool:
        return self.value == 0

    def synthetic_count(self, n_real: int) -> int:
        """Synthetic items that go with ``n_real`` real items; synthetic only: ``n_real`` of them, none real."""
        return n_real if self.is_synthetic_only else round(self.value * n_real)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
