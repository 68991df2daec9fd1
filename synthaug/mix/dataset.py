"""SyntheticMixDataset: real items plus a class-balanced, per-epoch draw of synthetic volumes.

    ds = SyntheticMixDataset(real_items, "synth_cache", ratio=1.0, class_balance="equal", transform=train_tf)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    for epoch in range(epochs):
        ds.set_epoch(epoch)          # a fresh deterministic draw of synthetic volumes
        for batch in loader: ...

A synthetic item carries its volume's file path under the image key, exactly like a real manifest
item, so the user's ``LoadImaged``-based transform loads both kinds the same way. Every item has the
same keys, so mixed batches collate: the image, ``label``, ``case_id``, ``report``, ``is_synthetic`` and
``synthetic_id`` ("" for real ones), plus the real items' keys named in ``keep_keys`` (synthetic items
take those from their cache manifest line, or None).

Sources: a ``SyntheticCache`` (or its folder) is a fixed pool per class; a ``CCELLAGenerator`` (or a
bundle folder) generates what an epoch needs and is not in its write-through cache yet, in a
background thread, in batches, while the loader consumes what is ready (workers wait for a volume to
appear in the cache). Without generation a short pool repeats volumes, with a logged warning.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from synthaug.data.io import atomic_write_text
from synthaug.errors import GenerationError, InputError
from synthaug.mix.cache import LABELS, SyntheticCache, volume_id
from synthaug.mix.schedule import parse_schedule

logger = logging.getLogger(__name__)

BALANCES = ("equal", "match_real", "fill_minority")
WAIT_TIMEOUT_S = 3600.0


def synthetic_quotas(real_counts: Mapping[int, int], n_synthetic: int,
                     class_balance: str | Mapping[int, float]) -> dict[int, int]:
    """Synthetic volumes per class for one epoch.

    ``equal``: half each; ``match_real``: the real class proportions; ``fill_minority``: as many of the
    minority class as make the combined set balanced, the rest split evenly; ``{label: weight}``:
    proportional to the weights.
    """
    n_real = sum(real_counts.values())
    if isinstance(class_balance, Mapping):
        weights = {}
        for key, value in class_balance.items():
            try:
                label, weight = int(key), float(value)
            except (TypeError, ValueError):
                label, weight = -1, -1.0
            if label not in LABELS or not weight >= 0:
                raise InputError(f"class weight {key!r}: {value!r} is not valid", where="class_balance",
                                 fix="use labels 0 and 1 with non-negative weights, e.g. {0: 1, 1: 2}")
            weights[label] = weight
        if sum(weights.values()) <= 0:
            raise InputError("class weights sum to 0", where="class_balance", fix="give at least one positive weight")
        ones = round(n_synthetic * weights.get(1, 0.0) / sum(weights.values()))
    elif class_balance == "equal":
        ones = n_synthetic // 2 + (n_synthetic % 2)  # an odd extra volume goes to class 1 (usually the minority)
    elif class_balance == "match_real":
        if n_real == 0:
            raise InputError("class_balance 'match_real' needs real items", where="class_balance",
                             fix="use 'equal' or explicit weights for a synthetic-only dataset")
        ones = round(n_synthetic * real_counts.get(1, 0) / n_real)
    elif class_balance == "fill_minority":
        r0, r1 = real_counts.get(0, 0), real_counts.get(1, 0)
        gap = abs(r1 - r0)
        minority = 1 if r1 <= r0 else 0
        to_minority = n_synthetic if n_synthetic <= gap else gap + math.ceil((n_synthetic - gap) / 2)
        ones = to_minority if minority == 1 else n_synthetic - to_minority
    else:
        raise InputError(f"unknown class balance {class_balance!r}", where="class_balance",
                         fix=f"use one of {', '.join(BALANCES)} or weights such as {{0: 1, 1: 2}}")
    return {0: n_synthetic - ones, 1: ones}


def _draw(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)``, sorted: a seeded draw without replacement when k <= n, else every index
    k // n times plus such a draw of the rest."""
    if k <= n:
        return sorted(rng.choice(n, size=k, replace=False).tolist())
    return sorted([*list(range(n)) * (k // n), *rng.choice(n, size=k % n, replace=False).tolist()])


def _stop_at_exit(event: threading.Event) -> None:
    """Set ``event`` when the interpreter begins to exit, before it joins the remaining threads.

    ``threading._register_atexit`` is what ``concurrent.futures`` uses for the same purpose; where it
    does not exist the thread is still joined at exit, only after finishing all of its work.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(event.set)
        except RuntimeError:  # the interpreter is already shutting down: nothing new may register
            event.set()


def _default_cache_dir(generator) -> Path:  # noqa: ANN001
    import hashlib
    import json

    root = Path(os.environ.get("SYNTHAUG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "synthaug")
    settings = hashlib.sha256(json.dumps([generator.settings(), generator.report_source],
                                         sort_keys=True).encode()).hexdigest()[:8]
    return root / f"{generator.fingerprint[:16]}-{settings}"


def open_synthetic_folder(path: str | os.PathLike[str]):  # noqa: ANN201 - SyntheticCache | CCELLAGenerator
    """A cache folder (``cache.json``) as a ``SyntheticCache``, or a bundle folder as its default generator."""
    from synthaug.generate import CCELLAGenerator

    path = Path(path)
    if (path / "cache.json").is_file():
        return SyntheticCache(path)
    if (path / "fingerprint").is_file():
        return CCELLAGenerator.from_bundle(path)
    raise InputError("neither a synthetic cache (cache.json) nor a bundle (fingerprint)", where=str(path),
                     fix="pass a folder made by `synthaug pregenerate` or `synthaug train`")


def _open_source(synthetic, cache_dir, generate: bool):  # noqa: ANN001, ANN202
    """-> (cache or None, generator or None) for a cache, a generator, a cache folder or a bundle folder."""
    from synthaug.generate import CCELLAGenerator

    if isinstance(synthetic, (str, os.PathLike)):
        synthetic = open_synthetic_folder(synthetic)
    if synthetic is None:
        return None, None
    if isinstance(synthetic, SyntheticCache):
        return synthetic, None
    if isinstance(synthetic, CCELLAGenerator):
        cache = SyntheticCache.create(cache_dir or _default_cache_dir(synthetic), synthetic)
        return cache, synthetic if generate else None
    raise InputError(f"cannot use a {type(synthetic).__name__} as the synthetic source", where="synthetic",
                     fix="pass a SyntheticCache, a CCELLAGenerator, or the folder of either")


class SyntheticMixDataset(Dataset):
    """Real items followed by this epoch's synthetic items (see the module docstring)."""

    def __init__(
        self,
        real: Sequence[Mapping[str, Any]] | Dataset,
        synthetic: Any = None,
        ratio: float | str | Callable[[int], float] = 1.0,
        class_balance: str | Mapping[int, float] = "equal",
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
        """
        Args:
            real: MONAI-style dicts (or a Dataset returning them) with ``image_key`` and ``label_key``; may be empty.
            synthetic: ``SyntheticCache`` | ``CCELLAGenerator`` | path of a cache or bundle folder | None (ratio 0).
            ratio: synthetic items per real item per epoch (0 = real only), or a schedule of the epoch:
                ``synthetic-only``, ``pretrain:K``, ``linear:R``, ``cosine:R``, a ``RatioSchedule`` or a
                callable ``epoch -> ratio`` (see ``synthaug.mix.schedule``; every epoch has the same length).
            class_balance: ``equal`` | ``match_real`` | ``fill_minority`` | ``{label: weight}``.
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
        self.schedule = parse_schedule(ratio, epochs=epochs)
        if label_from not in ("requested", "predicted"):
            raise InputError(f"unknown label source {label_from!r}", where="label_from", fix="use requested or predicted")
        self.real = real
        self.class_balance, self.transform, self.seed = class_balance, transform, int(seed)
        self.image_key, self.label_key, self.label_from = image_key, label_key, label_from
        self.keep_keys = tuple(keep_keys)
        self.real_labels = self._real_labels()
        self.real_counts = {c: self.real_labels.count(c) for c in LABELS}

        self.cache, self.generator = _open_source(synthetic, cache_dir, generate)
        if num_synthetic is not None and num_synthetic < 0:
            raise InputError(f"num_synthetic must be >= 0, got {num_synthetic}", where="num_synthetic",
                             fix="use 0 or more")
        self.length = self._epoch_length(num_synthetic)
        self.ratio = self.schedule.ratio(0)  # the first epoch's ratio (the whole run's, when constant)
        peak = self._peak_synthetic()
        if peak and self.cache is None:
            raise InputError(f"ratio {self.schedule.label} needs a synthetic source", where="synthetic",
                             fix="pass a cache or generator, or ratio=0")
        if not self.length:
            raise InputError("no real items and an empty synthetic pool", where="SyntheticMixDataset",
                             fix="pass real items or a cache with volumes")
        self.peak_quotas = synthetic_quotas(self.real_counts, peak, class_balance)
        self.pool_size = pool_size
        self._pools = self._pool_ids()
        self._producer: threading.Thread | None = None
        self._stop = threading.Event()  # set by close() (or at interpreter exit): the producer ends after its batch
        self._producer_error: BaseException | None = None
        # Where the producer leaves its failure for DataLoader workers (other processes) to find.
        self._error_file = (self.cache.path / f".producer-{os.getpid()}-{id(self):x}.error") if self.cache is not None else None
        self.epoch = -1
        self.synthetic_ids: list[str] = []
        self.real_indices: list[int] = []
        self.quotas: dict[int, int] = {}
        self.set_epoch(0)

    # ------------------------------------------------------------ setup

    def _real_labels(self) -> list[int]:
        items = getattr(self.real, "data", self.real)  # a MONAI Dataset keeps its raw items in .data
        labels = []
        for i in range(len(items)):
            item = items[i]
            if not isinstance(item, Mapping) or self.label_key not in item:
                who = item.get("case_id", i) if isinstance(item, Mapping) else i
                raise InputError(f"real item {who!r} has no {self.label_key!r}", where="real",
                                 fix=f"give every real item a {self.label_key!r} of 0 or 1")
            try:
                label = int(item[self.label_key])
            except (TypeError, ValueError):
                label = -1
            if label not in LABELS:
                raise InputError(f"real item {item.get('case_id', i)!r} has label {item[self.label_key]!r}",
                                 where="real", fix="labels must be 0 or 1")
            labels.append(label)
        return labels

    def _epoch_length(self, num_synthetic: int | None) -> int:
        """Items per epoch, the same for every epoch (see ``synthaug.mix.schedule``)."""
        n_real, r0 = len(self.real_labels), self.schedule.ratio(0)
        if not n_real:
            if not self.schedule.is_constant:
                raise InputError(f"schedule {self.schedule.label} needs real items", where="real",
                                 fix="pass the real training items, or a constant ratio for a synthetic-only set")
            if num_synthetic is None:
                if self.cache is None or self.generator is not None:
                    raise InputError("no real items and no fixed synthetic pool: nothing to draw", where="real",
                                     fix="pass real items, a non-empty cache, or num_synthetic with a generator")
                return len(self.cache)
            return int(num_synthetic)
        if math.isinf(r0):
            return n_real if num_synthetic is None else int(num_synthetic)
        return n_real + (round(r0 * n_real) if num_synthetic is None else int(num_synthetic))

    def _synthetic_count(self, epoch: int) -> int:
        return self.schedule.synthetic_count(epoch, self.length, len(self.real_labels))

    def _peak_synthetic(self) -> int:
        """The most synthetic items any epoch has (the epoch length for a callable schedule)."""
        horizon = self.schedule.horizon
        if horizon is None:
            return self.length
        return max(self._synthetic_count(e) for e in range(horizon))

    def _pool_ids(self) -> dict[int, list[str]]:
        """Per class: the ids an epoch draws from (the cache's, or the generator's indexed pool)."""
        pools: dict[int, list[str]] = {}
        for c in LABELS:
            if self.generator is not None:
                size = max(self.peak_quotas[c], self.pool_size or 0)
                pools[c] = [volume_id(c, j) for j in range(size)]
            elif self.cache is not None:
                rows = self.cache.rows(refresh=True)
                key = "predicted_label" if self.label_from == "predicted" else "label"
                pools[c] = sorted(i for i, r in rows.items() if r[key] == c)
                gone = [i for i in pools[c] if not self.cache.file(rows[i]).is_file()]
                if gone:
                    raise InputError(f"{len(gone)} volume file(s) of the cache are missing, e.g. {gone[0]}",
                                     where=str(self.cache.path), fix="run `synthaug cache verify`, then pregenerate "
                                                                     "again to remake them")
            else:
                pools[c] = []
            if self.peak_quotas[c] and not pools[c]:
                raise InputError(f"class_balance asks for {self.peak_quotas[c]} synthetic volumes of class {c} but the "
                                 "cache has none", where=str(self.cache.path) if self.cache else "synthetic",
                                 fix=f"pregenerate class-{c} volumes, or choose another class_balance")
        return pools

    # ------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's items (deterministic in (seed, epoch)): the schedule's synthetic share, the rest real."""
        self.epoch = int(epoch)
        n_synthetic = self._synthetic_count(self.epoch)
        self.quotas = synthetic_quotas(self.real_counts, n_synthetic, self.class_balance)
        n_real = len(self.real_labels)
        self.real_indices = list(range(n_real)) if self.length - n_synthetic == n_real else \
            _draw(np.random.default_rng([self.seed, self.epoch, 0x2EA1]), n_real, self.length - n_synthetic)
        rng = np.random.default_rng([self.seed, self.epoch, 0x5A17])
        chosen: list[str] = []
        for c in LABELS:
            pool, quota = self._pools[c], self.quotas[c]
            if self.generator is not None and self.pool_size is None:  # on the fly: new volumes every epoch
                start = sum(synthetic_quotas(self.real_counts, self._synthetic_count(e), self.class_balance)[c]
                            for e in range(self.epoch)) if not self.schedule.is_constant else self.epoch * quota
                chosen += [volume_id(c, start + j) for j in range(quota)]
                continue
            if quota > len(pool):
                logger.warning("epoch %d: %d synthetic volumes of class %d wanted, the cache has %d: repeating some "
                               "(pregenerate more, or pass a generator)", self.epoch, quota, c, len(pool))
            chosen += [pool[i] for i in _draw(rng, len(pool), quota)]
        self.synthetic_ids = chosen
        if self.generator is not None:
            self._start_producer([i for i in chosen if i not in self.cache.rows()])

    def _start_producer(self, missing: list[str]) -> None:
        if not missing:
            return
        if self._producer is not None:
            self._producer.join()  # one producer at a time; the previous epoch's work is still useful
        pairs = sorted({(int(i.split("-")[1][1:]), int(i.split("-")[2])) for i in missing}, key=lambda p: (p[1], p[0]))
        self._producer_error = None
        self._error_file.unlink(missing_ok=True)
        self._stop.clear()

        def produce() -> None:
            try:
                size = self.generator.batch_size
                for start in range(0, len(pairs), size):
                    if self._stop.is_set():
                        return
                    self.cache.make(self.generator, pairs[start:start + size])
            except BaseException as exc:  # surfaced to the consumer in __getitem__, here and in loader workers
                self._producer_error = exc
                atomic_write_text(self._error_file, f"{type(exc).__name__}: {exc}\n")

        # Not a daemon: a daemon thread still running torch at interpreter exit aborts the process
        # ("terminate called without an active exception"). At exit it is told to stop after its batch.
        self._producer = threading.Thread(target=produce, name="synthaug-producer")
        _stop_at_exit(self._stop)
        self._producer.start()

    def close(self) -> None:
        """Stop generating after the batch in progress and join the producer thread (the dataset stays readable).

        Call it (or use the dataset as a context manager) before the program goes on to other work.
        """
        if self._producer is not None:
            self._stop.set()
            self._producer.join()
            self._producer = None

    def __enter__(self) -> SyntheticMixDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self) -> None:
        """Block until this epoch's synthetic volumes are all in the cache (generation finished)."""
        if self._producer is not None:
            self._producer.join()
        if self._producer_error is not None:
            raise self._producer_error

    # ------------------------------------------------------------ access

    def __len__(self) -> int:
        return self.length

    def _synthetic_item(self, row_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while row_id not in self.cache.rows():
            if self._producer_error is not None:
                raise self._producer_error
            if self._error_file.is_file():  # a DataLoader worker: the producer runs in the main process
                raise GenerationError(f"generating synthetic volumes failed: {self._error_file.read_text().strip()}",
                                      where=str(self.cache.path), fix="see the main process's log")
            if time.monotonic() > deadline:
                raise InputError(f"synthetic volume {row_id} did not appear within {WAIT_TIMEOUT_S:.0f} s",
                                 where=str(self.cache.path), fix="check that generation is running (or pregenerate)")
            time.sleep(0.05)
        return self.cache.item(row_id, self.image_key, self.label_from)

    def __getitem__(self, index: int) -> Any:
        n_real = len(self.real_indices)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if index < n_real:
            index = self.real_indices[index]
            source = self.real[index]
            if self.image_key not in source:
                raise InputError(f"real item {source.get('case_id', index)!r} has no {self.image_key!r}",
                                 where="real", fix=f"give every real item an {self.image_key!r}, or pass image_key=")
            item = {self.image_key: source[self.image_key], "label": source[self.label_key],
                    "case_id": source.get("case_id", f"real-{index}"), "report": source.get("report", ""),
                    "is_synthetic": False, "synthetic_id": "", **{k: source.get(k) for k in self.keep_keys}}
        else:
            row_id = self.synthetic_ids[index - n_real]
            item = self._synthetic_item(row_id)
            item.update({k: self.cache.rows()[row_id].get(k) for k in self.keep_keys if k not in item})
        return self.transform(item) if self.transform is not None else item

    def summary(self) -> dict[str, Any]:
        """Counts of this epoch's items by kind and class."""
        syn = [self.cache.rows()[i] if i in self.cache.rows() else {"label": int(i.split("-")[1][1:])}
               for i in self.synthetic_ids] if self.cache is not None else []
        key = "predicted_label" if self.label_from == "predicted" else "label"
        real = [self.real_labels[i] for i in self.real_indices]
        return {"epoch": self.epoch, "ratio": self.schedule.ratio(self.epoch),
                "real": {c: real.count(c) for c in LABELS},
                "synthetic": {c: sum(r.get(key, r["label"]) == c for r in syn) for c in LABELS}}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for spawned DataLoader workers: they read the cache and never generate."""
        state = dict(self.__dict__)
        state.update(_producer=None, generator=None, _stop=None)
        return state

