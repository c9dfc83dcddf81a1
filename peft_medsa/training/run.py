"""The training job: a SAM checkpoint + a medical task -> a trained Med-SA adapter, its metrics and its model card.

`examples/train_medsa.py` and `medsa train` parse the argument groups of `arguments.py` and call `train`.
Distribution (DDP, FSDP, several nodes) comes from `accelerate launch`; nothing here depends on it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from peft import PeftModel, get_peft_model
from transformers import TrainerCallback, TrainingArguments, set_seed

from ..config import MedSAConfig
from ..data import PromptConfig, SamDataCollator, load_task, resolve_task
from ..errors import MedSAValueError
from ..hub import build_model_card, save_adapter_with_card
from ..pretrained import load_sam
from .arguments import MedSAArguments, ModelArguments, TaskArguments
from .evaluation import EvaluationReport, evaluation_set, metrics_for
from .losses import MedSALoss
from .metrics import MetricAggregator
from .trainer import MedSATrainer


def build_model(model_args: ModelArguments, medsa_args: MedSAArguments, volumes: bool) -> PeftModel:
    """The SAM checkpoint with a fresh Med-SA adapter."""
    config = MedSAConfig.from_preset(medsa_args.preset, **medsa_args.config_overrides(volumes))
    return get_peft_model(load_sam(model_args.model_name_or_path), config)


def training_set(task_args: TaskArguments, sam_config: Any, shuffle_seed: int) -> Any:
    """The training examples, shuffled through a buffer (`TaskArguments.shuffle_buffer`); boxes get SAM's noise
    (`TaskArguments.train_box_noise`), drawn once per example and prompt seed."""
    examples = load_task(
        task_args.task,
        split="train",
        streaming=task_args.streaming,
        prompt=replace(PromptConfig.resolve(task_args.train_prompt), box_noise=task_args.train_box_noise),
        seed=task_args.prompt_seed,
        sam_config=sam_config,
        depth=task_args.depth,
        data_dir=task_args.data_dir,
    )
    if next(iter(examples), None) is None:  # else the Trainer fails later: "Batch does not contain any data"
        raise MedSAValueError(
            f"Task {task_args.task!r} split 'train' has no examples (no case, or no mask with a labelled "
            "class); check the task's splits, split_fractions and labels."
        )
    return examples.shuffle(seed=shuffle_seed, buffer_size=task_args.shuffle_buffer)


def make_trainer(
    model: Any,
    training_args: TrainingArguments,
    eval_set: list[dict[str, Any]],
    class_names: dict[int, str],
    medsa_args: MedSAArguments | None = None,
    train_set: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    aggregator: MetricAggregator | None = None,
    corrective_clicks: int = 0,
) -> MedSATrainer:
    """A MedSATrainer that scores `eval_set` per class and per case (volumes in 3-D), in the original grid."""
    medsa_args = medsa_args or MedSAArguments()
    return MedSATrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=SamDataCollator(),
        compute_metrics=metrics_for(eval_set, aggregator or MetricAggregator(class_names)),
        loss_fn=MedSALoss(medsa_args.dice_weight, medsa_args.bce_weight, medsa_args.iou_weight),
        corrective_clicks=corrective_clicks,
        callbacks=callbacks,
    )


def train(
    model_args: ModelArguments,
    task_args: TaskArguments,
    medsa_args: MedSAArguments,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, float]:
    """Train an adapter, keep the best checkpoint by Dice, evaluate it, and write adapter + card + metrics."""
    set_seed(training_args.seed)
    spec = resolve_task(task_args.task)
    model = build_model(model_args, medsa_args, volumes=task_args.depth is not None)
    train_set = training_set(task_args, model.config, training_args.seed)
    eval_set = evaluation_set(
        spec,
        model.config,
        task_args.eval_split,
        task_args.eval_prompt,
        prompt_seed=task_args.prompt_seed,
        depth=task_args.depth,
        data_dir=task_args.data_dir,
        max_samples=task_args.max_eval_samples,
        streaming=task_args.streaming,
    )
    aggregator = MetricAggregator(spec.labels)
    trainer = make_trainer(
        model,
        training_args,
        eval_set,
        spec.labels,
        medsa_args,
        train_set,
        callbacks,
        aggregator,
        corrective_clicks=task_args.corrective_clicks,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate(metric_key_prefix="eval")  # the kept (best) adapter, on every process
    if trainer.is_world_process_zero():
        trainer.save_metrics("eval", metrics)
        trainer.save_state()  # trainer_state.json: the log history (learning curve)
        report = EvaluationReport.from_aggregator(
            aggregator,
            task=spec.name,
            split=task_args.eval_split,
            prompt=task_args.eval_prompt,
            prompt_seed=task_args.prompt_seed,
            examples=len(eval_set),
        )
        output_dir = Path(training_args.output_dir)
        report.save(output_dir / "metrics.json")
        card = build_model_card(
            model,
            task_name=spec.name,
            dataset_id=spec.repo_id,
            metrics=report.metrics,
            eval_split=task_args.eval_split,
            eval_prompt=f"prompt `{task_args.eval_prompt}`, seed {task_args.prompt_seed}",
            limits=evaluation_limits(spec, eval_set, task_args, report),
            nsd_tolerance=report.nsd_tolerance,
            training_config={**vars(task_args), **vars(medsa_args), **_training_summary(training_args)},
        )
        save_adapter_with_card(model, output_dir, card)
    return metrics


def evaluation_limits(
    spec: Any, eval_set: list[dict[str, Any]], task_args: TaskArguments, report: EvaluationReport
) -> str:
    """What the card's numbers can and cannot say, and their units."""
    cases = sorted({str(example["case_id"]) for example in eval_set})
    verified = "" if spec.verified else " The task's column layout was not verified against the Hub dataset."
    return (
        f"{len(eval_set)} evaluation examples from {len(cases)} case(s) of the `{task_args.eval_split}` split "
        f"({', '.join(cases[:8])}{', ...' if len(cases) > 8 else ''}). Prompts are simulated from the ground truth "
        f"(`{task_args.eval_prompt}`), so scores are upper bounds of what a clinician's prompts would give. "
        f"Masks are scored on the labels' original grid: {report.units} "
        "HD95 is undefined (skipped, counted in `hd95_undefined`) where a prediction or target is empty."
        + verified
    )


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
