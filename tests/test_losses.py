"""Tests of the Med-SA training loss: values, best-mask selection, IoU-head target, resizing and shape errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from peft_medsa.training import MedSALoss, segmentation_loss


def _square_labels(batch=1, prompts=1, size=16):
    labels = torch.zeros(batch, prompts, size, size)
    labels[..., 4:12, 4:12] = 1
    return labels


def test_perfect_prediction_gives_near_zero_loss_and_errors_do_not():
    labels = _square_labels(2, 3)
    perfect = (30 * (2 * labels - 1)).unsqueeze(2)  # (B, P, 1, H, W)
    ones = torch.ones(2, 3, 1)
    assert segmentation_loss(perfect, labels, ones, iou_weight=1.0).item() < 1e-3
    assert segmentation_loss(-perfect, labels, ones, iou_weight=1.0).item() > 1.0


def test_dice_and_bce_values_and_weights():
    labels = _square_labels()  # 64 of 256 pixels
    logits = torch.zeros(1, 1, 1, 16, 16)  # p = 0.5 everywhere
    dice = 1 - (2 * 0.5 * 64 + 1) / (0.5 * 256 + 64 + 1)
    bce = math.log(2)
    loss = segmentation_loss(logits, labels, dice_weight=2.0, bce_weight=0.5)
    assert loss.item() == pytest.approx(2.0 * dice + 0.5 * bce, abs=1e-6)
    assert segmentation_loss(logits, labels, bce_weight=0.0).item() == pytest.approx(dice, abs=1e-6)


def test_empty_target_dice_is_zero_for_empty_prediction_and_near_one_otherwise():
    labels = torch.zeros(1, 1, 16, 16)
    empty = torch.full((1, 1, 1, 16, 16), -30.0)
    assert segmentation_loss(empty, labels, bce_weight=0.0).item() < 1e-6
    full = torch.full((1, 1, 1, 16, 16), 30.0)
    assert segmentation_loss(full, labels, bce_weight=0.0).item() == pytest.approx(256 / 257, abs=1e-5)


def test_gradients_flow_only_through_the_best_mask_of_each_prompt():
    labels = _square_labels(1, 2)
    good = 10 * (2 * labels - 1)  # (1, 2, H, W)
    pred = torch.stack([-good, -good, -good], dim=2).clone()  # (1, 2, 3, H, W), all wrong
    pred[0, 0, 1] = good[0, 0]  # prompt 0: mask 1 is best
    pred[0, 1, 2] = 0.5 * good[0, 1]  # prompt 1: mask 2 is best
    pred.requires_grad_(True)
    iou_scores = torch.full((1, 2, 3), 0.5, requires_grad=True)
    segmentation_loss(pred, labels, iou_scores, iou_weight=1.0).backward()

    touched = pred.grad.abs().sum(dim=(-2, -1)) > 0  # (1, 2, 3)
    expected = torch.tensor([[[False, True, False], [False, False, True]]])
    assert torch.equal(touched, expected)
    assert torch.equal(iou_scores.grad != 0, expected)


def test_iou_head_target_is_the_iou_of_the_thresholded_chosen_mask():
    labels = _square_labels()  # rows/cols 4:12
    logits = torch.full((1, 1, 3, 16, 16), -30.0)  # masks 1 and 2 are empty: mask 0 is chosen
    logits[:, :, 0, 4:12, 4:8] = 30.0  # half of the target: IoU 0.5
    without = segmentation_loss(logits, labels, iou_weight=0.0)
    exact = segmentation_loss(logits, labels, torch.tensor([[[0.5, 0.0, 0.0]]]), iou_weight=1.0)
    off = segmentation_loss(logits, labels, torch.tensor([[[1.0, 0.0, 0.0]]]), iou_weight=2.0)
    assert exact.item() == pytest.approx(without.item(), abs=1e-6)
    assert off.item() == pytest.approx(without.item() + 2.0 * 0.25, abs=1e-6)


def test_the_iou_head_is_supervised_only_where_it_chooses_among_masks():
    labels = _square_labels()
    single = torch.full((1, 1, 1, 16, 16), -30.0)  # one mask per prompt: the paper's Dice + BCE alone
    assert segmentation_loss(single, labels, torch.tensor([[[1.0]]]), iou_weight=5.0) == segmentation_loss(
        single, labels, iou_weight=0.0
    )
    assert MedSALoss().iou_weight == 1.0  # where there are 3 masks, the IoU head learns by default


def test_low_resolution_logits_are_resized_bilinearly_to_the_labels():
    torch.manual_seed(0)
    labels = _square_labels(size=32)
    low = torch.randn(1, 1, 3, 16, 16)
    upsampled = F.interpolate(low[0], size=(32, 32), mode="bilinear", align_corners=False)[None]
    assert torch.allclose(
        segmentation_loss(low, labels, iou_weight=0.0), segmentation_loss(upsampled, labels, iou_weight=0.0)
    )


def test_module_matches_function():
    torch.manual_seed(0)
    pred, labels, scores = torch.randn(2, 1, 3, 16, 16), _square_labels(2, 1), torch.rand(2, 1, 3)
    module = MedSALoss(dice_weight=0.3, bce_weight=2.0, iou_weight=1.0, smooth=1e-3)
    expected = segmentation_loss(
        pred, labels, scores, dice_weight=0.3, bce_weight=2.0, iou_weight=1.0, smooth=1e-3
    )
    assert torch.equal(module(pred, labels, scores), expected)


@pytest.mark.parametrize(
    "pred_shape, label_shape",
    [
        ((2, 1, 3, 16, 16), (1, 1, 16, 16)),
        ((2, 1, 16, 16), (2, 1, 16, 16)),
        ((2, 2, 3, 16, 16), (2, 1, 16, 16)),
    ],
)
def test_shape_mismatch_error_names_both_shapes(pred_shape, label_shape):
    with pytest.raises(ValueError) as error:
        segmentation_loss(torch.zeros(pred_shape), torch.zeros(label_shape))
    assert str(pred_shape) in str(error.value) and str(label_shape) in str(error.value)


def test_bad_iou_scores_and_labels_are_rejected():
    pred, labels = torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"iou_scores has shape \(1, 1, 1\)"):
        segmentation_loss(pred, labels, torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="needs iou_scores"):
        segmentation_loss(pred, labels, iou_weight=1.0)
    with pytest.raises(ValueError, match=r"\[-100"):
        segmentation_loss(pred, labels - 100)


def test_loss_trains_a_sam_model_end_to_end(sam_model):
    torch.manual_seed(0)
    outputs = sam_model(
        pixel_values=torch.randn(2, 3, 64, 64),
        input_points=torch.tensor([[[[20.0, 30.0]]], [[[40.0, 10.0]]]]),  # (B, P, N, 2) in (x, y)
        input_labels=torch.ones(2, 1, 1, dtype=torch.long),
        multimask_output=True,
    )
    labels = _square_labels(2, 1, size=64)  # pred_masks are 32x32: resized to 64x64
    loss = MedSALoss(iou_weight=1.0)(outputs.pred_masks, labels, outputs.iou_scores)
    loss.backward()
    assert torch.isfinite(loss)
    assert sam_model.mask_decoder.iou_prediction_head.proj_out.weight.grad.abs().sum() > 0


def test_volume_labels_are_flattened_volume_major_like_the_slices():
    torch.manual_seed(0)
    pred = torch.randn(2 * 3, 1, 3, 16, 16)  # B=2 volumes x D=3 slices
    labels = (torch.rand(2, 3, 1, 16, 16) > 0.5).float()  # (B, D, P, H, W)
    scores = torch.rand(2 * 3, 1, 3)
    assert torch.equal(
        segmentation_loss(pred, labels, scores), segmentation_loss(pred, labels.flatten(0, 1), scores)
    )
    with pytest.raises(ValueError, match=r"\(2, 2, 1, 16, 16\)"):
        segmentation_loss(pred, labels[:, :2])
