"""Read and write 3D volumes (NIfTI, MHA/MHD, NRRD) and write any file atomically.

Arrays are ``(X, Y, Z)`` in the voxel order of the file with a RAS+ world affine (nibabel's and
MONAI's convention), so a volume read here matches what MONAI's ``LoadImaged`` yields.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug.errors import ImageError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
# ITK's world frame is LPS+; flipping x and y turns it into RAS+.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VolumeHeader:
    """Shape and geometry of a volume, read without loading its voxels."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]  # mm per voxel along each array axis
    affine: np.ndarray  # (4, 4) voxel -> RAS+ world (mm)


@dataclass(frozen=True)
class Volume:
    """A finite 3D volume: ``array`` is ``(X, Y, Z)`` float32, ``affine`` maps voxels to RAS+ mm."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def image_format(path: str | os.PathLike[str]) -> str:
    """Return ``"nifti"`` or ``"itk"`` from the file name, or raise ``ImageError``."""
    name = os.fspath(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    raise ImageError(
        "unsupported image format",
        where=os.fspath(path),
        fix=f"use one of {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)}",
    )


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ImageError("image file not found", where=str(path), fix="check the path in the manifest")


def _itk_affine(image) -> np.ndarray:  # SimpleITK image or reader
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    lps = np.eye(4)
    lps[:3, :3] = (direction @ np.diag(image.GetSpacing()))[:3, :3] if dim >= 3 else np.eye(3)
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=float)[:3] if dim >= 3 else 0.0
    return _LPS_TO_RAS @ lps


def read_header(path: str | os.PathLike[str]) -> VolumeHeader:
    """Read shape, spacing and affine of an image file without loading the voxels."""
    path = Path(path)
    _require_file(path)
    fmt = image_format(path)
    try:
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            spacing = tuple(float(z) for z in img.header.get_zooms()[: len(shape)])
            affine = np.asarray(img.affine, dtype=float)
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(int(s) for s in reader.GetSize())
            spacing = tuple(float(s) for s in reader.GetSpacing())
            affine = _itk_affine(reader)
    except ImageError:
        raise
    except Exception as exc:  # any reader failure means the file is not a readable image
        raise ImageError(
            f"cannot read image header ({type(exc).__name__}: {exc})",
            where=str(path),
            fix="the file is corrupt or not an image; re-export it",
        ) from exc
    return VolumeHeader(shape=shape, spacing=spacing, affine=affine)


def _load_array(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "nifti":
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=float)
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel",
            where=str(path),
            fix="store one modality per file",
        )
    # SimpleITK arrays are (Z, Y, X); transpose to the file's (X, Y, Z) voxel order.
    array = sitk.GetArrayFromImage(img).astype(np.float32).T
    return np.ascontiguousarray(array), _itk_affine(img)


def check_volume_array(array: np.ndarray, where: str) -> np.ndarray:
    """Return ``array`` as a 3D volume or raise ``ImageError`` (2D, 4D, empty axis, NaN/Inf)."""
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageError(
            f"expected a 3D volume, got a {array.ndim}D image of shape {tuple(array.shape)}",
            where=where,
            fix="give one 3D volume per file (split 4D series, stack 2D slices)",
        )
    if min(array.shape) < 2:
        raise ImageError(
            f"expected a 3D volume, got shape {tuple(array.shape)} (a 2D image)",
            where=where,
            fix="give a volume with at least 2 voxels along every axis",
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise ImageError(
            f"{bad} voxel(s) are NaN or Inf",
            where=where,
            fix="repair or exclude this image (e.g. replace non-finite voxels before export)",
        )
    return array


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Load a 3D volume as float32 ``(X, Y, Z)`` with its RAS+ affine; raise ``ImageError`` if bad."""
    path = Path(path)
    _require_file(path)
    fmt = image_format(path)
    try:
        array, affine = _load_array(path, fmt)
    except ImageError:
        raise
    except Exception as exc:  # truncated gzip, bad header, ...: all mean an unreadable file
        raise ImageError(
            f"cannot read image ({type(exc).__name__}: {exc})",
            where=str(path),
            fix="the file is corrupt or truncated; re-export or re-download it",
        ) from exc
    return Volume(array=check_volume_array(array, str(path)), affine=affine)


def _umask() -> int:
    """The process umask, read without changing it where the system tells (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass  # not Linux: fall back to the set-and-restore below
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(tensors: dict, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors with the permissions ``open()`` gives (safetensors itself writes 0600)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())
    return path


def make_temp_dir(beside: Path) -> Path:
    """A new empty folder next to ``beside`` (same file system, so a rename onto it is atomic)."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    return tmp


TEMPORARY_MARK = ".tmp"  # in the suffix of atomic_path's temporaries: ".NAME.XXXXXXXX.tmp.SUFFIX"


def is_atomic_temporary(name: str) -> bool:
    """Whether a file name is one of ``atomic_path``'s temporaries (a write in flight, or left by a kill)."""
    return name.startswith(".") and TEMPORARY_MARK in name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the suffix (``.nii.gz``) so writers that choose a format by name work.
    Readers never see a half-written file, even if the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TEMPORARY_MARK}{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def centred_affine(shape: tuple[int, ...] | list[int], spacing: tuple[float, ...] | list[float]) -> np.ndarray:
    """RAS+ affine with ``spacing`` (mm) on the diagonal and a ``shape`` volume centred on the origin."""
    spacing = np.asarray(spacing, float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * spacing
    return affine


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write ``(X, Y, Z)`` ``array`` with ``affine`` as NIfTI, atomically; return the path."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a readable safetensors file (only its header is read); a clear ``InputError`` otherwise."""
    from safetensors import safe_open

    from synthaug.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError("weights file not found", where=str(path), fix="check the path")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" or head[:1] == b"\x80":
        raise InputError("is a pickle/torch.save file, not safetensors", where=str(path),
                         fix="convert it with safetensors.torch.save_file (synthaug never loads pickles)")
    try:
        with safe_open(str(path), "pt"):
            pass  # the header parses: names, shapes and offsets are consistent with the file's size
    except Exception as exc:  # safetensors raises its own error types for bad headers and short files
        raise InputError(f"is not a readable safetensors file ({exc})", where=str(path),
                         fix="the file is truncated or corrupt; write it again") from exc
    return path


def load_weights(path: str | os.PathLike[str]) -> dict:
    """Tensors of a safetensors file; a pickle or a truncated file is a clear ``InputError``, never unpickled."""
    from safetensors.torch import load_file

    from synthaug.errors import InputError

    path = check_weights(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # a file cut after its header
        raise InputError(f"is not a readable safetensors file ({exc})", where=str(path),
                         fix="the file is truncated or corrupt; write it again") from exc
