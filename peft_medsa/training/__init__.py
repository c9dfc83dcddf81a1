"""Training utilities for Med-SA: the loss, the segmentation metrics and their Trainer / `evaluate` glue."""

from pathlib import Path

from .losses import MedSALoss, resize_mask_logits, segmentation_loss
from .metrics import (
    MetricAggregator,
    binarize,
    dice_score,
    hausdorff_distance_95,
    iou_score,
    make_compute_metrics,
    normalized_surface_dice,
    preprocess_logits_for_metrics,
    segmentation_metrics,
    select_masks,
)
from .trainer import MedSATrainer

# The local `evaluate` module: `evaluate.load(METRIC_MODULE_PATH)` works offline.
METRIC_MODULE_PATH = str(Path(__file__).parent / "medsa_metric")

__all__ = [
    "METRIC_MODULE_PATH",
    "MedSALoss",
    "MedSATrainer",
    "MetricAggregator",
    "binarize",
    "dice_score",
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
