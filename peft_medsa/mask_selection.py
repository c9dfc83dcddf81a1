"""Which of SAM's masks answers a prompt: one rule for training, evaluation, prediction and the demo.

SAM can answer a prompt with 3 masks (multimask output) or 1. Training back-propagates, of several masks, the
one closest to the target; inference cannot know the target and picks the mask the IoU head ranks first. The
two agree only where the IoU head has learnt to rank this model's masks. The rule, SAM's own (Kirillov et al.
2023, sec. 3 and appendix A: "multiple outputs only for a single ambiguous click") made safe for adapters:

- multimask output only for a single click (one point per prompt, no box), and only when the IoU head ranks
  the masks of the model that predicts them: a plain SAM (its own head), or an adapter that trains the mask
  decoder's IoU head (`modules_to_save` holding `mask_decoder` or `iou_prediction_head`, as the
  `official-code` preset); training then adds SAM's IoU-head loss on the chosen mask (`iou_weight`);
- single-mask output for everything else: boxes, several clicks, and single clicks for adapters whose IoU head
  is frozen (`paper` and `encoder-only` freeze all of SAM, so their IoU head never saw the adapted masks).
  With one mask there is nothing to choose: training and evaluation use the same mask by construction.

`predict_masks(model, inputs)` applies the rule to one forward pass; `select_masks` picks the final mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

IOU_HEAD_MODULES = ("mask_decoder", "iou_prediction_head")


def iou_head_ranks_masks(model: torch.nn.Module) -> bool:
    """Whether `model`'s IoU head was trained on the masks it ranks: a plain SamModel, or a peft adapter
    whose `modules_to_save` holds the mask decoder or its IoU head."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    peft_config = getattr(model, "peft_config", None)
    if not peft_config:
        return True
    config = peft_config[getattr(model, "active_adapter", "default")]
    return any(name.split(".")[-1] in IOU_HEAD_MODULES for name in config.modules_to_save or [])


def use_multimask(
    model: torch.nn.Module, input_points: torch.Tensor | None = None, input_boxes: torch.Tensor | None = None
) -> bool:
    """The rule of this module: several masks only for a single click, and only if the IoU head ranks them."""
    single_click = input_boxes is None and input_points is not None and input_points.shape[-2] == 1
    return single_click and iou_head_ranks_masks(model)


def predict_masks(model: torch.nn.Module, inputs: Mapping[str, Any]) -> Any:
    """`model(**inputs)` with `multimask_output` set by the rule (`inputs` hold no `labels`)."""
    multimask = use_multimask(model, inputs.get("input_points"), inputs.get("input_boxes"))
    return model(**inputs, multimask_output=multimask)


def select_masks(predictions: Any | Sequence[Any]) -> torch.Tensor:
    """One mask per prompt from SamModel's outputs: the only one, or the one with the highest predicted IoU.

    `predictions` is what a Trainer collects for SamModel: the tuple `(iou_scores (B, P, M), pred_masks
    (B, P, M, h, w))` (in any order), a lone `pred_masks`, or masks already selected `(B, P, h, w)`.
    Returns the selected logits `(B, P, h, w)`.
    """
    arrays = list(predictions) if isinstance(predictions, (tuple, list)) else [predictions]
    arrays = [a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a)) for a in arrays]
    masks = [a for a in arrays if a.ndim in (4, 5)]
    scores = [a for a in arrays if a.ndim == 3]
    if len(masks) != 1 or len(scores) > 1:
        raise ValueError(
            "expected pred_masks (B, P, M, h, w) or (B, P, h, w) and optionally iou_scores (B, P, M), got arrays "
            f"of shapes {[tuple(a.shape) for a in arrays]}"
        )
    masks = masks[0]
    if masks.ndim == 4:
        return masks
    if masks.shape[2] == 1:
        return masks[:, :, 0]
    if not scores or scores[0].shape != masks.shape[:3]:
        raise ValueError(
            f"pred_masks {tuple(masks.shape)} hold several masks per prompt: iou_scores (B, P, M) are needed to "
            f"choose one, got {[tuple(s.shape) for s in scores]}"
        )
    best = scores[0].argmax(dim=-1)  # (B, P)
    return masks[torch.arange(masks.shape[0])[:, None], torch.arange(masks.shape[1])[None, :], best]
