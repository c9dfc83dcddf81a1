"""Tests of the segmentation metrics: known values, empty masks, spacing, 3-D aggregation, Trainer and `evaluate` glue."""

import math

import evaluate
import numpy as np
import pytest
import torch
from transformers import EvalPrediction, SamModel, Trainer, TrainingArguments

from peft_medsa.training import (
    METRIC_MODULE_PATH,
    MedSALoss,
    MetricAggregator,
    dice_score,
    hausdorff_distance_95,
    iou_score,
    make_compute_metrics,
    normalized_surface_dice,
    preprocess_logits_for_metrics,
    segmentation_metrics,
    select_masks,
)


def _squares(offset=4):
    """Two 30x30 squares in a 64x64 image, the second shifted by `offset` columns."""
    a, b = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    a[10:40, 10:40] = 1
    b[10:40, 10 + offset : 40 + offset] = 1
    return a, b


def test_known_values_of_two_offset_squares():
    pred, target = _squares()
    # Overlap 26x30 = 780 of 900 each: Dice 1560/1800, IoU 780/1020. Each square's left/right edge lies 4 px
    # from the other's nearest edge (30 of 116 surface pixels > 5 %), nothing is farther: HD95 = 4. Within 1 px
    # of the other surface: 27 + 27 pixels of the top/bottom edges + 2 at the far ends = 56 of 116 per square.
    expected = {"dice": 0.8667, "iou": 0.7647, "hd95_px": 4.0, "nsd_px": 56 / 116}
    assert segmentation_metrics(pred, target) == pytest.approx(expected, abs=1e-4)
    assert dice_score(pred, target) == pytest.approx(0.8667, abs=1e-4)
    assert iou_score(pred, target) == pytest.approx(0.7647, abs=1e-4)
    assert hausdorff_distance_95(pred, target) == pytest.approx(4.0, abs=1e-4)
    assert normalized_surface_dice(pred, target, tolerance_mm=1.0) == pytest.approx(56 / 116, abs=1e-4)
    assert normalized_surface_dice(pred, target, tolerance_mm=4.0) == 1.0


def test_anisotropic_spacing_scales_hd95_along_the_offset_axis_only():
    pred, target = _squares()  # offset along x (columns)
    assert hausdorff_distance_95(pred, target, spacing=(1.0, 2.5)) == pytest.approx(10.0, abs=1e-4)
    assert hausdorff_distance_95(pred, target, spacing=(3.0, 1.0)) == pytest.approx(4.0, abs=1e-4)
    # In 3-D: two 10x10x8 boxes shifted by 2 slices; the top and bottom faces (200 of ~490 surface voxels) are
    # 2 slices from the other surface, so HD95 is 2 * z-spacing.
    a, b = np.zeros((16, 20, 20), bool), np.zeros((16, 20, 20), bool)
    a[2:10, 5:15, 5:15] = True
    b[4:12, 5:15, 5:15] = True
    assert hausdorff_distance_95(a, b, spacing=(1.0, 1.0, 1.0)) == pytest.approx(2.0, abs=1e-4)
    assert hausdorff_distance_95(a, b, spacing=(3.0, 0.7, 0.7)) == pytest.approx(6.0, abs=1e-4)
    with pytest.raises(ValueError, match="spacing must hold 3"):
        hausdorff_distance_95(a, b, spacing=(1.0, 1.0))


def test_empty_masks_have_defined_values():
    empty, (square, _) = np.zeros((64, 64)), _squares()
    both_empty = {"dice": 1.0, "iou": 1.0, "hd95_px": 0.0, "nsd_px": 1.0}
    assert segmentation_metrics(empty, empty) == both_empty
    for pred, target in [(empty, square), (square, empty)]:
        result = segmentation_metrics(pred, target)
        assert (result["dice"], result["iou"], result["nsd_px"]) == (0.0, 0.0, 0.0)
        assert math.isnan(result["hd95_px"])


def test_logits_must_be_declared_and_are_passed_through_the_sigmoid():
    pred, target = _squares()
    logits = 8 * (2 * pred - 1) + 0.1 * np.random.default_rng(0).standard_normal(pred.shape)
    with pytest.raises(ValueError, match="from_logits=True"):
        dice_score(logits, target)
    assert dice_score(logits, target, from_logits=True) == pytest.approx(0.8667, abs=1e-4)
    assert dice_score(torch.from_numpy(logits), torch.from_numpy(target), from_logits=True) == pytest.approx(
        0.8667, 1e-4
    )
    with pytest.raises(ValueError, match="boolean mask"):
        dice_score(pred > 0.5, target, from_logits=True)
    probabilities = 0.6 * pred  # all foreground probabilities 0.6
    assert dice_score(probabilities, target, threshold=0.5) == pytest.approx(0.8667, abs=1e-4)
    assert dice_score(probabilities, target, threshold=0.7) == 0.0


