"""The `medsa` command line on real offline files: geometry round trips, overlays, and one-line errors."""

import copy
import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_sam_config
from peft import get_peft_model
from PIL import Image
from transformers import SamModel

import peft_medsa
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


SUFFIXES = (".png", ".txt", ".json", ".nii.gz")


def run(*argv):
    return main([str(a) for a in argv])


def model_args(checkpoints, adapter="adapter"):
    return ["--model", checkpoints / "base", "--adapter", checkpoints / adapter]


def test_predict_volume_keeps_the_geometry(checkpoints, mni_volume, tmp_path, capsys):
    output = tmp_path / "mask.nii.gz"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({str(k): [60, 70, 140, 160] for k in range(10, 16)}))  # i1 j1 i2 j2 per k
    assert (
        run("predict", mni_volume, *model_args(checkpoints), "--boxes-file", boxes, "--output", output) == 0
    )
    source, mask = nib.load(str(mni_volume)), nib.load(str(output))
    assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    assert not data[:, :, :10].any() and not data[:, :, 16:].any(), "only prompted slices are segmented"
    overlay = Image.open(tmp_path / "mask.overlay.png")  # the canonical view: rows P, columns L
    assert overlay.size == (source.shape[0], source.shape[1]) and overlay.mode == "RGB"
    assert "mask:" in capsys.readouterr().out


def test_predict_tiny_images_keep_their_shape(checkpoints, tmp_path):
    for shape in [(3, 40), (1, 2), (2, 3, 3)]:  # 3 rows, 1 row, 2 rows of RGB: never channels-first
        image, output = tmp_path / f"{shape}.png", tmp_path / f"{shape}-mask.png"
        Image.fromarray(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) * 7).save(image)
        assert run("predict", image, *model_args(checkpoints), "--point", 0, 0, "--output", output) == 0
        assert np.asarray(Image.open(output)).shape == shape[:2]


def test_predict_png(checkpoints, tmp_path):
    image = tmp_path / "lesion.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(image)
    output = tmp_path / "mask.png"
    assert run("predict", image, *model_args(checkpoints), "--box", 10, 20, 60, 70, "--output", output) == 0
    assert Image.open(output).size == (120, 90)


