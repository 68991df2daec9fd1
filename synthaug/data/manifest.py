"""Case manifests: ``CaseRecord`` and read/write/validate for JSONL and CSV (DESIGN.md section 4).

One manifest line describes one case::

    {"case_id": "case_0001", "image": "images/case_0001.nii.gz", "label": 1, "pirads": 4,
     "report": "...", "spacing": [1.5, 1.5, 3.0], "split": "train", "meta": {}}

``image`` may also be ``{"t2w": path, "adc": path, "hbv": path}`` (``t2w`` required). A path is
absolute, or relative to the manifest's folder; relative paths may not climb out of that folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthaug.data.io import atomic_write_text
from synthaug.errors import ManifestError

SPLITS = ("train", "val", "test")
MODALITIES = ("t2w", "adc", "hbv")
FIELDS = ("case_id", "image", "label", "pirads", "report", "spacing", "split", "meta")
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located by file/line, case and field."""

    where: str
    what: str
    fix: str
    case_id: str | None = None
    field: str | None = None

    def as_error(self) -> ManifestError:
        return ManifestError(self.what, where=self.where, fix=self.fix)

    def __str__(self) -> str:
        return self.as_error().message


@dataclass(frozen=True)
class CaseRecord:
    """One case: image path(s) as written in the manifest, label, PI-RADS, report, split, meta."""

    case_id: str
    image: str | dict[str, str]
    label: int
    pirads: int | None = None
    report: str = ""
    spacing: tuple[float, float, float] | None = None
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_report(self) -> bool:
        return bool(self.report.strip())

    @property
    def image_paths(self) -> dict[str, str]:
        """Image paths by item key: ``image`` (the T2W / only image), then ``adc``, ``hbv``."""
        if isinstance(self.image, str):
            return {"image": self.image}
        return {("image" if k == "t2w" else k): v for k, v in self.image.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "image": dict(self.image) if isinstance(self.image, dict) else self.image,
            "label": self.label,
            "pirads": self.pirads,
            "report": self.report,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "split": self.split,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> CaseRecord:
        """Build a record from a parsed manifest line, raising ``ManifestError`` on the first bad field."""
        return _RecordParser(data, where).parse()


class _RecordParser:
    """Checks each field of one raw record; errors name the case id and the field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(
                f"expected a JSON object per line, got {type(data).__name__}",
                where=where,
                fix="write one {\"case_id\": ..., \"image\": ..., \"label\": ...} object per line",
            )
        self.data = data
        self.where = where
        self.case_id: str | None = None

    def fail(self, field_name: str, what: str, fix: str) -> ManifestError:
        who = f"case {self.case_id!r}" if self.case_id else "case"
        return ManifestError(f"{who}, field {field_name!r}: {what}", where=self.where, fix=fix)

    def parse(self) -> CaseRecord:
        unknown = sorted(set(self.data) - set(FIELDS))
        self.case_id = self._case_id()
        if unknown:
            raise self.fail(unknown[0], "unknown field", f"use only {', '.join(FIELDS)} (put extras in 'meta')")
        return CaseRecord(
            case_id=self.case_id,
            image=self._image(),
            label=self._label(),
            pirads=self._pirads(),
            report=self._report(),
            spacing=self._spacing(),
            split=self._split(),
            meta=self._meta(),
        )

    def _case_id(self) -> str:
        value = self.data.get("case_id")
        if not isinstance(value, str) or not value:
            raise self.fail("case_id", "missing or not a string", "give every case a unique text id")
        if not CASE_ID_PATTERN.match(value):
            self.case_id = value
            raise self.fail(
                "case_id",
                "may contain only letters, digits, '.', '_' and '-' (it names files later)",
                "rename the case",
            )
        return value

    def _path(self, value: Any, field_name: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field_name, "missing or not a path string", "give the image path")
        return value

    def _image(self) -> str | dict[str, str]:
        value = self.data.get("image")
        if isinstance(value, dict):
            bad = sorted(set(value) - set(MODALITIES))
            if bad:
                raise self.fail("image", f"unknown modality {bad[0]!r}", f"use keys {', '.join(MODALITIES)}")
            if "t2w" not in value:
                raise self.fail("image", "multi-modal image needs a 't2w' path", "add the T2-weighted image")
            return {k: self._path(value[k], f"image.{k}") for k in MODALITIES if k in value}
        return self._path(value, "image")

    def _label(self) -> int:
        value = self.data.get("label")
        if isinstance(value, str) and value.strip() in {"0", "1"}:
            return int(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
            return int(value)
        raise self.fail("label", f"{value!r} is not 0 or 1", "labels are binary: 1 = positive (e.g. PI-RADS >= 3)")

    def _pirads(self) -> int | None:
        value = self.data.get("pirads")
        if value is None or value == "":
            return None
        number: int | None = None
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        if number is None or not 1 <= number <= 5:
            raise self.fail("pirads", f"{value!r} is not an integer 1-5", "give the overall PI-RADS or null")
        return number

    def _report(self) -> str:
        value = self.data.get("report", "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail("report", f"expected text, got {type(value).__name__}", 'use "" for no report')
        return value

    def _spacing(self) -> tuple[float, float, float] | None:
        value = self.data.get("spacing")
        if value is None or value == "":
            return None
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s;]+", value.strip("[]() ")) if v]
        try:
            numbers = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            numbers = ()
        if len(numbers) != 3 or not all(math.isfinite(v) and v > 0 for v in numbers):
            raise self.fail("spacing", f"{value!r} is not three positive numbers (mm)", "write [x, y, z] or null")
        return numbers  # type: ignore[return-value]

    def _split(self) -> str:
        value = self.data.get("split", "train")
        if value not in SPLITS:
            raise self.fail("split", f"unknown split {value!r}", f"use one of {', '.join(SPLITS)}")
        return value

    def _meta(self) -> dict[str, Any]:
        value = self.data.get("meta") or {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, dict):
            raise self.fail("meta", "not a JSON object", "use {} or a mapping of extra fields")
        return value


@dataclass
class Manifest:
    """The records of one manifest file and the folder their relative paths resolve against."""

    records: list[CaseRecord]
    root: Path
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CaseRecord]:
        return iter(self.records)

    def split(self, name: str) -> list[CaseRecord]:
        return [r for r in self.records if r.split == name]

    def resolve(self, path: str) -> Path:
        """Absolute path of a manifest path; a relative one may not leave the manifest's folder."""
        if os.path.isabs(path):
            return Path(os.path.normpath(path))
        norm = os.path.normpath(path)
        if norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../"):
            raise ManifestError(
                f"relative path {path!r} climbs out of the manifest's folder",
                where=str(self.path or self.root),
                fix="write an absolute path for data that lives elsewhere",
            )
        return self.root / norm

    def resolved_images(self, record: CaseRecord) -> dict[str, Path]:
        """Absolute image paths of ``record`` by item key (``image``, ``adc``, ``hbv``)."""
        return {key: self.resolve(p) for key, p in record.image_paths.items()}

    def items(self, split: str | None = None) -> list[dict[str, Any]]:
        """MONAI-style dicts (absolute image paths, label, report, ...), optionally of one split."""
        out = []
        for r in self.records if split is None else self.split(split):
            item: dict[str, Any] = {k: str(v) for k, v in self.resolved_images(r).items()}
            item.update(
                case_id=r.case_id, label=r.label, pirads=r.pirads, report=r.report, split=r.split,
            )
            if r.spacing is not None:
                item["spacing"] = list(r.spacing)
            out.append(item)
        return out


# ---------------------------------------------------------------- reading


def _decode_lines(raw: bytes, where: str) -> list[str]:
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            guess = re.search(rb'"case_id"\s*:\s*"([^"]*)"', line) or re.match(rb"([^,]*)", line)
            who = f" (case {guess.group(1).decode('utf-8', 'replace')!r})" if guess else ""
            raise ManifestError(
                f"line {number}{who} is not valid UTF-8 text (byte {exc.start}: {line[exc.start:exc.start + 1]!r})",
                where=where,
                fix="re-save the manifest as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            ) from exc
    return lines


def _rows_jsonl(lines: list[str], where: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        loc = f"{where}:{number}"
        try:
            yield loc, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"line is not valid JSON ({exc.msg} at column {exc.colno})",
                where=loc,
                fix="write one JSON object per line (JSONL)",
            ) from exc


def _rows_csv(lines: list[str], where: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    header = reader.fieldnames or []
    modality_cols = {f"image_{m}": m for m in MODALITIES}
    if "case_id" not in header or not ("image" in header or "image_t2w" in header):
        raise ManifestError(
            f"CSV header {header} lacks 'case_id' and 'image' (or 'image_t2w')",
            where=where,
            fix=f"use columns {', '.join(FIELDS)}",
        )
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise ManifestError("row has more cells than the header", where=f"{where}:{number}", fix="quote cells with commas")
        if not any((v or "").strip() for v in row.values()):
            continue
        images = {m: row.pop(col) for col, m in modality_cols.items() if col in row and row.get(col)}
        for col in modality_cols:
            row.pop(col, None)
        if images:
            row["image"] = images
        data = {k: (v if v != "" else None) for k, v in row.items()}
        if data.get("report") is None:
            data["report"] = ""
        yield f"{where}:{number}", data


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a JSONL (``.jsonl``/``.json``) or ``.csv`` manifest; raise ``ManifestError`` on a bad line.

    Only the records are checked here; call ``validate_manifest`` for cross-record and file checks.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ManifestError("manifest not found", where=where, fix="check the path")
    lines = _decode_lines(path.read_bytes(), where)
    rows = _rows_csv(lines, where) if path.suffix.lower() == ".csv" else _rows_jsonl(lines, where)
    records = [CaseRecord.from_dict(data, loc) for loc, data in rows]
    if not records:
        raise ManifestError("manifest has no cases", where=where, fix="add one line per case")
    return Manifest(records=records, root=path.resolve().parent, path=path)


# ---------------------------------------------------------------- validation


def validate_manifest(manifest: Manifest, check_files: bool = True) -> list[Problem]:
    """Every cross-record and path problem: duplicate ids, escaping paths, missing files."""
    where = str(manifest.path or manifest.root)
    problems: list[Problem] = []
    seen: set[str] = set()
    for r in manifest.records:
        if r.case_id in seen:
            problems.append(Problem(where, f"case {r.case_id!r}, field 'case_id': duplicate id",
                                    "give every case a unique id", r.case_id, "case_id"))
        seen.add(r.case_id)
        for key, rel in r.image_paths.items():
            field_name = "image" if isinstance(r.image, str) else f"image.{'t2w' if key == 'image' else key}"
            try:
                resolved = manifest.resolve(rel)
            except ManifestError as exc:
                problems.append(Problem(where, f"case {r.case_id!r}, field {field_name!r}: {exc.what}",
                                        exc.fix or "", r.case_id, field_name))
                continue
            if check_files and not resolved.is_file():
                problems.append(Problem(where, f"case {r.case_id!r}, field {field_name!r}: image file not found ({resolved})",
                                        "check the path or remove the case", r.case_id, field_name))
    return problems


def load_manifest(path: str | os.PathLike[str], check_files: bool = True) -> Manifest:
    """Read and validate a manifest; raise ``ManifestError`` naming the first problem (and the count)."""
    manifest = read_manifest(path)
    problems = validate_manifest(manifest, check_files=check_files)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s); run `synthaug data check`)" if len(problems) > 1 else ""
        raise ManifestError(first.what + more, where=first.where, fix=first.fix)
    return manifest


# ---------------------------------------------------------------- writing


def _csv_text(records: list[CaseRecord]) -> str:
    multi = any(isinstance(r.image, dict) for r in records)
    image_cols = [f"image_{m}" for m in MODALITIES] if multi else ["image"]
    cols = ["case_id", *image_cols, "label", "pirads", "report", "spacing", "split", "meta"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = r.to_dict()
        image = row.pop("image")
        if multi:
            paths = image if isinstance(image, dict) else {"t2w": image}
            row.update({f"image_{m}": paths.get(m, "") for m in MODALITIES})
        else:
            row["image"] = image
        row["pirads"] = "" if row["pirads"] is None else row["pirads"]
        row["spacing"] = "" if row["spacing"] is None else ",".join(repr(float(s)) for s in row["spacing"])
        row["meta"] = json.dumps(row["meta"], sort_keys=True) if row["meta"] else ""
        writer.writerow(row)
    return buf.getvalue()


def write_manifest(records: Iterable[CaseRecord], path: str | os.PathLike[str]) -> Path:
    """Write records as JSONL, or CSV when ``path`` ends in ``.csv``; atomically."""
    path = Path(path)
    records = list(records)
    if path.suffix.lower() == ".csv":
        text = _csv_text(records)
    else:
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    return path
