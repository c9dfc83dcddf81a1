"""Prediction in the user's frame, on a real volume and the small pretrained base: the same mask in world space
whatever the file's voxel order, the training slices fed to the model, DICOM-SEG output, atomic writes."""

import errno
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.processing import resample_from_to
from nilearn.datasets import load_mni152_template
from peft import get_peft_model
from pydicom.data import get_testdata_file
from transformers import SamModel

from peft_medsa import MedSAConfig
from peft_medsa.cli import main
from peft_medsa.data.examples import ExampleBuilder
from peft_medsa.data.preprocessing import SamPreprocessor
from peft_medsa.data.prompts import PromptConfig
from peft_medsa.data.readers import Volume, read_volume
from peft_medsa.data.registry import IntensityPolicy, TaskSpec
from peft_medsa.predict import Prompt, Segmenter, predict_file

BASE = Path(__file__).parents[1] / "models" / "sam-small-synthetic"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A Med-SA adapter with SD-Trans on the small pretrained base (so chunks of slices run together)."""
    path = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = get_peft_model(SamModel.from_pretrained(BASE), MedSAConfig(depth_attention=True))
    for _name, parameter in model.named_parameters():  # non-zero adapters: the prediction depends on them
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """nilearn's MNI152 T1 template at 2 mm (RAS voxel axes), 12 axial slices, as an uncompressed NIfTI."""
    path = tmp_path_factory.mktemp("brain") / "brain.nii"
    template = load_mni152_template(resolution=2).slicer[:, :, 40:52]
    nib.save(nib.Nifti1Image(np.asarray(template.dataobj, np.float32), template.affine), path)
    return path


def predict(path, output, adapter, *prompt):
    argv = ["predict", path, "--model", BASE, "--adapter", adapter, *prompt, "--output", output]
    return main([str(a) for a in [*argv, "--device", "cpu"]])


def test_a_reoriented_copy_gives_the_same_mask_in_world_space(brain, adapter, tmp_path):
    source = nib.load(brain)
    data = np.asarray(source.dataobj)
    _nx, ny, nz = data.shape
    # The copy stores original voxel (i, j, k) at (ny-1-j, i, nz-1-k): the first two axes swapped, two flipped.
    stored = np.ascontiguousarray(data.transpose(1, 0, 2)[::-1, :, ::-1])
    copy_to_original = np.array([[0, 1, 0, 0], [-1, 0, 0, ny - 1], [0, 0, -1, nz - 1], [0, 0, 0, 1]])
    reoriented = tmp_path / "reoriented.nii.gz"
    nib.save(nib.Nifti1Image(stored, source.affine @ copy_to_original), reoriented)

    i1, j1, i2, j2, k1, k2 = 20, 30, 70, 90, 3, 9  # a box on slices 3..8 of the original
    first, second = tmp_path / "mask.nii", tmp_path / "mask-reoriented.nii.gz"
    assert predict(brain, first, adapter, "--box", i1, j1, i2, j2, "--slices", f"{k1}:{k2}") == 0
    box = [ny - 1 - j2, i1, ny - 1 - j1, i2]  # the same box in the copy's voxel indices
    assert predict(reoriented, second, adapter, "--box", *box, "--slices", f"{nz - k2}:{nz - k1}") == 0

    mask, mask_copy = nib.load(first), nib.load(second)
    assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
    assert mask_copy.shape == stored.shape and np.allclose(mask_copy.affine, source.affine @ copy_to_original)
    data = np.asarray(mask.dataobj)
    assert 0 < data.sum() < data[:, :, k1:k2].size, "a real, partial mask on the prompted slices"
    assert not data[:, :, :k1].any() and not data[:, :, k2:].any()
    in_first_frame = resample_from_to(mask_copy, mask, order=0)
    np.testing.assert_array_equal(np.asarray(in_first_frame.dataobj), data)