@pytest.fixture
def bad_files(tmp_path, mni_volume):
    png, flat, txt = tmp_path / "image.png", tmp_path / "flat.png", tmp_path / "notes.txt"
    Image.fromarray(np.arange(90 * 120).reshape(90, 120).astype(np.uint8)).save(png)
    Image.fromarray(np.full((90, 120), 7, np.uint8)).save(flat)
    txt.write_text("hello")
    (tmp_path / "corrupt.nii.gz").write_bytes(mni_volume.read_bytes()[:5000])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 30)), np.eye(4)), tmp_path / "2d.nii.gz")
    source = nib.load(mni_volume)  # the same volume with its slice axis stored second: (x, z, y)
    swapped = source.affine[:, [0, 2, 1, 3]]
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj).transpose(0, 2, 1), swapped), tmp_path / "xzy.nii.gz")
    for name, text in [("three", "[1, 2, 3]"), ("json", "{'1': [1, 2, 3, 4]}"), ("word", '[1, 2, "a", 4]')]:
        (tmp_path / f"{name}.json").write_text(text if name == "json" else f'{{"3": {text}}}')
    return tmp_path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.png", "--point", 1, 1], "No input file at .*missing.png"),
        (
            ["image.png", "--point", 500, 10],
            r"prompt coordinates \[\(500.0, 10.0\)\] lie outside the image; expected x in \[0, 120\) and y in",
        ),
        (["image.png", "--box", 50, 10, 20, 40], "must have x1 < x2 and y1 < y2"),
        (
            ["image.png", "--point", "nan", 3],
            r"prompt coordinates must be finite numbers, got \[\(nan, 3.0\)\]",
        ),
        (["image.png", "--box", 1, 1, "inf", 9], "prompt coordinates must be finite numbers"),
        (["flat.png", "--point", 1, 1], "every pixel has the value 7; expected an image with some contrast"),
        (["notes.txt", "--point", 1, 1], "unsupported format '.txt'"),
        (["image.png"], "Give a prompt"),
        (["image.png", "--point", 1, 1, "--adapter", "{wide}"], "trained on a SAM of another size"),
        (["image.png", "--point", 1, 1, "--device", "banana"], "Unknown device 'banana'"),
        (["{vol}", "--box", 1, 1, 9, 9, "--slices", "300:302"], r"prompted slices \[300, 301\] do not exist"),
        (["{vol}", "--point", 500, 3, "--slices", "2"], r"expected i in \[0, 197\) and j in \[0, 233\)"),
        (["{vol}", "--point", 5, 3, "--slices", "5:3"], "--slices '5:3': START must be smaller than STOP"),
        (["{vol}", "--point", 5, 3, "--slices", "abc"], "--slices 'abc': expected K or START:STOP"),
        (["{vol}", "--point", 5, 3, "--slices=-1:3"], "--slices '-1:3': expected K or START:STOP"),
        (["{vol}", "--point", 5, 3, "--slices", "1.5"], "--slices '1.5': expected K or START:STOP"),
        (["{vol}", "--boxes-file", "three.json"], r"one box of 4 numbers per slice; slice 3 has \[1, 2, 3\]"),
        (["{vol}", "--boxes-file", "json.json"], "the file is not valid JSON"),
        (["{vol}", "--boxes-file", "word.json"], r"slice 3 has \[1, 2, 'a', 4\]"),
        (["corrupt.nii.gz", "--point", 1, 1], r"corrupt\.nii\.gz: cannot read the file, it looks truncated"),
        (["2d.nii.gz", "--point", 1, 1], r"expected a 3-D NIfTI volume \(x, y, z\), got shape \(20, 30\)"),
        (["xzy.nii.gz", "--point", 1, 1], "voxel axes run toward RSA, so its third axis is not the slice"),
    ],
)
def test_predict_errors_are_one_line(checkpoints, mni_volume, bad_files, capsys, arguments, message):
    names = {"{wide}": checkpoints / "wide-adapter", "{vol}": mni_volume}
    arguments = [names.get(a, bad_files / a if str(a).endswith(SUFFIXES) else a) for a in arguments]
    base = ["--model", checkpoints / "base"] + (
        [] if "--adapter" in arguments else ["--adapter", checkpoints / "adapter"]
    )
    suffix = next(s for s in (".nii.gz", ".png", ".txt") if str(arguments[0]).endswith(s))
    assert run("predict", *arguments, *base, "--output", bad_files / f"out{suffix}") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("medsa: error:")
    assert re.search(message, error), error


def test_cuda_device_without_a_gpu_is_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = tmp_path / "image.png"
    Image.fromarray(np.arange(64 * 64).reshape(64, 64).astype(np.uint8)).save(image)
    args = ["predict", image, *model_args(checkpoints), "--point", 5, 5, "--output", tmp_path / "m.png"]
    assert run(*args, "--device", "cuda") == 2
    assert "no CUDA GPU is available; use --device cpu" in capsys.readouterr().err
    assert run(*args) == 0  # the default falls back to the CPU


