"""Training loss for SamModel's mask logits: soft Dice + binary cross-entropy, with SAM's optional IoU-head loss.

Med-SA trains with Dice + cross-entropy (paper, section 7 of the design notes). With multimask output
(M = 3 masks per prompt) one mask per prompt is trained, chosen as `peft_medsa.mask_selection` says:
`choice="lowest_loss"` (SAM's recipe, where the IoU head is trained: the mask with the lowest loss, and the
IoU head is supervised with the mean-squared error between its predicted IoU and the real IoU of that mask)
or `choice="iou_ranked"` (where the IoU head is frozen: the mask it ranks first, the one evaluation uses; no
IoU term, since nothing could learn from it).

Use from a `Trainer.compute_loss`:

```py
labels = inputs.pop("labels")  # (B, P, H, W) in {0, 1}
outputs = model(**inputs)
loss = loss_fn(outputs.pred_masks, labels, outputs.iou_scores)
```
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_mask_logits(pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize mask logits `(..., h, w)` to `size` (as SAM upsamples its low-resolution masks).

    Resizing the logits rather than thresholded masks keeps sub-pixel boundaries and the gradient.
    """
    if tuple(pred_masks.shape[-2:]) == tuple(size):
        return pred_masks
    leading = pred_masks.shape[:-2]
    flat = pred_masks.reshape(-1, 1, *pred_masks.shape[-2:])  # (N, 1, h, w)
    flat = F.interpolate(flat.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return flat.reshape(*leading, *size)


def _check_shapes(
    pred_masks: torch.Tensor, labels: torch.Tensor, iou_scores: torch.Tensor | None
) -> torch.Tensor:
    """Returns labels as (B, P, H, W); volume labels (B, D, P, H, W) are flattened volume-major like pred_masks."""
    expected = (
        "expected pred_masks (B, P, M, h, w) and labels (B, P, H, W) with the same B and P, "
        "or labels (B, D, P, H, W) for volumes run as B*D slices"
    )
    flat = labels.flatten(0, 1) if labels.ndim == 5 else labels
    if pred_masks.ndim != 5 or flat.ndim != 4 or pred_masks.shape[:2] != flat.shape[:2]:
        raise ValueError(
            f"pred_masks has shape {tuple(pred_masks.shape)} and labels has shape {tuple(labels.shape)}: {expected}"
        )
    if iou_scores is not None and iou_scores.shape != pred_masks.shape[:3]:
        raise ValueError(
            f"iou_scores has shape {tuple(iou_scores.shape)} and pred_masks has shape {tuple(pred_masks.shape)}: "
            f"expected iou_scores (B, P, M) = pred_masks.shape[:3]"
        )
    return flat


def segmentation_loss(
    pred_masks: torch.Tensor,
    labels: torch.Tensor,
    iou_scores: torch.Tensor | None = None,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    iou_weight: float = 1.0,
    smooth: float = 1.0,
    choice: str = "lowest_loss",
) -> torch.Tensor:
    """Weighted soft Dice + BCE (+ IoU-head MSE) on the best of the M masks of each prompt, averaged over B·P.

    Args:
        pred_masks: `(B, P, M, h, w)` mask logits, as SamModel returns them. If `(h, w)` differs from the label
            size they are resized bilinearly to `(H, W)` first.
        labels: `(B, P, H, W)` targets in [0, 1] (binary masks; soft values are accepted), or `(B, D, P, H, W)`
            for volumes, whose D slices run through SamModel as B*D images, volume-major.
        iou_scores: `(B, P, M)` predicted IoUs; required when `iou_weight > 0` and M > 1.
        iou_weight: weight of the IoU-head loss, applied only with several masks per prompt (M > 1) and
            `choice="lowest_loss"`.
        choice: `"lowest_loss"` or `"iou_ranked"`: which of the M masks is trained (see the module docstring).
        smooth: Dice smoothing epsilon, `1 - (2·Σpt + ε) / (Σp + Σt + ε)`. With an empty target the Dice loss is
            `Σp / (Σp + ε)`: 0 for an empty prediction, approaching 1 as predicted mass grows.

    The mask trained for each prompt is the one with the lowest Dice + BCE loss (or the IoU head's first); the
    choice is not differentiated, so gradients reach only that mask (and only its IoU score). The IoU-head target is the IoU
    of the chosen mask thresholded at logit 0 with the target thresholded at 0.5 (1 when both are empty).
    """
    labels = _check_shapes(pred_masks, labels, iou_scores)
    if labels.numel() and (labels.min() < 0 or labels.max() > 1):
        raise ValueError(
            f"labels must lie in [0, 1], got values in [{labels.min().item()}, {labels.max().item()}]; "
            "padding values such as -100 must be removed before the loss"
        )
    if choice not in ("lowest_loss", "iou_ranked"):
        raise ValueError(f"choice must be 'lowest_loss' or 'iou_ranked', got {choice!r}")
    ranked = choice == "iou_ranked" and pred_masks.shape[2] > 1
    supervise_iou = (
        iou_weight > 0 and pred_masks.shape[2] > 1 and not ranked
    )  # the head matters where it chooses
    if (supervise_iou or ranked) and iou_scores is None:
        raise ValueError(f"choice={choice!r} with several masks per prompt needs iou_scores (B, P, M)")

    logits = resize_mask_logits(pred_masks, tuple(labels.shape[-2:])).float()  # (B, P, M, H, W)
    target = labels.float().unsqueeze(2).expand_as(logits)  # (B, P, 1, H, W) -> (B, P, M, H, W)

    probs = logits.sigmoid()
    intersection = (probs * target).sum(dim=(-2, -1))
    dice = 1 - (2 * intersection + smooth) / (probs.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(-2, -1))
    per_mask = dice_weight * dice + bce_weight * bce  # (B, P, M)

    ranking = iou_scores.detach().float() if ranked else -per_mask.detach()
    best = ranking.argmax(dim=-1, keepdim=True)  # (B, P, 1)
    loss = per_mask.gather(-1, best).squeeze(-1)  # (B, P)

    if supervise_iou:
        with torch.no_grad():
            chosen = (
                logits.gather(2, best[..., None, None].expand(-1, -1, 1, *logits.shape[-2:])).squeeze(2) > 0
            )
            hard_target = labels > 0.5
            inter = (chosen & hard_target).sum(dim=(-2, -1)).float()
            union = (chosen | hard_target).sum(dim=(-2, -1)).float()
            true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # (B, P)
        predicted_iou = iou_scores.float().gather(-1, best).squeeze(-1)  # (B, P)
        loss = loss + iou_weight * (predicted_iou - true_iou) ** 2

    return loss.mean()


class MedSALoss(nn.Module):
    """`segmentation_loss` with its weights fixed at construction, for a Trainer's `compute_loss`.

    The defaults: the paper's Dice + BCE with equal weights, plus SAM's IoU-head loss (weight 1) wherever the
    model outputs several masks, since evaluation then picks the mask with the highest predicted IoU.
    """

    def __init__(
        self, dice_weight: float = 1.0, bce_weight: float = 1.0, iou_weight: float = 1.0, smooth: float = 1.0
    ):
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.iou_weight = iou_weight
        self.smooth = smooth

    def forward(
        self,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        iou_scores: torch.Tensor | None = None,
        choice: str = "lowest_loss",
    ) -> torch.Tensor:
        return segmentation_loss(
            pred_masks,
            labels,
            iou_scores,
            dice_weight=self.dice_weight,
            bce_weight=self.bce_weight,
            iou_weight=self.iou_weight,
            smooth=self.smooth,
            choice=choice,
        )

    def extra_repr(self) -> str:
        return (
            f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}, "
            f"iou_weight={self.iou_weight}, smooth={self.smooth}"
        )
