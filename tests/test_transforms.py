"""Preprocessing: manifest items -> (C, X, Y, Z) float32 tensors in [0, 1], RAS, on the configured grid."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from synthaug.config import DataConfig, NormalisationConfig
from synthaug.data.io import write_nifti
from synthaug.data.manifest import CaseRecord, load_manifest, write_manifest
from synthaug.data.transforms import preprocessing_transforms
from synthaug.errors import ConfigError, ImageError

SHAPE, SPACING = (16, 16, 8), (2.0, 2.0, 3.0)
MARKER_WORLD = np.array([8.0, 6.0, 6.0])  # mm right, anterior, superior of the T2W field's centre


def config(**kw) -> DataConfig:
    return DataConfig(image_shape=SHAPE, spacing=SPACING, **kw)


def centred_affine(spacing, shape, flip=(1, 1, 1), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel -> RAS affine whose field of view is centred on ``centre``; flip -1 = axis runs L/P/I."""
    affine = np.diag([*(f * s for f, s in zip(flip, spacing)), 1.0])
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def add_marker(array, affine, world, value, half=1) -> None:
    """Paint a (2*half+1)^3 block of ``value`` at the voxel nearest to ``world`` (RAS mm)."""
    i, j, k = np.rint(np.linalg.solve(affine, [*world, 1.0])[:3]).astype(int)
    array[i - half:i + half + 1, j - half:j + half + 1, k - half:k + half + 1] = value


