"""Which of SAM's masks answers a prompt: one rule for training, evaluation, prediction and the demo.

SAM answers a prompt with 3 masks (multimask output) and an IoU head that ranks them. The rule:

- Every prompt gets SAM's 3 masks (transformers' default, and how SAM and `models/sam-small-synthetic` were
  pretrained). Evaluation, `medsa predict`, the app and the demo use the mask the IoU head ranks first
  (`select_masks`).
- Training trains the mask evaluation will use wherever that choice cannot be learnt: under a Med-SA adapter
  whose IoU head is frozen (`paper` and `encoder-only` freeze all of SAM), the trained mask is the one the IoU
  head ranks first, so training and evaluation choose the same mask by construction (`"iou_ranked"`).
- Where the IoU head is trained (a plain SAM fine-tuned in full, or an adapter whose `modules_to_save` holds
  the mask decoder or its IoU head, as `official-code`), SAM's own recipe (Kirillov et al. 2023, appendix A):
  the mask with the lowest loss is trained and the IoU head learns that mask's real IoU (`iou_weight`), so that
  it ranks as training chose (`"lowest_loss"`).

Why not SAM's single-mask output for boxes and several clicks: a base pretrained with multimask output only
has an untrained single-mask token. Measured on the demo-2d validation targets with the small base, box
prompts, zero-shot: Dice 0.615 with the IoU head's pick of 3 masks, 0.305 with the single mask.

`predict_masks(model, inputs)` runs the forward pass the rule asks for; `select_masks` picks the final mask;
`training_choice(model)` says which mask the loss trains.
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


def training_choice(model: torch.nn.Module) -> str:
    """Which of the 3 masks training back-propagates: `"lowest_loss"` where the IoU head is trained to rank
    them (SAM's recipe), `"iou_ranked"` (the mask evaluation will pick) where it is frozen, and for the
    evaluation loss of any model (a model in eval mode is scored on the mask it would answer with)."""
    return "lowest_loss" if iou_head_ranks_masks(model) and model.training else "iou_ranked"


def predict_masks(model: torch.nn.Module, inputs: Mapping[str, Any]) -> Any:
    """`model(**inputs)` with the rule's multimask output (`inputs` hold no `labels`)."""
    return model(**inputs, multimask_output=True)


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
