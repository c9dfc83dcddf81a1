"""The argument groups of Med-SA training, for `transformers.HfArgumentParser` (command line, JSON or YAML)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from ..errors import MedSAError, MedSAValueError
from ..validation import checked_arguments, load_data_file


@dataclass
class ModelArguments:
    """Which SAM to adapt."""

    model_name_or_path: str = field(
        default="facebook/sam-vit-base",
        metadata={
            "help": "A SAM checkpoint: a Hub id (facebook/sam-vit-base, wanglab/medsam-vit-base) or a folder."
        },
    )


@dataclass
class TaskArguments:
    """Which medical task, and how its images become prompts and targets (see `peft_medsa.data.load_task`)."""

    task: str = field(
        default="demo-2d",
        metadata={
            "help": "A registered task (demo-2d, demo-3d, busi, kvasir-seg, btcv, ...) or a task YAML/JSON file."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "A local copy of a Hub task, in its layout."}
    )
    streaming: bool = field(
        default=True,
        metadata={
            "help": "Stream parquet tasks (no full download). Turn off for small datasets trained for many epochs: "
            "datasets pauses 5 s at the end of every parquet stream."
        },
    )
    train_prompt: str = field(
        default="box",
        metadata={"help": "Prompt preset for training: 1-click, 3-click, box, bbox-0.5, bbox-0.75."},
    )
    train_box_noise: float = field(
        default=0.1,
        metadata={
            "help": "SAM's noise on training boxes: std as a fraction of the box side (at most 20 px of a "
            "1024-px input); 0 turns it off. Evaluation boxes are never noised."
        },
    )
    corrective_clicks: int = field(
        default=0,
        metadata={
            "help": "Iterative training (SAM, Med-SA): this many more rounds per step, each adding a click "
            "sampled from the previous error region and feeding the previous mask back (0: off)."
        },
    )
    eval_prompt: str = field(
        default="box", metadata={"help": "Prompt preset for evaluation (seeded: runs compare)."}
    )
    prompt_seed: int = field(default=0, metadata={"help": "Seed of the simulated prompts (train and eval)."})
    eval_split: str = field(
        default="validation", metadata={"help": "The split evaluated during and after training."}
    )
    depth: int | None = field(
        default=None,
        metadata={
            "help": "Volumes: chunks of this many slices run as 5-D input through SD-Trans (None: 2-D slices)."
        },
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many examples."}
    )
    shuffle_buffer: int = field(
        default=256, metadata={"help": "Shuffle buffer of the streamed training set."}
    )


@dataclass
class MedSAArguments:
    """The adapter (see `peft_medsa.MedSAConfig`) and the loss."""

    preset: str = field(default="paper", metadata={"help": "paper, official-code or encoder-only."})
    adapter_ratio: float = field(default=0.25, metadata={"help": "Bottleneck width / block width."})
    activation: str | None = field(default=None, metadata={"help": "relu or gelu (default: the preset's)."})
    depth_attention: bool | None = field(
        default=None, metadata={"help": "SD-Trans depth branch (default: on when --depth is set)."}
    )
    init_weights: str = field(default="identity", metadata={"help": "identity or linear-default."})
    dice_weight: float = field(default=1.0, metadata={"help": "Weight of the soft Dice loss."})
    bce_weight: float = field(default=1.0, metadata={"help": "Weight of the binary cross-entropy."})
    iou_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of SAM's IoU-head loss, applied where 3 masks are output (a single click with a "
            "trainable IoU head; see peft_medsa.mask_selection)."
        },
    )

    def config_overrides(self, volumes: bool) -> dict:
        """The MedSAConfig fields these arguments set (the preset supplies the rest)."""
        overrides = {"adapter_ratio": self.adapter_ratio, "init_weights": self.init_weights}
        overrides["depth_attention"] = volumes if self.depth_attention is None else self.depth_attention
        if self.activation is not None:
            overrides["activation"] = self.activation
        return overrides


@dataclass
class MedSATrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that fit SamModel: keep `labels` (SamModel.forward has no such
    argument, the loss needs it) and pick the best checkpoint by Dice, not by loss."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep `labels` for the loss."})
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "The targets."}
    )
    metric_for_best_model: str | None = field(
        default="dice", metadata={"help": "Metric of the best checkpoint (with --load_best_model_at_end)."}
    )


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, TaskArguments, MedSAArguments, MedSATrainingArguments]:
    """Parse the four groups from the command line, or from one JSON or YAML file given as the only argument."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, TaskArguments, MedSAArguments, MedSATrainingArguments))
    from_file = len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))
    try:
        if from_file:
            data = load_data_file(argv[0])
            return parser.parse_dict(checked_arguments(parser.dataclass_types, data, argv[0]))
        return parser.parse_args_into_dataclasses(argv)
    except MedSAError:
        raise
    except ValueError as error:  # TrainingArguments' own consistency checks: a user mistake
        raise MedSAValueError(f"{argv[0] if from_file else 'medsa train'}: {error}") from error
