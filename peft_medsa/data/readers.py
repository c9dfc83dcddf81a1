"""The one place that opens image files (PNG/JPEG, DICOM, NIfTI, NRRD) for training, evaluation and prediction.

Canonical slice orientation. Every volume comes back as a `Volume` whose `array` is (D, H, W) = (S, P, L):
NIfTI and NRRD voxel axes are reoriented to L, P, S (from the file's affine / space directions) and
transposed, so slices run inferior -> superior, rows anterior -> posterior and columns patient right -> left
(the radiological view). A DICOM series keeps its stored row/column order (already the viewing order) and is
sorted along the slice normal. `Volume.affine` maps a canonical voxel (d, h, w) to RAS world millimetres, and
`Volume.layout` remembers how the file stored its voxels, so that a mask computed on canonical slices can be
written back in the file's own voxel order (`FileLayout.to_file_order`) and prompts given in the file's voxel
indices can be moved into the canonical frame (`FileLayout.to_canonical`).

Data policies, the same for every caller:
- NaN/Inf voxels or pixels are set to the background value (the minimum of the finite values), so they take
  no part in intensity statistics; a warning names the file and the count. An all-NaN/Inf file is refused.
- 2-D images above `MAX_IMAGE_PIXELS` (Pillow's own decompression-bomb limit, `PIL.Image.MAX_IMAGE_PIXELS`,
  which is where to raise it) are refused before they are decoded.
- Files are read into memory, never through a memory map, so an input may safely be its own output.
- An unreadable (truncated, corrupt) file is one `MedSAFileError` naming it.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import MedSAError, MedSAFileError, MedSAFileNotFoundError, MedSAValueError

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
_CANONICAL = nib.orientations.axcodes2ornt("LPS")
# A (D, H, W) stack already in the canonical order: axis 0 is S, axis 1 P, axis 2 L (see `FileLayout`).
_STACKED = np.array([[2, 1], [1, 1], [0, 1]], float)
# Label and image affines may differ by float rounding; anything above 1 % of a voxel is another geometry.
GEOMETRY_TOLERANCE = 0.01


@dataclass(frozen=True)
class FileLayout:
    """How a file stores the voxels of its canonical (D, H, W) array, and the header to write a mask with.

    `orientation` is a nibabel orientation: file axis n becomes LPS axis `orientation[n, 0]`, reversed when
    `orientation[n, 1] == -1`; the canonical array is that LPS array transposed to (S, P, L). `prompt_axes`
    are the file axes that a prompt's (x, y) and its slice k index: voxel (i, j, k) for NIfTI/NRRD, (column,
    row, position in the series) for a DICOM stack.
    """

    shape: tuple[int, ...]
    orientation: np.ndarray
    header: Any = None
    prompt_axes: tuple[int, int, int] = (0, 1, 2)

    def to_file_order(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical (D, H, W) array (e.g. a mask) in the file's voxel order and shape."""
        back = np.empty_like(self.orientation)  # the inverse: LPS axis orientation[n, 0] -> file axis n
        back[self.orientation[:, 0].astype(int)] = np.column_stack([np.arange(3), self.orientation[:, 1]])
        array = nib.orientations.apply_orientation(np.asarray(canonical).transpose(2, 1, 0), back)
        return np.ascontiguousarray(array).reshape(self.shape)

    def to_canonical(self, voxel: tuple[float, float, float]) -> tuple[float, float, float]:
        """File voxel indices (i, j, k) -> canonical (d, h, w): the same voxel in the canonical array."""
        canonical = [0.0, 0.0, 0.0]
        for axis, (lps_axis, flip) in enumerate(self.orientation):
            index = float(voxel[axis]) if flip > 0 else self.shape[axis] - 1 - float(voxel[axis])
            canonical[2 - int(lps_axis)] = index
        return tuple(canonical)

    def to_file(self, canonical: tuple[float, float, float]) -> tuple[float, float, float]:
        """Canonical (d, h, w) -> file voxel indices (i, j, k): the inverse of `to_canonical`."""
        voxel = [0.0, 0.0, 0.0]
        for axis, (lps_axis, flip) in enumerate(self.orientation):
            index = float(canonical[2 - int(lps_axis)])
            voxel[axis] = index if flip > 0 else self.shape[axis] - 1 - index
        return tuple(voxel)

    @property
    def slice_axis(self) -> int:
        """The file axis whose index is the canonical slice index d."""
        return int(np.flatnonzero(self.orientation[:, 0] == 2)[0])


@dataclass
class Volume:
    """A 3-D image or label map: `array` (D, H, W) in the canonical orientation, `spacing` (dz, dy, dx) in mm,
    `affine` (canonical voxel -> RAS mm; None when the file has no position) and the file's `layout`."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray | None = None
    layout: FileLayout | None = None


def file_suffix(path: Path) -> str:
    """The lower-case suffix, `.nii.gz` counted as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(path).suffix.lower()


