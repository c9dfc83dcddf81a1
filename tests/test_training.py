"""The training job end to end on the offline demo task: outputs, best checkpoint, resume, and 2 processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hub import FakeHub
from transformers import TrainerCallback

from peft_medsa import MedSAError
from peft_medsa.training.arguments import bf16_by_default, parse_arguments
from peft_medsa.training.run import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(sam_checkpoint):
    return sam_checkpoint


def arguments(base, output, *extra, batch=4):
    return [
        "--model_name_or_path",
        str(base),
        "--task",
        "demo-2d",
        "--output_dir",
        str(output),
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        str(batch),
        "--learning_rate",
        "1e-3",
        "--save_steps",
        "2",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "--seed",
        "3",
        "--max_eval_samples",
        "8",
        "--disable_tqdm",
        "true",
        # Runs here are compared to 1e-5: integer (noise-free) boxes keep Adam's amplification of float
        # summation-order differences below that (SAM's box noise itself is tested in test_data_prompts).
        "--train_box_noise",
        "0",
        *extra,
    ]


def adapter(folder):
    return load_file(Path(folder) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """An uninterrupted single-process run of 6 steps, batch 4."""
    output = tmp_path_factory.mktemp("reference")
    train(*parse_arguments(arguments(base, output)))
    return output


def test_outputs_are_adapter_only(reference):
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "eval_results.json"} <= {
        p.name for p in reference.iterdir()
    }
    for folder in [reference, *reference.glob("checkpoint-*")]:
        weights = adapter(folder)
        assert weights and all(".medsa_" in key for key in weights), folder
        assert not (folder / "model.safetensors").exists()
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]


def test_best_checkpoint_by_dice_is_kept(base, tmp_path):
    args = arguments(
        base, tmp_path, "--eval_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end"
    )
    train(*parse_arguments(args))
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    dice = {entry["step"]: entry["eval_dice"] for entry in state["log_history"] if "eval_dice" in entry}
    best_step = max(dice, key=dice.get)  # first of equals, as the Trainer keeps it
    assert state["best_metric"] == pytest.approx(dice[best_step])
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    final, best = adapter(tmp_path), adapter(tmp_path / f"checkpoint-{best_step}")
    assert all(torch.equal(final[key], best[key]) for key in best)


class Kill(TrainerCallback):
    """Stops the run abruptly after step 3, as a killed job would (checkpoint-2 is on disk)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("killed")


class Steps(TrainerCallback):
    """Records the global step at each `event` (step or epoch end)."""

    def __init__(self, event="on_step_end"):
        self.seen = []
        setattr(self, event, lambda args, state, control, **kwargs: self.seen.append(state.global_step))


def test_rerun_after_a_kill_resumes_and_reaches_the_same_adapter(base, reference, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        train(*parse_arguments(arguments(base, tmp_path)), callbacks=[Kill()])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    steps = Steps()
    train(*parse_arguments(arguments(base, tmp_path)), callbacks=[steps])  # the same command: resumes
    assert steps.seen == [3, 4, 5, 6]  # from checkpoint-2
    resumed, uninterrupted = adapter(tmp_path), adapter(reference)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=1e-5)


