"""Readers on real offline files: NIfTI (nilearn's MNI152), NRRD (pynrrd from the same data), DICOM (pydicom)."""

import warnings

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from nilearn.datasets import load_mni152_template
from PIL import Image
from pydicom.data import get_testdata_file

from peft_medsa.data import read_image, read_volume
from peft_medsa.data.readers import check_same_geometry
from peft_medsa.errors import MedSAFileError, MedSAFileNotFoundError, MedSAValueError


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
    # The canonical affine puts voxel (d, 0, 0) at slice d's ImagePositionPatient (LPS -> RAS).
    for d in range(3):
        np.testing.assert_allclose(
            volume.affine @ [d, 0, 0, 1], [*((origin + 5.0 * d * normal) * [-1, -1, 1]), 1]
        )


def test_16_bit_png_keeps_its_depth(tmp_path):
    array = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, array)


def test_canonical_mask_goes_back_to_the_file_order_and_affine(mni, tmp_path):
    path, ras = mni
    # The same data stored permuted and flipped, with an affine that says so: one world, another voxel order.
    stored = ras.transpose(2, 0, 1)[::-1, :, ::-1]  # file axes (z reversed, x, y reversed)
    source = nib.load(path)
    lps_to_ras_voxel = np.zeros((4, 4))
    lps_to_ras_voxel[3, 3] = 1
    n = ras.shape
    # file voxel (a, b, c) = ras voxel (b, n_y - 1 - c, n_z - 1 - a)
    lps_to_ras_voxel[0, 1] = 1
    lps_to_ras_voxel[1, 2], lps_to_ras_voxel[1, 3] = -1, n[1] - 1
    lps_to_ras_voxel[2, 0], lps_to_ras_voxel[2, 3] = -1, n[2] - 1
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(stored), source.affine @ lps_to_ras_voxel), tmp_path / "p.nii"
    )
    original, permuted = read_volume(path), read_volume(tmp_path / "p.nii")
    np.testing.assert_array_equal(permuted.array, original.array)
    np.testing.assert_allclose(permuted.affine, original.affine)
    assert permuted.spacing == original.spacing
    np.testing.assert_array_equal(permuted.layout.to_file_order(permuted.array), stored)
    assert permuted.layout.slice_axis == 0
    # A file voxel index lands on the same canonical voxel, holding the same value.
    for voxel in [(0, 0, 0), (10, 20, 30), (94, 98, 116)]:
        d, h, w = (round(v) for v in permuted.layout.to_canonical(voxel))
        assert permuted.array[d, h, w] == stored[voxel]


def test_canonical_affine_maps_voxels_to_the_files_world_coordinates(mni):
    path, _ = mni
    volume, source = read_volume(path), nib.load(path)
    voxel = np.array([7, 11, 13])  # file (i, j, k)
    canonical = np.array(volume.layout.to_canonical(tuple(voxel)))
    np.testing.assert_allclose(volume.affine @ [*canonical, 1], source.affine @ [*voxel, 1])


def test_nan_voxels_are_background_with_a_warning(mni, tmp_path):
    _, ras = mni
    data = ras.astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "clean.nii.gz")
    data[50, 60, 40], data[0, 0, 0] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(UserWarning, match=r"nan\.nii\.gz: 2 NaN/Inf value\(s\) set to the background value 0"):
        volume = read_volume(tmp_path / "nan.nii.gz")
    clean = read_volume(tmp_path / "clean.nii.gz")
    expected = clean.array.copy()
    for voxel in [(50, 60, 40), (0, 0, 0)]:  # the policy: NaN/Inf voxels become the finite minimum
        expected[tuple(round(v) for v in clean.layout.to_canonical(voxel))] = np.nanmin(ras)
    assert expected.min() == 0 and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, expected)


