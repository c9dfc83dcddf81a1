"""The web app's callbacks without a browser: clicks -> prompts in the input's frame, window presets, embedding
reuse, masks equal to `medsa predict`'s, downloads in the input's geometry, and plain errors for bad files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from peft_medsa.app import (
    BOX,
    NEGATIVE,
    POSITIVE,
    MedSAApp,
    Session,
    add_click,
    describe_prompt,
    display_rgb,
    display_zoom,
    slice_range,
    to_pixel,
)
from peft_medsa.cli import build_parser
from peft_medsa.data.preprocessing import to_rgb, to_uint8
from peft_medsa.errors import MedSAFileError, MedSAValueError
from peft_medsa.predict import Prompt, Segmenter, predict_file


@pytest.fixture
def app(sam_model):
    return MedSAApp({"base": Segmenter(sam_model)}, max_upload_mb=1)


@pytest.fixture
def volume(tmp_path):
    """A 3-D NIfTI with 2 x 3 mm in-plane voxels, 4 mm slices and a bright block to segment."""
    data = np.random.default_rng(0).normal(100, 10, (40, 50, 6)).astype(np.float32)
    data[10:30, 15:35] += 300
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-40, 10, 5]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_a_click_on_the_enlarged_picture_maps_to_the_input_pixel_under_it():
    assert display_zoom(99, 117) == 4 and display_zoom(512, 300) == 1 and display_zoom(2048, 2048) == 1
    assert to_pixel(234, 198, 4) == (58, 49)
    assert to_pixel(3.99, 0, 4) == (0, 0) and to_pixel(4, 7.5, 4) == (1, 1)


def test_clicks_collect_points_and_a_box_from_two_corners_in_any_order(app, volume):
    session = app.open(Session(), volume)
    add_click(session, 5, 6, POSITIVE)
    add_click(session, 7, 8, NEGATIVE)
    add_click(session, 30, 20, BOX)
    assert session.corner == (30, 20) and session.prompt.box is None
    add_click(session, 10, 35, BOX)
    assert session.prompt == Prompt([(5, 6)], [(7, 8)], (10, 20, 30, 35)) and session.corner is None
    assert describe_prompt(session) == "--point 5 6 --negative-point 7 8 --box 10 20 30 35 --slices 3:4"


def test_clicks_outside_the_image_or_a_flat_box_are_refused(app, volume):
    session = app.open(Session(), volume)  # voxels i < 40, j < 50
    with pytest.raises(
        MedSAValueError, match=r"lie outside the image; expected i in \[0, 40\) and j in \[0, 50\)"
    ):
        add_click(session, 40, 3, POSITIVE)
    add_click(session, 4, 4, BOX)
    with pytest.raises(MedSAValueError, match="must differ in both coordinates"):
        add_click(session, 9, 4, BOX)


def test_a_click_on_the_shown_slice_is_recorded_in_the_files_voxel_indices(app, volume):
    """The RAS-stored NIfTI is shown in the radiological view (rows P, columns L): both in-plane axes flip."""
    session = app.open(Session(), volume)
    session.slice_index = 4
    shown = session.image.slice(4)
    assert shown.shape == (50, 40)
    zoom = display_zoom(50, 40)
    app.click(session, 12 * zoom + 3, 20 * zoom, POSITIVE)  # column 12, row 20 of the shown slice
    assert session.prompt.points == [(39 - 12, 49 - 20)]
    data = np.asanyarray(nib.load(volume).dataobj)
    assert data[27, 29, 4] == shown[20, 12]
    assert session.image.canonical_prompt(session.prompt, 4).points == [(12, 20)]


def test_window_presets_map_hounsfield_units_and_auto_scales_to_the_volume():
    hu = np.array([[-1000, -160, 40, 240, 1000]], dtype=np.int16)
    soft = display_rgb(hu, "CT soft tissue (W 400, L 40)", None)
    assert soft.shape == (1, 5, 3) and soft[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    for name, (level, width) in {
        "CT lung (W 1500, L -600)": (-600, 1500),
        "CT bone (W 1800, L 400)": (400, 1800),
    }.items():
        expected = np.clip(np.round((hu[0] - level + width / 2) * 255 / width), 0, 255)
        np.testing.assert_array_equal(display_rgb(hu, name, None)[0, :, 0], expected)
    volume = np.linspace(0, 1000, 1001).reshape(1, 1001)
    half = display_rgb(volume[:, :501], "auto (MR, any image)", volume)  # percentiles of the whole volume
    assert half[0, -1, 0] == 127  # 500 is the middle of the volume's range
    assert display_rgb(volume[:, :501], "auto (MR, any image)", None)[0, -1, 0] == 255  # the slice's own top


def test_the_embedding_is_computed_once_per_slice_and_reused_for_every_click(app, volume, monkeypatch):
    segmenter = app.segmenters["base"]
    calls = []
    embed = segmenter.embed
    monkeypatch.setattr(segmenter, "embed", lambda *a, **k: calls.append(1) or embed(*a, **k))
    session = app.open(Session(), volume)
    zoom = display_zoom(50, 40)
    app.click(session, 20 * zoom, 20 * zoom, POSITIVE)
    app.click(session, 25 * zoom, 12 * zoom, POSITIVE)
    app.click(session, 2 * zoom, 2 * zoom, NEGATIVE)
    assert len(calls) == 1
    image, prompt = session.image, session.image.canonical_prompt(session.prompt, 3)
    gray = to_uint8(image.slices, segmenter.intensity)  # one mapping for the volume, as predict_file does
    expected = Segmenter(segmenter.model).segment([gray[3]], [prompt])[0]
    np.testing.assert_array_equal(session.results["base"][0], expected)
    app.select_slice(session, 4)
    assert len(calls) == 2 and session.results["base"][0].shape == (50, 40)


def test_decoding_a_stored_embedding_equals_the_full_forward_pass(sam_model):
    segmenter = Segmenter(sam_model)
    image = np.random.default_rng(1).integers(0, 255, (30, 45), dtype=np.uint8)
    prompt = Prompt([(10, 12)], box=(5, 5, 30, 25))
    embeddings = segmenter.embed([image])
    masks, iou = segmenter.decode(embeddings, [prompt])
    processed = segmenter.preprocessor([to_rgb(image)], [np.zeros((30, 45), np.uint8)])
    scale = 64 / 45
    with torch.no_grad():
        outputs = sam_model(
            pixel_values=torch.from_numpy(processed.pixel_values),
            input_points=torch.tensor([[[[10 * scale, 12 * scale]]]]),
            input_labels=torch.tensor([[[1]]]),
            input_boxes=torch.tensor([[[5 * scale, 5 * scale, 30 * scale, 25 * scale]]]),
        )  # SAM's 3 masks, the IoU head's pick (peft_medsa.mask_selection)
    assert iou[0] == pytest.approx(outputs.iou_scores[0, 0].max().item(), abs=1e-6)
    assert masks.shape == (1, 30, 45)


def test_the_summary_gives_the_area_in_square_millimetres(app, volume):
    session = app.open(Session(), volume)
    app.click(session, 100, 100, POSITIVE)
    pixels = int(session.results["base"][0].sum())
    assert f"| base | {session.results['base'][1]:.3f} | {pixels} px, {pixels * 6:.1f} mm² |" in app.summary(
        session
    )


def test_the_downloaded_mask_is_medsa_predicts_in_the_input_geometry(app, volume, tmp_path):
    session = app.open(Session(), volume)
    app.click(session, 100, 100, POSITIVE)
    written, status = app.write_mask(session, "base", "2:5")
    assert written.name == "scan_base_mask.nii.gz"
    mask, source = nib.load(written), nib.load(volume)
    np.testing.assert_array_equal(mask.affine, source.affine)
    expected = tmp_path / "expected.nii.gz"
    predict_file(app.segmenters["base"], volume, expected, dict.fromkeys(range(2, 5), session.prompt))
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), np.asanyarray(nib.load(expected).dataobj))
    assert set(np.nonzero(np.asanyarray(mask.dataobj).any(axis=(0, 1)))[0]) <= {2, 3, 4}
    voxels = int(np.asanyarray(mask.dataobj).sum())
    assert status == f"Wrote the base mask on slices 2..4: {voxels} voxels, {voxels * 24:.1f} mm³."
    current = nib.load(app.write_mask(session, "base")[0])  # blank: the current slice only
    shown = np.zeros(session.image.slices.shape, np.uint8)
    shown[3] = session.results["base"][0]  # the canonical slice d of file slice k = 3 (the axes agree here)
    np.testing.assert_array_equal(np.asanyarray(current.dataobj), session.image.layout.to_file_order(shown))


def test_a_png_and_a_dicom_slice_come_back_in_their_own_format(app, tmp_path):
    png = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(png)
    session = app.open(Session(), png)
    app.click(session, 40, 40, POSITIVE)
    written = Image.open(app.write_mask(session, "base")[0])
    assert written.size == (30, 20) and "mm²" not in app.summary(session)
    session = app.open(Session(), get_testdata_file("CT_small.dcm"))  # 128 x 128, 0.661 mm pixels
    app.click(session, 200, 200, POSITIVE)
    pixels = int(session.results["base"][0].sum())
    assert f"{pixels * 0.661468 * 0.661468:.1f} mm²" in app.summary(session)


def test_slice_ranges_read_like_medsa_predicts():
    assert slice_range("", 3, 10) == range(3, 4)
    assert slice_range(" 2:5 ", 3, 10) == range(2, 5) and slice_range("7", 3, 10) == range(7, 8)
    with pytest.raises(MedSAValueError, match="START:STOP"):
        slice_range("a:b", 3, 10)
    with pytest.raises(MedSAValueError, match=r"within 0:10"):
        slice_range("5:11", 3, 10)


def test_bad_files_raise_plain_errors_and_keep_nothing(app, tmp_path):
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not a volume")
    with pytest.raises(
        MedSAFileError, match=r"broken.nii.gz: cannot read the file, it looks truncated or corrupt"
    ):
        app.open(Session(), corrupt)
    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(b"DICM" * 50)
    with pytest.raises(MedSAFileError, match=r"scan\.dcm: no DICOM file with pixel data"):
        app.open(Session(), dicom)
    series = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(series))
    with pytest.raises(
        MedSAFileError, match=r"series.nii: expected a 3-D NIfTI volume \(x, y, z\), got shape \(4, 4, 3, 2\)"
    ):
        app.open(Session(), series)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(MedSAFileError, match=r"notes.txt: unsupported format '.txt'"):
        app.open(Session(), notes)
    big = tmp_path / "big.png"
    big.write_bytes(b"0" * (2 * 2**20))
    with pytest.raises(MedSAValueError, match=r"big.png is 2 MB; this app accepts up to 1 MB"):
        app.open(Session(), big)
    with pytest.raises(MedSAValueError, match="Open an image first"):
        app.click(Session(), 1, 1, POSITIVE)
    with pytest.raises(MedSAValueError, match="Nothing to download yet"):
        app.write_mask(Session(), "base")


def test_the_app_command_takes_models_host_port_and_upload_limit():
    args = build_parser().parse_args(["app", "--adapter", "a", "--adapter", "b", "--port", "8000"])
    assert args.handler.__name__ == "_app"
    assert (args.model, args.adapter, args.host, args.port, args.max_upload_mb) == (
        None,
        ["a", "b"],
        "127.0.0.1",
        8000,
        200,
    )
