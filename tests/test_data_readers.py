"""Readers on real offline files: NIfTI (nilearn's MNI152), NRRD (pynrrd from the same data), DICOM (pydicom)."""

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from nilearn.datasets import load_mni152_template
from PIL import Image
from pydicom.data import get_testdata_file

from peft_medsa.data import read_image, read_volume


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """nilearn's MNI152 T1 template at 2 mm (RAS voxel axes) saved as NIfTI."""
    image = load_mni152_template(resolution=2)
    path = tmp_path_factory.mktemp("mni") / "mni.nii.gz"
    nib.save(image, path)
    return path, np.asarray(nib.load(path).dataobj)  # as stored


def test_nifti_shape_spacing_and_orientation(mni):
    path, ras = mni  # (x: L->R, y: P->A, z: I->S) = (99, 117, 95)
    volume = read_volume(path)
    assert volume.array.shape == (95, 117, 99)  # (D, H, W) = (S, P, L)
    assert volume.spacing == (2.0, 2.0, 2.0)
    # Row 0 is the most anterior voxel row, column 0 the patient's rightmost column.
    np.testing.assert_array_equal(volume.array[40], ras[::-1, ::-1, 40].T)


def test_nrrd_in_lps_with_a_flipped_axis_reads_like_the_nifti(mni, tmp_path):
    path, ras = mni
    lps = ras[::-1, ::-1, :]  # voxel axes L, P, S
    # Store the P axis reversed and say so with a negative direction, as pyradiomics' brain1 does.
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([2.0, -2.0, 3.0]),
        "space origin": np.zeros(3),
    }
    nrrd.write(str(tmp_path / "mni.nrrd"), np.ascontiguousarray(lps[:, ::-1, :]), header)
    volume = read_volume(tmp_path / "mni.nrrd")
    assert volume.spacing == (3.0, 2.0, 2.0)
    np.testing.assert_array_equal(volume.array, read_volume(path).array)


def test_dicom_slice_and_series():
    file = get_testdata_file("examples_overlay.dcm")
    dataset = pydicom.dcmread(file)
    volume = read_volume(file)
    assert volume.array.shape == (1, 300, 484)
    assert volume.spacing[1:] == pytest.approx((0.72314049586777, 0.72314049586777))
    np.testing.assert_array_equal(volume.array[0], dataset.pixel_array)


def test_dicom_series_is_sorted_along_the_slice_normal(tmp_path):
    dataset = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    normal = np.cross(
        np.asarray(dataset.ImageOrientationPatient[:3], float),
        np.asarray(dataset.ImageOrientationPatient[3:], float),
    )
    origin = np.asarray(dataset.ImagePositionPatient, float)
    for order, k in enumerate([2, 0, 1]):  # written out of order
        dataset.ImagePositionPatient = list(origin + 5.0 * k * normal)
        dataset.PixelData = np.full((300, 484), k, np.uint16).tobytes()
        dataset.save_as(tmp_path / f"slice{order}.dcm")
    volume = read_volume(tmp_path)
    assert volume.array.shape == (3, 300, 484)
    assert volume.array[:, 0, 0].tolist() == [0, 1, 2]
    assert volume.spacing[0] == pytest.approx(5.0)


def test_16_bit_png_keeps_its_depth(tmp_path):
    array = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, array)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No volume file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "volume.mha").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported volume format '\.mha'"):
        read_volume(tmp_path / "volume.mha")
    nrrd.write(str(tmp_path / "empty.nrrd"), np.zeros((4, 0, 3), np.int16))
    with pytest.raises(ValueError, match=r"the volume is empty \(shape"):
        read_volume(tmp_path / "empty.nrrd")
