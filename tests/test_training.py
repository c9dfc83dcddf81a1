"""The training job end to end on the offline demo task: outputs, best checkpoint, resume, and 2 processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from peft_medsa.training.arguments import parse_arguments
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
    import json

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


def test_resume_after_a_kill_reaches_the_same_adapter(base, reference, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        train(*parse_arguments(arguments(base, tmp_path)), callbacks=[Kill()])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    train(
        *parse_arguments(
            arguments(base, tmp_path, "--resume_from_checkpoint", str(tmp_path / "checkpoint-2"))
        )
    )
    resumed, uninterrupted = adapter(tmp_path), adapter(reference)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=1e-5)


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
