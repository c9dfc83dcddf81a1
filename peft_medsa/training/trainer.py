"""`MedSATrainer`: the Hugging Face Trainer for a (Med-SA adapted) SamModel, whose loss comes from its masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Trainer

from ..mask_selection import predict_masks, select_masks
from .iterative import corrective_inputs
from .losses import MedSALoss


class MedSATrainer(Trainer):
    """A `Trainer` whose loss is Med-SA's Dice + BCE (+ IoU head) on SAM's masks.

    SamModel.forward takes no `labels`: they are popped from the batch before the call. The Trainer must keep
    them (`label_names=["labels"]`, `remove_unused_columns=False`); both are set here when left at their
    defaults, so that evaluation hands `labels` to `compute_metrics`.

    `corrective_clicks=K` trains iteratively (see `peft_medsa.training.iterative`): K more rounds per step, each
    with one more click from the previous error region and the previous mask as `input_masks`; the loss is the
    mean over the K + 1 rounds. Clicks are seeded by (seed, step, round), so a run is reproducible.
    """

    def __init__(
        self, *args: Any, loss_fn: MedSALoss | None = None, corrective_clicks: int = 0, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        if self.args.label_names is None:  # the Trainer would guess `input_labels`, a prompt input
            self.args.label_names = self.label_names = ["labels"]
        self.args.remove_unused_columns = False
        # The loss is a mean over the batch's prompts, not a sum over `num_items_in_batch`: let the Trainer divide
        # it by the gradient-accumulation steps (SamModel.forward's **kwargs would make it assume otherwise).
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss_fn or MedSALoss()
        if corrective_clicks < 0:
            raise ValueError(f"corrective_clicks must be >= 0, got {corrective_clicks}.")
        self.corrective_clicks = corrective_clicks

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = predict_masks(model, inputs)  # single or multimask output: see peft_medsa.mask_selection
        loss = self.loss_fn(outputs.pred_masks, labels, outputs.iou_scores)
        if self.corrective_clicks and model.training:
            losses = [loss]
            for round_index in range(1, self.corrective_clicks + 1):
                rng = np.random.default_rng([self.args.seed, self.state.global_step, round_index])
                previous = select_masks((outputs.iou_scores, outputs.pred_masks))
                inputs = corrective_inputs(inputs, previous, labels, rng)
                outputs = predict_masks(model, inputs)
                losses.append(self.loss_fn(outputs.pred_masks, labels, outputs.iou_scores))
            loss = torch.stack(losses).mean()
        if return_outputs and labels.ndim == 5:
            # Volumes: the model answers per slice (B*D, P, ...); evaluation gathers and truncates along the batch
            # of volumes, so hand it (B, D*P, ...). compute_metrics splits the slices again.
            outputs["pred_masks"] = outputs.pred_masks.reshape(
                labels.shape[0], -1, *outputs.pred_masks.shape[2:]
            )
            outputs["iou_scores"] = outputs.iou_scores.reshape(
                labels.shape[0], -1, outputs.iou_scores.shape[-1]
            )
        return (loss, outputs) if return_outputs else loss
