"""Volume I/O: NIfTI and MHA read the same way; bad images get one clear ImageError."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import save_nifti

from synthaug.data.io import atomic_path, read_header, read_volume, write_nifti
from synthaug.errors import ImageError


def test_nifti_round_trip(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([0.5, 0.6, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 2]
    path = write_nifti(array, affine, tmp_path / "v.nii.gz")
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((0.5, 0.6, 3.0))
    header = read_header(path)
    assert header.shape == (4, 5, 6) and header.spacing == pytest.approx((0.5, 0.6, 3.0))


def test_nifti_writes_are_byte_deterministic(tmp_path):
    array = np.random.default_rng(0).random((6, 6, 4)).astype(np.float32)
    a = write_nifti(array, np.eye(4), tmp_path / "a" / "v.nii.gz").read_bytes()
    b = write_nifti(array, np.eye(4), tmp_path / "b" / "v.nii.gz").read_bytes()
    assert a == b


def test_mha_matches_nifti_orientation(tmp_path):
    """The same world geometry read from MHA (LPS) and NIfTI (RAS) gives the same array and affine."""
    array = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)  # (X, Y, Z)
    image = sitk.GetImageFromArray(array.T.copy())  # SimpleITK wants (Z, Y, X)
    image.SetSpacing((0.5, 0.6, 3.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    volume = read_volume(tmp_path / "v.mha")
    np.testing.assert_array_equal(volume.array, array)
    expected = np.diag([-0.5, -0.6, 3.0, 1.0])  # identity LPS direction = x, y flipped in RAS
    expected[:3, 3] = [-1.0, -2.0, 3.0]
    np.testing.assert_allclose(volume.affine, expected)
    np.testing.assert_allclose(read_header(tmp_path / "v.mha").affine, expected)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="image file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_nifti(tmp_path):
    path = save_nifti(tmp_path / "v.nii.gz", np.random.default_rng(0).random((16, 16, 8)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match=r"v.nii.gz: cannot read image .*corrupt or truncated"):
        read_volume(path)


def test_corrupt_nifti_that_is_not_gzip(tmp_path):
    path = tmp_path / "v.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match="v.nii.gz"):
        read_volume(path)


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "v.nii.gz"
    path.write_bytes(gzip.compress(b"\0" * 400))
    with pytest.raises(ImageError, match="v.nii.gz"):
        read_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    array = np.ones((4, 4, 4))
    array[1, 2, 3] = bad
    path = save_nifti(tmp_path / "v.nii.gz", array)
    with pytest.raises(ImageError, match=r"1 voxel\(s\) are NaN or Inf"):
        read_volume(path)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 4, 2)])
def test_not_a_3d_volume(tmp_path, shape):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageError, match="expected a 3D volume"):
        read_volume(path)


def test_trailing_singleton_4d_is_a_volume(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), dtype=np.float32), np.eye(4)), str(path))
    assert read_volume(path).array.shape == (4, 4, 4)


def test_unsupported_suffix(tmp_path):
    (tmp_path / "v.png").write_bytes(b"x")
    with pytest.raises(ImageError, match="unsupported image format"):
        read_volume(tmp_path / "v.png")


def test_atomic_path_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
