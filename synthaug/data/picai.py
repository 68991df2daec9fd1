"""PI-CAI layout (``images/{patient}/{patient}_{study}_{t2w|adc|hbv}.mha`` + ``marksheet.csv``) -> manifest.

PI-CAI has no free-text reports, so each case's report is written from its marksheet fields with
``reports.render_report``. A report states only what a radiologist would: age, PSA, gland volume and
the PI-RADS category of each lesion; histopathology (ISUP, Gleason, csPCa) stays out of the text and
goes to ``meta``.

    result = picai_to_manifest("picai_public_images", "picai_labels", "picai.jsonl", label_rule="cspca")
    result.manifest, result.skipped
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from synthaug.config import ReportConfig
from synthaug.data.io import read_header
from synthaug.data.manifest import CASE_ID_PATTERN, MODALITIES, SPLITS, CaseRecord, write_manifest
from synthaug.data.reports import Findings, Lesion, render_report
from synthaug.errors import PicaiError

logger = logging.getLogger(__name__)

LABEL_RULES = ("pirads3", "pirads4", "cspca")
ID_COLUMNS = ("patient_id", "study_id")
# Columns each label rule reads; releases before 2.0 lack lesion_PIRADS (and center).
RULE_COLUMNS = {"pirads3": ("lesion_PIRADS",), "pirads4": ("lesion_PIRADS",), "cspca": ("case_csPCa",)}
MARKSHEET_NAME = "marksheet.csv"
IMAGE_SUFFIX = ".mha"
_MISSING = {"", "n/a", "na", "nan", "none", "null", "-"}
# Suffixes that split files add to a case id: nnU-Net channels (_0000), modalities, masks.
_ID_SUFFIX = re.compile(r"_(?:\d{4}|t2w|adc|hbv|cor|sag|seg|label|mask)$", re.IGNORECASE)
_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".npz", ".npy", ".pkl")


@dataclass(frozen=True)
class PicaiCase:
    """One marksheet row. ``lesion_*`` hold one entry per lesion (``None`` = "N/A"), aligned by index."""

    patient_id: str
    study_id: str
    age: int | None = None
    psa: float | None = None  # ng/mL
    psad: float | None = None  # ng/mL/mL
    prostate_volume: float | None = None  # mL
    lesion_pirads: tuple[int | None, ...] = ()
    lesion_gs: tuple[str | None, ...] = ()  # Gleason score per lesion, e.g. "3+4"
    lesion_isup: tuple[int | None, ...] = ()
    case_isup: int | None = None
    cspca: bool | None = None  # case_csPCa: histopathology, never written into a report
    center: str | None = None
    mri_date: str | None = None
    histopath_type: str | None = None
    columns: frozenset[str] = field(default=frozenset(), repr=False, compare=False)  # marksheet header
    source: str = field(default="", repr=False, compare=False)  # "marksheet.csv:LINE", for messages

    @property
    def case_id(self) -> str:
        return f"{self.patient_id}_{self.study_id}"

    @property
    def max_pirads(self) -> int | None:
        """Highest known lesion PI-RADS; ``None`` when no lesion has one."""
        return max((p for p in self.lesion_pirads if p is not None), default=None)


@dataclass(frozen=True)
class PicaiConversion:
    """What ``picai_to_manifest`` wrote: the manifest path, counts, and the cases it skipped."""

    manifest: Path
    n_cases: int
    skipped: tuple[str, ...] = ()  # case ids left out because images were missing (on_missing="skip")
    labels: dict[int, int] = field(default_factory=dict)  # label -> number of cases
    splits: dict[str, int] = field(default_factory=dict)  # split -> number of cases


# ---------------------------------------------------------------- marksheet


def find_marksheet(labels_dir: str | os.PathLike[str]) -> Path:
    """The marksheet for ``labels_dir``: the csv itself, ``DIR/marksheet.csv`` or ``DIR/clinical_information/...``."""
    path = Path(labels_dir)
    if path.is_file():
        return path
    tried = [path / MARKSHEET_NAME, path / "clinical_information" / MARKSHEET_NAME]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise PicaiError(
        f"no PI-CAI marksheet found (looked for {', '.join(str(p) for p in tried)})",
        where=str(path),
        fix="pass the picai_labels folder, its clinical_information folder, or the marksheet.csv file",
    )


def _unknown_rule(rule: str) -> PicaiError:
    return PicaiError(f"unknown label rule {rule!r}", where="--label-rule",
                      fix=f"choose one of {', '.join(LABEL_RULES)}")


def _missing_columns_error(path: Path, header: Sequence[str], missing: list[str], rule: str | None) -> PicaiError:
    needed = f" needed by --label-rule {rule}" if rule and any(m in RULE_COLUMNS[rule] for m in missing) else ""
    alternatives = [r for r in LABEL_RULES if r != rule and all(c in header for c in RULE_COLUMNS[r])]
    if rule and alternatives and not any(m in ID_COLUMNS for m in missing):
        fix = (f"choose --label-rule {alternatives[0]} for this older marksheet, "
               "or use the current picai_labels marksheet, which has the column(s)")
    else:
        fix = "use the marksheet of the picai_labels repository (clinical_information/marksheet.csv)"
    return PicaiError(
        f"marksheet lacks column(s) {', '.join(repr(m) for m in missing)}{needed} (it has {', '.join(header)})",
        where=str(path),
        fix=fix,
    )


class _RowParser:
    """Turns one marksheet row into a ``PicaiCase``; errors name the line, case and column."""

    def __init__(self, row: dict[str, str], where: str, columns: frozenset[str]) -> None:
        self.row = row
        self.where = where
        self.columns = columns

    def fail(self, column: str, what: str, fix: str) -> PicaiError:
        return PicaiError(f"column {column!r}: {what}", where=self.where, fix=fix)

    def text(self, column: str) -> str | None:
        value = (self.row.get(column) or "").strip()
        return None if value.lower() in _MISSING else value

    def ident(self, column: str) -> str:
        value = self.text(column)
        if value is None:
            raise self.fail(column, "is empty", "give every row a patient_id and study_id")
        return value[:-2] if re.fullmatch(r"\d+\.0", value) else value  # 10000.0 from a spreadsheet

    @staticmethod
    def _float(value: str) -> float:
        try:
            return float(value)
        except ValueError:
            return math.nan

    def number(self, column: str) -> float | None:
        value = self.text(column)
        if value is None:
            return None
        number = self._float(value)
        if not math.isfinite(number):
            raise self.fail(column, f"{value!r} is not a number", 'write a number, or leave it empty / "N/A"')
        return number

    def integer(self, column: str, value: str | None, low: int, high: int) -> int | None:
        """``value`` (a cell or one lesion entry of ``column``) as an integer in [low, high]; None if missing."""
        if value is None:
            return None
        number = self._float(value)
        if not (number.is_integer() and low <= number <= high):
            raise self.fail(column, f"{value!r} is not an integer {low}-{high}", 'write an integer or "N/A"')
        return int(number)

    def entries(self, column: str) -> list[str | None]:
        """Comma-separated per-lesion values; "N/A" entries -> None, an empty cell -> no lesions."""
        value = (self.row.get(column) or "").strip()
        if not value:
            return []
        return [None if v.strip().lower() in _MISSING else v.strip() for v in value.split(",")]

    def cspca(self) -> bool | None:
        value = self.text("case_csPCa")
        if value is None:
            return None
        if value.upper() in {"YES", "1", "TRUE"}:
            return True
        if value.upper() in {"NO", "0", "FALSE"}:
            return False
        raise self.fail("case_csPCa", f"{value!r} is not YES or NO", 'write YES, NO or "N/A"')

    def parse(self) -> PicaiCase:
        age = self.number("patient_age")
        return PicaiCase(
            patient_id=self.ident("patient_id"),
            study_id=self.ident("study_id"),
            age=int(round(age)) if age is not None else None,
            psa=self.number("psa"),
            psad=self.number("psad"),
            prostate_volume=self.number("prostate_volume"),
            lesion_pirads=tuple(self.integer("lesion_PIRADS", v, 1, 5) for v in self.entries("lesion_PIRADS")),
            lesion_gs=tuple(self.entries("lesion_GS")),
            lesion_isup=tuple(self.integer("lesion_ISUP", v, 0, 5) for v in self.entries("lesion_ISUP")),
            case_isup=self.integer("case_ISUP", self.text("case_ISUP"), 0, 5),
            cspca=self.cspca(),
            center=self.text("center"),
            mri_date=self.text("mri_date"),
            histopath_type=self.text("histopath_type"),
            columns=self.columns,
            source=self.where,
        )


def read_marksheet(path: str | os.PathLike[str], label_rule: str | None = None) -> list[PicaiCase]:
    """Read a PI-CAI marksheet (columns by name); with ``label_rule``, require the columns it reads."""
    path = find_marksheet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PicaiError(f"marksheet is not UTF-8 text (byte {exc.start})", where=str(path),
                         fix="re-save it as UTF-8 CSV") from exc
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    if label_rule is not None and label_rule not in LABEL_RULES:
        raise _unknown_rule(label_rule)
    required = list(ID_COLUMNS) + list(RULE_COLUMNS[label_rule] if label_rule else ())
    missing = [c for c in required if c not in header]
    if missing:
        raise _missing_columns_error(path, header, missing, label_rule)
    columns = frozenset(header)
    cases: list[PicaiCase] = []
    seen: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        where = f"{path}:{line}"
        case = _RowParser(row, where, columns).parse()
        if not CASE_ID_PATTERN.match(case.case_id):
            raise PicaiError(f"case id {case.case_id!r} may contain only letters, digits, '.', '_' and '-'",
                             where=where, fix="fix patient_id / study_id")
        if case.case_id in seen:
            raise PicaiError(f"case {case.case_id!r} appears twice (first at {seen[case.case_id]})",
                             where=where, fix="keep one row per patient_id/study_id")
        seen[case.case_id] = where
        cases.append(case)
    if not cases:
        raise PicaiError("marksheet has no cases", where=str(path), fix="check the file")
    return cases


# ---------------------------------------------------------------- labels and reports


def picai_label(case: PicaiCase, rule: str) -> int:
    """Binary label: ``cspca`` = case_csPCa is YES; ``pirads3``/``pirads4`` = max lesion PI-RADS >= 3/4."""
    if rule not in LABEL_RULES:
        raise _unknown_rule(rule)
    needed = [c for c in RULE_COLUMNS[rule] if case.columns and c not in case.columns]
    if needed:
        raise PicaiError(f"case {case.case_id!r}: marksheet lacks column {needed[0]!r} needed by --label-rule {rule}",
                         where=case.source or case.case_id, fix="choose another --label-rule")
    if rule == "cspca":
        if case.cspca is None:
            raise PicaiError(f"case {case.case_id!r}: case_csPCa is empty, so --label-rule cspca cannot label it",
                             where=case.source or case.case_id,
                             fix="fill in case_csPCa, remove the case, or choose --label-rule pirads3")
        return int(case.cspca)
    threshold = 3 if rule == "pirads3" else 4
    return int((case.max_pirads or 0) >= threshold)


def picai_findings(case: PicaiCase) -> Findings:
    """What a radiology report of this case can state: age, PSA, volume and each known lesion PI-RADS."""
    return Findings(
        age=case.age,
        psa=case.psa,
        prostate_volume_ml=case.prostate_volume,
        lesions=tuple(Lesion(pirads=p) for p in case.lesion_pirads if p is not None),
        field_strength_t=None,  # the marksheet does not say; leave the technique line out
    )


def _case_rng(seed: int, case: PicaiCase, stream: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{case.patient_id}\0{case.study_id}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little"), stream])


def picai_reports(cases: Sequence[PicaiCase], config: ReportConfig, seed: int = 0) -> list[str]:
    """One report per case, seeded per case; ``round(empty_fraction * n)`` of them are ``""``."""
    n_empty = math.floor(config.empty_fraction * len(cases) + 0.5)
    draws = [float(_case_rng(seed, c, 0).random()) for c in cases]
    empty = set(sorted(range(len(cases)), key=lambda i: (draws[i], cases[i].case_id))[:n_empty])
    return [
        "" if i in empty else render_report(picai_findings(c), _case_rng(seed, c, 1), varied=config.varied_phrasing)
        for i, c in enumerate(cases)
    ]


# ---------------------------------------------------------------- splits


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise PicaiError(f"split fractions {tuple(fractions)} are not three numbers >= 0 summing to 1",
                         where="split_fractions", fix="give (train, val, test), e.g. (0.6, 0.2, 0.2)")
    return values  # type: ignore[return-value]


def grouped_stratified_split(
    labels: Sequence[int], groups: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
) -> list[str]:
    """Assign each item a split so every group (patient) lies in one split and label proportions match.

    Greedy: groups in a seeded order, largest first, each to the split (with fraction > 0) that most
    reduces the squared gap between per-label counts and their targets (relative to the label's total).
    """
    fractions = _check_fractions(fractions)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    keys = list(members)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    order.sort(key=lambda g: -len(members[g]))  # stable: the seeded order decides among equal sizes
    totals = Counter(labels)
    target = [{c: f * n for c, n in totals.items()} for f in fractions]
    count = [dict.fromkeys(totals, 0) for _ in fractions]
    allowed = [s for s, f in enumerate(fractions) if f > 0]
    out = [""] * len(labels)
    for g in order:
        add = Counter(labels[i] for i in members[g])
        best = min(allowed, key=lambda s: _placement_cost(count[s], target[s], add, totals))
        for c, n in add.items():
            count[best][c] += n
        for i in members[g]:
            out[i] = SPLITS[best]
    return out


def _placement_cost(count: dict, target: dict, add: Counter, totals: Counter) -> float:
    """Change of sum(((count - target) / total) ** 2) over labels when ``add`` joins a split."""
    return sum(((count[c] + n - target[c]) ** 2 - (count[c] - target[c]) ** 2) / totals[c] ** 2 for c, n in add.items())


def _normalise_split_id(entry: Any, known: set[str]) -> str:
    name = PurePosixPath(str(entry).replace("\\", "/")).name
    for suffix in _FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    while name not in known and _ID_SUFFIX.search(name):
        name = _ID_SUFFIX.sub("", name)
    return name


def read_splits(path: str | os.PathLike[str], fold: int, case_ids: Sequence[str]) -> dict[str, str]:
    """Case id -> "train"/"val" from a picai_baseline-style ``[{"train": [...], "val": [...]}, ...]`` file.

    Entries may carry folders and file suffixes (``10000_1000000_0000.nii.gz``); cases in neither
    list of the fold are not in the result (the caller puts them in "test").
    """
    path = Path(path)
    fix = 'write a JSON list of folds, each {"train": [case ids], "val": [case ids]}'
    if not path.is_file():
        raise PicaiError("splits file not found", where=str(path), fix="check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PicaiError(f"splits file is not valid JSON ({type(exc).__name__})", where=str(path), fix=fix) from exc
    folds = [data] if isinstance(data, dict) else data
    if not isinstance(folds, list) or not all(isinstance(f, dict) and ("train" in f or "val" in f) for f in folds):
        raise PicaiError("splits file is not a list of {train, val} folds", where=str(path), fix=fix)
    if not 0 <= fold < len(folds):
        raise PicaiError(f"fold {fold} does not exist (the file has {len(folds)} fold(s))", where=str(path),
                         fix=f"choose --fold between 0 and {len(folds) - 1}")
    known = set(case_ids)
    out: dict[str, str] = {}
    unmatched: list[str] = []
    for split in ("train", "val"):
        entries = folds[fold].get(split) or []
        if not isinstance(entries, list):
            raise PicaiError(f"fold {fold}, {split!r} is not a list", where=str(path), fix=fix)
        for entry in entries:
            case_id = _normalise_split_id(entry, known)
            if case_id not in known:
                unmatched.append(str(entry))
            elif out.setdefault(case_id, split) != split:
                raise PicaiError(f"case {case_id!r} is in both 'train' and 'val' of fold {fold}", where=str(path),
                                 fix="fix the splits file")
    if unmatched and not out:
        raise PicaiError(f"none of the {len(unmatched)} ids of fold {fold} (e.g. {unmatched[0]!r}) is a marksheet case",
                         where=str(path), fix="use ids written as {patient_id}_{study_id}")
    if unmatched:
        logger.warning("%s: %d id(s) of fold %d are not in the converted cases (e.g. %s)",
                       path, len(unmatched), fold, unmatched[0])
    return out


# ---------------------------------------------------------------- images and manifest


def picai_image_paths(images_dir: Path, case: PicaiCase, modalities: Sequence[str]) -> dict[str, Path]:
    """Expected image file per modality: ``{images_dir}/{patient}/{patient}_{study}_{modality}.mha``."""
    folder = images_dir / case.patient_id
    return {m: folder / f"{case.case_id}_{m}{IMAGE_SUFFIX}" for m in modalities}


def _manifest_path(path: Path, root: Path) -> str:
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    return str(resolved)


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(modalities)
    bad = [m for m in chosen if m not in MODALITIES]
    if bad or "t2w" not in chosen or len(set(chosen)) != len(chosen):
        raise PicaiError(f"modalities {list(chosen)} are not distinct names from {', '.join(MODALITIES)} including t2w",
                         where="--modalities", fix="e.g. --modalities t2w,adc,hbv")
    return tuple(m for m in MODALITIES if m in chosen)


def picai_to_manifest(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    label_rule: str = "pirads3",
    modalities: Sequence[str] = ("t2w", "adc", "hbv"),
    splits_json: str | os.PathLike[str] | None = None,
    fold: int = 0,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    reports: ReportConfig | None = None,
    on_missing: str = "error",
) -> PicaiConversion:
    """Convert a PI-CAI dataset into a manifest at ``out`` (JSONL, or CSV by suffix); deterministic in ``seed``.

    Args:
        images_dir: folder of ``{patient_id}/{patient_id}_{study_id}_{modality}.mha``.
        labels_dir: picai_labels folder, its ``clinical_information`` folder, or the marksheet csv.
        label_rule: ``pirads3`` / ``pirads4`` (max lesion PI-RADS >= 3 / 4) or ``cspca`` (case_csPCa).
        splits_json: picai_baseline folds; fold ``fold``'s train/val, every other case "test". Without
            it, a seeded split by ``split_fractions`` stratified by label with each patient in one split.
        on_missing: "error" raises ``PicaiError`` for a case whose images are missing; "skip" leaves it
            out and lists it in the result's ``skipped``.
    """
    chosen, fractions = _check_options(label_rule, on_missing, seed, modalities, split_fractions)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise PicaiError("images folder not found", where=str(images_dir),
                         fix="pass the folder that holds one subfolder per patient_id")
    out = Path(out)
    root = out.parent.resolve()  # image paths inside the manifest's folder are written relative to it
    cases, images, skipped = _cases_with_images(read_marksheet(labels_dir, label_rule), images_dir, chosen, on_missing)
    labels = [picai_label(c, label_rule) for c in cases]
    if splits_json is not None:
        assigned = read_splits(splits_json, fold, [c.case_id for c in cases])
        splits = [assigned.get(c.case_id, "test") for c in cases]
    else:
        splits = grouped_stratified_split(labels, [c.patient_id for c in cases], fractions, seed)
    texts = picai_reports(cases, reports if reports is not None else ReportConfig(), seed)
    records = [_record(case, paths, label, split, text, label_rule, root=root)
               for case, paths, label, split, text in zip(cases, images, labels, splits, texts)]
    write_manifest(records, out)
    return PicaiConversion(
        manifest=out,
        n_cases=len(records),
        skipped=tuple(skipped),
        labels=dict(sorted(Counter(labels).items())),
        splits={s: n for s in SPLITS if (n := splits.count(s))},
    )


def _check_options(label_rule: str, on_missing: str, seed: int, modalities: Sequence[str],
                   split_fractions: Sequence[float]) -> tuple[tuple[str, ...], tuple[float, float, float]]:
    """Refuse unknown options before any file is read; returns (modalities in manifest order, split fractions)."""
    if label_rule not in LABEL_RULES:
        raise _unknown_rule(label_rule)
    if on_missing not in ("error", "skip"):
        raise PicaiError(f"on_missing must be 'error' or 'skip', not {on_missing!r}", where="on_missing",
                         fix="pass --skip-missing to leave out cases without images")
    if seed < 0:
        raise PicaiError(f"seed {seed} is negative", where="--seed", fix="use a seed >= 0")
    return _check_modalities(modalities), _check_fractions(split_fractions)


def _cases_with_images(marksheet: Sequence[PicaiCase], images_dir: Path, modalities: Sequence[str],
                       on_missing: str) -> tuple[list[PicaiCase], list[dict[str, Path]], list[str]]:
    """The marksheet cases whose images are all there, their image paths, and the ids of those skipped.

    A case with a missing image is a ``PicaiError`` (``on_missing="error"``) or skipped (``"skip"``).
    """
    cases: list[PicaiCase] = []
    images: list[dict[str, Path]] = []
    skipped: list[str] = []
    for case in marksheet:
        paths = picai_image_paths(images_dir, case, modalities)
        missing = [p for p in paths.values() if not p.is_file()]
        if missing and on_missing == "skip":
            skipped.append(case.case_id)
            continue
        if missing:
            what = "image folder" if not missing[0].parent.is_dir() else "image"
            raise PicaiError(
                f"case patient_id={case.patient_id} study_id={case.study_id}: {what} "
                f"{missing[0].parent if what == 'image folder' else missing[0]} not found",
                where=case.source, fix="remove it from the marksheet or pass --skip-missing",
            )
        cases.append(case)
        images.append(paths)
    if skipped:
        logger.warning("skipped %d case(s) without images: %s", len(skipped), ", ".join(skipped))
    if not cases:
        raise PicaiError("no marksheet case has its images", where=str(images_dir),
                         fix="check that images_dir holds {patient_id}/{patient_id}_{study_id}_t2w.mha")
    return cases, images, skipped


def _record(case: PicaiCase, paths: dict[str, Path], label: int, split: str, report: str, label_rule: str, *,
            root: Path) -> CaseRecord:
    """The manifest record of one case, its image paths as ``_manifest_path`` writes them."""
    spacing = read_header(paths["t2w"]).spacing[:3]
    return CaseRecord(
        case_id=case.case_id,
        image={m: _manifest_path(p, root) for m, p in paths.items()},
        label=label,
        pirads=case.max_pirads,
        report=report,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        split=split,
        meta=_meta(case, label_rule),
    )


def _meta(case: PicaiCase, label_rule: str) -> dict[str, Any]:
    return {
        "source": "picai",
        "label_rule": label_rule,
        "patient_id": case.patient_id,
        "study_id": case.study_id,
        "center": case.center,
        "mri_date": case.mri_date,
        "psad": case.psad,
        "case_isup": case.case_isup,
        "cspca": case.cspca,
        "histopath_type": case.histopath_type,
        "lesion_pirads": list(case.lesion_pirads),
        "lesion_gs": list(case.lesion_gs),
        "lesion_isup": list(case.lesion_isup),
    }