def test_existing_output_is_never_overwritten(checkpoints, tmp_path, capsys):
    image, output = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.arange(64 * 64).reshape(64, 64).astype(np.uint8)).save(image)
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
        "--device",
        "cpu",
        "--output",
        output,
    ]
    assert run(*args) == 0
    report = json.loads(output.read_text())
    assert report["examples"] == 6 and report["prompt"] == "box"
    assert 0 <= report["metrics"]["dice"] <= 1 and 0 <= report["box_baseline"]["dice"] <= 1
    # demo-2d slices are PNGs without spacing: distances are original-image pixels, named so, never mm
    assert (
        report["distance_unit"] == "px"
        and "hd95_px" in report["metrics"]
        and "hd95_mm" not in report["metrics"]
    )
    assert report["units"].startswith("HD95 in pixels, NSD at a tolerance of 1 px")
    assert {row["case_id"] for row in report["per_case"]} <= {"mni152-slab4", "lung2"}
    assert json.loads(capsys.readouterr().out) == report
    assert run(*args) == 2 and "already exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "output_dir: out\nmax_steps: abc\n", r"a.yaml: `max_steps` must be an integer, got 'abc'"),
        ("b.yaml", "output_dir: out\nmax_stepz: 3\n", r"b.yaml: unknown argument\(s\) \['max_stepz'\]"),
        ("c.yaml", "output_dir: out\nmax_steps: [3\n", r"c.yaml, line 3: invalid YAML"),
        ("d.json", '{"output_dir": "out",\n "learning_rate": }', r"d.json, line 2: invalid JSON"),
        (
            "e.json",
            '{"output_dir": "out", "learning_rate": "fast"}',
            r"`learning_rate` must be a finite number",
        ),
        ("f.yaml", "output_dir: out\nbf16: maybe\n", r"`bf16` must be true or false or None, got 'maybe'"),
        ("g.yaml", "- output_dir\n", r"g.yaml must hold a mapping of argument names to values, got a list"),
        ("h.yaml", "output_dir: out\nadapter_ratio: [1]\n", r"`adapter_ratio` must be a finite number"),
        ("i.yaml", "output_dir: out\ntask: 5\n", r"`task` must be a string, got 5"),
    ],
)
def test_train_file_mistakes_are_one_line_naming_the_file_and_key(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert run("train", tmp_path / name) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"medsa: error: {tmp_path / name}"), error
    assert re.search(message, error), error


def test_train_file_strings_are_read_as_the_command_line_would(tmp_path):
    from peft_medsa.training.arguments import parse_arguments

    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\nlearning_rate: 1e-3\nmax_steps: '7'\nstreaming: 'false'\n")
    _, task_args, _, training_args = parse_arguments([str(path)])
    assert (training_args.learning_rate, training_args.max_steps, task_args.streaming) == (1e-3, 7, False)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a genuine bug")

    monkeypatch.setattr("peft_medsa.cli._predict", broken)
    with pytest.raises(KeyError, match="a genuine bug"):
        run("predict", "x.png", "--model", "m", "--point", 1, 1, "--output", "o.png")


def test_version_and_the_task_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        run("--version")
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"medsa {peft_medsa.__version__}"
    assert run("tasks") == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"acdc", "btcv", "demo-2d", "isic2018", "kvasir-seg"} <= rows.keys()
    assert re.search(r"mathpluscode/ACDC\s+yes\s+CC BY-NC-SA 4\.0", rows["acdc"])
    assert re.search(r"MedOtter/msd-spleen\s+no\s+CC BY-SA 4\.0", rows["msd-spleen"])
    assert re.search(r"Angelou0516/btcv\s+no\s+cc-by-4\.0", rows["btcv"])
    assert re.search(r"Angelou0516/BUSI\s+yes\s+other", rows["busi"])
    assert re.search(r"MedOtter/LIDC-IDRI\s+no\s+not stated", rows["lidc-idri"])


def test_help_imports_no_torch():
    """What keeps `medsa --help` fast (benchmarks/cli_startup.py measures it): nothing heavy before a command."""
    code = "import sys; from peft_medsa.cli import main\ntry:\n    main(['predict', '--help'])\nexcept SystemExit:\n"
    code += "    print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_push_sends_the_adapter_folder_and_reports_a_missing_token_in_one_line(
    checkpoints, capsys, monkeypatch
):
    from test_hub import FakeHub

    hub = FakeHub(monkeypatch)
    assert run("push", checkpoints / "adapter", "someone/medsa-x", "--private") == 0
    assert "pushed" in capsys.readouterr().out
    (commit,) = hub.commits
    assert sorted(commit["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert hub.repos == [("someone/medsa-x", {"private": True, "exist_ok": True})]
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("peft_medsa.hub.get_token", lambda: None)
    assert run("push", checkpoints / "adapter", "someone/medsa-x") == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("medsa: error: Cannot push to the Hugging Face Hub: no token") and "\n" not in error
    )


def test_hub_download_bars_stay_on_and_weight_loading_bars_off():
    import huggingface_hub.utils
    from transformers.utils import logging

    huggingface_hub.utils.disable_progress_bars()
    try:
        assert run("tasks") == 0
        assert not huggingface_hub.utils.are_progress_bars_disabled()
        assert not logging.is_progress_bar_enabled()
    finally:
        logging.enable_progress_bar()
