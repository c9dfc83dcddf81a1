"""One mask-selection rule for training and evaluation (peft_medsa.mask_selection)."""

import copy

import pytest
import torch
from conftest import randomize_adapters
from peft import get_peft_model
from transformers import TrainingArguments

from peft_medsa import MedSAConfig
from peft_medsa.mask_selection import iou_head_ranks_masks, predict_masks, select_masks, training_choice
from peft_medsa.training import MedSALoss, MedSATrainer, segmentation_loss

ONE_CLICK = {
    "input_points": torch.tensor([[[[30.0, 20.0]]]]),
    "input_labels": torch.ones(1, 1, 1, dtype=torch.long),
}
THREE_CLICKS = {
    "input_points": torch.tensor([[[[30.0, 20.0], [28.0, 22.0], [33.0, 18.0]]]]),
    "input_labels": torch.ones(1, 1, 3, dtype=torch.long),
}
BOX = {"input_boxes": torch.tensor([[[10.0, 10.0, 40.0, 36.0]]])}


@pytest.fixture
def adapted(sam_model):
    """The tiny SAM with a `paper` adapter (all of SAM frozen, so the IoU head is too) and one with
    `official-code` (the mask decoder, IoU head included, is trained)."""
    paper = get_peft_model(copy.deepcopy(sam_model), MedSAConfig.from_preset("paper"))
    randomize_adapters(paper)
    official = get_peft_model(copy.deepcopy(sam_model), MedSAConfig.from_preset("official-code"))
    return paper, official


@pytest.mark.parametrize("prompt", [ONE_CLICK, THREE_CLICKS, BOX])
def test_every_prompt_gets_three_masks_and_frozen_iou_heads_train_their_pick(sam_model, adapted, prompt):
    paper_model, official_model = adapted
    for model in (sam_model, paper_model, official_model):
        assert (
            predict_masks(model, {"pixel_values": torch.randn(1, 3, 64, 64), **prompt}).pred_masks.shape[2]
            == 3
        )
    assert (iou_head_ranks_masks(paper_model), iou_head_ranks_masks(official_model)) == (False, True)
    assert [training_choice(m.train()) for m in (sam_model, paper_model, official_model)] == [
        "lowest_loss",
        "iou_ranked",
        "lowest_loss",
    ]
    assert training_choice(official_model.eval()) == "iou_ranked"  # the evaluation loss scores the answer


def test_train_and_eval_choose_the_same_mask_when_the_iou_head_disagrees_with_the_loss(adapted, tmp_path):
    model = adapted[0].eval()  # paper: frozen IoU head
    inputs = {
        "pixel_values": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
        **ONE_CLICK,
    }
    decoder = model.base_model.model.mask_decoder
    with torch.no_grad():
        decoder.iou_prediction_head.proj_out.bias[3] += 100.0  # the IoU head now always ranks mask 3 first
        three = model(**inputs, multimask_output=True)
    labels = (three.pred_masks[:, :, 0] > 0).float()  # ...while the loss prefers mask 1, the target itself
    per_mask = [segmentation_loss(three.pred_masks[:, :, [m]], labels, iou_weight=0.0) for m in range(3)]
    assert min(range(3), key=per_mask.__getitem__) == 0 and three.iou_scores[0, 0].argmax() == 2  # disagree
    trainer = MedSATrainer(
        model=model.train(), args=TrainingArguments(tmp_path, use_cpu=True, report_to=[]), loss_fn=MedSALoss()
    )
    with torch.no_grad():
        loss = trainer.compute_loss(model, {**inputs, "labels": labels})
        evaluated = select_masks(
            (lambda o: (o.iou_scores, o.pred_masks))(predict_masks(model.eval(), inputs))
        )
    assert torch.equal(evaluated, three.pred_masks[:, :, 2])  # evaluation answers with the IoU head's pick...
    assert loss.item() == pytest.approx(per_mask[2].item(), rel=1e-6)  # ...and training trained that mask


def test_where_three_masks_are_output_the_iou_head_is_trained_by_default(adapted):
    model = adapted[1].train()  # official-code: the mask decoder (IoU head included) is trainable
    outputs = predict_masks(model, {"pixel_values": torch.randn(1, 3, 64, 64), **ONE_CLICK})
    assert outputs.pred_masks.shape[2] == 3
    labels = torch.zeros(1, 1, 64, 64)
    labels[..., 10:30, 20:40] = 1
    MedSALoss()(outputs.pred_masks, labels, outputs.iou_scores).backward()
    head = model.base_model.model.mask_decoder.modules_to_save["default"].iou_prediction_head
    assert head.proj_out.weight.grad.abs().sum() > 0
