"""Iterative training prompts: corrective clicks from the previous error region, the previous mask fed back."""

import copy

import numpy as np
import pytest
import torch
from peft import get_peft_model
from test_hub import square_examples
from transformers import TrainingArguments

from peft_medsa import MedSAConfig
from peft_medsa.training import MedSATrainer
from peft_medsa.training.iterative import corrective_inputs


def _previous_and_labels(batch, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    previous = torch.randn(batch, 1, size, size, generator=generator) * 5  # selected logits (B', P=1, h, w)
    labels = torch.zeros(batch, 1, size, size)
    labels[..., 8:20, 10:24] = 1
    return previous, labels


def test_a_corrective_click_lands_in_the_error_region_and_the_mask_is_fed_back():
    previous, labels = _previous_and_labels(3)
    inputs = {
        "pixel_values": torch.zeros(3, 3, 64, 64),
        "input_points": torch.full((3, 1, 1, 2), 5.0),
        "input_labels": torch.ones(3, 1, 1, dtype=torch.long),
    }
    following = corrective_inputs(inputs, previous, labels, np.random.default_rng(0))
    assert following["input_points"].shape == (3, 1, 2, 2) and following["input_labels"].shape == (3, 1, 2)
    assert torch.equal(
        following["input_points"][:, :, 0], inputs["input_points"][:, :, 0]
    )  # first click kept
    assert torch.equal(following["input_masks"], previous)  # (B, 1, 4E, 4E), SamModel's input_masks
    for k in range(3):
        x, y = following["input_points"][k, 0, 1].tolist()
        row, col = int((y + 0.5) / 2), int((x + 0.5) / 2)  # input frame (64) -> mask frame (32)
        predicted, target = bool(previous[k, 0, row, col] > 0), bool(labels[k, 0, row, col])
        assert predicted != target and following["input_labels"][k, 0, 1] == int(target)


def test_boxes_gain_clicks_and_volumes_keep_their_layout():
    previous, labels = _previous_and_labels(2 * 3)  # B=2 volumes of D=3 slices
    inputs = {"pixel_values": torch.zeros(2, 3, 3, 64, 64), "input_boxes": torch.zeros(2, 3, 1, 4)}
    following = corrective_inputs(inputs, previous, labels.reshape(2, 3, 1, 32, 32), np.random.default_rng(0))
    assert following["input_boxes"] is inputs["input_boxes"]
    assert following["input_points"].shape == (2, 3, 1, 1, 2) and following["input_labels"].shape == (
        2,
        3,
        1,
        1,
    )
    with pytest.raises(ValueError, match=r"one prompt per image \(P = 1\), got P = 2"):
        corrective_inputs(inputs, previous.repeat(1, 2, 1, 1), labels, np.random.default_rng(0))


def _train(sam_model, tmp_path, corrective_clicks):
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(sam_model), MedSAConfig())
    args = TrainingArguments(
        tmp_path, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, report_to=[], use_cpu=True,
        save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = MedSATrainer(
        model=model, args=args, train_dataset=square_examples(4), corrective_clicks=corrective_clicks
    )
    trainer.train()
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_a_seeded_iterative_run_is_reproducible_and_differs_from_one_round(sam_model, tmp_path):
    first = _train(sam_model, tmp_path / "a", corrective_clicks=2)
    second = _train(sam_model, tmp_path / "b", corrective_clicks=2)
    single = _train(sam_model, tmp_path / "c", corrective_clicks=0)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], single[k]) for k in first)