def test_predict_feeds_the_model_the_slices_training_uses(brain, adapter, tmp_path):
    from peft import PeftModel

    model = PeftModel.from_pretrained(SamModel.from_pretrained(BASE), adapter)
    seen = []
    model.base_model.model.vision_encoder.register_forward_pre_hook(  # what the image encoder is given
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["pixel_values"]).clone()),
        with_kwargs=True,
    )
    k = 5
    predict_file(Segmenter(model, device="cpu"), brain, tmp_path / "m.nii", {k: Prompt(box=(20, 30, 70, 90))})

    volume = read_volume(brain)
    data = np.asarray(nib.load(brain).dataobj)
    np.testing.assert_array_equal(volume.array[k], data[::-1, ::-1, k].T)  # RAS file: slice k is canonical k
    label = np.zeros(volume.array.shape, np.uint8)
    label[k, 40:60, 30:50] = 1
    spec = TaskSpec(
        name="brain",
        format="volumes",
        path="/x",
        index="index.jsonl",
        labels={1: "region"},
        intensity=IntensityPolicy("percentile"),
    )  # the Segmenter's default intensity policy
    builder = ExampleBuilder(spec, SamPreprocessor(128, 32), PromptConfig(kind="box"))
    (example,) = builder.volume_examples(volume, Volume(label, volume.spacing, volume.affine), "brain")
    assert example["slice_index"] == k
    assert seen[0].shape == (1, 3, 128, 128)
    np.testing.assert_array_equal(seen[0][0].numpy(), example["pixel_values"])


def test_one_nan_voxel_changes_nothing(brain, adapter, tmp_path, capsys):
    data = np.asarray(nib.load(brain).dataobj).copy()
    assert data[0, 0, 4] == data.min()  # a background voxel
    data[0, 0, 4] = np.nan
    nan_file = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, nib.load(brain).affine), nan_file)
    prompt = ["--box", 20, 30, 70, 90, "--slices", "4"]
    with pytest.warns(UserWarning, match=r"nan\.nii\.gz: 1 NaN/Inf value\(s\) set to the background value"):
        assert predict(nan_file, tmp_path / "a.nii.gz", adapter, *prompt) == 0
    assert predict(brain, tmp_path / "b.nii.gz", adapter, *prompt) == 0
    masks = [np.asarray(nib.load(tmp_path / name).dataobj) for name in ("a.nii.gz", "b.nii.gz")]
    assert masks[0].any()
    np.testing.assert_array_equal(masks[0], masks[1])


def test_nrrd_mask_keeps_the_header_and_voxel_order(brain, adapter, tmp_path):
    import nrrd

    data = np.asarray(nib.load(brain).dataobj)
    affine = nib.load(brain).affine  # the NIfTI's RAS world, written in LPS terms
    header = {"space": "left-posterior-superior", "space directions": np.diag([-2.0, -2.0, 2.0])}
    header["space origin"] = affine[:3, 3] * [-1, -1, 1]
    nrrd.write(str(tmp_path / "brain.nrrd"), data, header)
    output = tmp_path / "mask.nrrd"
    assert predict(tmp_path / "brain.nrrd", output, adapter, "--box", 20, 30, 70, 90, "--slices", "5") == 0
    mask, written = nrrd.read(str(output))
    assert mask.shape == data.shape and mask.dtype == np.uint8 and mask[:, :, 5].any()
    np.testing.assert_array_equal(written["space directions"], header["space directions"])
    np.testing.assert_array_equal(written["space origin"], header["space origin"])
    assert written["space"] == header["space"]
    # The same world frame as the NIfTI: the same canonical volume, and the same voxels segmented.
    np.testing.assert_allclose(read_volume(tmp_path / "brain.nrrd").affine, read_volume(brain).affine)
    assert predict(brain, tmp_path / "nifti.nii", adapter, "--box", 20, 30, 70, 90, "--slices", "5") == 0
    np.testing.assert_array_equal(mask, np.asarray(nib.load(tmp_path / "nifti.nii").dataobj))


def test_dicom_output_is_a_segmentation_in_a_new_series(adapter, tmp_path):
    source_path = get_testdata_file("examples_overlay.dcm")  # a real abdominal MR slice
    output = tmp_path / "mask.dcm"
    assert predict(source_path, output, adapter, "--point", 200, 150) == 0
    source, seg = pydicom.dcmread(source_path), pydicom.dcmread(output)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID != source.SOPInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.pixel_array.shape == (source.Rows, source.Columns)
    assert set(np.unique(seg.pixel_array)) <= {0, 1}


