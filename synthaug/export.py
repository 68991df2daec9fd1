"""``synthaug generate``'s output: generated volumes as NIfTI files, their provenance and a montage, in a
folder that appears whole or not at all.

    generator = CCELLAGenerator.from_bundle("bundle")
    export_volumes(generator, [0, 1, 0, 1], "out", seeds=range(4))
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from synthaug.data.io import make_temp_dir
from synthaug.errors import InputError

if TYPE_CHECKING:
    import torch

    from synthaug.generate import CCELLAGenerator, Generated

MONTAGE_VOLUMES = 8  # the montage shows the first few volumes


def export_volumes(generator: CCELLAGenerator, labels: Sequence[int], out: str | os.PathLike[str], *,
                   seeds: Sequence[int], reports: Sequence[str] | None = None, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   variations: tuple[torch.Tensor, Sequence[str], float] | None = None) -> list[dict]:
    """Generate one volume per label (volume i from ``seeds[i]``) and write them to ``out``:
    ``synthetic_00000_label0.nii.gz`` ... (T2W; with several sequences ``..._adc.nii.gz`` and ``..._hbv.nii.gz``
    beside it), ``provenance.jsonl`` (one line per volume) and ``montage.png``.

    An existing non-empty ``out`` is refused unless ``overwrite``; the folder is written beside it and
    renamed into place, so an interrupted run leaves the old folder (or none) behind. Returns the volumes'
    provenance records. ``variations`` = (volumes (N, C, X, Y, Z) in model space, their case ids, strength):
    variations of those volumes (``CCELLAGenerator.vary``) instead, each record naming its ``source_case``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder exists and is not empty", where=str(out),
                         fix="choose another --out or pass --overwrite")
    if variations is None:
        result = generator.generate(list(labels), reports=reports, seeds=seeds, progress=progress)
    else:
        volumes, cases, strength = variations
        result = generator.vary(volumes, list(labels), reports=reports, seeds=seeds, strength=strength,
                                progress=progress)
        for record, case in zip(result.provenance, cases):
            record["source_case"] = case
    tmp = make_temp_dir(out)
    try:
        _write_folder(result, tmp, list(generator.bundle.config.data.modalities))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return result.provenance


def _write_folder(result: Generated, folder: Path, modalities: list[str]) -> None:
    from synthaug.generate import sequence_files, write_sequences
    from synthaug.metrics.montage import save_volumes

    lines = []
    for i, (volume, record) in enumerate(zip(result.volumes, result.provenance)):
        names = sequence_files(f"synthetic_{i:05d}_label{record['label']}", ".nii.gz", modalities)
        write_sequences(volume, result.affine, {key: folder / name for key, name in names.items()})
        files = {"files": names} if len(names) > 1 else {}  # by item key: image (T2W), adc, hbv
        lines.append(json.dumps({"file": names["image"], **files, **record}, sort_keys=True) + "\n")
    (folder / "provenance.jsonl").write_text("".join(lines), encoding="utf-8")
    shown = result.volumes[:MONTAGE_VOLUMES]
    save_volumes([v[0].numpy() for v in shown], [f"#{i} label {r['label']} p={r['predicted_prob']:.2f}"
                                                 for i, r in enumerate(result.provenance[:len(shown)])],
                 folder / "montage.png")
