"""Text-embedding cache: per-report token features keyed by (encoder fingerprint, sha256 of the text).

Layout (safetensors only, never pickle)::

    folder/
      <encoder fingerprint>/          one namespace per model + tokenisation settings
        encoder.json                  what made these features (model id, kind, dim, max_tokens, ...)
        shard-<hash>.safetensors      many texts per file: key = sha256 of the text, value = (T_i, D)

Features are stored unpadded, ``(T_i, D)`` with ``T_i`` the report's real token count, in ``dtype``
(float16 by default: half the disk, and far below the precision that matters for conditioning; a
text whose features overflow float16 is stored as float32). Reads always return float32. Every shard
is written to a temporary file and renamed, so concurrent readers never see a half-written file, and
concurrent writers at worst store a text twice (the copies are interchangeable).

    store = EmbeddingStore("cache/text", TextEncoder.from_config(cfg.text))
    store.precompute(reports)          # encodes only what is missing
    batch = store.get(reports[:4])     # TextBatch(features (4, T, D), mask (4, T), isnull (4,))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from synthaug.data.io import atomic_path, atomic_write_text, save_weights
from synthaug.errors import InputError
from synthaug.text.encoder import TextEncoder

FORMAT = "synthaug-text-embeddings-v1"
_FLOAT16_MAX = 65504.0


def normalise_report(text: str) -> str:
    """A whitespace-only report is no report: ``""``; any other text is kept exactly."""
    return text if text.strip() else ""


def text_key(text: str) -> str:
    """sha256 (hex) of the normalised report text: its name in the store."""
    return hashlib.sha256(normalise_report(text).encode("utf-8")).hexdigest()


@dataclass
class TextBatch:
    """Padded token features of a batch of reports."""

    features: torch.Tensor  # (B, T, D) float32, zero at padding
    mask: torch.Tensor  # (B, T) bool, True at real tokens
    isnull: torch.Tensor  # (B,) bool, True where the report was empty or whitespace

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: str | torch.device) -> TextBatch:
        """The same batch on ``device``."""
        return TextBatch(self.features.to(device), self.mask.to(device), self.isnull.to(device))


def collate_text(items: list[torch.Tensor], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-text features ``(T_i, D)`` into ``(B, T, D)`` float32 + mask ``(B, T)`` bool.

    ``T`` is the longest ``T_i``, or ``pad_to`` (which must be at least the longest).
    """
    if not items:
        raise ValueError("collate_text needs at least one item")
    dim = items[0].shape[-1]
    longest = max(int(x.shape[0]) for x in items)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest text ({longest} tokens)")
    features = torch.zeros(len(items), width, dim, dtype=torch.float32)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for i, x in enumerate(items):
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"item {i} has shape {tuple(x.shape)}; expected (T, {dim})")
        features[i, : x.shape[0]] = x.float()
        mask[i, : x.shape[0]] = True
    return features, mask


