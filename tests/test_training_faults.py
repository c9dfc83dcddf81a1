"""Training faults: a killed run resumes to the same adapter across epochs, and a killed save leaves no checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from peft_medsa.training.arguments import parse_arguments
from peft_medsa.training.run import train
from peft_medsa.training.trainer import MedSATrainer

# demo-2d has 32 training examples: batch 8 gives 4 steps per epoch, so step 5 is 1 step into epoch 2.
STEPS, SAVE, KILL = 7, 5, 6


def arguments(base, output, streaming, *extra):
    return [
        *("--model_name_or_path", str(base), "--task", "demo-2d", "--output_dir", str(output)),
        *("--streaming", str(streaming), "--shuffle_buffer", "16", "--max_steps", str(STEPS)),
        *("--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--save_steps", str(SAVE)),
        *("--eval_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "3"),
        *("--max_eval_samples", "2", "--disable_tqdm", "true", "--save_only_model", "false"),
        *extra,
    ]


class Kill(TrainerCallback):
    """Stops the run abruptly at step KILL, as a killed job would (checkpoint-SAVE is on disk)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL:
            raise RuntimeError("killed")


def final_epoch(folder):
    return json.loads((Path(folder) / "trainer_state.json").read_text())["epoch"]


@pytest.mark.parametrize("streaming", [False, True])
def test_resume_across_an_epoch_boundary_reaches_the_same_adapter(sam_checkpoint, tmp_path, streaming):
    base = sam_checkpoint
    reference = tmp_path / "reference"
    train(*parse_arguments(arguments(base, reference, streaming)))
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(*parse_arguments(arguments(base, killed, streaming)), callbacks=[Kill()])
    assert get_last_checkpoint(str(killed)) == str(killed / f"checkpoint-{SAVE}")
    checkpoint = killed / f"checkpoint-{SAVE}"
    train(*parse_arguments(arguments(base, killed, streaming, "--resume_from_checkpoint", str(checkpoint))))
    resumed, uninterrupted = (
        load_file(killed / "adapter_model.safetensors"),
        load_file(reference / "adapter_model.safetensors"),
    )
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    assert final_epoch(killed) == final_epoch(reference)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == pytest.approx(
        1 + 1 / STEPS
    )


def test_a_save_killed_midway_leaves_no_checkpoint(sam_checkpoint, tmp_path, monkeypatch):
    base = sam_checkpoint

    def disk_full(self, output_dir):
        raise OSError(28, "No space left on device")

    original = MedSATrainer._save_rng_state
    calls = []

    def second_save_fails(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            disk_full(self, output_dir)
        original(self, output_dir)

    monkeypatch.setattr(MedSATrainer, "_save_rng_state", second_save_fails)
    args = arguments(base, tmp_path, False, "--save_steps", "2", "--max_steps", "4")
    with pytest.raises(OSError, match="No space left"):
        train(*parse_arguments(args))
    assert "checkpoint-4" in calls[1] and ".partial" in calls[1]  # it was being written aside
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in (tmp_path / "checkpoint-2").iterdir()
    }
