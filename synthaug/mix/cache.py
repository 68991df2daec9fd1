"""SyntheticCache: a folder of generated volumes that many processes can fill and read at once.

    cache = SyntheticCache.create("synth", generator)              # or SyntheticCache("synth") to open
    cache.pregenerate(generator, n=1000, class_balance="equal", shard=(0, 4), batch_size=16)
    cache.items(label=1)   # MONAI-style dicts: {"image": path, "label": 1, "is_synthetic": True, ...}
    cache.verify()         # missing / corrupt (sha256) / duplicate / torn entries

Layout: ``cache.json`` (format version, bundle fingerprint, generator settings (sampler, steps, eta,
guidance, class guidance, class source, EMA), shape, dtype, file format, seed), ``manifest.jsonl`` (one
line per volume) and ``volumes/``. Each class is an indexed pool:
volume ``j`` of class ``c`` has the id ``syn-l{c}-{j:06d}`` and a seed derived from (cache seed, c, j),
so any set of processes, shards or runs asking for the same ids makes the same bytes. A volume is
written to a temporary file and renamed; only then is its line appended to the manifest, under a file
lock and after re-reading the manifest, so a killed writer leaves no half-written volume and no
duplicate line, and a resumed or concurrent pregeneration only makes what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthaug.data.io import atomic_write_text, file_sha256, is_atomic_temporary
from synthaug.errors import InputError
from synthaug.mix.balance import LABELS, ClassBalance, pregeneration_quotas

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_FILE = "cache.json"
MANIFEST_FILE = "manifest.jsonl"
REJECTED_FILE = "rejected.jsonl"  # candidates a filter refused: never in the manifest, counted by `cache info`
FILTER_FILE = "filter.safetensors"  # a filter `pregenerate --filter train` made, kept for resuming
VOLUMES_DIR = "volumes"
CANDIDATES_PER_VOLUME = 50  # a filtered class gives up after this many candidates per wanted volume
FILE_FORMATS = {"nifti-gz": ".nii.gz", "nifti": ".nii"}  # both open in any viewer and with MONAI LoadImaged
# What cache.json must hold, and of which type; everything else in it is informative.
META_KEYS = {"bundle_fingerprint": str, "generator": dict, "report_source": str, "seed": int, "file_format": str,
             "shape": list}
# What every manifest row must hold, and of which type.
ROW_KEYS = {"id": str, "label": int, "file": str, "sha256": str, "report": str, "report_source": str, "seed": int}


_ID = re.compile(r"syn-l(?P<label>[01])-(?P<index>\d{6,})")


def volume_id(label: int, index: int) -> str:
    return f"syn-l{label}-{index:06d}"


def volume_seed(cache_seed: int, label: int, index: int) -> int:
    """A 63-bit seed for volume ``index`` of class ``label``: independent streams per cache seed and class."""
    digest = hashlib.sha256(f"synthaug:{cache_seed}:{label}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _said(described: Mapping[str, Any] | None) -> str:
    """A filter's ``describe()`` in words."""
    if described is None:
        return "no filter"
    return f"filter {described['model']} {described['weights_sha256'][:12]} at confidence {described['confidence']:g}"


def _interleave(counts: Mapping[int, int]) -> list[tuple[int, int]]:
    """(label, index) pairs in a fixed order that alternates the classes, so every shard gets both."""
    out, j = [], 0
    while any(j < counts.get(c, 0) for c in LABELS):
        out += [(c, j) for c in LABELS if j < counts.get(c, 0)]
        j += 1
    return out


@dataclass
class VerifyReport:
    """What ``SyntheticCache.verify`` found; ``ok`` when nothing is missing, corrupt, duplicated or torn."""

    volumes: int = 0
    missing: list[str] = field(default_factory=list)  # ids whose file is gone
    corrupt: list[str] = field(default_factory=list)  # ids whose file's sha256 differs
    duplicates: list[str] = field(default_factory=list)  # ids with more than one manifest line
    bad_lines: list[int] = field(default_factory=list)  # manifest lines that are not a valid row (see why)
    why: dict[int, str] = field(default_factory=dict)  # bad line number -> what is wrong with it
    orphans: list[str] = field(default_factory=list)  # volume files with no manifest line (harmless)
    temp_files: list[str] = field(default_factory=list)  # left by killed writers (harmless)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.duplicates or self.bad_lines)


