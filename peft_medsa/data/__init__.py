"""Medical segmentation data for Med-SA: tasks as data, loading, SAM preprocessing, prompts and collation.

`load_task("busi")` (or a YAML file, a dict, a local folder) returns a `datasets.IterableDataset` of examples
whose keys are `SamModel.forward`'s (`pixel_values`, `input_points`/`input_labels` or `input_boxes`) plus
`labels` and metadata; `SamDataCollator` batches them for the Trainer. Nothing here imports the core model.
"""

from .collator import MODEL_KEYS, SamDataCollator
from .demo import prepare_demo_task
from .loading import load_task, resolve_task
from .prompts import PROMPT_PRESETS, PromptConfig, box_iou, example_seed, next_click, tau_box, tight_box
from .readers import Volume, read_image, read_volume
from .registry import IntensityPolicy, TaskSpec, get_task, list_tasks, register_task

__all__ = [
    "MODEL_KEYS",
    "PROMPT_PRESETS",
    "IntensityPolicy",
    "PromptConfig",
    "SamDataCollator",
    "TaskSpec",
    "Volume",
    "box_iou",
    "example_seed",
    "get_task",
    "list_tasks",
    "load_task",
    "next_click",
    "prepare_demo_task",
    "read_image",
    "read_volume",
    "register_task",
    "resolve_task",
    "tau_box",
    "tight_box",
]