def test_dicom_output_must_be_dcm(adapter, tmp_path, capsys):
    source_path = get_testdata_file("examples_overlay.dcm")
    assert predict(source_path, tmp_path / "mask.png", adapter, "--point", 200, 150) == 2
    assert "must be a .dcm or .dicom file for a .dcm input (the mask is a DICOM Segmentation object)" in (
        capsys.readouterr().err
    )


def test_in_place_predict_on_an_uncompressed_nifti(brain, adapter, tmp_path):
    target = tmp_path / "scan.nii"
    target.write_bytes(brain.read_bytes())
    argv = ["--box", 20, 30, 70, 90, "--slices", "5", "--overwrite"]
    assert predict(target, target, adapter, *argv) == 0
    mask = nib.load(target)
    assert mask.get_data_dtype() == np.uint8 and mask.shape == nib.load(brain).shape
    assert np.asarray(mask.dataobj)[:, :, 5].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii", "scan.overlay.png"]


def _disk_full(image, path):
    Path(path).write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_partial_file(brain, adapter, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nib, "save", _disk_full)
    output = tmp_path / "mask.nii.gz"
    assert predict(brain, output, adapter, "--box", 20, 30, 70, 90, "--slices", "5") == 2
    error = capsys.readouterr().err
    assert f"mask.nii.gz: could not write the file ([Errno {errno.ENOSPC}] No space left on device)" in error
    assert list(tmp_path.iterdir()) == []
    output.write_bytes(b"a mask someone saved")  # a failed --overwrite keeps the old file whole
    argv = ["--box", 20, 30, 70, 90, "--slices", "5", "--overwrite"]
    assert predict(brain, output, adapter, *argv) == 2
    assert output.read_bytes() == b"a mask someone saved" and len(list(tmp_path.iterdir())) == 1


def test_prompts_are_checked_in_the_files_frame(brain):
    segmenter = Segmenter(SamModel.from_pretrained(BASE), device="cpu")
    output = brain.with_name("x.nii")
    message = r"slice 2: prompt coordinates \[\(100.0, 3.0\)\] lie outside the image; expected i in \[0, 99\)"
    with pytest.raises(ValueError, match=message):  # i < 99 = the file's first axis, whatever the canonical W
        predict_file(segmenter, brain, output, {2: Prompt(points=[(100.0, 3.0)])})
    assert not output.exists()


def test_a_dicom_series_gives_one_segmentation_referencing_every_slice(adapter, tmp_path):
    dataset = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))  # a real MR slice, repeated
    normal = np.cross(*np.reshape(np.asarray(dataset.ImageOrientationPatient, float), (2, 3)))
    origin = np.asarray(dataset.ImagePositionPatient, float)
    series = tmp_path / "series"
    series.mkdir()
    uids = {}
    for position in [2, 0, 3, 1]:  # files written out of position order
        dataset.ImagePositionPatient = list(origin + 4.0 * position * normal)
        dataset.SOPInstanceUID = uids[position] = pydicom.uid.generate_uid()
        dataset.save_as(series / f"{dataset.SOPInstanceUID}.dcm")
    output = tmp_path / "mask.dcm"
    assert predict(series, output, adapter, "--point", 200, 150, "--slices", "1:3") == 0
    seg = pydicom.dcmread(output)
    assert (
        seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        and seg.SeriesInstanceUID != dataset.SeriesInstanceUID
    )
    referenced = {
        i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(uids.values())
    frames = seg.pixel_array  # (4, rows, columns): one frame per source slice, in highdicom's order
    assert frames.shape == (4, dataset.Rows, dataset.Columns)
    segmented = set()
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(groups.PlanePositionSequence[0].ImagePositionPatient, float)
        k = round(np.dot(normal, position - origin) / 4.0)
        assert source == uids[k], "each frame references the source slice at its own position"
        if frame.any():
            segmented.add(k)
    assert segmented == {1, 2}  # --slices 1:3, in the series' position order
    assert predict(series, tmp_path / "mask.nii.gz", adapter, "--point", 200, 150) == 2
