"""`evaluate` module for medical segmentation: Dice, IoU, HD95 and NSD per class and per case (peft_medsa's metrics)."""

import datasets
import evaluate
import numpy as np

from peft_medsa.training.metrics import MetricAggregator

_DESCRIPTION = """
Dice, IoU, HD95 (95th-percentile Hausdorff distance) and NSD (normalised surface Dice) of thresholded
predictions, per class (means over cases) and overall (means over classes). It runs peft_medsa's
`MetricAggregator`, so the numbers equal those of the Python API and of the Trainer's `compute_metrics`.
Both masks empty: Dice 1, IoU 1, HD95 0, NSD 1. Exactly one empty: Dice 0, IoU 0, NSD 0, HD95 NaN (skipped by
the means and counted in `hd95_undefined`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: 2-D or 3-D arrays of probabilities in [0, 1] (or logits with `from_logits=True`).
    references: binary arrays of the same shapes.
    spacing: voxel spacing, one value per axis (e.g. (z, y, x) in mm), for all examples, or one per example;
        for slices (see `slice_indices`) the volume's (z, y, x). Default: none (pixel units).
    case_ids, class_ids, slice_indices: optional per-example lists. Examples with a slice index are stacked by
        case and class and scored in 3-D.
    class_names: a list or dict naming the class ids in the output keys (`dice/<name>`).
    tolerance_mm: NSD tolerance, in the units of `spacing`. Default 1.0.
    threshold: probability threshold. Default 0.5.
    from_logits: apply the sigmoid to the predictions first. Default False.
Returns:
    A flat dict of floats: `dice`, `iou`, `hd95_mm`, `nsd_mm` (with a spacing; `hd95_px`, `nsd_px` in pixels
    without one), `<metric>/<class name>`, `hd95_undefined`.
Examples:
    >>> metric = evaluate.load("peft_medsa/training/medsa_metric")
    >>> metric.compute(predictions=[[[0.9, 0.1], [0.2, 0.1]]], references=[[[1, 0], [0, 0]]])["dice"]
    1.0
"""

_CITATION = """
@article{wu2023medsa,
  title={Medical SAM Adapter: Adapting Segment Anything Model for Medical Image Segmentation},
  author={Wu, Junde and others},
  journal={arXiv preprint arXiv:2304.12620},
  year={2023}
}
"""


def _mask_features(ndim: int) -> datasets.Features:
    feature = datasets.Value("float32")
    for _ in range(ndim):
        feature = datasets.List(feature)
    return datasets.Features({"predictions": feature, "references": feature})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedsaMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_mask_features(2), _mask_features(3)],
        )

    def _compute(
        self,
        predictions,
        references,
        spacing=None,
        case_ids=None,
        class_ids=None,
        slice_indices=None,
        class_names=None,
        tolerance_mm=1.0,
        threshold=0.5,
        from_logits=False,
    ):
        aggregator = MetricAggregator(class_names, tolerance_mm=tolerance_mm, threshold=threshold)
        shared_spacing = spacing is None or np.isscalar(spacing[0])
        for i, (prediction, reference) in enumerate(zip(predictions, references, strict=False)):
            aggregator.add(
                np.asarray(prediction, dtype=np.float32),
                np.asarray(reference, dtype=np.float32),
                case_id=case_ids[i] if case_ids is not None else i,
                class_id=class_ids[i] if class_ids is not None else 0,
                slice_index=slice_indices[i] if slice_indices is not None else None,
                spacing=spacing if shared_spacing else spacing[i],
                from_logits=from_logits,
            )
        return aggregator.compute()
