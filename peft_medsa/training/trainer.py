"""`MedSATrainer`: the Hugging Face Trainer for a (Med-SA adapted) SamModel, whose loss comes from its masks."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints

from ..mask_selection import predict_masks, select_masks, training_choice
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
        self._staging_dir: str | None = None

    # Checkpoints: written whole or not at all, and resumed where the data stream was ---------------------------

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Write `checkpoint-N` into a hidden `.checkpoint-N.partial` folder beside it and rename it when complete:
        a run killed mid-save (or a full disk) leaves no half-written checkpoint that a resume would load."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging_dir = os.path.join(run_dir, f".{name}.partial")
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            shutil.rmtree(self._staging_dir, ignore_errors=True)
            raise
        finally:
            staging, self._staging_dir = self._staging_dir, None
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if not self.args.should_save:
            return
        final = os.path.join(run_dir, name)
        best = self.state.best_model_checkpoint
        if best is not None and best.startswith(staging):  # the new checkpoint is the best: its real path
            self.state.best_model_checkpoint = final
            self.state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
        if os.path.isdir(final):  # the same step saved again (a resumed run): the new one replaces it
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        os.rmdir(staging)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _init_training_state(
        self,
        max_steps: int,
        num_update_steps_per_epoch: int,
        num_train_epochs: int,
        resume_from_checkpoint: str | None,
        trial: Any,
    ) -> tuple[int, int]:
        """Where a resumed run starts: (epochs done, batches done in the current epoch).

        A streamed dataset has no length, so the Trainer counts the whole run as one epoch and, on resume, skips
        `global_step` batches of epoch 0: past the end of the stream, into epoch 1's shuffle order, instead of
        epoch k's. The saved epoch counter, `epoch + batches / (max_steps * accumulation)` for a stream, says
        where the stream really was.
        """
        epochs, batches = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None or has_length(self.train_dataset) or self.args.ignore_data_skip:
            return epochs, batches
        epochs = int(self.state.epoch)
        batches = round((self.state.epoch - epochs) * max_steps * self.args.gradient_accumulation_steps)
        return epochs, batches

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        choice = training_choice(model)  # which of the 3 masks is trained: see peft_medsa.mask_selection
        outputs = predict_masks(model, inputs)
        loss = self.loss_fn(outputs.pred_masks, labels, outputs.iou_scores, choice)
        if self.corrective_clicks and model.training:
            losses = [loss]
            for round_index in range(1, self.corrective_clicks + 1):
                rng = np.random.default_rng([self.args.seed, self.state.global_step, round_index])
                previous = select_masks((outputs.iou_scores, outputs.pred_masks))
                inputs = corrective_inputs(inputs, previous, labels, rng)
                outputs = predict_masks(model, inputs)
                losses.append(self.loss_fn(outputs.pred_masks, labels, outputs.iou_scores, choice))
            loss = torch.stack(losses).mean()
        if not return_outputs:
            return loss
        # Evaluation gathers what is returned: the masks and their scores only (SAM 2 also returns its image
        # embeddings and object scores, which the metrics do not use).
        outputs = {"iou_scores": outputs.iou_scores, "pred_masks": outputs.pred_masks}
        if labels.ndim == 5:
            # Volumes: the model answers per slice (B*D, P, ...); evaluation gathers and truncates along the batch
            # of volumes, so hand it (B, D*P, ...). compute_metrics splits the slices again.
            outputs = {
                key: value.reshape(labels.shape[0], -1, *value.shape[2:]) for key, value in outputs.items()
            }
        return loss, outputs
