"""The synthetic:real ratio as a schedule of the epoch: the one place a ratio is parsed and checked.

    parse_schedule(0.5)                  # constant: 0.5 synthetic items per real item, every epoch
    parse_schedule("synthetic-only")     # constant infinity: no real items (CAS, train on synthetic)
    parse_schedule("pretrain:5")         # synthetic only for epochs 0-4, then real only
    parse_schedule("linear:1", epochs=30)  # from 1 at epoch 0 down to 0 at the last epoch (29)
    parse_schedule("cosine:1", epochs=30)  # the same on a half cosine
    parse_schedule(lambda epoch: 2.0 if epoch < 3 else 0.5)  # any callable epoch -> ratio (inf allowed)

Every epoch of a ``SyntheticMixDataset`` has the same number of items, so any sampler (shuffling,
``DistributedSampler``, a fixed ``samples_per_epoch``) and a learning-rate schedule counted in steps
see a fixed length: ``len(real) * (1 + r0)`` with ``r0`` the ratio at epoch 0, or ``len(real)`` when
``r0`` is infinite (``synthetic-only``, ``pretrain:K``). The schedule moves the synthetic share of
that length: an epoch at ratio ``r`` has ``round(L * r / (1 + r))`` synthetic items, and the rest are
real items (all of them, once each, at ``r0``; a seeded draw otherwise, repeating real items when the
real share exceeds the real set, e.g. the last epochs of a decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from synthaug.errors import InputError
from synthaug.mix.ratio import Ratio

KINDS = ("constant", "pretrain", "linear", "cosine", "callable")
TEMPLATES = ("constant", "decay", "linear", "cosine", "pretrain:K")  # sweep --schedules


@dataclass(frozen=True)
class RatioSchedule:
    """Synthetic items per real item as a function of the epoch (``math.inf``: synthetic only)."""

    kind: str
    value: float = 0.0  # constant: the ratio; linear/cosine: the start ratio
    epochs: int | None = None  # pretrain: K synthetic-only epochs; linear/cosine: the run's epochs
    fn: Callable[[int], float] | None = field(default=None, compare=False)

    def ratio(self, epoch: int) -> float:
        """The ratio at ``epoch`` (counted from 0), checked."""
        if self.kind == "constant":
            return self.value
        if self.kind == "pretrain":
            return math.inf if epoch < self.epochs else 0.0
        if self.kind in ("linear", "cosine"):
            progress = min(1.0, epoch / (self.epochs - 1)) if self.epochs > 1 else 1.0
            shape = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
            return self.value * shape
        try:
            value = float(self.fn(epoch))
        except (TypeError, ValueError) as exc:
            raise InputError(f"the ratio callable returned no number at epoch {epoch} ({exc})", where="ratio",
                             fix="return a float >= 0 (math.inf for synthetic only)") from None
        if math.isnan(value) or value < 0:
            raise InputError(f"the ratio callable returned {value} at epoch {epoch}", where="ratio",
                             fix="return a float >= 0 (math.inf for synthetic only)")
        return value

    @property
    def label(self) -> str:
        """The text that parses back to this schedule (the sweep's arm names)."""
        if self.kind == "constant":
            return Ratio(self.value).label
        if self.kind == "pretrain":
            return f"pretrain:{self.epochs}"
        if self.kind in ("linear", "cosine"):
            return f"{self.kind}:{self.value:g}"
        return f"callable:{getattr(self.fn, '__name__', type(self.fn).__name__)}"

    @property
    def horizon(self) -> int | None:
        """Epochs after which the ratio no longer changes (None: unknown, a callable)."""
        return {"constant": 1, "pretrain": (self.epochs or 0) + 1}.get(self.kind, self.epochs)

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def synthetic_count(self, epoch: int, length: int, n_real: int) -> int:
        """Synthetic items in an epoch of ``length`` items (the rest are real)."""
        r = self.ratio(epoch)
        if math.isinf(r) or n_real == 0:
            return length
        if r == self.ratio(0):
            return length - n_real  # epoch 0's ratio: every real item once, exactly as a constant ratio
        return min(length, round(length * r / (1.0 + r)))


_SCHEDULES = f"a number, {Ratio.synthetic_only().label}, pretrain:K, linear:R or cosine:R"


def parse_schedule(spec: float | int | str | Ratio | RatioSchedule | Callable[[int], float], *,
                   epochs: int | None = None, where: str = "ratio") -> RatioSchedule:
    """A ratio (``0.5``, ``synthetic-only``), ``pretrain:K``, ``linear:R``, ``cosine:R``, a schedule or a callable.

    ``epochs`` is the run's length, needed by ``linear``/``cosine`` (they reach 0 at its last epoch).
    """
    if isinstance(spec, RatioSchedule):
        return spec
    if isinstance(spec, Ratio) or (isinstance(spec, (int, float)) and not isinstance(spec, bool)):
        return RatioSchedule("constant", Ratio.parse(spec, where=where).value)
    if callable(spec):
        return RatioSchedule("callable", fn=spec)
    text = str(spec).strip().lower()
    kind, sep, arg = text.partition(":")
    if not sep:
        if not Ratio.is_written_as_ratio(text):
            raise InputError(f"unknown ratio schedule {spec!r}", where=where, fix=f"use {_SCHEDULES}")
        return RatioSchedule("constant", Ratio.parse(text, where=where).value)
    if kind == "pretrain":
        if not arg.isdigit() or int(arg) < 1:
            raise InputError(f"{spec!r}: pretrain needs a whole number of epochs >= 1", where=where,
                             fix="e.g. pretrain:5 (synthetic only for 5 epochs, then real only)")
        return RatioSchedule("pretrain", math.inf, int(arg))
    if kind in ("linear", "cosine", "decay"):
        start = Ratio.parse(arg, where=where)
        if start.is_synthetic_only:
            raise InputError(f"{spec!r}: a decay starts from a finite ratio", where=where, fix="e.g. linear:1")
        if epochs is None or int(epochs) < 1:
            raise InputError(f"{spec!r} decays over the run, whose length is not given", where=where,
                             fix="pass epochs= (the number of training epochs) with a decay schedule")
        return RatioSchedule("cosine" if kind == "cosine" else "linear", start.value, int(epochs))
    raise InputError(f"unknown ratio schedule {spec!r}", where=where, fix=f"use {_SCHEDULES}")


def parse_templates(text: str | Iterable[str], where: str = "--schedules") -> list[str]:
    """Sweep schedule templates (``constant``, ``decay``/``linear``, ``cosine``, ``pretrain:K``), checked."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if not parts:
        raise InputError("no schedule given", where=where, fix="e.g. --schedules constant,pretrain:5,decay")
    out = []
    for part in parts:
        if part in ("constant", "linear", "cosine", "decay"):
            out.append("linear" if part == "decay" else part)
        elif part.startswith("pretrain:"):
            out.append(parse_schedule(part, where=where).label)
        else:
            raise InputError(f"unknown schedule {part!r}", where=where,
                             fix="use constant, decay (= linear), cosine or pretrain:K with K >= 1")
    return list(dict.fromkeys(out))


def arm_schedules(templates: Sequence[str], ratios: Sequence[float | str]) -> list[str]:
    """Schedule labels of a sweep grid: each template crossed with each ratio, without repeats.

    ``constant`` x r -> r; ``linear``/``cosine`` x r -> a decay from r (r = 0 is real only, the
    constant 0; synthetic-only cannot decay and is skipped); ``pretrain:K`` does not use r: one arm.
    """
    labels: list[str] = []
    for template in templates:
        for r in ratios:
            ratio = Ratio.parse(r, where="--ratios")
            if template == "constant" or (template in ("linear", "cosine") and ratio.is_real_only):
                labels.append(ratio.label)
            elif template in ("linear", "cosine"):
                if not ratio.is_synthetic_only:
                    labels.append(f"{template}:{ratio.label}")
            else:
                labels.append(template)
    return list(dict.fromkeys(labels))
