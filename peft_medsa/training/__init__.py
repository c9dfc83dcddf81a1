"""Training utilities for Med-SA: the loss, the segmentation metrics, the evaluation and their Trainer glue."""

from pathlib import Path

from ..mask_selection import select_masks
from .evaluation import (
    EvaluationReport,
    evaluate,
    make_compute_metrics,
    preprocess_logits_for_metrics,
)
from .losses import MedSALoss, resize_mask_logits, segmentation_loss
from .metrics import (
    MetricAggregator,
    binarize,
    dice_score,
    hausdorff_distance_95,
    iou_score,
    normalized_surface_dice,
    segmentation_metrics,
)
from .trainer import MedSATrainer

# The local `evaluate` module: `evaluate.load(METRIC_MODULE_PATH)` works offline.
METRIC_MODULE_PATH = str(Path(__file__).parent / "medsa_metric")

__all__ = [
    "METRIC_MODULE_PATH",
    "EvaluationReport",
    "MedSALoss",
    "MedSATrainer",
    "MetricAggregator",
    "binarize",
    "dice_score",
    "evaluate",
    "hausdorff_distance_95",
    "iou_score",
    "make_compute_metrics",
    "normalized_surface_dice",
    "preprocess_logits_for_metrics",
    "resize_mask_logits",
    "segmentation_loss",
    "segmentation_metrics",
    "select_masks",
]