def test_invalid_inputs_are_rejected_with_clear_errors():
    pred, target = _squares()
    with pytest.raises(ValueError, match=r"\(64, 64\) and reference has shape \(32, 32\)"):
        dice_score(pred, target[:32, :32])
    with pytest.raises(ValueError, match="references must be binary"):
        dice_score(pred, 0.5 * target)
    with pytest.raises(ValueError, match="NaN"):
        dice_score(np.full((4, 4), np.nan), np.zeros((4, 4)))


def _crafted_volume():
    """Three slices: slice 0 perfect (100 px), slice 1 a missed 10 px structure, slice 2 empty in both."""
    pred, target = np.zeros((3, 32, 32), bool), np.zeros((3, 32, 32), bool)
    pred[0, 5:15, 5:15] = target[0, 5:15, 5:15] = True
    target[1, 5:7, 5:10] = True
    return pred, target


def test_volume_metrics_are_computed_in_3d_not_averaged_over_slices():
    pred, target = _crafted_volume()
    volume = MetricAggregator()
    per_slice = MetricAggregator()
    for z in range(3):
        volume.add(pred[z], target[z], case_id="ct1", slice_index=z, spacing=(2.0, 1.0, 1.0))
        per_slice.add(pred[z], target[z], case_id=f"ct1-{z}")
    assert volume.compute()["dice"] == pytest.approx(200 / 210, abs=1e-6)  # 2·100 / (100 + 110) = 0.9524
    assert per_slice.compute()["dice"] == pytest.approx(2 / 3, abs=1e-6)  # mean(1, 0, 1) = 0.6667
    whole = segmentation_metrics(pred, target, spacing=(2.0, 1.0, 1.0))
    assert {k: volume.compute()[k] for k in whole} == pytest.approx(whole)


def test_stacked_slices_equal_the_whole_volume_with_gaps_and_merged_prompts():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 24, 24)) > 0.7
    target = rng.random((6, 24, 24)) > 0.7
    pred[[0, 3]] = target[[0, 3]] = False  # slice 3 is not added: it must count as background
    aggregator = MetricAggregator(tolerance_mm=2.0)
    for z in (0, 1, 2, 4, 5):
        left = np.zeros_like(pred[z])
        left[:, :12] = True
        # Two prompts of the same class on one slice (left and right halves) merge into one mask.
        for half in (left, ~left):
            aggregator.add(
                pred[z] & half, target[z] & half, case_id=7, class_id=2, slice_index=z, spacing=(3, 1, 1)
            )
    [record] = aggregator.per_case()
    expected = segmentation_metrics(pred, target, spacing=(3, 1, 1), tolerance_mm=2.0)
    assert {k: record[k] for k in expected} == pytest.approx(expected)
    assert (record["case_id"], record["class_id"]) == (7, 2)


def test_a_single_slice_case_is_scored_in_2d():
    pred, target = _squares()
    aggregator = MetricAggregator()
    aggregator.add(pred, target, case_id="img", slice_index=0, spacing=(5.0, 1.0, 2.5))
    [record] = aggregator.per_case()
    assert record["hd95_mm"] == pytest.approx(10.0) and record["nsd_mm"] == pytest.approx(
        normalized_surface_dice(pred, target, spacing=(1.0, 2.5))
    )


def test_slices_of_one_case_must_agree():
    aggregator = MetricAggregator()
    aggregator.add(np.zeros((8, 8)), np.zeros((8, 8)), case_id="a", slice_index=0, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="disagree"):
        aggregator.add(np.zeros((8, 8)), np.zeros((8, 8)), case_id="a", slice_index=1, spacing=(2, 1, 1))
    with pytest.raises(ValueError, match="needs a case_id"):
        aggregator.add(np.zeros((8, 8)), np.zeros((8, 8)), slice_index=1)