class EmbeddingStore:
    """Folder cache of per-text features keyed by (encoder fingerprint, sha256 of the text).

    The encoder's weights load only when a text is missing, so reading a fully precomputed store
    never loads the model. Safe to share between processes (atomic shard files).
    """

    def __init__(self, folder: str | Path, encoder: TextEncoder, dtype: torch.dtype = torch.float16,
                 shard_size: int = 1024) -> None:
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, not {dtype}")
        self.root = Path(folder)
        if self.root.exists() and not self.root.is_dir():
            raise InputError("text-embedding store path is a file", where=str(self.root),
                             fix="pass a folder (it is created if missing)")
        self.encoder = encoder
        self.dtype = dtype
        self.shard_size = max(1, int(shard_size))
        self.folder = self.root / encoder.fingerprint
        self._index: dict[str, Path] = {}  # text key -> shard file
        self._scanned: set[str] = set()  # shard file names already indexed

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.folder)!r}, texts={len(self)}, model={self.encoder.model_id!r})"

    def __len__(self) -> int:
        self._scan()
        return len(self._index)

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        key = text_key(text)
        if key not in self._index:
            self._scan()
        return key in self._index

    def _scan(self) -> None:
        """Index shards written since the last scan (by this or another process)."""
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard.name in self._scanned:
                continue
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = list(f.keys())
            except (SafetensorError, OSError) as exc:
                raise InputError(f"text-embedding shard is unreadable ({exc})", where=str(shard),
                                 fix="delete the file; its texts are re-encoded on next use") from exc
            for key in keys:
                self._index.setdefault(key, shard)
            self._scanned.add(shard.name)

    def _missing(self, texts: Iterable[str]) -> list[str]:
        """Unique normalised texts (first-seen order) that the store does not hold."""
        unique = {text_key(t): normalise_report(t) for t in texts}
        if any(k not in self._index for k in unique):
            self._scan()
        return [t for k, t in unique.items() if k not in self._index]

    def _write_meta(self) -> None:
        meta = self.folder / "encoder.json"
        if meta.exists():
            return
        enc = self.encoder
        atomic_write_text(meta, json.dumps({
            "format": FORMAT, "fingerprint": enc.fingerprint, "model": enc.model_id, "kind": enc.kind,
            "dim": enc.dim, "max_tokens": enc.cfg.max_tokens, "truncate_side": enc.cfg.truncate_side,
        }, indent=2) + "\n")

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        name = hashlib.sha256("".join(sorted(tensors)).encode()).hexdigest()[:32]
        path = self.folder / f"shard-{name}.safetensors"
        metadata = {"format": FORMAT, "fingerprint": self.encoder.fingerprint, "model": self.encoder.model_id}
        with atomic_path(path) as tmp:
            save_weights(tensors, tmp, metadata=metadata)
        for key in tensors:
            self._index[key] = path
        self._scanned.add(path.name)

    def _to_storage(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float16 and x.abs().max() > _FLOAT16_MAX:
            return x.float().contiguous()  # would overflow to inf in float16
        return x.to(self.dtype).contiguous()

    def precompute(self, texts: Iterable[str], progress: Callable[[int, int], None] | None = None) -> int:
        """Encode and store the texts not yet stored (each distinct text once); return how many.

        ``progress(done, total)`` is called after each encoder batch. A killed run keeps every shard
        already written (``shard_size`` texts each) and resumes from there.
        """
        todo = self._missing(texts)
        if not todo:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_meta()
        step = self.encoder.cfg.batch_size
        pending: dict[str, torch.Tensor] = {}
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            features, mask = self.encoder.encode(chunk)
            for text, feat, m in zip(chunk, features, mask):
                pending[text_key(text)] = self._to_storage(feat[: int(m.sum())])
            while len(pending) >= self.shard_size:
                keys = list(pending)[: self.shard_size]
                self._write_shard({k: pending.pop(k) for k in keys})
            if progress is not None:
                progress(min(start + step, len(todo)), len(todo))
        if pending:
            self._write_shard(pending)
        return len(todo)

    def load(self, texts: list[str]) -> list[torch.Tensor]:
        """Unpadded float32 features ``(T_i, D)`` per text, encoding and storing any that are missing."""
        return [x.float() for x in self._read(texts)]

    def _read(self, texts: list[str]) -> list[torch.Tensor]:
        """Stored features ``(T_i, D)`` per text, in the store's dtype."""
        missing = self._missing(texts)
        if missing:
            self.precompute(missing)
        keys = [text_key(t) for t in texts]
        by_shard: dict[Path, list[str]] = {}
        for key in dict.fromkeys(keys):
            by_shard.setdefault(self._index[key], []).append(key)
        found: dict[str, torch.Tensor] = {}
        for shard, shard_keys in by_shard.items():
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for key in shard_keys:
                        found[key] = f.get_tensor(key)
            except (SafetensorError, OSError) as exc:
                raise InputError(f"text-embedding shard is unreadable ({exc})", where=str(shard),
                                 fix="delete the file; its texts are re-encoded on next use") from exc
        for key, x in found.items():
            if x.ndim != 2 or x.shape[1] != self.encoder.dim or x.shape[0] < 1:
                raise InputError(f"stored features for text {key[:12]} have shape {tuple(x.shape)}, "
                                 f"expected (T, {self.encoder.dim})", where=str(self._index[key]),
                                 fix="delete the file; its texts are re-encoded on next use")
        return [found[k] for k in keys]

    def get(self, texts: list[str], pad_to: int | None = None) -> TextBatch:
        """A padded batch for ``texts`` from the store (missing ones are encoded and stored first)."""
        if isinstance(texts, str):
            raise TypeError("get takes a list of texts, not one string")
        texts = list(texts)
        if not texts:
            raise ValueError("get needs at least one text")
        features, mask = collate_text(self._read(texts), pad_to=pad_to)
        isnull = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
        return TextBatch(features=features, mask=mask, isnull=isnull)


__all__ = ["EmbeddingStore", "TextBatch", "collate_text", "normalise_report", "text_key"]