def read_volume(path: str | Path) -> Volume:
    """Reads a NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or DICOM (.dcm file or series folder) volume."""
    path = Path(path)
    if not path.exists():
        raise MedSAFileNotFoundError(f"No volume file or DICOM folder at {path}.")
    suffix = file_suffix(path)
    with _reading(path):
        if suffix in NIFTI_SUFFIXES:
            volume = _read_nifti(path)
        elif suffix in NRRD_SUFFIXES:
            volume = _read_nrrd(path)
        elif path.is_dir() or suffix in DICOM_SUFFIXES:
            volume = _read_dicom(path)
        else:
            raise MedSAFileError(
                f"{path}: unsupported volume format {suffix!r}; use NIfTI {NIFTI_SUFFIXES}, NRRD "
                f"{NRRD_SUFFIXES} or DICOM {DICOM_SUFFIXES} (a file or a series folder)."
            )
    if volume.array.size == 0:
        raise MedSAFileError(f"{path}: the volume is empty (shape {volume.array.shape}); nothing to read.")
    volume.array = replace_non_finite(volume.array, str(path))
    return volume


def read_image(path: str | Path) -> np.ndarray:
    """Reads a 2-D image or mask file as an array (H, W) or (H, W, C), keeping its bit depth (16-bit stays 16)."""
    path = Path(path)
    if not path.is_file():
        raise MedSAFileNotFoundError(f"No image file at {path}.")
    if file_suffix(path) in DICOM_SUFFIXES:
        volume = read_volume(path)
        if len(volume.array) != 1:
            raise MedSAFileError(
                f"{path}: expected a single-frame 2-D DICOM image, got {len(volume.array)} frames; "
                "read it as a volume instead."
            )
        return volume.array[0]
    return _decode_image(path, str(path))


def read_image_bytes(data: bytes, where: str) -> np.ndarray:
    """An encoded image (PNG/JPEG bytes, e.g. a `datasets` Image cell) read as `read_image` reads a file."""
    import io

    return _decode_image(io.BytesIO(data), where)


def _decode_image(source, where: str) -> np.ndarray:
    """Decodes a 2-D image (a path or a file object) after checking its size from the header alone."""
    from PIL import Image

    with _reading(where):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(source)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                image = None  # the size is reported below, from the header alone
            if image is None or image.width * image.height > (Image.MAX_IMAGE_PIXELS or np.inf):
                raise MedSAFileError(
                    f"{where}: the image is larger than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
                    "(a decompression-bomb guard); downscale or crop it, or raise PIL.Image.MAX_IMAGE_PIXELS."
                )
            with image:
                array = pil_to_array(image)
    if array.size == 0:
        raise MedSAFileError(f"{where}: the image is empty (shape {array.shape}).")
    return replace_non_finite(array, where)


def pil_to_array(image) -> np.ndarray:
    """A PIL image as an array: palette images as their indices, RGBA without alpha, 16-bit as uint16."""
    if image.mode == "RGBA" or image.mode == "LA":
        image = image.convert(image.mode[:-1])
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image)


def replace_non_finite(array: np.ndarray, where: str) -> np.ndarray:
    """The NaN/Inf policy: such values become the minimum of the finite ones (background), with a warning."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    finite = np.isfinite(array)
    count = int(finite.size - np.count_nonzero(finite))
    if count == 0:
        return array
    if count == array.size:
        raise MedSAValueError(
            f"{where}: every value is NaN or infinite; expected an image with finite intensities "
            "(re-export the file)."
        )
    background = array[finite].min()
    warnings.warn(
        f"{where}: {count} NaN/Inf value(s) set to the background value {background:g} "
        "(the minimum of the finite values).",
        stacklevel=2,
    )
    return np.where(finite, array, background)


def check_same_geometry(image: Volume, label: Volume, where: str) -> None:
    """Refuses a label volume that does not lie on the image's voxel grid (shape, spacing, position and
    orientation, within `GEOMETRY_TOLERANCE` of a voxel): such a label would be silently shifted or mirrored."""
    if image.array.shape != label.array.shape:
        raise MedSAValueError(
            f"{where}image volume {image.array.shape} and label volume {label.array.shape} differ in shape "
            "(canonical D, H, W); each label must be voxel-aligned with its image."
        )
    tolerance = GEOMETRY_TOLERANCE * min(image.spacing)
    same_spacing = np.allclose(image.spacing, label.spacing, rtol=0, atol=tolerance)
    same_position = (
        image.affine is None
        or label.affine is None
        or np.allclose(image.affine, label.affine, rtol=0, atol=tolerance)
    )
    if not (same_spacing and same_position):
        raise MedSAValueError(
            f"{where}the label's voxel grid differs from the image's (spacing {label.spacing} vs "
            f"{image.spacing} mm, affine\n{label.affine}\nvs\n{image.affine}); expected a label saved with the "
            "image's affine/header. Resample the label onto the image (e.g. nibabel.processing.resample_from_to)."
        )


@contextmanager
def _reading(where: str | Path) -> Iterator[None]:
    """Turns a library's error on a truncated or corrupt file into one MedSAFileError naming the file."""
    import nrrd
    from pydicom.errors import InvalidDicomError

    try:
        yield
    except MedSAError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        nib.filebasedimages.ImageFileError,
        nrrd.NRRDError,
        InvalidDicomError,
    ) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise MedSAFileError(
            f"{where}: cannot read the file, it looks truncated or corrupt ({reason}); re-export or re-download it."
        ) from error