def test_aggregator_reports_per_class_means_and_undefined_hd95():
    pred, target = _squares()
    empty = np.zeros_like(pred)
    aggregator = MetricAggregator(class_names=["liver", "spleen"])
    aggregator.add(pred, target, class_id=0)  # Dice 0.8667, HD95 4
    aggregator.add(target, target, class_id=0)  # Dice 1, HD95 0
    aggregator.add(empty, target, class_id=1)  # Dice 0, HD95 undefined
    result = aggregator.compute()
    assert result["dice/liver"] == pytest.approx((0.8667 + 1) / 2, abs=1e-4)
    assert result["hd95_px/liver"] == pytest.approx(2.0)
    assert result["dice/spleen"] == 0.0 and math.isnan(result["hd95_px/spleen"])
    assert result["dice"] == pytest.approx(((0.8667 + 1) / 2 + 0) / 2, abs=1e-4)
    assert result["hd95_px"] == pytest.approx(2.0)  # the undefined class is skipped...
    assert result["hd95_undefined"] == 1.0  # ...and counted
    assert all(isinstance(v, float) for v in result.values())
    with pytest.raises(ValueError, match="no examples"):
        MetricAggregator().compute()


def _sam_eval_batch():
    """SamModel-like outputs for 2 examples x 2 prompts (prompt 1 of example 1 is Trainer padding)."""
    _, target = _squares()
    labels = np.stack(
        [np.stack([target, target]), np.stack([target, np.full_like(target, -100)])]
    )  # (2, 2, 64, 64)
    good = 10 * (2 * target[::2, ::2] - 1)  # 32x32 logits, resized to the 64x64 labels
    pred_masks = np.stack([np.stack([-good, good, -good])] * 2)[None].repeat(2, 0)  # (2, 2, 3, 32, 32)
    iou_scores = np.tile(np.array([0.1, 0.9, 0.2], np.float32), (2, 2, 1))  # the good mask 1 scores highest
    return iou_scores, pred_masks.astype(np.float32), labels.astype(np.float32)


def test_compute_metrics_selects_the_mask_with_the_highest_predicted_iou():
    iou_scores, pred_masks, labels = _sam_eval_batch()
    compute_metrics = make_compute_metrics()
    result = compute_metrics(EvalPrediction(predictions=(iou_scores, pred_masks), label_ids=labels))
    assert result["dice"] == pytest.approx(1.0) and result["hd95_px"] == pytest.approx(0.0)
    iou_scores[..., 0] = 1.0  # now the wrong mask 0 scores highest
    result = compute_metrics(EvalPrediction(predictions=(pred_masks, iou_scores), label_ids=labels))
    assert result["dice"] == 0.0
    with pytest.raises(ValueError, match="iou_scores"):
        select_masks(pred_masks)


def test_batch_eval_metrics_accumulates_and_equals_one_shot_evaluation():
    iou_scores, pred_masks, labels = _sam_eval_batch()
    pred_masks[1, 0, 1, :8] = -10  # make the two examples differ
    metadata = [{"case_id": "a", "class_ids": [0, 1]}, {"case_id": "b", "class_id": 1}]
    aggregator = MetricAggregator(class_names={0: "tumour", 1: "organ"})
    one_shot = make_compute_metrics(MetricAggregator(class_names={0: "tumour", 1: "organ"}), metadata)(
        EvalPrediction(predictions=(iou_scores, pred_masks), label_ids=labels)
    )
    batched = make_compute_metrics(aggregator, metadata)
    selected = preprocess_logits_for_metrics(
        (torch.from_numpy(iou_scores), torch.from_numpy(pred_masks)), None
    )
    assert batched(EvalPrediction(selected[:1], torch.from_numpy(labels[:1])), compute_result=False) == {}
    result = batched(EvalPrediction(selected[1:], torch.from_numpy(labels[1:])), compute_result=True)
    assert result == pytest.approx(one_shot) and result["dice/tumour"] == 1.0 and result["dice/organ"] < 1.0
    assert [(r["case_id"], r["class_id"]) for r in aggregator.per_case()] == [("a", 0), ("a", 1), ("b", 1)]
    batched(EvalPrediction(selected[:1], torch.from_numpy(labels[:1])))  # a new evaluation starts afresh
    assert len(aggregator.per_case()) == 2


