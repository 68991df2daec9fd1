"""Dataset check: validate a manifest and every image it names, and summarise what is there.

Backs ``synthaug data check``; collects every problem instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synthaug.data.io import read_header, read_volume
from synthaug.data.manifest import SPLITS, Manifest, Problem, read_manifest, validate_manifest
from synthaug.errors import ImageError, ManifestError

SPACING_TOLERANCE = 0.01  # relative difference between manifest spacing and image header


@dataclass
class DatasetSummary:
    """What ``check_dataset`` found: counts, report coverage, geometry seen, and every problem."""

    manifest: Manifest
    cases: Counter = field(default_factory=Counter)  # (split, label) -> count
    empty_reports: Counter = field(default_factory=Counter)  # split -> cases with no report
    pirads: Counter = field(default_factory=Counter)  # PI-RADS (or None) -> count
    shapes: Counter = field(default_factory=Counter)  # (modality, shape) -> count
    spacings: Counter = field(default_factory=Counter)  # (modality, spacing rounded) -> count
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def split_total(self, split: str) -> int:
        return sum(n for (s, _), n in self.cases.items() if s == split)


def _image_problem(manifest: Manifest, case_id: str, field_name: str, exc: ImageError) -> Problem:
    return Problem(
        where=str(manifest.path),
        what=f"case {case_id!r}, field {field_name!r}: {exc.what} ({exc.where})",
        fix=exc.fix or "",
        case_id=case_id,
        field=field_name,
    )


def _dataset_warnings(summary: DatasetSummary) -> list[str]:
    out = []
    for split in SPLITS:
        labels = {label for (s, label) in summary.cases if s == split}
        if not labels:
            out.append(f"no cases in split {split!r}")
        elif len(labels) == 1:
            out.append(f"split {split!r} has only label {labels.pop()}: metrics like AUROC are undefined there")
    for modality in sorted({m for (m, _) in summary.shapes}):  # DWI on a coarser grid than T2W is expected
        if len({shape for (m, shape) in summary.shapes if m == modality}) > 1:
            out.append(f"{modality} images differ in shape: preprocessing resamples and crops them to the "
                       "configured shape")
    return out


def check_dataset(
    path: str | os.PathLike[str],
    read_images: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetSummary:
    """Check a manifest and (if ``read_images``) load every image; raise only if the file is unreadable."""
    manifest = read_manifest(path)
    summary = DatasetSummary(manifest=manifest)
    summary.problems.extend(validate_manifest(manifest, check_files=True))
    broken = {(p.case_id, p.field) for p in summary.problems}
    for i, record in enumerate(manifest, start=1):
        summary.cases[(record.split, record.label)] += 1
        summary.pirads[record.pirads] += 1
        if not record.has_report:
            summary.empty_reports[record.split] += 1
        for key, rel in record.image_paths.items():
            modality = "t2w" if key == "image" else key
            field_name = "image" if isinstance(record.image, str) else f"image.{modality}"
            if (record.case_id, field_name) in broken:
                continue
            try:
                file = manifest.resolve(rel)
                if read_images:
                    volume = read_volume(file)
                    shape, spacing = volume.array.shape, volume.spacing
                else:
                    header = read_header(file)
                    shape, spacing = header.shape, header.spacing
            except ImageError as exc:
                summary.problems.append(_image_problem(manifest, record.case_id, field_name, exc))
                continue
            except ManifestError:
                continue  # already reported by validate_manifest
            summary.shapes[(modality, tuple(shape))] += 1
            summary.spacings[(modality, tuple(round(s, 3) for s in spacing))] += 1
            if modality == "t2w" and record.spacing is not None and not np.allclose(
                record.spacing, spacing[:3], rtol=SPACING_TOLERANCE
            ):
                summary.problems.append(Problem(
                    where=str(manifest.path),
                    what=f"case {record.case_id!r}, field 'spacing': manifest says {list(record.spacing)}, "
                    f"image header says {[round(s, 4) for s in spacing[:3]]}",
                    fix="fix the manifest's spacing or set it to null to use the header",
                    case_id=record.case_id,
                    field="spacing",
                ))
        if progress is not None:
            progress(i, len(manifest))
    summary.warnings.extend(_dataset_warnings(summary))
    return summary

