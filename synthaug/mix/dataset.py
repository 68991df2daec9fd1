"""SyntheticMixDataset: real items plus a class-balanced, per-epoch draw of synthetic volumes.

    ds = SyntheticMixDataset(real_items, "synth_cache", ratio=1.0, class_balance="equal", transform=train_tf)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    for epoch in range(epochs):
        ds.set_epoch(epoch)          # a fresh deterministic draw of synthetic volumes
        for batch in loader: ...

A synthetic item carries its volume's file path under the image key, exactly like a real manifest
item, so the user's ``LoadImaged``-based transform loads both kinds the same way. Every item has the
same keys, so mixed batches collate: the image, ``label``, ``case_id``, ``report``, ``is_synthetic`` and
``synthetic_id`` ("" for real ones), the file of every further sequence of the synthetic volumes (``adc``,
``hbv`` from a bpMRI generator, as in a real manifest), plus the real items' keys named in ``keep_keys`` (synthetic items
take those from their cache manifest line, or None). The synthetic volumes come from a pool
(``synthaug.mix.sources``): a cache's fixed pool per class, or a generator making them as needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from synthaug.errors import InputError
from synthaug.mix.balance import LABELS, ClassBalance, class_quotas
from synthaug.mix.draw import draw_indices
from synthaug.mix.ratio import Ratio
from synthaug.mix.schedule import RatioSchedule, parse_schedule
from synthaug.mix.sources import SyntheticPool, open_pool

if TYPE_CHECKING:
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import SyntheticCache


class SyntheticMixDataset(Dataset):
    """Real items followed by this epoch's synthetic items (see the module docstring).

    Args:
        real: MONAI-style dicts (or a Dataset returning them) with ``image_key`` and ``label_key``; may be empty.
        synthetic: ``SyntheticCache`` | ``CCELLAGenerator`` | path of a cache or bundle folder | None (ratio 0).
        ratio: synthetic items per real item per epoch (0 = real only), or a schedule of the epoch:
            ``synthetic-only``, ``pretrain:K``, ``linear:R``, ``cosine:R``, a ``RatioSchedule`` or a
            callable ``epoch -> ratio`` (see ``synthaug.mix.schedule``; every epoch has the same length).
        class_balance: ``equal`` | ``match_real`` | ``fill_minority`` | ``{label: weight}`` (``synthaug.mix.balance``).
        transform: applied identically to real and synthetic items.
        num_synthetic: synthetic items per epoch instead of ``ratio * len(real)`` (needed when ``real`` is
            empty and the source is a generator).
        pool_size: generator source only. None (default): every epoch gets volumes no earlier epoch had
            (epoch e takes pool indices e*quota .. (e+1)*quota - 1 of each class), generated as needed. A
            number: a fixed pool of max(quota, pool_size) volumes per class that each epoch draws from.
        cache_dir: generator source only: the write-through cache (default ``$SYNTHAUG_CACHE_DIR`` or
            ``~/.cache/synthaug/<bundle>-<settings>``).
        generate: False uses only what the cache already has (repeating with a warning when short).
        label_from: ``requested`` (the class asked for) or ``predicted`` (the adapter's class from the report).
        keep_keys: further keys of the real items to pass through (e.g. ``["adc", "pirads"]``).
        epochs: the run's epochs, needed by the decay schedules (``linear:R``, ``cosine:R``).
    """

    def __init__(
        self,
        real: Sequence[Mapping[str, Any]] | Dataset,
        synthetic: SyntheticCache | CCELLAGenerator | str | os.PathLike[str] | None = None,
        ratio: float | str | Ratio | RatioSchedule | Callable[[int], float] = 1.0,
        class_balance: ClassBalance = "equal",
        transform: Callable[[dict], Any] | None = None,
        seed: int = 0,
        *,
        num_synthetic: int | None = None,
        pool_size: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        generate: bool = True,
        label_from: str = "requested",
        image_key: str = "image",
        label_key: str = "label",
        keep_keys: Sequence[str] = (),
        epochs: int | None = None,
    ) -> None:
        self.schedule = parse_schedule(ratio, epochs=epochs)
        if label_from not in ("requested", "predicted"):
            raise InputError(f"unknown label source {label_from!r}", where="label_from", fix="use requested or predicted")
        self.real, self.class_balance, self.transform, self.seed = real, class_balance, transform, int(seed)
        self.image_key, self.label_key, self.label_from = image_key, label_key, label_from
        self.keep_keys, self.pool_size = tuple(keep_keys), pool_size
        self.real_labels = _labels_of(real, label_key)
        self.real_counts = {c: self.real_labels.count(c) for c in LABELS}
        self.pool: SyntheticPool | None = open_pool(synthetic, cache_dir=cache_dir, generate=generate,
                                                    label_from=label_from, pool_size=pool_size)
        self.sequence_keys = self._sequence_keys()
        self.length = self._epoch_length(num_synthetic)
        self.ratio = self.schedule.ratio(0)  # the first epoch's ratio (the whole run's, when constant)
        self.peak_quotas = self._peak_quotas()
        if self.pool is not None:
            self.pool.prepare(self.peak_quotas)
        self.epoch, self.quotas, self.real_indices = -1, {}, []
        self.synthetic_ids: list[str] = []
        self.synthetic_labels: list[int] = []  # the class each synthetic id was drawn for
        self.set_epoch(0)

    @property
    def cache(self) -> SyntheticCache | None:
        """The cache the synthetic volumes are read from (a generator's write-through cache)."""
        return self.pool.cache if self.pool is not None else None

    @property
    def generator(self) -> CCELLAGenerator | None:
        """What generates missing volumes (None: a cache, and in a DataLoader worker)."""
        return self.pool.generator if self.pool is not None else None

    def _sequence_keys(self) -> list[str]:
        """The image keys every item carries: one per sequence of the synthetic volumes (``image_key`` for
        T2W, then ``adc``, ``hbv``), so a transform written for the real items loads the synthetic ones too."""
        keys = [self.image_key if k == "image" else k for k in self.cache.sequence_keys] \
            if self.cache is not None else [self.image_key]
        lacking = [k for k in self.keep_keys if k in ("adc", "hbv") and k not in keys]
        if lacking and self.pool is not None:
            raise InputError(f"the synthetic volumes have no {lacking[0]!r} image (their sequences: "
                             f"{', '.join(self.cache.sequences)})", where="keep_keys",
                             fix="use a cache of a generator trained on that sequence too (data.modalities), "
                                 f"or drop {lacking[0]!r} from keep_keys")
        items = getattr(self.real, "data", self.real)
        for i in range(len(items) if len(keys) > 1 else 0):
            absent = [k for k in keys[1:] if not items[i].get(k)]
            if absent:
                raise InputError(f"real item {items[i].get('case_id', i)!r} has no {absent[0]!r} image, which the "
                                 f"synthetic volumes have ({', '.join(keys)})", where="real",
                                 fix=f"give every real case its {absent[0]!r} file, or use a cache made with "
                                     "the real data's sequences")
        return keys

    def _epoch_length(self, num_synthetic: int | None) -> int:
        """Items per epoch, the same for every epoch (see ``synthaug.mix.schedule``)."""
        if num_synthetic is not None and num_synthetic < 0:
            raise InputError(f"num_synthetic must be >= 0, got {num_synthetic}", where="num_synthetic",
                             fix="use 0 or more")
        n_real, first = len(self.real_labels), self.schedule.ratio(0)
        if not n_real:
            if not self.schedule.is_constant:
                raise InputError(f"schedule {self.schedule.label} needs real items", where="real",
                                 fix="pass the real training items, or a constant ratio for a synthetic-only set")
            size = self.pool.fixed_size() if self.pool is not None else None
            if num_synthetic is None and size is None:
                raise InputError("no real items and no fixed synthetic pool: nothing to draw", where="real",
                                 fix="pass real items, a non-empty cache, or num_synthetic with a generator")
            return size if num_synthetic is None else int(num_synthetic)
        ratio = Ratio(first)
        n_synthetic = ratio.synthetic_count(n_real) if num_synthetic is None else int(num_synthetic)
        return n_synthetic if ratio.is_synthetic_only else n_real + n_synthetic

    def _synthetic_count(self, epoch: int) -> int:
        return self.schedule.synthetic_count(epoch, self.length, len(self.real_labels))

    def _peak_quotas(self) -> dict[int, int]:
        """Per class, the most synthetic volumes any epoch asks for (a callable schedule: the epoch length)."""
        horizon = self.schedule.horizon
        peak = self.length if horizon is None else max(self._synthetic_count(e) for e in range(horizon))
        if peak and self.pool is None:
            raise InputError(f"ratio {self.schedule.label} needs a synthetic source", where="synthetic",
                             fix="pass a cache or generator, or ratio=0")
        if not self.length:
            raise InputError("no real items and an empty synthetic pool", where="SyntheticMixDataset",
                             fix="pass real items or a cache with volumes")
        return class_quotas(peak, self.class_balance, self.real_counts)

    def _quotas_before(self, epoch: int) -> dict[int, int]:
        """Synthetic volumes per class that epochs 0 .. epoch-1 took (a generator's new volumes come after)."""
        if self.schedule.is_constant:
            return {c: epoch * self.quotas[c] for c in LABELS}
        earlier = [class_quotas(self._synthetic_count(e), self.class_balance, self.real_counts) for e in range(epoch)]
        return {c: sum(q[c] for q in earlier) for c in LABELS}

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's items (deterministic in (seed, epoch)): the schedule's synthetic share, the rest real."""
        self.epoch = int(epoch)
        n_synthetic = self._synthetic_count(self.epoch)
        self.quotas = class_quotas(n_synthetic, self.class_balance, self.real_counts)
        n_real = len(self.real_labels)
        self.real_indices = list(range(n_real)) if self.length - n_synthetic == n_real else \
            draw_indices(np.random.default_rng([self.seed, self.epoch, 0x2EA1]), n_real, self.length - n_synthetic)
        drawn: dict[int, list[str]] = {c: [] for c in LABELS}
        if self.pool is not None:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5A17])
            drawn = self.pool.draw(self.epoch, self.quotas, rng, lambda: self._quotas_before(self.epoch))
        self.synthetic_ids = [row_id for c in LABELS for row_id in drawn[c]]
        self.synthetic_labels = [c for c in LABELS for _ in drawn[c]]

    def wait(self) -> None:
        """Block until this epoch's synthetic volumes are all in the cache (generation finished)."""
        if self.pool is not None:
            self.pool.wait()

    def close(self) -> None:
        """Stop generating after the batch in progress and join the producer thread (the dataset stays readable).

        Call it (or use the dataset as a context manager) before the program goes on to other work.
        """
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> SyntheticMixDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        n_real = len(self.real_indices)
        item = self._real_item(self.real_indices[index]) if index < n_real else \
            self._synthetic_item(self.synthetic_ids[index - n_real])
        return self.transform(item) if self.transform is not None else item

    def _real_item(self, index: int) -> dict[str, Any]:
        source = self.real[index]
        if self.image_key not in source:
            raise InputError(f"real item {source.get('case_id', index)!r} has no {self.image_key!r}",
                             where="real", fix=f"give every real item an {self.image_key!r}, or pass image_key=")
        return {self.image_key: source[self.image_key], "label": source[self.label_key],
                "case_id": source.get("case_id", f"real-{index}"), "report": source.get("report", ""),
                "is_synthetic": False, "synthetic_id": "", **{k: source[k] for k in self.sequence_keys[1:]},
                **{k: source.get(k) for k in self.keep_keys}}

    def _synthetic_item(self, row_id: str) -> dict[str, Any]:
        item = self.pool.item(row_id, self.image_key)
        item.update({k: self.cache.rows()[row_id].get(k) for k in self.keep_keys if k not in item})
        return item

    def summary(self) -> dict[str, Any]:
        """Counts of this epoch's items by kind and class."""
        key = "predicted_label" if self.label_from == "predicted" else "label"
        rows = self.cache.rows() if self.cache is not None else {}
        synthetic = [rows[i].get(key, rows[i]["label"]) if i in rows else drawn_as
                     for i, drawn_as in zip(self.synthetic_ids, self.synthetic_labels)]
        real = [self.real_labels[i] for i in self.real_indices]
        return {"epoch": self.epoch, "ratio": self.schedule.ratio(self.epoch),
                "real": {c: real.count(c) for c in LABELS}, "synthetic": {c: synthetic.count(c) for c in LABELS}}


def _labels_of(real: Sequence[Mapping[str, Any]] | Dataset, label_key: str = "label") -> list[int]:
    """The class (0 or 1) of every real item, checked."""
    items = getattr(real, "data", real)  # a MONAI Dataset keeps its raw items in .data
    labels = []
    for i in range(len(items)):
        item = items[i]
        if not isinstance(item, Mapping) or label_key not in item:
            who = item.get("case_id", i) if isinstance(item, Mapping) else i
            raise InputError(f"real item {who!r} has no {label_key!r}", where="real",
                             fix=f"give every real item a {label_key!r} of 0 or 1")
        try:
            label = int(item[label_key])
        except (TypeError, ValueError):
            label = -1
        if label not in LABELS:
            raise InputError(f"real item {item.get('case_id', i)!r} has label {item[label_key]!r}",
                             where="real", fix="labels must be 0 or 1")
        labels.append(label)
    return labels