def test_compute_metrics_scores_volume_examples_in_3d():
    pred, target = _crafted_volume()  # one volume of D=3 slices, P=1
    logits = torch.from_numpy(20 * (2 * pred.astype(np.float32) - 1))[:, None, None]  # (B*D, P, M=1, h, w)
    labels = torch.from_numpy(target.astype(np.float32))[None, :, None]  # (B, D, P, H, W)
    metadata = [{"case_id": "ct", "slice_index": 4, "class_id": 3, "spacing": np.array([2.0, 1.0, 1.0])}]
    aggregator = MetricAggregator()
    result = make_compute_metrics(aggregator, metadata)(EvalPrediction(logits, labels))
    whole = segmentation_metrics(pred, target, spacing=(2.0, 1.0, 1.0))
    assert {k: result[k] for k in whole} == pytest.approx(whole) and result["dice"] == pytest.approx(
        200 / 210
    )
    assert [(r["case_id"], r["class_id"]) for r in aggregator.per_case()] == [("ct", 3)]
    unknown = [{**metadata[0], "spacing": np.full(3, np.nan)}]  # unknown spacing: pixel units
    result = make_compute_metrics(metadata=unknown)(EvalPrediction(logits, labels))
    assert result["hd95_px"] == pytest.approx(segmentation_metrics(pred, target)["hd95_px"])


def test_evaluate_module_loads_offline_and_matches_the_python_api():
    metric = evaluate.load(METRIC_MODULE_PATH)
    pred, target = _squares()
    volume_pred, volume_target = _crafted_volume()
    aggregator = MetricAggregator(class_names=["a", "b"], tolerance_mm=2.0)
    aggregator.add(pred, target, case_id=0, class_id=0, spacing=(1, 2))
    aggregator.add(target, target, case_id=1, class_id=1, spacing=(1, 2))
    for z in range(3):
        aggregator.add(
            volume_pred[z], volume_target[z], case_id="v", class_id=1, slice_index=z, spacing=(2, 1, 1)
        )
    result = metric.compute(
        predictions=[pred, target, *volume_pred.astype(np.float32)],
        references=[target, target, *volume_target.astype(np.float32)],
        case_ids=[0, 1, "v", "v", "v"],
        class_ids=[0, 1, 1, 1, 1],
        slice_indices=[None, None, 0, 1, 2],
        spacing=[(1, 2), (1, 2), (2, 1, 1), (2, 1, 1), (2, 1, 1)],
        class_names=["a", "b"],
        tolerance_mm=2.0,
    )
    assert result == aggregator.compute()
    volume = metric.compute(
        predictions=[volume_pred.astype(np.float32)], references=[volume_target], spacing=(2, 1, 1)
    )
    assert volume["dice"] == pytest.approx(200 / 210)


class _SamTrainer(Trainer):
    """The smallest Trainer glue: labels out of the inputs, SamModel forward, MedSALoss."""

    loss_fn = MedSALoss(iou_weight=1.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs, multimask_output=True)
        loss = self.loss_fn(outputs.pred_masks, labels, outputs.iou_scores)
        return (loss, outputs) if return_outputs else loss


def test_trainer_evaluate_with_and_without_batch_eval_metrics(sam_config, tmp_path):
    torch.manual_seed(0)
    model = SamModel(sam_config)
    _, target = _squares()
    dataset = [
        {
            "pixel_values": torch.randn(3, 64, 64),
            "input_points": torch.tensor([[[30.0 + i, 25.0]]]),  # (P, N, 2)
            "input_labels": torch.ones(1, 1, dtype=torch.long),
            "labels": torch.from_numpy(target)[None],  # (P, 64, 64); pred_masks are 32x32
        }
        for i in range(5)
    ]
    results = []
    for batch_eval_metrics in (False, True):
        args = TrainingArguments(
            tmp_path / str(batch_eval_metrics),
            per_device_eval_batch_size=2,
            label_names=["labels"],
            batch_eval_metrics=batch_eval_metrics,
            report_to=[],
            use_cpu=True,
        )
        trainer = _SamTrainer(
            model=model,
            args=args,
            eval_dataset=dataset,
            compute_metrics=make_compute_metrics(),
            preprocess_logits_for_metrics=preprocess_logits_for_metrics if batch_eval_metrics else None,
        )
        results.append(trainer.evaluate())
    with torch.no_grad():
        batch = {k: torch.stack([example[k] for example in dataset]) for k in dataset[0]}
        labels = batch.pop("labels")
        outputs = model(**batch, multimask_output=True)
    direct = make_compute_metrics()(EvalPrediction((outputs.iou_scores, outputs.pred_masks), labels))
    assert set(direct) == {
        "dice",
        "iou",
        "hd95_px",
        "nsd_px",
        "dice/0",
        "iou/0",
        "hd95_px/0",
        "nsd_px/0",
        "hd95_undefined",
    }
    for result in results:
        assert {k: result[f"eval_{k}"] for k in direct} == pytest.approx(direct)
