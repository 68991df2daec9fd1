"""Where a ``SyntheticMixDataset`` takes its synthetic volumes from: a pool per class, behind one interface.

    pool = open_pool("synth_cache")            # a CachePool; a generator or bundle folder gives a GeneratorPool
    pool.prepare({0: 6, 1: 6})                  # the largest quotas any epoch asks for: checked or sized
    ids = pool.draw(epoch, {0: 3, 1: 3}, rng, used_before)   # {label: [volume ids]} for this epoch
    item = pool.item(ids[1][0], "image")        # a MONAI-style dict (waits while the volume is generated)
    pool.close()                                # stops generating after the batch in progress

``CachePool``: a ``SyntheticCache``'s volumes are a fixed pool per class that each epoch draws from (a
short pool repeats volumes, with a logged warning). ``GeneratorPool``: a ``CCELLAGenerator`` makes what
an epoch needs and its write-through cache lacks, in a background thread, in batches, while the loader
reads what is ready (DataLoader workers wait for a volume to appear in the cache).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from synthaug.data.io import atomic_write_text
from synthaug.errors import GenerationError, InputError
from synthaug.mix.balance import LABELS
from synthaug.mix.cache import SyntheticCache, volume_id
from synthaug.mix.draw import draw_indices

if TYPE_CHECKING:
    from synthaug.generate import CCELLAGenerator

logger = logging.getLogger(__name__)

WAIT_TIMEOUT_S = 3600.0
T = TypeVar("T")


class SyntheticPool(Protocol):
    """What a mix dataset needs of its synthetic source."""

    cache: SyntheticCache  # where the volumes are read from
    generator: CCELLAGenerator | None  # what makes missing volumes (None: nothing is generated)

    def fixed_size(self) -> int | None:
        """Volumes the pool holds, or None when it makes them on demand."""

    def prepare(self, peak_quotas: Mapping[int, int]) -> None:
        """Check (or size) the per-class pools for the largest quotas an epoch asks for."""

    def draw(self, epoch: int, quotas: Mapping[int, int], rng: np.random.Generator,
             used_before: Callable[[], Mapping[int, int]]) -> dict[int, list[str]]:
        """This epoch's volume ids per class; ``used_before()``: volumes per class the earlier epochs took."""

    def item(self, row_id: str, image_key: str) -> dict[str, Any]:
        """One volume as a MONAI-style dict."""

    def wait(self) -> None:
        """Block until the drawn volumes are all in the cache."""

    def close(self) -> None:
        """Stop any generation (the pool stays readable)."""


def draw_per_class(pools: Mapping[int, Sequence[T]], quotas: Mapping[int, int], rng: np.random.Generator,
                   epoch: int) -> dict[int, list[T]]:
    """``quotas[c]`` members of each class's pool, seeded (class 0 first); a short pool repeats, with a warning."""
    chosen: dict[int, list[T]] = {}
    for c in LABELS:
        pool, quota = pools[c], quotas[c]
        if quota > len(pool):
            logger.warning("epoch %d: %d synthetic volumes of class %d wanted, the cache has %d: repeating some "
                           "(pregenerate more, or pass a generator)", epoch, quota, c, len(pool))
        chosen[c] = [pool[i] for i in draw_indices(rng, len(pool), quota)]
    return chosen


