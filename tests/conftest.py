"""Shared fixtures: tiny volumes and manifests written to a temporary folder."""

from __future__ import annotations

from synthaug.threads import choose_wait_policy  # noqa: E402 - imports neither torch nor numpy

# As the synthaug command does (synthaug/cli.py), before torch starts OpenMP: on a busy machine idle threads
# sleep instead of spin-waiting, so the suite does not slow itself (and its neighbours) down several-fold.
choose_wait_policy()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def save_nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 3.0)) -> Path:
    """Write ``array`` as NIfTI with a diagonal RAS affine of ``spacing``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_dataset(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Six valid cases (8x8x4 volumes) over train/val/test and both labels; returns (manifest, rows)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        image = save_nifti(tmp_path / "images" / f"case_{i}.nii.gz", rng.random((8, 8, 4)) * 100)
        rows.append({
            "case_id": f"case_{i}",
            "image": str(image.relative_to(tmp_path)),
            "label": i % 2,
            "pirads": 4 if i % 2 else 2,
            "report": "" if i == 0 else f"Report {i}. PI-RADS {4 if i % 2 else 2}.",
            "spacing": [1.5, 1.5, 3.0],
            "split": ["train", "train", "val", "val", "test", "test"][i],
            "meta": {"n": i},
        })
    return write_jsonl(tmp_path / "manifest.jsonl", rows), rows


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """A 16-case phantom at 32x32x16 (the `tests.helpers.SMALL` geometry); returns its manifest."""
    from synthaug.data.phantom import write_phantom_dataset
    from tests.helpers import small_config

    cfg = small_config()
    return write_phantom_dataset(tmp_path_factory.mktemp("small_phantom") / "ph", cfg.data, cfg.phantom)


@pytest.fixture(scope="session")
def small_bundle(small_phantom, tmp_path_factory) -> Path:
    """A generator bundle trained for a few steps on `small_phantom` (seconds); returns its folder."""
    from synthaug.ldm.train import train_generator
    from tests.helpers import small_config

    out = tmp_path_factory.mktemp("small_bundle") / "bundle"
    train_generator(small_phantom, out, small_config("train.steps=10"))
    return out


@pytest.fixture(scope="session")
def small_cache(small_bundle, tmp_path_factory) -> Path:
    """12 volumes (6 per class) pregenerated from `small_bundle` with 2 DDIM steps in fp32 (the same on every
    CPU, whether or not it has native bf16); returns the cache folder."""
    from synthaug.generate import CCELLAGenerator
    from synthaug.mix.cache import SyntheticCache

    generator = CCELLAGenerator.from_bundle(small_bundle, sampler="ddim", steps=2, precision="fp32")
    folder = tmp_path_factory.mktemp("small_cache") / "cache"
    SyntheticCache.create(folder, generator).pregenerate(generator, n=12, batch_size=6)
    return folder
