"""The training job: a SAM checkpoint + a medical task -> a trained Med-SA adapter, its metrics and its model card.

`examples/train_medsa.py` and `medsa train` parse the argument groups of `arguments.py` and call `train`.
Distribution (DDP, FSDP, several nodes) comes from `accelerate launch`; nothing here depends on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import EvalPrediction, SamModel, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import HubStrategy, get_last_checkpoint
from transformers.utils import logging

from ..config import MedSAConfig
from ..data import SamDataCollator, load_task, resolve_task
from ..errors import MedSAValueError
from ..hub import build_model_card, check_hub_access, push_adapter_folder, save_adapter_with_card
from .arguments import MedSAArguments, MedSATrainingArguments, ModelArguments, TaskArguments
from .losses import MedSALoss
from .metrics import MetricAggregator, make_compute_metrics
from .trainer import MedSATrainer

METADATA_KEYS = ("case_id", "slice_index", "class_id", "spacing")
logger = logging.get_logger(__name__)


def build_model(model_args: ModelArguments, medsa_args: MedSAArguments, volumes: bool) -> PeftModel:
    """The SAM checkpoint with a fresh Med-SA adapter."""
    config = MedSAConfig.from_preset(medsa_args.preset, **medsa_args.config_overrides(volumes))
    return get_peft_model(SamModel.from_pretrained(model_args.model_name_or_path), config)


def training_set(task_args: TaskArguments, sam_config: Any, shuffle_seed: int) -> Any:
    """The training examples, shuffled through a buffer (`TaskArguments.shuffle_buffer`)."""
    examples = load_task(
        task_args.task,
        split="train",
        streaming=task_args.streaming,
        prompt=task_args.train_prompt,
        seed=task_args.prompt_seed,
        sam_config=sam_config,
        depth=task_args.depth,
        data_dir=task_args.data_dir,
    )
    return examples.shuffle(seed=shuffle_seed, buffer_size=task_args.shuffle_buffer)


def evaluation_set(
    task_args: TaskArguments, sam_config: Any, split: str, prompt: str
) -> list[dict[str, Any]]:
    """The evaluation examples, in a fixed order (metrics match them to their metadata by position)."""
    examples = load_task(
        task_args.task,
        split=split,
        streaming=task_args.streaming,
        prompt=prompt,
        seed=task_args.prompt_seed,
        sam_config=sam_config,
        depth=task_args.depth,
        data_dir=task_args.data_dir,
    )
    if task_args.max_eval_samples is not None:
        examples = examples.take(task_args.max_eval_samples)
    return list(examples)


def metrics_for(
    examples: list[dict[str, Any]], class_names: dict[int, str], aggregator: MetricAggregator | None = None
):
    """A Trainer `compute_metrics` that scores `examples` per class and per case (volumes in 3-D); pass an
    `aggregator` to read its per-case results after an evaluation."""
    metadata = [{key: example[key] for key in METADATA_KEYS if key in example} for example in examples]
    return make_compute_metrics(aggregator or MetricAggregator(class_names), metadata=metadata)


def box_baseline(
    examples: list[dict[str, Any]], class_names: dict[int, str], image_size: int
) -> dict[str, float]:
    """The metrics of the prompt box itself used as the mask: what a box gives with no model at all."""
    batch = SamDataCollator()(examples)
    if "input_boxes" not in batch:
        raise ValueError("The box baseline needs box prompts (e.g. prompt='box' or 'bbox-0.75').")
    labels = batch["labels"]  # (B, P, H, W), or (B, D, P, H, W) for volumes
    height, width = labels.shape[-2:]
    boxes = batch["input_boxes"].reshape(-1, *batch["input_boxes"].shape[-2:])  # (B or B*D, P, 4)
    boxes = boxes * torch.tensor([width, height, width, height]) / image_size  # in the label frame
    rows, columns = torch.arange(height)[:, None] + 0.5, torch.arange(width)[None, :] + 0.5
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))  # each (B*D, P, 1, 1)
    inside = (columns >= x1) & (columns <= x2) & (rows >= y1) & (rows <= y2)  # (B*D, P, H, W)
    logits = inside.float() * 40 - 20  # a hard mask, as logits
    metrics = metrics_for(examples, class_names)(EvalPrediction(predictions=logits, label_ids=labels))
    return {key: value for key, value in metrics.items() if _is_quality(key)}


def make_trainer(
    model: Any,
    training_args: TrainingArguments,
    eval_set: list[dict[str, Any]],
    class_names: dict[int, str],
    medsa_args: MedSAArguments | None = None,
    train_set: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    aggregator: MetricAggregator | None = None,
) -> MedSATrainer:
    """A MedSATrainer that scores `eval_set` per class and per case (volumes in 3-D)."""
    medsa_args = medsa_args or MedSAArguments()
    return MedSATrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=SamDataCollator(),
        compute_metrics=metrics_for(eval_set, class_names, aggregator),
        loss_fn=MedSALoss(medsa_args.dice_weight, medsa_args.bce_weight, medsa_args.iou_weight),
        multimask_output=medsa_args.multimask_output,
        callbacks=callbacks,
    )


def train(
    model_args: ModelArguments,
    task_args: TaskArguments,
    medsa_args: MedSAArguments,
    training_args: MedSATrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, float]:
    """Train an adapter (resuming from the last checkpoint in `output_dir`), keep the best checkpoint by Dice,
    evaluate it, write adapter + card + metrics, and publish them with `--push_to_hub`."""
    logger.warning(_process_summary(training_args))
    last_checkpoint = detect_last_checkpoint(training_args)
    publish = training_args.push_to_hub and training_args.process_index == 0
    if publish:
        check_hub_access(training_args.hub_token)  # before training, not after it
    # The Trainer would upload at every save, pickles included; `publish_run` uploads the kept adapter instead.
    trainer_args = dataclasses.replace(training_args, push_to_hub=False)
    callbacks = list(callbacks or [])
    if publish and training_args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        callbacks.append(PushCheckpoints(_hub_repo_id(training_args), training_args))
    set_seed(training_args.seed)
    spec = resolve_task(task_args.task)
    model = build_model(model_args, medsa_args, volumes=task_args.depth is not None)
    train_set = None
    if training_args.do_train:
        train_set = training_set(task_args, model.config, training_args.seed)
        if task_args.max_train_samples is not None:
            train_set = train_set.take(task_args.max_train_samples)
    eval_set = evaluation_set(task_args, model.config, task_args.eval_split, task_args.eval_prompt)
    trainer = make_trainer(model, trainer_args, eval_set, spec.labels, medsa_args, train_set, callbacks)
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()  # trainer_state.json: the log history (learning curve)
    metrics: dict[str, float] = {}
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        results = {key.removeprefix("eval_"): value for key, value in metrics.items() if _is_quality(key)}
        card = build_model_card(
            model,
            task_name=spec.name,
            dataset_id=spec.repo_id,
            data_license=spec.license,
            metrics=results,
            eval_split=task_args.eval_split,
            eval_protocol=f"prompt `{task_args.eval_prompt}`, seed {task_args.prompt_seed}",
            limits=evaluation_limits(spec, eval_set, task_args) if metrics else None,
            training_config={**vars(task_args), **vars(medsa_args), **_training_summary(training_args)},
            repo_id=_hub_repo_id(training_args) if publish else None,
        )
        save_adapter_with_card(model, Path(training_args.output_dir), card)
        if publish:
            push_adapter_folder(
                training_args.output_dir,
                _hub_repo_id(training_args),
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
                commit_message="Med-SA adapter: the kept checkpoint, its card and metrics",
            )
    return metrics


def detect_last_checkpoint(training_args: MedSATrainingArguments) -> str | None:
    """The checkpoint to resume from, as transformers' example scripts do; refuses to mix a new run into a
    folder that holds a finished run or other files (unless --overwrite_output_dir)."""
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir() or training_args.overwrite_output_dir or not training_args.do_train:
        return None
    last_checkpoint = get_last_checkpoint(output_dir)
    if training_args.resume_from_checkpoint:
        return None
    if (output_dir / "adapter_model.safetensors").exists():
        raise MedSAValueError(
            f"{output_dir} already holds a trained adapter; choose another --output_dir, resume with "
            "--resume_from_checkpoint, or pass --overwrite_output_dir to train afresh in it."
        )
    if last_checkpoint is None and any(output_dir.iterdir()):
        raise MedSAValueError(
            f"{output_dir} is not empty and holds no checkpoint to resume from; choose another --output_dir or "
            "pass --overwrite_output_dir."
        )
    if last_checkpoint is not None:
        logger.warning(f"Resuming from {last_checkpoint} (pass --overwrite_output_dir to start afresh).")
    return last_checkpoint


class PushCheckpoints(TrainerCallback):
    """`hub_strategy` checkpoint / all_checkpoints: push each saved checkpoint's adapter files (no pickles)."""

    def __init__(self, repo_id: str, training_args: TrainingArguments):
        self.repo_id, self.args = repo_id, training_args

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        every = self.args.hub_strategy == HubStrategy.ALL_CHECKPOINTS
        push_adapter_folder(
            folder,
            self.repo_id,
            token=self.args.hub_token,
            private=self.args.hub_private_repo,
            revision=self.args.hub_revision,
            path_in_repo=folder.name if every else "last-checkpoint",
            commit_message=f"Med-SA checkpoint at step {state.global_step}",
        )