def test_label_on_another_grid_is_refused(mni, tmp_path):
    path, ras = mni
    image = read_volume(path)
    source = nib.load(path)
    mirrored = source.affine @ np.diag([-1.0, 1, 1, 1])  # same shape, x axis flipped: the label would mirror
    nib.save(nib.Nifti1Image((ras > 50).astype(np.uint8), mirrored), tmp_path / "label.nii.gz")
    with pytest.raises(MedSAValueError, match="the label's voxel grid differs from the image's"):
        check_same_geometry(image, read_volume(tmp_path / "label.nii.gz"), "case 1: ")
    rounded = source.affine + 1e-5  # float rounding between image and label headers is accepted
    nib.save(nib.Nifti1Image((ras > 50).astype(np.uint8), rounded), tmp_path / "ok.nii.gz")
    check_same_geometry(image, read_volume(tmp_path / "ok.nii.gz"), "case 1: ")


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.fixture
def files(tmp_path):
    """Hostile files: truncated, corrupt, the wrong dimensionality."""
    volume = nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10)).astype(np.float32), np.eye(4))
    nib.save(volume, tmp_path / "ok.nii.gz")
    (tmp_path / "truncated.nii.gz").write_bytes(_truncated((tmp_path / "ok.nii.gz").read_bytes()))
    nib.save(volume, tmp_path / "ok.nii")
    (tmp_path / "truncated.nii").write_bytes(_truncated((tmp_path / "ok.nii").read_bytes()))
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a volume" * 20)
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10, 3), np.float32), np.eye(4)), tmp_path / "series.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 9, 10), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz")
    nrrd.write(str(tmp_path / "ok.nrrd"), np.zeros((5, 6, 7), np.int16), {"encoding": "gzip"})
    (tmp_path / "truncated.nrrd").write_bytes((tmp_path / "ok.nrrd").read_bytes()[:-30])
    (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\ngarbage\n\n")
    nrrd.write(str(tmp_path / "empty.nrrd"), np.zeros((4, 0, 3), np.int16))
    (tmp_path / "truncated.dcm").write_bytes(_truncated(open(get_testdata_file("CT_small.dcm"), "rb").read()))
    (tmp_path / "garbage.dcm").write_bytes(b"not dicom" * 30)
    (tmp_path / "volume.mha").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("missing.nii.gz", MedSAFileNotFoundError, "No volume file or DICOM folder at"),
        ("volume.mha", MedSAFileError, r"unsupported volume format '\.mha'"),
        ("truncated.nii.gz", MedSAFileError, r"truncated\.nii\.gz: cannot read the file, it looks truncated"),
        ("truncated.nii", MedSAFileError, r"truncated\.nii: cannot read the file, it looks truncated"),
        ("garbage.nii.gz", MedSAFileError, r"garbage\.nii\.gz: cannot read the file"),
        (
            "flat.nii.gz",
            MedSAFileError,
            r"expected a 3-D NIfTI volume \(x, y, z\), got shape \(8, 9\); save 2-D",
        ),
        ("series.nii.gz", MedSAFileError, r"got shape \(8, 9, 10, 3\); split the time series"),
        ("nan.nii.gz", MedSAValueError, "every value is NaN or infinite"),
        ("truncated.nrrd", MedSAFileError, r"truncated\.nrrd: cannot read the file"),
        ("garbage.nrrd", MedSAFileError, r"garbage\.nrrd: cannot read the file"),
        ("empty.nrrd", MedSAFileError, r"the volume is empty \(shape"),
        ("truncated.dcm", MedSAFileError, r"truncated\.dcm: cannot read the file"),
        ("garbage.dcm", MedSAFileError, r"garbage\.dcm: cannot read the file"),
    ],
)
def test_unreadable_volumes_raise_one_clear_error(files, name, error, message):
    with pytest.raises(error, match=message):
        read_volume(files / name)


def test_unreadable_images_raise_one_clear_error(files):
    with pytest.raises(MedSAFileNotFoundError, match="No image file at"):
        read_image(files / "missing.png")
    with pytest.raises(MedSAFileError, match=r"truncated\.png: cannot read the file"):
        read_image(files / "truncated.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # 196 Mpx, a few kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak either
        with pytest.raises(
            MedSAFileError, match=r"bomb\.png: the image is larger than the limit of 89478485 pixels"
        ):
            read_image(tmp_path / "bomb.png")


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(MedSAFileError, match="larger than the limit of 500 pixels"):
        read_image(tmp_path / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    assert read_image(tmp_path / "x.png").shape == (20, 30)


@pytest.mark.parametrize(
    ("mode", "array", "shape"),
    [
        ("RGB", np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), (4, 5, 3)),
        ("RGBA", np.arange(4 * 5 * 4, dtype=np.uint8).reshape(4, 5, 4), (4, 5, 3)),
        ("L", np.array([[7]], np.uint8), (1, 1)),
        ("L", np.arange(3 * 40, dtype=np.uint8).reshape(3, 40), (3, 40)),
    ],
)
def test_channels_last_and_tiny_images(tmp_path, mode, array, shape):
    Image.fromarray(array, mode).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.shape == shape
    np.testing.assert_array_equal(image, array[..., :3] if array.ndim == 3 else array)


def test_label_on_another_grid_is_refused_where_volume_pairs_are_built(mni, tmp_path):
    from peft_medsa.data.examples import ExampleBuilder
    from peft_medsa.data.preprocessing import SamPreprocessor
    from peft_medsa.data.prompts import PromptConfig
    from peft_medsa.data.registry import TaskSpec

    path, ras = mni
    flipped = nib.load(path).affine @ np.diag([1.0, -1, 1, 1])
    nib.save(nib.Nifti1Image((ras > 50).astype(np.uint8), flipped), tmp_path / "label.nii.gz")
    spec = TaskSpec(name="mni", format="volumes", path="/x", index="index.jsonl", labels={1: "brain"})
    builder = ExampleBuilder(spec, SamPreprocessor(64, 16), PromptConfig())
    with pytest.raises(MedSAValueError, match="Task 'mni', case 'c1': the label's voxel grid differs"):
        next(builder.volume_examples(read_volume(path), read_volume(tmp_path / "label.nii.gz"), "c1"))


def test_image_bytes_get_the_file_guards(tmp_path, monkeypatch):
    from peft_medsa.data.readers import read_image_bytes

    Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    np.testing.assert_array_equal(read_image_bytes(data, "row 3"), read_image(tmp_path / "x.png"))
    with pytest.raises(MedSAFileError, match="row 3: cannot read the file, it looks truncated"):
        read_image_bytes(data[:60], "row 3")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MedSAFileError, match="row 3: the image is larger than the limit of 100 pixels"):
        read_image_bytes(data, "row 3")


def test_a_single_volume_4d_nifti_keeps_its_shape_for_the_mask(tmp_path):
    data = np.random.default_rng(0).random((8, 9, 10, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 2, 3, 1])), tmp_path / "one.nii.gz")
    volume = read_volume(tmp_path / "one.nii.gz")
    assert volume.array.shape == (10, 9, 8) and volume.spacing == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(volume.layout.to_file_order(volume.array), data)