def test_a_finished_run_or_a_foreign_folder_is_not_trained_into(base, reference, tmp_path):
    before = adapter(reference)
    with pytest.raises(MedSAError, match=r"already holds a trained adapter.*--overwrite_output_dir"):
        train(*parse_arguments(arguments(base, reference)))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MedSAError, match="not empty and holds no checkpoint"):
        train(*parse_arguments(arguments(base, tmp_path)))
    assert all(torch.equal(before[key], value) for key, value in adapter(reference).items())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_train_only_few_samples_and_publish_at_the_end(base, tmp_path, monkeypatch):
    """--max_train_samples, --do_eval false, the adapter group from MedSAConfig's fields, and --push_to_hub with
    hub_strategy all_checkpoints: checkpoint adapters under checkpoint-N/, then the kept adapter, never a pickle."""
    hub = FakeHub(monkeypatch)
    extra = ["--max_train_samples", "2", "--max_steps", "4", "--do_eval", "false", "--push_to_hub"]
    extra += ["--hub_model_id", "someone/medsa-demo", "--hub_strategy", "all_checkpoints"]
    extra += ["--hyper_prompt_mode", "add", "--mlp_scale", "0.3", "--layers_to_transform", "1"]
    epochs = Steps(event="on_epoch_end")
    metrics = train(*parse_arguments(arguments(base, tmp_path, *extra, batch=1)), callbacks=[epochs])
    assert metrics == {} and not (tmp_path / "eval_results.json").exists()
    assert epochs.seen == [2, 4]  # 2 examples, batch 1: an epoch every 2 steps
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["hyper_prompt_mode"], config["mlp_scale"], config["layers_to_transform"]) == (
        "add",
        0.3,
        [1],
    )
    assert [commit["repo_id"] for commit in hub.commits] == ["someone/medsa-demo"] * 3
    sent = [sorted(commit["files"]) for commit in hub.commits]
    assert sent[:2] == [
        [
            f"checkpoint-{step}/{name}"
            for name in ("README.md", "adapter_config.json", "adapter_model.safetensors")
        ]
        for step in (2, 4)
    ]
    assert sent[2] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "all_results.json",
        "train_results.json",
    ]
    assert (tmp_path / "checkpoint-4" / "training_args.bin").exists()  # kept locally, never sent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(base, reference, tmp_path):
    """DDP over gloo with batch 2 per process equals one process with batch 4 (same seed, same global batch)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "examples/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(REPO / "examples/train_medsa.py"),
        *arguments(base, tmp_path, batch=2),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = adapter(tmp_path), adapter(reference)
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)


def test_gradient_accumulation_matches_a_larger_batch(base, reference, tmp_path):
    train(*parse_arguments(arguments(base, tmp_path, "--gradient_accumulation_steps", "2", batch=2)))
    accumulated, one = adapter(tmp_path), adapter(reference)
    for key in one:
        torch.testing.assert_close(accumulated[key], one[key], atol=1e-5, rtol=1e-4)


def test_volumes_train_through_sd_trans(base, tmp_path):
    """3-D chunks (5-D input) through the Trainer: accelerate's batch dispatch keeps every slice's prompt."""
    metrics = train(
        *parse_arguments(
            arguments(
                base,
                tmp_path,
                "--task",
                "demo-3d",
                "--depth",
                "2",
                "--max_steps",
                "2",
                "--max_eval_samples",
                "2",
                batch=2,
            )
        )
    )
    assert 0 <= metrics["eval_dice"] <= 1
    assert any(".medsa_depth_" in key for key in adapter(tmp_path))


def test_push_without_a_token_stops_before_training(base, tmp_path, monkeypatch):
    FakeHub(monkeypatch)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("peft_medsa.hub.get_token", lambda: None)
    with pytest.raises(MedSAError, match=r"no token\. Log in with `hf auth login`"):
        train(*parse_arguments(arguments(base, tmp_path / "run", "--push_to_hub")))
    assert not (tmp_path / "run").exists()  # nothing was trained, nothing half-written


@pytest.mark.parametrize(
    ("cuda", "bf16_supported", "fp16", "use_cpu", "expected"),
    [
        (False, False, False, False, False),  # CPU: float32
        (True, True, False, False, True),  # an Ampere-or-newer GPU: bf16 autocast
        (True, False, False, False, False),  # an older GPU: float32
        (True, True, True, False, False),  # the user chose fp16
        (True, True, False, True, False),  # the user chose the CPU
    ],
)
def test_bf16_autocast_is_the_default_on_gpus_that_support_it(
    monkeypatch, cuda, bf16_supported, fp16, use_cpu, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert bf16_by_default(fp16, use_cpu) is expected


@pytest.mark.parametrize(
    ("flags", "yaml_values", "expected"),
    [
        ([], {}, False),
        (["--bf16", "--use_cpu"], {"bf16": True, "use_cpu": True}, True),
        (["--bf16", "false"], {"bf16": False}, False),
    ],
)
def test_bf16_default_resolves_on_the_command_line_and_in_yaml(tmp_path, flags, yaml_values, expected):
    """On this machine (no GPU) the default is off; an explicit --bf16 (bare or with a value) wins, in YAML too."""
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "task": "demo-2d", **yaml_values}))
    assert parse_arguments(["--output_dir", str(tmp_path), "--task", "demo-2d", *flags])[3].bf16 is expected
    assert parse_arguments([str(config)])[3].bf16 is expected


def test_torch_compile_without_a_cpp_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ there
    monkeypatch.delenv("CXX", raising=False)
    args = ["--output_dir", str(tmp_path / "run"), "--task", "demo-2d", "--use_cpu", "--torch_compile"]
    with pytest.raises(
        MedSAError, match=r"^--torch_compile builds C\+\+ kernels for the CPU, but no C\+\+ compiler"
    ):
        train(*parse_arguments(args))
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written