def _hub_repo_id(training_args: TrainingArguments) -> str:
    """--hub_model_id, else the output folder's name (in the token's namespace), as the Trainer does."""
    return training_args.hub_model_id or Path(training_args.output_dir).absolute().name


def _process_summary(args: TrainingArguments) -> str:
    return (
        f"Process {args.process_index} of {args.world_size}, device {args.device}, "
        f"distributed: {args.parallel_mode.value}, bf16: {args.bf16}, fp16: {args.fp16}"
    )


def evaluation_limits(spec: Any, eval_set: list[dict[str, Any]], task_args: TaskArguments) -> str:
    """What the card's numbers can and cannot say."""
    cases = sorted({str(example["case_id"]) for example in eval_set})
    verified = "" if spec.verified else " The task's column layout was not verified against the Hub dataset."
    return (
        f"{len(eval_set)} evaluation examples from {len(cases)} case(s) of the `{task_args.eval_split}` split "
        f"({', '.join(cases[:8])}{', ...' if len(cases) > 8 else ''}). Prompts are simulated from the ground truth "
        f"(`{task_args.eval_prompt}`), so scores are upper bounds of what a clinician's prompts would give; "
        "HD95 is undefined (skipped, counted in `hd95_undefined`) where a prediction or target is empty."
        + verified
    )


def _is_quality(key: str) -> bool:
    return key.removeprefix("eval_").startswith(("dice", "iou", "hd95", "nsd"))


def _training_summary(args: TrainingArguments) -> dict[str, Any]:
    keys = (
        "learning_rate",
        "max_steps",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "weight_decay",
        "lr_scheduler_type",
        "warmup_steps",
        "seed",
        "bf16",
    )
    return json.loads(json.dumps({key: getattr(args, key) for key in keys}, default=str))