def _canonical(array: np.ndarray, affine_ras: np.ndarray, file_shape: tuple[int, ...], header) -> Volume:
    """Reorients voxel axes to L, P, S and returns (S, P, L) = (D, H, W) with its spacing and affine."""
    orientation = nib.orientations.ornt_transform(nib.io_orientation(affine_ras), _CANONICAL)
    zooms = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))  # per input voxel axis
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = zooms
    lps = nib.orientations.apply_orientation(array, orientation)  # (L, P, S)
    to_lps_voxel = np.eye(4)[[2, 1, 0, 3]]  # canonical (d, h, w) -> LPS voxel (l, p, s) = (w, h, d)
    affine = affine_ras @ nib.orientations.inv_ornt_aff(orientation, array.shape) @ to_lps_voxel
    return Volume(
        np.ascontiguousarray(lps.transpose(2, 1, 0)),
        tuple(float(s) for s in spacing[::-1]),
        affine,
        FileLayout(tuple(file_shape), orientation, header),
    )


def _read_nifti(path: Path) -> Volume:
    image = nib.load(str(path), mmap=False)  # in memory: the file may be replaced by its own mask
    array = np.asanyarray(image.dataobj)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise MedSAFileError(
            f"{path}: expected a 3-D NIfTI volume (x, y, z), got shape {image.shape}; "
            + (
                "split the time series into 3-D volumes (e.g. nibabel.funcs.four_to_three)."
                if array.ndim == 4
                else "save 2-D images as PNG, or as a NIfTI of shape (x, y, 1)."
            )
        )
    return _canonical(array, image.affine, image.shape, image.header)


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    array, header = nrrd.read(str(path))
    if array.ndim != 3:
        raise MedSAFileError(f"{path}: expected a 3-D NRRD volume, got shape {array.shape}.")
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings", [1.0, 1.0, 1.0])
        directions = np.diag(np.asarray(spacings, dtype=float))
    # pynrrd gives one row per axis; the affine wants one column per axis.
    affine = np.eye(4)
    rotation = _NRRD_SPACES.get(header.get("space", "LPS"), _LPS_TO_RAS)
    affine[:3, :3] = rotation @ np.asarray(directions, float).T
    affine[:3, 3] = rotation @ np.asarray(header.get("space origin", np.zeros(3)), float)
    return _canonical(array, affine, array.shape, header)


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
        raise MedSAFileError(f"{path}: no DICOM file with pixel data found.")
    row_spacing, col_spacing = (float(v) for v in datasets[0].get("PixelSpacing", [1.0, 1.0]))
    slice_spacing = float(
        datasets[0].get("SpacingBetweenSlices", datasets[0].get("SliceThickness", 1.0)) or 1.0
    )
    positioned = all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in datasets)
    affine = None
    if positioned:
        orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(normal, np.asarray(d.ImagePositionPatient, float)) for d in datasets])
        order = np.argsort(positions)
        datasets = [datasets[i] for i in order]
        if len(datasets) > 1:
            slice_spacing = float(np.median(np.diff(positions[order]))) or slice_spacing
        columns = np.stack(  # canonical (d, h, w) -> LPS mm, then RAS
            [normal * slice_spacing, orientation[3:] * row_spacing, orientation[:3] * col_spacing], axis=1
        )
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ columns
        affine[:3, 3] = _LPS_TO_RAS @ np.asarray(datasets[0].ImagePositionPatient, float)
    array = np.stack([_dicom_slice(d) for d in datasets])  # (D, H, W)
    for dataset in datasets:  # the headers stay (a DICOM-SEG references them), the pixels are in `array`
        del dataset.PixelData
    if array.ndim != 3:
        raise MedSAFileError(
            f"{path}: expected grayscale DICOM slices, got pixel data of shape {array.shape[1:]} per file."
        )
    layout = FileLayout(array.shape, _STACKED, datasets, prompt_axes=(2, 1, 0))
    return Volume(array, (slice_spacing, row_spacing, col_spacing), affine, layout)