def wait_for_row(cache: SyntheticCache, row_id: str, check_failure: Callable[[], None] = lambda: None) -> None:
    """Return once ``row_id`` is in the cache's manifest; ``check_failure`` raises when it never will be."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while row_id not in cache.rows():
        check_failure()
        if time.monotonic() > deadline:
            raise InputError(f"synthetic volume {row_id} did not appear within {WAIT_TIMEOUT_S:.0f} s",
                             where=str(cache.path), fix="check that generation is running (or pregenerate)")
        time.sleep(0.05)


class CachePool:
    """A cache's volumes as a fixed pool per class (by requested, or predicted, label)."""

    generator = None

    def __init__(self, cache: SyntheticCache, label_from: str = "requested") -> None:
        self.cache, self.label_from = cache, label_from
        self.ids: dict[int, list[str]] = {c: [] for c in LABELS}

    def fixed_size(self) -> int:
        return len(self.cache)

    def prepare(self, peak_quotas: Mapping[int, int]) -> None:
        rows = self.cache.rows(refresh=True)
        key = "predicted_label" if self.label_from == "predicted" else "label"
        for c in LABELS:
            self.ids[c] = sorted(i for i, r in rows.items() if r[key] == c)
            gone = [i for i in self.ids[c] if not all(f.is_file() for f, _ in self.cache.row_files(rows[i]).values())]
            if gone:
                raise InputError(f"{len(gone)} volume file(s) of the cache are missing, e.g. {gone[0]}",
                                 where=str(self.cache.path), fix="run `synthaug cache verify`, then pregenerate "
                                                                 "again to remake them")
            if peak_quotas[c] and not self.ids[c]:
                raise InputError(f"class_balance asks for {peak_quotas[c]} synthetic volumes of class {c} but the "
                                 "cache has none", where=str(self.cache.path),
                                 fix=f"pregenerate class-{c} volumes, or choose another class_balance")

    def draw(self, epoch: int, quotas: Mapping[int, int], rng: np.random.Generator,
             used_before: Callable[[], Mapping[int, int]]) -> dict[int, list[str]]:
        return draw_per_class(self.ids, quotas, rng, epoch)

    def item(self, row_id: str, image_key: str) -> dict[str, Any]:
        wait_for_row(self.cache, row_id)
        return self.cache.item(row_id, image_key, self.label_from)

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


