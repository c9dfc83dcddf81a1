"""The `medsa` command line on real offline files: geometry round trips, overlays, and one-line errors."""

import copy
import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import tiny_sam_config
from peft import get_peft_model
from PIL import Image
from pydicom.data import get_testdata_file
from transformers import SamModel

from peft_medsa import MedSAConfig
from peft_medsa.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny SAM saved as a checkpoint, a Med-SA adapter for it (with SD-Trans), and one for a wider SAM."""
    root = tmp_path_factory.mktemp("checkpoints")
    base = SamModel(tiny_sam_config())
    base.save_pretrained(root / "base")
    get_peft_model(copy.deepcopy(base), MedSAConfig(depth_attention=True)).save_pretrained(root / "adapter")
    wider = SamModel(tiny_sam_config(hidden_size=96, mlp_dim=192))
    get_peft_model(wider, MedSAConfig()).save_pretrained(root / "wide-adapter")
    return root


@pytest.fixture(scope="module")
def mni_volume(tmp_path_factory):
    """A real MR volume (nilearn's MNI152 template, cropped to 40 axial slices), as NIfTI."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template()
    path = tmp_path_factory.mktemp("volumes") / "mni.nii.gz"
    nib.save(template.slicer[:, :, 60:100], str(path))
    return path


def run(*argv):
    return main([str(a) for a in argv])


def model_args(checkpoints, adapter="adapter"):
    return ["--model", checkpoints / "base", "--adapter", checkpoints / adapter]


def test_predict_volume_keeps_the_geometry(checkpoints, mni_volume, tmp_path, capsys):
    output = tmp_path / "mask.nii.gz"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({str(k): [60, 70, 140, 160] for k in range(10, 16)}))
    assert (
        run("predict", mni_volume, *model_args(checkpoints), "--boxes-file", boxes, "--output", output) == 0
    )
    source, mask = nib.load(str(mni_volume)), nib.load(str(output))
    assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    assert not data[:, :, :10].any() and not data[:, :, 16:].any(), "only prompted slices are segmented"
    overlay = Image.open(tmp_path / "mask.overlay.png")
    assert overlay.size == (source.shape[1], source.shape[0]) and overlay.mode == "RGB"
    assert "mask:" in capsys.readouterr().out


def test_predict_dicom_keeps_the_geometry(checkpoints, tmp_path):
    source_path = get_testdata_file("examples_overlay.dcm")  # a real abdominal MR slice
    output = tmp_path / "mask.dcm"
    assert run("predict", source_path, *model_args(checkpoints), "--point", 200, 150, "--output", output) == 0
    source, mask = pydicom.dcmread(source_path), pydicom.dcmread(output)
    assert (mask.Rows, mask.Columns) == (source.Rows, source.Columns)
    for tag in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "StudyInstanceUID"):
        if tag in source:
            assert mask.get(tag) == source.get(tag)
    assert mask.SOPInstanceUID != source.SOPInstanceUID
    assert set(np.unique(mask.pixel_array)) <= {0, 1}


def test_predict_png(checkpoints, tmp_path):
    image = tmp_path / "lesion.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(image)
    output = tmp_path / "mask.png"
    assert run("predict", image, *model_args(checkpoints), "--box", 10, 20, 60, 70, "--output", output) == 0
    assert Image.open(output).size == (120, 90)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.png", "--point", 1, 1], "No input file at missing.png"),
        (
            ["{png}", "--point", 500, 10],
            r"prompt coordinates \[\(500.0, 10.0\)\] lie outside the image \(120 x 90 px",
        ),
        (["{png}", "--box", 50, 10, 20, 40], "must have x1 < x2 and y1 < y2"),
        (["{txt}", "--point", 1, 1], "unsupported format '.txt'"),
        (["{png}"], "Give a prompt"),
        (["{png}", "--point", 1, 1, "--adapter", "{wide}"], "trained on a SAM of another size"),
        (["{vol}", "--box", 1, 1, 9, 9, "--slices", "300:302"], r"prompted slices \[300, 301\] do not exist"),
    ],
)
def test_predict_errors_are_one_line(checkpoints, mni_volume, tmp_path, capsys, arguments, message):
    png, txt = tmp_path / "image.png", tmp_path / "notes.txt"
    Image.fromarray(np.zeros((90, 120), np.uint8)).save(png)
    txt.write_text("hello")
    names = {"{png}": png, "{txt}": txt, "{wide}": checkpoints / "wide-adapter", "{vol}": mni_volume}
    arguments = [names.get(a, a) for a in arguments]
    base = ["--model", checkpoints / "base"] + (
        [] if "--adapter" in arguments else ["--adapter", checkpoints / "adapter"]
    )
    suffix = ".nii.gz" if arguments[0] == mni_volume else ".png"
    assert run("predict", *arguments, *base, "--output", tmp_path / f"out{suffix}") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("medsa: error:")
    assert re.search(message, error), error


def test_existing_output_is_never_overwritten(checkpoints, tmp_path, capsys):
    image, output = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    output.write_bytes(b"a mask someone saved")
    args = ["predict", image, *model_args(checkpoints), "--point", 5, 5, "--output", output]
    assert run(*args) == 2
    assert "already exist" in capsys.readouterr().err and output.read_bytes() == b"a mask someone saved"
    assert run(*args, "--overwrite") == 0 and output.read_bytes() != b"a mask someone saved"


def test_console_script_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_medsa.cli",
            "predict",
            str(tmp_path / "none.nii.gz"),
            "--model",
            "x",
            "--box",
            "1",
            "1",
            "2",
            "2",
            "--output",
            str(tmp_path / "o.nii.gz"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"medsa: error: No input file at {tmp_path / 'none.nii.gz'}."
    )


def test_eval_scores_an_adapter_and_the_box_baseline(checkpoints, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    args = [
        "eval",
        *model_args(checkpoints),
        "--task",
        "demo-2d",
        "--split",
        "validation",
        "--max-samples",
        "6",
        "--box-baseline",
        "--output",
        output,
    ]
    assert run(*args) == 0
    report = json.loads(output.read_text())
    assert report["examples"] == 6 and report["prompt"] == "box"
    assert 0 <= report["metrics"]["validation_dice"] <= 1 and 0 <= report["box_baseline"]["dice"] <= 1
    assert json.loads(capsys.readouterr().out) == report
    assert run(*args) == 2 and "already exist" in capsys.readouterr().err
