"""Iterative training prompts, as SAM (Kirillov et al. 2023, appendix A) and Med-SA train: after the first prompt,
corrective clicks drawn from the error region of the previous prediction, with that prediction's low-resolution
mask logits fed back as `input_masks`.

`corrective_inputs` turns one round's inputs and selected mask logits into the next round's inputs; the
`MedSATrainer` (`corrective_clicks=K`) runs K such rounds after the first and averages the K + 1 losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.prompts import next_click


def corrective_inputs(
    inputs: Mapping[str, Any], previous: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
) -> dict[str, Any]:
    """The next round's model inputs: one more click per prompt, sampled uniformly from the error region of
    `previous` (selected mask logits (B', P, h, w), B' = B or B*D slices) against `labels` (B, P, h, w) or
    (B, D, P, h, w) at the same resolution (positive where the target was missed, negative where it was
    over-segmented, not-a-point where nothing is wrong), plus `previous` as `input_masks` (B', 1, h, w).

    A box prompt keeps its box and gains clicks. SAM's `input_masks` holds one mask per image, so P must be 1.
    """
    if previous.shape[1] != 1:
        raise ValueError(
            f"Corrective rounds feed the previous mask back as input_masks, one per image: they need one "
            f"prompt per image (P = 1), got P = {previous.shape[1]}."
        )
    target = labels.flatten(0, 1) if labels.ndim == 5 else labels  # (B', P, H, W)
    if target.shape[-2:] != previous.shape[-2:]:  # labels at another resolution than the masks
        target = F.interpolate(target.float(), size=previous.shape[-2:], mode="nearest")
    scale = inputs["pixel_values"].shape[-1] / previous.shape[-1]  # mask pixels -> input pixels
    points, point_labels = next_click(
        (previous > 0).cpu().numpy(), (target > 0.5).cpu().numpy(), scale=scale, rng=rng
    )  # (B', P, 2), (B', P)
    device = previous.device
    points = torch.from_numpy(points)[:, :, None].to(device)  # (B', P, 1, 2)
    point_labels = torch.from_numpy(point_labels)[:, :, None].to(device)  # (B', P, 1)
    following = dict(inputs)
    if "input_points" in inputs:
        lead = inputs["input_points"].shape[:-2]  # (B, P) or, for volumes, (B, D, P)
        points = torch.cat([inputs["input_points"].reshape(*points.shape[:2], -1, 2), points], dim=2)
        point_labels = torch.cat(
            [inputs["input_labels"].reshape(*point_labels.shape[:2], -1), point_labels], 2
        )
        points, point_labels = points.reshape(*lead, -1, 2), point_labels.reshape(*lead, -1)
    elif "input_boxes" in inputs and inputs["input_boxes"].ndim == 4:  # volumes: boxes (B, D, P, 4)
        lead = inputs["input_boxes"].shape[:-1]
        points, point_labels = points.reshape(*lead, 1, 2), point_labels.reshape(*lead, 1)
    following["input_points"], following["input_labels"] = points, point_labels
    following["input_masks"] = previous.detach()  # (B', 1, h, w): SamModel's (batch, 1, 4E, 4E)
    return following
