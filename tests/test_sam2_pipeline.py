"""The whole pipeline on a SAM 2 checkpoint (issue 13): `medsa train`, `eval` and `predict` with a tiny random
Sam2VideoModel saved as a folder, as `facebook/sam2.1-hiera-tiny` is saved (model type `sam2_video`)."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_sam2_config, tiny_sam3_tracker_config
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    Sam2Model,
    Sam2VideoConfig,
    Sam2VideoModel,
    Sam3TrackerVideoConfig,
    Sam3TrackerVideoModel,
)

from peft_medsa import MedSAValueError
from peft_medsa.cli import main
from peft_medsa.data.preprocessing import preprocessor_for
from peft_medsa.predict import Prompt, _prompt_tensors, load_model

DEPTH = 7


def run(*argv):
    return main([str(a) for a in argv])


def train_two_steps(base, output) -> None:
    """`medsa train` for 2 steps on the demo task, without checkpoints."""
    train = ["train", "--model_name_or_path", base, "--task", "demo-2d", "--output_dir", output]
    steps = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_eval_samples", "4"]
    quiet = ["--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"]
    assert run(*train, *steps, *quiet) == 0


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    """A tiny SAM 2 video checkpoint and a Med-SA adapter trained on it for 2 steps by `medsa train`."""
    root = tmp_path_factory.mktemp("sam2")
    torch.manual_seed(0)
    Sam2VideoModel(tiny_sam2_config(Sam2VideoConfig)).save_pretrained(root / "base")
    train_two_steps(root / "base", root / "adapter")
    return root


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A bright box on every slice of a (50, 40, 7) volume over noise, 2 x 2 x 3 mm, and the same volume with
    its slice axis running the other way (file slice k is canonical slice 6 - k)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 300, (50, 40, DEPTH)).astype(np.int16)
    data[10:35, 8:30] += 1500
    root = tmp_path_factory.mktemp("volumes")
    for name, z in [("up", 3.0), ("down", -3.0)]:
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, z, 1.0])), root / f"{name}.nii.gz")
    return root


def test_train_writes_a_sam2_adapter_with_its_metrics_and_card(sam2):
    adapter = sam2 / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "MEDSA" and config["depth_attention"] is False
    assert any(
        ".vision_encoder.backbone.blocks." in key for key in load_file(adapter / "adapter_model.safetensors")
    )
    assert 0 <= json.loads((adapter / "metrics.json").read_text())["metrics"]["dice"] <= 1
    assert "from transformers import Sam2Model, Sam2Processor" in (adapter / "README.md").read_text()


def test_eval_scores_the_sam2_adapter(sam2, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    model = ["--model", sam2 / "base", "--adapter", sam2 / "adapter"]
    task = ["--task", "demo-2d", "--split", "validation", "--max-samples", "4", "--device", "cpu"]
    assert run("eval", *model, *task, "--output", output) == 0
    report = json.loads(output.read_text())
    assert report["examples"] == 4 and 0 <= report["metrics"]["dice"] <= 1


def test_predict_png_keeps_its_size(sam2, tmp_path):
    image, output = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray((np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)).save(image)
    model = ["--model", sam2 / "base", "--adapter", sam2 / "adapter"]
    assert run("predict", image, *model, "--box", 10, 5, 50, 30, "--output", output) == 0
    assert Image.open(output).size == (70, 45)


@pytest.mark.parametrize("name", ["up", "down"])
def test_predict_volume_propagates_from_a_key_slice_within_the_range(
    sam2, volume, tmp_path, monkeypatch, name
):
    seen = []  # (frames the video model is given, its prompts' slices)
    propagate = Sam2VideoModel.propagate_in_video_iterator
    monkeypatch.setattr(
        Sam2VideoModel,
        "propagate_in_video_iterator",
        lambda self, session, **kwargs: seen.append(session.num_frames) or propagate(self, session, **kwargs),
    )
    source, output = volume / f"{name}.nii.gz", tmp_path / "mask.nii.gz"
    model = ["--model", sam2 / "base", "--adapter", sam2 / "adapter"]
    prompt = ["--box", 8, 6, 36, 32, "--slices", 3, "--propagate", "1:6"]
    assert run("predict", source, *model, *prompt, "--output", output) == 0
    assert seen == [5, 5]  # forward and backward, over the 5 slices of the range only
    image, mask = nib.load(source), nib.load(output)
    assert mask.shape == image.shape and np.array_equal(mask.affine, image.affine)  # the input's geometry
    data = np.asarray(mask.dataobj)
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(data)) <= {0, 1}
    assert not data[:, :, [0, 6]].any()  # outside the range: untouched
    assert sum(data[:, :, k].any() for k in range(1, 6)) >= 2  # the key slice and slices it propagated to


def test_the_volume_model_is_the_video_model_and_loads_the_adapter(sam2):
    image_model = load_model(str(sam2 / "base"), str(sam2 / "adapter"))
    video_model = load_model(str(sam2 / "base"), str(sam2 / "adapter"), video=True)
    assert isinstance(image_model.get_base_model(), Sam2Model)
    assert isinstance(video_model.get_base_model(), Sam2VideoModel)
    image_weights, video_weights = image_model.state_dict(), video_model.state_dict()
    adapters = [key for key in image_weights if ".medsa_" in key]
    assert adapters and all(torch.equal(image_weights[key], video_weights[key]) for key in adapters)


def test_sam2_images_are_stretched_to_the_square_input():
    sam2 = preprocessor_for(Sam2Model(tiny_sam2_config()).config)
    processed = sam2([np.zeros((40, 50, 3), np.uint8)], [np.ones((40, 50), np.uint8)])
    assert processed.pixel_values.shape == (1, 3, 64, 64) and processed.reshaped_size == (64, 64)
    assert processed.labels.shape == (1, 16, 16) and processed.labels.all()  # no padding
    assert sam2.prompt_scale(40, 50) == (64 / 50, 64 / 40)


def test_sam_keeps_its_padded_frame(sam_model):
    sam = preprocessor_for(sam_model.config)
    processed = sam([np.zeros((40, 50, 3), np.uint8)], [np.ones((40, 50), np.uint8)])
    assert processed.reshaped_size == (51, 64) and sam.prompt_scale(40, 50) == (64 / 50, 64 / 50)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_depth_with_a_sam2_model_is_one_clear_error(sam2, tmp_path, capsys, command):
    if command == "train":
        argv = ["train", "--model_name_or_path", sam2 / "base", "--output_dir", tmp_path / "out", "--use_cpu"]
    else:
        argv = ["eval", "--model", sam2 / "base", "--split", "validation", "--device", "cpu"]
    assert run(*argv, "--task", "demo-3d", "--depth", 2) == 2
    assert capsys.readouterr().err.startswith(
        "medsa: error: --depth (chunks of slices through SD-Trans, the depth branch) is SAM-only; this is a "
        "SAM 2 model, which trains and is evaluated on volumes slice by slice (omit --depth)"
    )


def test_propagating_with_sam_is_one_clear_error(sam_checkpoint, volume, tmp_path, capsys):
    argv = ["--box", 8, 6, 36, 32, "--slices", 3, "--propagate", "1:6", "--output", tmp_path / "mask.nii.gz"]
    assert run("predict", volume / "up.nii.gz", "--model", sam_checkpoint, *argv) == 2
    assert (
        "Propagating prompts through slices needs a SAM 2-family video checkpoint" in capsys.readouterr().err
    )


def test_a_range_without_the_key_slice_is_one_clear_error(sam2, volume, tmp_path, capsys):
    argv = ["--box", 8, 6, 36, 32, "--slices", 3, "--propagate", "4:7", "--output", tmp_path / "mask.nii.gz"]
    assert run("predict", volume / "up.nii.gz", "--model", sam2 / "base", *argv) == 2
    assert "prompted slices [3] lie outside the slices to propagate through (4:7)" in capsys.readouterr().err


def test_checkpoints_the_pipeline_cannot_take(tmp_path):
    Sam2Model(tiny_sam2_config()).save_pretrained(tmp_path / "image-only")
    with pytest.raises(
        MedSAValueError, match=r"SAM 2 image checkpoint \('sam2'\) without the memory weights"
    ):
        load_model(str(tmp_path / "image-only"), None, video=True)
    (tmp_path / "edgetam").mkdir()
    (tmp_path / "edgetam" / "config.json").write_text('{"model_type": "edgetam"}')
    with pytest.raises(
        MedSAValueError, match=r"is a 'edgetam' checkpoint; .*RepViT image encoder \(a timm model\)"
    ):
        load_model(str(tmp_path / "edgetam"), None)


def test_sam2_prompts_are_scaled_per_axis_into_the_stretched_frame():
    sam2 = preprocessor_for(Sam2Model(tiny_sam2_config()).config)
    tensors = _prompt_tensors([Prompt([(10.0, 20.0)], box=(5.0, 5.0, 30.0, 25.0))], sam2.prompt_scale(40, 50))
    # x by 64 / 50, y by 64 / 40 (float32 products)
    torch.testing.assert_close(tensors["input_boxes"], torch.tensor([[[6.4, 8.0, 38.4, 40.0]]]))
    torch.testing.assert_close(tensors["input_points"], torch.tensor([[[[12.8, 32.0]]]]))


def test_the_sam3_tracker_trains_and_propagates_through_a_volume(volume, tmp_path):
    """The SAM 3 tracker takes the same path as SAM 2: `medsa train` 2 steps, then a volume propagated from a key
    slice with its video model, written in the input's geometry."""
    torch.manual_seed(0)
    Sam3TrackerVideoModel(tiny_sam3_tracker_config(Sam3TrackerVideoConfig)).save_pretrained(tmp_path / "base")
    train_two_steps(tmp_path / "base", tmp_path / "a")
    assert any(
        ".vision_encoder.backbone.layers." in key
        for key in load_file(tmp_path / "a/adapter_model.safetensors")
    )
    source, output = volume / "up.nii.gz", tmp_path / "mask.nii.gz"
    prompt = ["--box", 8, 6, 36, 32, "--slices", 3, "--propagate", "1:6"]
    assert (
        run(
            "predict",
            source,
            "--model",
            tmp_path / "base",
            "--adapter",
            tmp_path / "a",
            *prompt,
            "--output",
            output,
        )
        == 0
    )
    image, mask = nib.load(source), nib.load(output)
    assert mask.shape == image.shape and np.array_equal(mask.affine, image.affine)
    data = np.asarray(mask.dataobj)
    assert not data[:, :, [0, 6]].any() and data[:, :, 3].any()


@pytest.mark.parametrize(
    ("propagate", "message"),
    [
        ("6:2", "--propagate '6:2': START must be smaller than STOP"),
        ("abc", "--propagate 'abc': expected K or START:STOP"),
        ("0:99", r"cannot propagate through slices 0:99; expected START:STOP"),
    ],
)
def test_bad_propagation_ranges_are_one_line(sam2, volume, tmp_path, capsys, propagate, message):
    argv = [
        "--box",
        8,
        6,
        36,
        32,
        "--slices",
        3,
        "--propagate",
        propagate,
        "--output",
        tmp_path / "mask.nii.gz",
    ]
    assert run("predict", volume / "up.nii.gz", "--model", sam2 / "base", *argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert not (tmp_path / "mask.nii.gz").exists()