class SyntheticCache:
    """An existing cache folder (``cache.json`` required). ``create`` makes one for a generator."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        file = self.path / CACHE_FILE
        if not file.is_file():
            raise InputError(f"not a synthetic cache (no {CACHE_FILE})", where=str(self.path),
                             fix="pass a folder made by `synthaug pregenerate`, or create one")
        try:
            self.meta: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{CACHE_FILE} is not valid JSON", where=str(file),
                             fix="restore it or make the cache again") from exc
        if not isinstance(self.meta, dict):
            raise InputError("is not a JSON object", where=str(file), fix="restore it or make the cache again")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"cache format {self.meta.get('format_version')!r} is not {FORMAT_VERSION}",
                             where=str(file), fix="make the cache again with this synthaug version")
        for key, kind in META_KEYS.items():
            if not isinstance(self.meta.get(key), kind):
                raise InputError(f"{key!r} is missing or not a {kind.__name__}", where=str(file),
                                 fix="restore it or make the cache again")
        if self.meta["file_format"] not in FILE_FORMATS:
            raise InputError(f"file_format {self.meta['file_format']!r} is not one of {', '.join(FILE_FORMATS)}",
                             where=str(file), fix="restore it or make the cache again")
        # caches made before class guidance were made without it, before the precision setting in float32 and
        # before the guidance interval with guidance on every step
        self.meta["generator"] = {"class_guidance": 1.0, "precision": "fp32", "guidance_interval": [0.0, 1.0],
                                  **self.meta["generator"]}
        self._rows: dict[str, dict[str, Any]] = {}
        self._read_size = -1
        self._problems: dict[int, str] = {}  # manifest line number -> what is wrong with it (last parse)

    # ------------------------------------------------------------ creation and identity

    @staticmethod
    def describe(generator, file_format: str = "nifti-gz", seed: int = 0,
                 volume_filter=None) -> dict[str, Any]:
        """The ``cache.json`` content for volumes made by ``generator`` (and kept by ``volume_filter``)."""
        if file_format not in FILE_FORMATS:
            raise InputError(f"unknown file format {file_format!r}", where="file_format",
                             fix=f"choose one of {', '.join(FILE_FORMATS)}")
        data = generator.bundle.config.data
        return {
            "format_version": FORMAT_VERSION, "bundle_fingerprint": generator.fingerprint,
            "bundle_path": str(Path(generator.bundle.path).resolve()), "generator": generator.settings(),
            "report_source": generator.report_source, "seed": int(seed), "file_format": file_format,
            "dtype": "float32", "shape": [len(data.modalities), *generator.image_shape],
            "sequences": list(data.modalities),  # one file per sequence, under the real items' keys
            "spacing": list(generator.spacing), "affine": generator.affine.tolist(),
            "train_case_ids": sorted(generator.bundle.train_case_ids),
            "data": data.model_dump(mode="json"),  # geometry and preprocessing the volumes were made for
            "filter": volume_filter.describe() if volume_filter is not None else None,
        }

    @classmethod
    def create(cls, path: str | os.PathLike[str], generator, *, file_format: str = "nifti-gz",
               seed: int = 0, allow_foreign: bool = False, volume_filter=None) -> SyntheticCache:
        """Make a cache folder for ``generator`` (or open the existing one, checking it was made alike)."""
        path = Path(path)
        meta = cls.describe(generator, file_format, seed, volume_filter)
        if (path / CACHE_FILE).is_file():
            cache = cls(path)
            cache.check_generator(generator, allow_foreign=allow_foreign)
            if cache.meta["seed"] != meta["seed"] or cache.meta["file_format"] != meta["file_format"]:
                raise InputError(f"the cache was made with seed {cache.meta['seed']} and format "
                                 f"{cache.meta['file_format']}", where=str(path),
                                 fix="use the cache's seed and format, or another folder")
            cache.check_filter(volume_filter)
            return cache
        # What a process creating this cache at the same moment has made before cache.json is not "foreign":
        # its folders and lock, and the temporary of its cache.json while the write is in flight.
        own = {VOLUMES_DIR, f"{MANIFEST_FILE}.lock", FILTER_FILE}
        if path.exists() and any(p.name not in own and not is_atomic_temporary(p.name) for p in path.iterdir()):
            raise InputError("folder exists, is not empty and is not a synthetic cache", where=str(path),
                             fix="choose an empty or new folder")
        (path / VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
        with cls._lock_for(path):
            if not (path / CACHE_FILE).is_file():  # another process may have created it meanwhile
                atomic_write_text(path / CACHE_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        cache = cls(path)
        cache.check_generator(generator, allow_foreign=allow_foreign)
        return cache

    def check_generator(self, generator, allow_foreign: bool = False) -> None:
        """Refuse a generator from another bundle, or with other sampler settings, unless ``allow_foreign``."""
        if allow_foreign:
            return
        if generator.fingerprint != self.meta["bundle_fingerprint"]:
            raise InputError(f"the cache was made by another bundle ({self.meta['bundle_fingerprint'][:16]}, "
                             f"not {generator.fingerprint[:16]})", where=str(self.path),
                             fix="use the bundle that made it, another cache folder, or allow_foreign=True")
        ours, theirs = self.meta["generator"], generator.settings()
        if ours != theirs or self.meta["report_source"] != generator.report_source:
            changed = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
            changed += ["report_source"] if self.meta["report_source"] != generator.report_source else []
            raise InputError(f"the cache was made with other generator settings ({', '.join(changed)})",
                             where=str(self.path), fix="use the cache's settings (see `synthaug cache info`), "
                                                       "or another cache folder")

    def check_filter(self, volume_filter) -> None:  # synthaug.mix.filter.VolumeFilter | None
        """Refuse to add volumes kept by another filter (or none) than the one the cache was made with."""
        ours = self.meta.get("filter")
        theirs = volume_filter.describe() if volume_filter is not None else None
        if ours != theirs:
            raise InputError(f"the cache was made with {_said(ours)}, not {_said(theirs)}", where=str(self.path),
                             fix="use the cache's filter settings (see `synthaug cache info`), or another folder")

    def rejected(self) -> dict[str, dict[str, Any]]:
        """Candidates the filter refused, by id (``{"id", "label", "filter_prob"}``)."""
        file = self.path / REJECTED_FILE
        out = {}
        for line in file.read_text(encoding="utf-8").splitlines() if file.is_file() else []:
            try:
                row = json.loads(line)
                out[str(row["id"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line of a killed writer: that candidate is simply made again
        return out

    @property
    def fingerprint(self) -> str:
        return str(self.meta["bundle_fingerprint"])

    def data_config(self):  # synthaug.config.DataConfig
        """The data settings (shape, spacing, normalisation) of the generator that made the cache."""
        from synthaug.config import DataConfig

        if "data" not in self.meta:
            raise InputError("cache.json has no data settings (made by an older synthaug)", where=str(self.path),
                             fix="make the cache again with `synthaug pregenerate`")
        return DataConfig.model_validate(self.meta["data"])

    @property
    def train_case_ids(self) -> set[str]:
        """Case ids the generator was trained on (for leakage checks)."""
        return set(self.meta.get("train_case_ids", []))

    # ------------------------------------------------------------ manifest

    @staticmethod
    def _lock_for(path: Path):  # a filelock lock
        from filelock import FileLock

        return FileLock(str(path / f"{MANIFEST_FILE}.lock"), timeout=600)

    def _lines(self) -> list[str]:
        file = self.path / MANIFEST_FILE
        return file.read_text(encoding="utf-8").split("\n") if file.is_file() else []

    def _row_problem(self, row: Any) -> str | None:
        """Why a parsed manifest line is not a valid row of this cache, or None.

        A row may only name its own file, ``volumes/<id><suffix>``: a manifest from someone else cannot make
        ``verify``, ``info`` or the mix dataset read anything outside the cache.
        """
        if not isinstance(row, dict):
            return "is not a complete JSON object"
        for key, kind in ROW_KEYS.items():
            if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
                return f"has no {kind.__name__} {key!r}"
        match = _ID.fullmatch(row["id"])
        if not match or int(match["label"]) != row["label"]:
            return f"id {row['id']!r} is not syn-l<label>-<index> with its label {row['label']}"
        own = self.files_of(row["id"])
        if row["file"] != own["image"]:
            return f"names the file {row['file']!r}, not its own {own['image']!r}"
        extra = row.get("sequences", {})
        wanted = {k: v for k, v in own.items() if k != "image"}
        if not isinstance(extra, dict) or set(extra) != set(wanted) or not all(
                isinstance(e, dict) and e.get("file") == wanted[k] and isinstance(e.get("sha256"), str)
                for k, e in extra.items()):
            return f"does not list its own sequence files {sorted(wanted.values())} with their sha256"
        return None

    def _parse(self, lines: list[str]) -> tuple[dict[str, dict[str, Any]], list[int], list[str]]:
        rows: dict[str, dict[str, Any]] = {}
        bad, duplicates = [], []
        self._problems = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            problem = self._row_problem(row)
            if problem:
                bad.append(number)
                self._problems[number] = problem
                continue
            row_id = row["id"]
            if row_id in rows:
                duplicates.append(row_id)
            else:
                rows[row_id] = row
        return rows, bad, duplicates

    def rows(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Manifest rows by id (re-read when the file changed, or when ``refresh``).

        A line that is not complete JSON is an error, except an unterminated last line (a write in
        progress elsewhere), which is skipped.
        """
        file = self.path / MANIFEST_FILE
        size = file.stat().st_size if file.is_file() else 0
        if refresh or size != self._read_size:
            lines = self._lines()
            rows, bad, _ = self._parse(lines)
            bad = [n for n in bad if n != len(lines)]  # the last piece has no newline yet: still being written
            if bad:
                raise InputError(f"{MANIFEST_FILE} line {bad[0]} {self._problems[bad[0]]}", where=str(self.path),
                                 fix="run `synthaug cache verify` and remove the broken line(s), then pregenerate "
                                     "again to remake what is missing")
            self._rows, self._read_size = rows, size
        return self._rows

    def _append(self, rows: Sequence[dict[str, Any]], staged: Mapping[str, Mapping[str, Path]] | None = None,
                rejected: Sequence[dict[str, Any]] = (), keep: int | None = None) -> list[str]:
        """Append rows whose id is not in the manifest yet, under the lock; returns the new ids.

        ``staged``: id -> {item key: a written file}, renamed onto the row's files just before its line is added.
        ``rejected``: candidates a filter refused, recorded in ``rejected.jsonl`` (never in the manifest).
        ``keep``: at most this many rows of each row's class in the manifest (a filtered class stops exactly there).
        """
        file = self.path / MANIFEST_FILE
        with self._lock_for(self.path):
            present = self.rows(refresh=True)
            new = [r for r in rows if r["id"] not in present]
            if keep is not None:  # the first rows of each class that still fit
                room = {c: keep - sum(r["label"] == c for r in present.values()) for c in LABELS}
                fitting = []
                for r in new:
                    if room[r["label"]] > 0:
                        room[r["label"]] -= 1
                        fitting.append(r)
                new = fitting
            if rejected:
                with open(self.path / REJECTED_FILE, "a", encoding="utf-8") as handle:
                    handle.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
            for r in new:
                if staged and r["id"] in staged:
                    for key, (final, _) in self.row_files(r).items():
                        os.replace(staged[r["id"]][key], final)
            if new:
                text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in new)
                with open(file, "ab") as handle:
                    raw = file.read_bytes()
                    if raw and not raw.endswith(b"\n"):  # under the lock: a torn line nobody is finishing
                        handle.truncate(raw.rfind(b"\n") + 1)
                    handle.write(text.encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
            self.rows(refresh=True)
        return [r["id"] for r in new]

    def __len__(self) -> int:
        return len(self.rows())

    def ids(self, label: int | None = None) -> list[str]:
        return sorted(k for k, r in self.rows().items() if label is None or r["label"] == label)

    def file(self, row: Mapping[str, Any]) -> Path:
        return self.path / row["file"]

    @property
    def sequences(self) -> list[str]:
        """The sequences each volume holds, T2W first (caches from before bpMRI support: T2W, or one
        multi-channel file per volume)."""
        return list(self.meta.get("sequences", ["t2w"]))

    @property
    def sequence_keys(self) -> list[str]:
        """The item keys of the sequences (``image``, ``adc``, ``hbv``), as a real manifest item has them."""
        from synthaug.config import MODALITY_KEYS

        return [MODALITY_KEYS[m] for m in self.sequences]

    def files_of(self, row_id: str) -> dict[str, str]:
        """A volume's own files relative to the cache, by item key: T2W (or an old multi-channel file) under
        ``image``, every other sequence beside it."""
        from synthaug.generate import sequence_files

        return sequence_files(f"{VOLUMES_DIR}/{row_id}", FILE_FORMATS[self.meta["file_format"]], self.sequences)

    def row_files(self, row: Mapping[str, Any]) -> dict[str, tuple[Path, str]]:
        """Every file of a row with its recorded sha256, by item key."""
        files = {"image": (self.path / row["file"], row["sha256"])}
        for key, entry in row.get("sequences", {}).items():
            files[key] = (self.path / entry["file"], entry["sha256"])
        return files

    def item(self, row_id: str, image_key: str = "image", label_from: str = "requested") -> dict[str, Any]:
        """One volume as a MONAI-style dict: the file of each sequence under the key a real manifest item
        uses for it (T2W under ``image_key``, then ``adc``, ``hbv``), so one ``LoadImaged`` chain loads both."""
        row = self.rows()[row_id]
        label = row["predicted_label"] if label_from == "predicted" else row["label"]
        files = {image_key if key == "image" else key: str(path) for key, (path, _) in self.row_files(row).items()}
        return {**files, "label": int(label), "is_synthetic": True, "synthetic_id": row_id, "case_id": row_id,
                "report": row["report"]}

    def items(self, label: int | None = None, image_key: str = "image") -> list[dict[str, Any]]:
        return [self.item(i, image_key) for i in self.ids(label)]

    # ------------------------------------------------------------ pregeneration

    def plan(self, counts: Mapping[int, int], batch_size: int = 8,
             shard: tuple[int, int] = (0, 1)) -> list[list[tuple[int, int]]]:
        """The batches of (label, index) pairs of ``counts`` that belong to ``shard`` = (i, n_shards).

        Batches are cut from the whole plan first and then dealt to shards, so every batch has the same
        members however many shards or restarts there are: with one batch size, the volumes come out
        byte-identical whether one process or many made them.
        """
        i, n = shard
        if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
            raise InputError(f"shard {i}/{n} is not valid", where="shard", fix="use i/n with 0 <= i < n, e.g. 0/4")
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}", where="batch_size", fix="use 1 or more")
        pairs = _interleave(counts)
        return [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)][i::n]

    def pregenerate(self, generator, n: int | None = None, *, class_balance: ClassBalance = "equal",
                    counts: Mapping[int, int] | None = None, shard: tuple[int, int] = (0, 1),
                    batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                    allow_foreign: bool = False, volume_filter=None,
                    real_counts: Mapping[int, int] | None = None) -> int:
        """Make the volumes of ``n`` (split by ``class_balance``) or ``counts`` that the cache lacks; returns how many.

        ``batch_size`` None: the generator's. ``real_counts`` ({label: real training items}): needed by the
        balances ``match_real`` and ``fill_minority`` (``synthaug.mix.balance``).

        Resumable and shardable: the batches wanted are fixed by (counts, batch size, shard); a batch with
        any volume missing from the manifest is made again whole (its other volumes come out identical and
        are not recorded twice), so a re-run after a kill, or shards running in parallel, only fill gaps.
        """
        self.check_generator(generator, allow_foreign=allow_foreign)
        self.check_filter(volume_filter)
        counts = counts if counts is not None else pregeneration_quotas(n or 0, class_balance, real_counts)
        batch_size = generator.batch_size if batch_size is None else batch_size
        if volume_filter is not None:
            return self._pregenerate_filtered(generator, counts, volume_filter, shard, batch_size, progress)
        batches = self.plan(counts, batch_size, shard)
        present = self.rows(refresh=True)
        todo = [b for b in batches if any(volume_id(c, j) not in present for c, j in b)]
        total = sum(len(b) for b in todo)
        done = made = 0
        if progress:
            progress(0, total)
        for batch in todo:
            made += len(self.make(generator, batch))
            done += len(batch)
            if progress:
                progress(done, total)
        return made

    def _pregenerate_filtered(self, generator, counts: Mapping[int, int], volume_filter,
                              shard: tuple[int, int], batch_size: int,
                              progress: Callable[[int, int], None] | None) -> int:
        """Candidates ``syn-l{c}-{j}``, j = 0, 1, ..., in order, until each class has exactly its count.

        A candidate is decided once (in the manifest or in ``rejected.jsonl``), so a killed run resumes with
        the next undecided one and ends with the exact count; one process fills a filtered cache.
        """
        if shard != (0, 1):
            raise InputError("a filtered cache is filled by one process", where="--shard",
                             fix="drop --shard (and torchrun) with --filter")
        total = sum(counts.values())
        made = 0
        for c in LABELS:
            target, j = counts.get(c, 0), 0
            while (have := len(self.ids(c))) < target:
                decided = set(self.rows(refresh=True)) | set(self.rejected())
                batch = []
                while len(batch) < batch_size and j < CANDIDATES_PER_VOLUME * target:
                    if volume_id(c, j) not in decided:
                        batch.append((c, j))
                    j += 1
                if not batch:
                    refused = sum(r["label"] == c for r in self.rejected().values())
                    raise InputError(f"the filter refused {refused} class-{c} candidates and kept {have} of {target}",
                                     where=str(self.path), fix="lower --filter-confidence, ask for fewer volumes, "
                                                               "or train the generator longer")
                made += len(self.make(generator, batch, volume_filter=volume_filter, keep=target))
                if progress:
                    progress(sum(min(len(self.ids(k)), counts.get(k, 0)) for k in LABELS), total)
        return made

    def make(self, generator, pairs: Sequence[tuple[int, int]], volume_filter=None,
             keep: int | None = None) -> list[str]:
        """Generate, write (atomically) and record the volumes ``(label, index)``; returns the ids newly recorded.

        With ``volume_filter`` a volume is recorded only when the filter gives its requested class at least
        the filter's confidence (the others go to ``rejected.jsonl``), and at most ``keep`` per class.
        """
        from synthaug.generate import write_sequences, write_volume

        if not pairs:
            return []
        labels = [c for c, _ in pairs]
        seeds = [volume_seed(self.meta["seed"], c, j) for c, j in pairs]
        out = generator.generate(labels, seeds=seeds)
        suffix = FILE_FORMATS[self.meta["file_format"]]
        present = self.rows(refresh=True)
        rows, staged = [], {}
        try:
            for (label, index), volume, record in zip(pairs, out.volumes, out.provenance):
                row_id = volume_id(label, index)
                if row_id in present:  # made with its batch again: the recorded file stays as it is
                    continue
                # Written beside their final names first; _append moves them into place under the lock, so a
                # file is never replaced after another writer recorded its sha256.
                own = self.files_of(row_id)
                temps = {key: self._staging(row_id, key, suffix) for key in own}
                # A cache from before per-sequence files keeps its one (multi-channel) file per volume.
                staged[row_id] = write_sequences(volume, out.affine, temps) if "sequences" in self.meta \
                    else {"image": write_volume(volume, out.affine, temps["image"])}
                rows.append({
                    "id": row_id, "label": label, "requested_label": label, "predicted_prob": record["predicted_prob"],
                    "predicted_label": record["predicted_label"], "report": record["report"],
                    "report_source": record["report_source"], "seed": record["seed"],
                    "file": own["image"], "sha256": file_sha256(staged[row_id]["image"]),
                    **({"sequences": {k: {"file": f, "sha256": file_sha256(staged[row_id][k])}
                                      for k, f in own.items() if k != "image"}} if len(own) > 1 else {}),
                })
            rejected = []
            if volume_filter is not None and rows:
                probs = volume_filter.probabilities([staged[r["id"]] for r in rows], [r["label"] for r in rows])
                for row, prob in zip(rows, probs):
                    row["filter_prob"] = round(prob, 6)
                rejected = [{"id": r["id"], "label": r["label"], "filter_prob": r["filter_prob"]} for r in rows
                            if r["filter_prob"] < volume_filter.confidence]
                rows = [r for r in rows if r["filter_prob"] >= volume_filter.confidence]
            return self._append(rows, staged, rejected, keep)
        finally:
            for files in staged.values():  # those another writer recorded first, or left by an error
                for temp in files.values():
                    temp.unlink(missing_ok=True)

    def _staging(self, row_id: str, key: str, suffix: str) -> Path:
        fd, temp = tempfile.mkstemp(prefix=f".{row_id}.{key}.", suffix=f".staged{suffix}", dir=self.path / VOLUMES_DIR)
        os.close(fd)
        return Path(temp)

    # ------------------------------------------------------------ checks

    def verify(self) -> VerifyReport:
        """Check every manifest line: complete JSON, unique id, file present with the recorded sha256."""
        rows, bad, duplicates = self._parse(self._lines())
        report = VerifyReport(volumes=len(rows), bad_lines=bad, duplicates=sorted(set(duplicates)),
                              why=dict(self._problems))
        for row_id, row in sorted(rows.items()):
            files = self.row_files(row).values()
            if not all(file.is_file() for file, _ in files):
                report.missing.append(row_id)
            elif any(file_sha256(file) != sha for file, sha in files):
                report.corrupt.append(row_id)
        folder = self.path / VOLUMES_DIR
        if folder.is_dir():
            listed = {file.name for r in rows.values() for file, _ in self.row_files(r).values()}
            for f in sorted(folder.iterdir()):
                if f.name.startswith("."):
                    report.temp_files.append(f.name)
                elif f.name not in listed:
                    report.orphans.append(f.name)
        return report

    def info(self) -> dict[str, Any]:
        """Counts per class, reports, generator settings, bundle and size on disk."""
        rows = self.rows(refresh=True)
        size = sum(f.stat().st_size for f in (self.path / VOLUMES_DIR).glob("*") if f.is_file()) \
            if (self.path / VOLUMES_DIR).is_dir() else 0
        agree = [r for r in rows.values() if r.get("predicted_label") is not None]
        return {
            "path": str(self.path), "volumes": len(rows),
            "per_class": {str(c): n for c, n in sorted(Counter(r["label"] for r in rows.values()).items())},
            "distinct_reports": len({r["report"] for r in rows.values()}),
            "report_sources": dict(Counter(r["report_source"] for r in rows.values())),
            "predicted_agrees": (sum(r["predicted_label"] == r["label"] for r in agree) / len(agree)) if agree else None,
            "generator": self.meta["generator"], "bundle_fingerprint": self.fingerprint,
            "filter": self.meta.get("filter"),
            "rejected": {str(c): n for c, n in sorted(Counter(r["label"] for r in self.rejected().values()).items())},
            "file_format": self.meta["file_format"], "shape": self.meta["shape"], "bytes": size,
        }