class GeneratorPool:
    """Volumes ``generator`` makes into its write-through ``cache`` as epochs draw them.

    ``pool_size`` None: every epoch takes new volumes, after those of the earlier epochs. A number: a fixed
    pool of max(peak quota, pool_size) volumes per class that each epoch draws from.
    """

    def __init__(self, generator: CCELLAGenerator, cache: SyntheticCache, label_from: str = "requested",
                 pool_size: int | None = None) -> None:
        self.generator, self.cache, self.label_from, self.pool_size = generator, cache, label_from, pool_size
        self.pairs: dict[int, list[tuple[int, int]]] = {c: [] for c in LABELS}  # (label, index) per class
        self._producer: threading.Thread | None = None
        self._stop: threading.Event | None = threading.Event()  # set by close() or at exit: stop after the batch
        self._producer_error: BaseException | None = None
        # Where the producer leaves its failure for DataLoader workers (other processes) to find.
        self._error_file = cache.path / f".producer-{os.getpid()}-{id(self):x}.error"

    def fixed_size(self) -> None:
        return None

    def prepare(self, peak_quotas: Mapping[int, int]) -> None:
        if self.pool_size is not None:
            self.pairs = {c: [(c, j) for j in range(max(peak_quotas[c], self.pool_size))] for c in LABELS}

    def draw(self, epoch: int, quotas: Mapping[int, int], rng: np.random.Generator,
             used_before: Callable[[], Mapping[int, int]]) -> dict[int, list[str]]:
        if self.pool_size is None:  # new volumes every epoch: indices after the earlier epochs'
            start = used_before()
            chosen = {c: [(c, start[c] + j) for j in range(quotas[c])] for c in LABELS}
        else:
            chosen = draw_per_class(self.pairs, quotas, rng, epoch)
        if self.generator is not None:  # a DataLoader worker's copy reads, and never generates
            present = self.cache.rows()
            self._start_producer([p for c in LABELS for p in chosen[c] if volume_id(*p) not in present])
        return {c: [volume_id(*p) for p in chosen[c]] for c in LABELS}

    def _start_producer(self, missing: list[tuple[int, int]]) -> None:
        if not missing:
            return
        if self._producer is not None:
            self._producer.join()  # one producer at a time; the previous epoch's work is still useful
        pairs = sorted(set(missing), key=lambda p: (p[1], p[0]))
        self._producer_error = None
        self._error_file.unlink(missing_ok=True)
        self._stop.clear()
        # Not a daemon: a daemon thread still running torch at interpreter exit aborts the process
        # ("terminate called without an active exception"). At exit it is told to stop after its batch.
        self._producer = threading.Thread(target=self._produce, args=(pairs,), name="synthaug-producer")
        _stop_at_exit(self._stop)
        self._producer.start()

    def _produce(self, pairs: list[tuple[int, int]]) -> None:
        try:
            size = self.generator.batch_size
            for start in range(0, len(pairs), size):
                if self._stop.is_set():
                    return
                self.cache.make(self.generator, pairs[start:start + size])
        except BaseException as exc:  # surfaced to the consumer in item(), here and in loader workers
            self._producer_error = exc
            atomic_write_text(self._error_file, f"{type(exc).__name__}: {exc}\n")

    def _check_failure(self) -> None:
        if self._producer_error is not None:
            raise self._producer_error
        if self._error_file.is_file():  # a DataLoader worker: the producer runs in the main process
            raise GenerationError(f"generating synthetic volumes failed: {self._error_file.read_text().strip()}",
                                  where=str(self.cache.path), fix="see the main process's log")

    def item(self, row_id: str, image_key: str) -> dict[str, Any]:
        wait_for_row(self.cache, row_id, self._check_failure)
        return self.cache.item(row_id, image_key, self.label_from)

    def wait(self) -> None:
        if self._producer is not None:
            self._producer.join()
        if self._producer_error is not None:
            raise self._producer_error

    def close(self) -> None:
        if self._producer is not None:
            self._stop.set()
            self._producer.join()
            self._producer = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for spawned DataLoader workers: they read the cache and never generate."""
        return {**self.__dict__, "_producer": None, "generator": None, "_stop": None}


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


def open_synthetic_folder(path: str | os.PathLike[str]) -> SyntheticCache | CCELLAGenerator:
    """A cache folder (``cache.json``) as a ``SyntheticCache``, or a bundle folder as its default generator."""
    from synthaug.generate import CCELLAGenerator

    path = Path(path)
    if (path / "cache.json").is_file():
        return SyntheticCache(path)
    if (path / "fingerprint").is_file():
        return CCELLAGenerator.from_bundle(path)
    raise InputError("neither a synthetic cache (cache.json) nor a bundle (fingerprint)", where=str(path),
                     fix="pass a folder made by `synthaug pregenerate` or `synthaug train`")


def open_pool(synthetic: SyntheticCache | CCELLAGenerator | str | os.PathLike[str] | None, *,
              cache_dir: str | os.PathLike[str] | None = None, generate: bool = True, label_from: str = "requested",
              pool_size: int | None = None) -> SyntheticPool | None:
    """The pool of a cache, a generator, or the folder of either (None: no synthetic source).

    A generator writes through a cache in ``cache_dir`` (default ``$SYNTHAUG_CACHE_DIR`` or
    ``~/.cache/synthaug/<bundle>-<settings>``); with ``generate=False`` only what that cache has is used.
    """
    from synthaug.generate import CCELLAGenerator

    if isinstance(synthetic, (str, os.PathLike)):
        synthetic = open_synthetic_folder(synthetic)
    if synthetic is None:
        return None
    if isinstance(synthetic, SyntheticCache):
        return CachePool(synthetic, label_from)
    if isinstance(synthetic, CCELLAGenerator):
        cache = SyntheticCache.create(cache_dir or _default_cache_dir(synthetic), synthetic)
        return GeneratorPool(synthetic, cache, label_from, pool_size) if generate else CachePool(cache, label_from)
    raise InputError(f"cannot use a {type(synthetic).__name__} as the synthetic source", where="synthetic",
                     fix="pass a SyntheticCache, a CCELLAGenerator, or the folder of either")


def _default_cache_dir(generator: CCELLAGenerator) -> Path:
    import hashlib
    import json

    root = Path(os.environ.get("SYNTHAUG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "synthaug")
    settings = hashlib.sha256(json.dumps([generator.settings(), generator.report_source],
                                         sort_keys=True).encode()).hexdigest()[:8]
    return root / f"{generator.fingerprint[:16]}-{settings}"
