"""The argument groups of Med-SA training, for `transformers.HfArgumentParser` (command line, JSON or YAML)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Literal, get_type_hints

from peft.config import PeftConfig
from transformers import HfArgumentParser, TrainingArguments

from ..config import PRESETS, MedSAConfig
from ..errors import MedSAError, MedSAValueError
from ..validation import checked_arguments, load_data_file


@dataclass
class ModelArguments:
    """Which SAM to adapt."""

    model_name_or_path: str = field(
        default="facebook/sam-vit-base",
        metadata={
            "help": "A SAM, SAM 2 or SAM 3 tracker checkpoint: a Hub id (facebook/sam-vit-base, "
            "wanglab/medsam-vit-base, facebook/sam2.1-hiera-tiny) or a folder."
        },
    )
    base_dtype: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "dtype of SAM's frozen weights; the adapters always train in float32. bfloat16 halves the "
            "base's weight memory (ViT-B: 358 -> 179 MiB) and spares --bf16 autocast a cast of every frozen "
            "weight at every step, at bf16 rounding of the frozen encoder. Presets that train a base module in "
            "full (modules_to_save, e.g. official-code) need float32."
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
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many examples (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many examples."}
    )
    shuffle_buffer: int = field(
        default=256, metadata={"help": "Shuffle buffer of the streamed training set."}
    )


def _adapter_fields() -> list[tuple[str, Any, Any]]:
    """MedSAConfig's own fields as optional arguments: None keeps the preset's value (one set of defaults)."""
    hints = get_type_hints(MedSAConfig)
    inherited = {f.name for f in fields(PeftConfig)}
    adapter = [f for f in fields(MedSAConfig) if f.init and f.name not in inherited and f.name != "preset"]
    return [
        (
            "preset",
            str,
            field(
                default="paper", metadata={"help": f"One of {sorted(PRESETS)}; the fields below override it."}
            ),
        ),
        *(
            (
                f.name,
                hints[f.name] | None,
                field(
                    default=None, metadata={"help": f"{f.metadata.get('help', '')} (default: the preset's)"}
                ),
            )
            for f in adapter
        ),
    ]


@dataclass
class LossArguments:
    """The training loss of Med-SA."""

    dice_weight: float = field(default=1.0, metadata={"help": "Weight of the soft Dice loss."})
    bce_weight: float = field(default=1.0, metadata={"help": "Weight of the binary cross-entropy."})
    iou_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of SAM's IoU-head loss, applied where 3 masks are output (a single click with a "
            "trainable IoU head; see peft_medsa.mask_selection)."
        },
    )

    def config_overrides(self, volumes: bool) -> dict[str, Any]:
        """The MedSAConfig fields set here (the preset supplies the rest); SD-Trans is on for volumes unless
        `depth_attention` says otherwise."""
        overrides = {name: getattr(self, name) for name in ADAPTER_FIELDS if getattr(self, name) is not None}
        overrides.setdefault("depth_attention", volumes)
        return overrides


# The adapter (every field of `peft_medsa.MedSAConfig`, generated from it) and the loss.
_ADAPTER_ARGUMENTS = _adapter_fields()
ADAPTER_FIELDS = tuple(name for name, _, _ in _ADAPTER_ARGUMENTS if name != "preset")
MedSAArguments = make_dataclass(
    "MedSAArguments",
    _ADAPTER_ARGUMENTS,
    bases=(LossArguments,),
    namespace={"__doc__": "A Med-SA preset with overrides of any MedSAConfig field, and the loss."},
)


@dataclass
class MedSATrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that fit SamModel: keep `labels` (SamModel.forward has no such
    argument, the loss needs it), pick the best checkpoint by Dice, not by loss, train and evaluate by default,
    and publish (`--push_to_hub`) the kept adapter once, at the end (`peft_medsa.training.run.train`)."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep `labels` for the loss."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 autocast (mixed precision; weights and optimizer stay float32). Default: on when "
            "training on a CUDA GPU with bf16 (Ampere or newer) and --fp16 is off, where it is the faster "
            "setting; off on CPU, where bf16 matmuls are slow without AMX/AVX512-BF16.",
            "nargs": "?",  # a bare --bf16 means true, as for the Trainer's other flags
            "const": True,
        },
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "The targets."}
    )
    metric_for_best_model: str | None = field(
        default="dice", metadata={"help": "Metric of the best checkpoint (with --load_best_model_at_end)."}
    )
    do_train: bool = field(default=True, metadata={"help": "Train (--do_train false: evaluate only)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate the kept adapter at the end."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --output_dir that holds checkpoints or a finished run (by default a "
            "run resumes from the last checkpoint there, and a finished run is never overwritten)."
        },
    )
    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "With --push_to_hub: 'end' (default) or 'every_save' publish the kept adapter, its card and "
            "metrics once, at the end; 'checkpoint' also pushes each checkpoint's adapter to last-checkpoint/, "
            "'all_checkpoints' to checkpoint-N/. Pickles (training_args.bin, optimizer state) are never pushed."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = bf16_by_default(self.fp16, self.use_cpu)
        super().__post_init__()


def bf16_by_default(fp16: bool, use_cpu: bool) -> bool:
    """Whether `medsa train` autocasts to bf16 when --bf16 is not given: on a CUDA GPU that supports it."""
    import torch

    return not (fp16 or use_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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
