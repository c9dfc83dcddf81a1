"""The training job: a SAM checkpoint + a medical task -> a trained Med-SA adapter, its metrics and its model card.

`examples/train_medsa.py` and `medsa train` parse the argument groups of `arguments.py` and call `train`.
Distribution (DDP, FSDP, several nodes) comes from `accelerate launch`; nothing here depends on it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import HubStrategy, get_last_checkpoint
from transformers.utils import logging

from ..config import MedSAConfig
from ..data import PromptConfig, SamDataCollator, load_task, resolve_task
from ..errors import MedSAValueError
from ..hub import build_model_card, check_hub_access, push_adapter_folder, save_adapter_with_card
from ..pretrained import load_sam
from .arguments import MedSAArguments, MedSATrainingArguments, ModelArguments, TaskArguments
from .evaluation import EvaluationReport, check_takes_volumes, evaluation_set, metrics_for
from .losses import MedSALoss
from .metrics import MetricAggregator
from .trainer import MedSATrainer

logger = logging.get_logger(__name__)


def build_model(model_args: ModelArguments, medsa_args: MedSAArguments, volumes: bool) -> PeftModel:
    """The checkpoint's image model (SAM, SAM 2 or SAM 3 tracker), its frozen weights in `--base_dtype`, with a
    fresh float32 Med-SA adapter (peft upcasts adapters created on a bf16 base); `volumes` are 3-D chunks through
    SD-Trans, which only SAM has."""
    config = MedSAConfig.from_preset(medsa_args.preset, **medsa_args.config_overrides(volumes))
    if model_args.base_dtype != "float32" and config.modules_to_save:
        raise MedSAValueError(
            f"--base_dtype {model_args.base_dtype} keeps SAM's weights in {model_args.base_dtype}, but "
            f"modules_to_save={config.modules_to_save} (preset {medsa_args.preset!r}) trains those modules in full, and "
            "an optimizer step on bf16 weights rounds most updates away. Use --base_dtype float32 (with --bf16 "
            "for bf16 compute), or a preset that trains adapters only (paper, encoder-only)."
        )
    model = load_sam(model_args.model_name_or_path, dtype=getattr(torch, model_args.base_dtype))
    check_takes_volumes(model, volumes)
    return get_peft_model(model, config)


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


def check_compiler(training_args: TrainingArguments) -> None:
    """`--torch_compile` with inductor on a CPU builds C++ kernels: without a compiler it would fail at the first
    step, deep inside torch and after the model and data are loaded."""
    backend = training_args.torch_compile_backend or "inductor"
    if not training_args.torch_compile or backend != "inductor" or training_args.device.type != "cpu":
        return
    if not any(shutil.which(name) for name in (os.environ.get("CXX"), "g++") if name):
        raise MedSAValueError(
            "--torch_compile builds C++ kernels for the CPU, but no C++ compiler was found (g++, or the one $CXX "
            "names). Install one (e.g. `apt-get install g++`), or train without --torch_compile."
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
    check_compiler(training_args)
    # The Trainer would upload at every save, pickles included; `train()` uploads the kept adapter at the end instead.
    trainer_args = replace(training_args, push_to_hub=False)
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
        trainer_args,
        eval_set,
        spec.labels,
        medsa_args,
        train_set,
        callbacks,
        aggregator,
        corrective_clicks=task_args.corrective_clicks,
    )
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()  # trainer_state.json: the log history (learning curve)
    metrics: dict[str, float] = {}
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")  # the kept (best) adapter, on every process
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        report = None
        if training_args.do_eval:
            report = EvaluationReport.from_aggregator(
                aggregator,
                task=spec.name,
                split=task_args.eval_split,
                prompt=task_args.eval_prompt,
                prompt_seed=task_args.prompt_seed,
                examples=len(eval_set),
            )
            report.save(output_dir / "metrics.json")
        card = build_model_card(
            model,
            task_name=spec.name,
            dataset_id=spec.repo_id,
            data_license=spec.license,
            metrics=report.metrics if report else None,
            eval_split=task_args.eval_split,
            eval_protocol=f"prompt `{task_args.eval_prompt}`, seed {task_args.prompt_seed}",
            limits=evaluation_limits(spec, eval_set, task_args, report) if report else None,
            nsd_tolerance=report.nsd_tolerance if report else 1.0,
            training_config={
                "base_dtype": model_args.base_dtype,
                **vars(task_args),
                **vars(medsa_args),
                **_training_summary(training_args),
            },
            repo_id=_hub_repo_id(training_args) if publish else None,
        )
        save_adapter_with_card(model, output_dir, card)
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
