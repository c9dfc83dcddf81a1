"""Readers for medical files: NIfTI (nibabel), NRRD (pynrrd), DICOM (pydicom) and 2-D images (Pillow).

Every volume comes back as a `Volume` with `array` of shape (D, H, W) and `spacing` (dz, dy, dx) in mm, in one
orientation whatever the file's: NIfTI and NRRD are reoriented to LPS voxel axes and transposed, so slices run
inferior -> superior, rows anterior -> posterior and columns patient right -> left (the radiological view).
DICOM keeps its stored row/column order (already the viewing order) and a series is sorted along the slice
normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom")
# NRRD `space` names whose axes are RAS or LPS; nibabel's orientation helpers expect RAS world coordinates.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_NRRD_SPACES = {
    "left-posterior-superior": _LPS_TO_RAS,
    "LPS": _LPS_TO_RAS,
    "right-anterior-superior": np.eye(3),
    "RAS": np.eye(3),
}


@dataclass
class Volume:
    """A 3-D image or label map: `array` (D, H, W), `spacing` (dz, dy, dx) in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]


def file_suffix(path: Path) -> str:
    """The lower-case suffix, `.nii.gz` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _to_lps_slices(array: np.ndarray, affine_ras: np.ndarray) -> Volume:
    """Reorients voxel axes to L, P, S and returns (S, P, L) = (D, H, W) with the matching spacing."""
    ornt = nib.orientations.ornt_transform(
        nib.io_orientation(affine_ras), nib.orientations.axcodes2ornt("LPS")
    )
    zooms = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))  # per input voxel axis
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = zooms
    array = nib.orientations.apply_orientation(array, ornt)  # (L, P, S)
    return Volume(np.ascontiguousarray(array.transpose(2, 1, 0)), tuple(float(s) for s in spacing[::-1]))


def _read_nifti(path: Path) -> Volume:
    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D NIfTI volume, got shape {array.shape}.")
    return _to_lps_slices(array, image.affine)


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    array, header = nrrd.read(str(path))
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D NRRD volume, got shape {array.shape}.")
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings", [1.0, 1.0, 1.0])
        directions = np.diag(np.asarray(spacings, dtype=float))
    # pynrrd gives one row per axis; the affine wants one column per axis.
    affine = np.eye(4)
    affine[:3, :3] = (
        _NRRD_SPACES.get(header.get("space", "LPS"), _LPS_TO_RAS) @ np.asarray(directions, float).T
    )
    return _to_lps_slices(array, affine)


def _dicom_slice(dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    pixels = dataset.pixel_array
    if "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        pixels = apply_modality_lut(pixels, dataset)  # stored values -> HU for CT
    return pixels


def _read_dicom(path: Path) -> Volume:
    import pydicom

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    datasets = [pydicom.dcmread(str(f)) for f in files]
    datasets = [d for d in datasets if "PixelData" in d]
    if not datasets:
        raise ValueError(f"{path}: no DICOM file with pixel data found.")
    row_spacing, col_spacing = (float(v) for v in datasets[0].get("PixelSpacing", [1.0, 1.0]))
    slice_spacing = float(
        datasets[0].get("SpacingBetweenSlices", datasets[0].get("SliceThickness", 1.0)) or 1.0
    )
    if len(datasets) > 1 and all(
        "ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in datasets
    ):
        orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(normal, np.asarray(d.ImagePositionPatient, float)) for d in datasets])
        order = np.argsort(positions)
        datasets = [datasets[i] for i in order]
        slice_spacing = float(np.median(np.diff(positions[order]))) or slice_spacing
    array = np.stack([_dicom_slice(d) for d in datasets])  # (D, H, W)
    return Volume(array, (slice_spacing, row_spacing, col_spacing))


def read_volume(path: str | Path) -> Volume:
    """Reads a NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or DICOM (.dcm file or series folder) volume."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No volume file or DICOM folder at {path}.")
    suffix = file_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        volume = _read_nifti(path)
    elif suffix in NRRD_SUFFIXES:
        volume = _read_nrrd(path)
    elif path.is_dir() or suffix in DICOM_SUFFIXES:
        volume = _read_dicom(path)
    else:
        raise ValueError(
            f"{path}: unsupported volume format {suffix!r}; use NIfTI {NIFTI_SUFFIXES}, NRRD {NRRD_SUFFIXES} "
            f"or DICOM {DICOM_SUFFIXES} (a file or a series folder)."
        )
    if volume.array.size == 0:
        raise ValueError(f"{path}: the volume is empty (shape {volume.array.shape}).")
    return volume


def read_image(path: str | Path) -> np.ndarray:
    """Reads a 2-D image or mask file as an array (H, W) or (H, W, C), keeping its bit depth (16-bit stays 16)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}.")
    if file_suffix(path) in DICOM_SUFFIXES:
        return read_volume(path).array[0]
    from PIL import Image

    with Image.open(path) as image:
        return pil_to_array(image)


def pil_to_array(image) -> np.ndarray:
    """A PIL image as an array: palette images as their indices, RGBA without alpha, 16-bit as uint16."""
    if image.mode == "RGBA" or image.mode == "LA":
        image = image.convert(image.mode[:-1])
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image)