def write_mha(path, array, affine) -> None:
    """Write ``(X, Y, Z)`` ``array`` as MHA with an axis-aligned RAS ``affine`` (stored in ITK's LPS frame)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in np.abs(np.diag(lps)[:3])])
    image.SetDirection([float(v) for v in np.diag(np.sign(np.diag(lps)[:3])).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    sitk.WriteImage(image, str(path))


def write_volume(path, array, affine) -> str:
    if str(path).endswith(".mha"):
        write_mha(path, array, affine)
    else:
        write_nifti(array, affine, path)
    return str(path)


def marker_voxel(channel, threshold=0.8) -> np.ndarray:
    """Intensity-weighted centre of the voxels above ``threshold``."""
    x = np.asarray(channel)
    idx = np.argwhere(x > threshold)
    return np.average(idx, axis=0, weights=x[x > threshold])


def world_to_voxel(out_image, world) -> np.ndarray:
    return np.linalg.solve(np.asarray(out_image.affine, dtype=float), [*world, 1.0])[:3]


def t2w_lps(tmp_path, suffix=".nii.gz") -> str:
    """T2W-like volume stored L->R / P->A (LPS-like), 1.25 x 1.25 x 4 mm, bright marker at MARKER_WORLD."""
    shape = (40, 40, 10)
    affine = centred_affine((1.25, 1.25, 4.0), shape, flip=(-1, -1, 1))
    array = np.random.default_rng(0).uniform(10, 20, shape).astype(np.float32)
    add_marker(array, affine, MARKER_WORLD, 200.0)
    return write_volume(tmp_path / f"t2w{suffix}", array, affine)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_output_grid_is_ras_at_target_spacing_and_shape(tmp_path, suffix):
    out = preprocessing_transforms(config())({"image": t2w_lps(tmp_path, suffix), "case_id": "c1"})
    image = out["image"]
    assert tuple(image.shape) == (1, *SHAPE)
    assert str(image.dtype) == "torch.float32"
    np.testing.assert_allclose(np.asarray(image.pixdim), SPACING, atol=1e-5)
    assert nib.aff2axcodes(np.asarray(image.affine)) == ("R", "A", "S")
    found = marker_voxel(image[0])
    # The marker sits right/anterior/superior of the centre, so in RAS it lies past the middle on every axis...
    assert all(found > (np.asarray(SHAPE) - 1) / 2)
    # ...exactly where the output affine says that world position is.
    np.testing.assert_allclose(found, world_to_voxel(image, MARKER_WORLD), atol=0.75)


def test_mha_and_nifti_of_the_same_volume_give_the_same_tensor(tmp_path):
    preprocess = preprocessing_transforms(config())
    a = preprocess({"image": t2w_lps(tmp_path, ".nii.gz")})["image"]
    b = preprocess({"image": t2w_lps(tmp_path, ".mha")})["image"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-5)


def on_target_grid(tmp_path, name, array) -> str:
    """A file already in RAS on the target grid, so preprocessing changes only intensities."""
    return write_volume(tmp_path / name, array.astype(np.float32), centred_affine(SPACING, SHAPE))


@pytest.mark.parametrize("percentiles", [(0.0, 99.5), (1.0, 99.0)])
def test_t2w_percentile_window_maps_to_unit_range_and_clips(tmp_path, percentiles):
    raw = np.random.default_rng(1).gamma(2.0, 50.0, SHAPE)
    data = config(normalisation=NormalisationConfig(t2w_percentiles=percentiles))
    out = np.asarray(preprocessing_transforms(data)({"image": on_target_grid(tmp_path, "t2.nii.gz", raw)})["image"][0])
    low, high = np.percentile(raw.astype(np.float32), percentiles)
    np.testing.assert_allclose(out, np.clip((raw - low) / (high - low), 0, 1), atol=1e-4)
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out[raw >= high] == 1.0).all() and (out[raw < high] < 1.0).all()  # the upper percentile -> 1, above clipped
    assert (out == 1.0).mean() == pytest.approx(1 - percentiles[1] / 100, abs=2 / out.size)


def test_adc_uses_the_fixed_window_not_percentiles(tmp_path):
    t2w = np.random.default_rng(2).uniform(0, 100, SHAPE)
    adc = np.full(SHAPE, 1500.0)  # percentile scaling would spread or zero this; the window maps it to 0.5
    adc[:4] = -300.0
    adc[-4:] = 4000.0
    item = {"image": on_target_grid(tmp_path, "t2.nii.gz", t2w), "adc": on_target_grid(tmp_path, "adc.mha", adc)}
    out = np.asarray(preprocessing_transforms(config(modalities=["t2w", "adc"]))(item)["image"])
    assert out.shape == (2, *SHAPE)
    np.testing.assert_allclose(out[1], np.clip(adc / 3000.0, 0, 1), atol=1e-5)


def test_adc_and_hbv_are_resampled_onto_the_t2w_grid(tmp_path):
    """ADC/HBV with their own spacing, field of view and orientation end up voxel-aligned with T2W."""
    adc_shape, adc_affine = (30, 28, 12), centred_affine((2.5, 2.5, 5.0), (30, 28, 12), (-1, -1, 1), (12, -9, 5))
    adc = np.full(adc_shape, 1500.0)
    add_marker(adc, adc_affine, MARKER_WORLD, 2900.0)
    hbv_shape, hbv_affine = (36, 40, 14), centred_affine((1.5, 1.5, 3.5), (36, 40, 14), (1, 1, 1), (-10, 7, -4))
    hbv = np.random.default_rng(3).uniform(0, 5, hbv_shape)
    add_marker(hbv, hbv_affine, MARKER_WORLD, 100.0, half=2)
    item = {
        "image": t2w_lps(tmp_path),
        "adc": write_volume(tmp_path / "adc.mha", adc.astype(np.float32), adc_affine),
        "hbv": write_volume(tmp_path / "hbv.nii.gz", hbv.astype(np.float32), hbv_affine),
    }
    out = preprocessing_transforms(config(modalities=["t2w", "hbv", "adc"]))(item)["image"]
    assert tuple(out.shape) == (3, *SHAPE)
    expected = world_to_voxel(out, MARKER_WORLD)
    for channel in out:  # channels follow data.modalities: t2w, hbv, adc
        np.testing.assert_allclose(marker_voxel(channel), expected, atol=0.75)
    assert np.median(np.asarray(out[2])) == pytest.approx(0.5, abs=1e-3)  # ADC background 1500 -> 0.5


def off_centre_object(tmp_path) -> tuple[str, np.ndarray, int]:
    """A 48 x 48 x 20 noisy field (target spacing) with a bright 12 x 12 x 6 block in a corner."""
    shape = (48, 48, 20)
    affine = centred_affine(SPACING, shape)
    array = np.random.default_rng(4).normal(5.0, 1.0, shape).clip(0)
    array[2:14, 32:44, 1:7] = 100.0
    centre_world = affine @ [7.5, 37.5, 3.5, 1.0]
    return write_volume(tmp_path / "obj.nii.gz", array.astype(np.float32), affine), centre_world[:3], 12 * 12 * 6


def test_center_crop_takes_the_middle_of_the_field(tmp_path):
    path, centre, _ = off_centre_object(tmp_path)
    out = preprocessing_transforms(config(crop="center"))({"image": path})["image"]
    assert tuple(out.shape) == (1, *SHAPE)
    np.testing.assert_allclose(world_to_voxel(out, [0.0, 0.0, 0.0]), (np.asarray(SHAPE) - 1) / 2, atol=0.5)
    assert world_to_voxel(out, centre)[0] < 0  # the corner object is cut away


def test_foreground_crop_keeps_an_off_centre_object_whole(tmp_path):
    path, centre, n_voxels = off_centre_object(tmp_path)
    out = np.asarray(preprocessing_transforms(config(crop="foreground"))({"image": path})["image"][0])
    assert out.shape == SHAPE
    inside = out > 0.5
    assert inside.sum() == n_voxels  # every voxel of the object is in the crop...
    assert not (inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any())  # ...not cut
    assert (out == 0).sum() <= 2  # around it: real (noisy) background, not zero padding


def test_other_keys_pass_through_and_only_image_is_added(tmp_path):
    t2w = on_target_grid(tmp_path, "t2.nii.gz", np.random.default_rng(5).uniform(0, 1, SHAPE))
    adc = on_target_grid(tmp_path, "adc.nii.gz", np.full(SHAPE, 1000.0))
    record = CaseRecord(case_id="c1", image={"t2w": "t2.nii.gz", "adc": "adc.nii.gz"}, label=1, pirads=4,
                        report="PI-RADS 4 lesion.", spacing=(2.0, 2.0, 3.0), split="val", meta={"site": "a"})
    manifest = load_manifest(write_manifest([record], tmp_path / "manifest.jsonl"))
    item = manifest.items()[0]
    assert item["image"] == t2w and item["adc"] == adc
    out = preprocessing_transforms(config(modalities=["t2w", "adc"]))(dict(item))
    assert set(out) == set(item) - {"adc"}
    for key in set(item) - {"image", "adc"}:  # label, case_id, report, pirads, split, spacing
        assert out[key] == item[key]


def test_concat_false_keeps_one_tensor_per_modality(tmp_path):
    item = {"image": on_target_grid(tmp_path, "t2.nii.gz", np.random.default_rng(6).uniform(0, 1, SHAPE)),
            "hbv": on_target_grid(tmp_path, "hbv.nii.gz", np.random.default_rng(7).uniform(0, 1, SHAPE))}
    out = preprocessing_transforms(config(modalities=["t2w", "hbv"]), concat=False)(item)
    assert tuple(out["image"].shape) == tuple(out["hbv"].shape) == (1, *SHAPE)
    assert str(out["hbv"].dtype) == "torch.float32" and float(out["hbv"].max()) == 1.0


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_non_finite_volume_is_an_image_error_naming_case_and_file(tmp_path, suffix):
    raw = np.ones(SHAPE, dtype=np.float32)
    raw[3, 4, 5] = np.nan
    raw[1, 1, 1] = np.inf
    path = write_volume(tmp_path / f"bad{suffix}", raw, centred_affine(SPACING, SHAPE))
    with pytest.raises(ImageError, match=r"case 'c7': 2 voxel\(s\) are NaN or Inf") as info:
        preprocessing_transforms(config())({"image": path, "case_id": "c7"})
    assert path in str(info.value)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        preprocessing_transforms(config())({"image": str(tmp_path / "nope.nii.gz"), "case_id": "c8"})


def test_bad_keys_are_refused():
    with pytest.raises(ConfigError):
        preprocessing_transforms(config(), keys=["adc"])


def test_pipeline_pickles_for_dataloader_workers():
    pickle.loads(pickle.dumps(preprocessing_transforms(config(crop="foreground", modalities=["t2w", "adc"]))))


def test_field_of_view_normalisation_takes_the_percentiles_before_the_crop(tmp_path):
    """region "field_of_view": the whole volume's window, then the centred box; "image": the box's own window."""
    big = (2 * SHAPE[0], 2 * SHAPE[1], 2 * SHAPE[2])
    raw = np.random.default_rng(4).gamma(2.0, 50.0, big).astype(np.float32)
    box = tuple(slice(n // 4, n // 4 + s) for n, s in zip(big, SHAPE))
    raw[box] *= 0.5  # a darker centre: its own percentiles differ from the whole volume's
    item = {"image": write_volume(tmp_path / "t2.nii.gz", raw, centred_affine(SPACING, big))}
    low, high = np.percentile(raw, (0.0, 99.5))
    whole = np.clip((raw - low) / (high - low), 0, 1)[box]
    fov = config(normalisation=NormalisationConfig(region="field_of_view"))
    np.testing.assert_allclose(np.asarray(preprocessing_transforms(fov)(dict(item))["image"][0]), whole, atol=1e-4)
    own = np.asarray(preprocessing_transforms(config())(dict(item))["image"][0])
    assert own.max() == 1.0 and whole.max() < 0.8  # the default rescales the darker box to fill [0, 1]
