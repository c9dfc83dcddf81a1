"""Publishing a Med-SA adapter: its model card, the folder that is uploaded, and the upload.

A published adapter is `adapter_config.json`, `adapter_model.safetensors`, the Med-SA card (`README.md`) and,
from a training run, its metrics (`*_results.json`); never a pickle (`training_args.bin`, optimizer state) and
never an unfinished checkpoint. Importing peft-medsa also makes peft's own `save_pretrained` / `push_to_hub`
of a Med-SA model write this card instead of peft's generic one (`use_medsa_card_in_peft`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HTTPError  # the HTTP client's base error (httpx or httpx2, by version)
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft import PeftModel

from .errors import MedSAConnectionError, MedSAFileError, MedSAFileNotFoundError, MedSAValueError
from .families import SamFamily, family_of
from .writing import atomic_write

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
# What `train()` (metrics.json) and `Trainer.save_metrics` write; published with the adapter when present.
METRICS_FILES = ("metrics.json", "all_results.json", "train_results.json", "eval_results.json")
PUBLISHED_FILES = ADAPTER_FILES + METRICS_FILES
TAGS = ("medical", "segment-anything", "medsa")
TEMPLATE = "model_card_template.md"
# Results that are counts, not scores: listed in the card's table, kept out of the model-index.
COUNT_SUFFIXES = ("undefined", "count")
# The units distance metrics carry in their names (`peft_medsa.training.metrics.metric_key`).
DISTANCE_UNITS = ("mm", "px")


def build_model_card(
    model: PeftModel,
    *,
    task_name: str | None = None,
    metrics: Mapping[str, float] | None = None,
    eval_split: str | None = None,
    eval_protocol: str | None = None,
    nsd_tolerance: float = 1.0,
    limits: str | None = None,
    training_config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    dataset_id: str | None = None,
    data_license: str | None = None,
    license: str = "apache-2.0",
    adapter_name: str = "default",
) -> ModelCard:
    """Render the card of an adapter: Hub metadata, usage, configuration and, after an evaluation, its results.

    `metrics` are flat results (`dice`, `iou`, `hd95_mm`, `nsd_mm`, `dice/<class>`, `hd95_undefined`, ...);
    distances carry their unit in the key (`_mm`, or `_px` where the images have no spacing).
    The model-index gets every finite score with a readable name and its protocol (`eval_protocol`, the NSD
    tolerance) as `config`; counts and undefined (NaN) values appear in the table only. `base_model` enters the
    metadata only when it names a Hub model: a local folder is described in the text.
    """
    config = model.peft_config[adapter_name]
    base_model = config.base_model_name_or_path
    hub_base = _hub_model_id(base_model)
    task_slug = _slug(task_name) if task_name else None
    model_name = (
        repo_id.split("/")[-1]
        if repo_id
        else f"medsa-{config.preset}" + (f"-{task_slug}" if task_slug else "")
    )
    results = {key: float(value) for key, value in (metrics or {}).items() if isinstance(value, (int, float))}
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=dataset_id or task_slug or "unknown",
            dataset_name=task_name or "unknown",
            dataset_split=eval_split,
            metric_type=key,
            metric_name=metric_name(key),
            metric_value=round(value, 4),
            metric_config="; ".join(
                filter(
                    None,
                    [
                        eval_protocol,
                        f"NSD tolerance {nsd_tolerance:g} {unit_of(key)}" if key.startswith("nsd") else None,
                    ],
                )
            )
            or None,
        )
        for key, value in results.items()
        if math.isfinite(value) and not is_count(key)
    ]
    card_data = ModelCardData(
        library_name="peft",
        license=license,
        base_model=hub_base,
        pipeline_tag="mask-generation",
        tags=[*TAGS, *([task_slug] if task_slug else [])],
        datasets=[dataset_id] if dataset_id else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    trainable, total = model.get_nb_trainable_parameters()
    return ModelCard.from_template(
        card_data,
        template_str=resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"),
        model_name=model_name,
        base_model=f"`{base_model}`" if base_model and not hub_base else (base_model or "a SamModel"),
        base_model_link=f"https://huggingface.co/{hub_base}" if hub_base else None,
        task_name=task_name,
        dataset_id=dataset_id,
        data_license=data_license,
        trainable_parameters=f"{trainable:,}",
        trainable_percent=f"{100 * trainable / (total - trainable):.2f} %",
        usage=_usage(
            base_model or "facebook/sam-vit-base",
            repo_id or "path/to/this/adapter",
            family_of(model),
        ),
        eval_split=eval_split,
        eval_protocol=eval_protocol,
        results=[
            (metric_name(key), f"{value:.4f}" if math.isfinite(value) else "undefined")
            for key, value in results.items()
        ],
        distance_units=_distance_units(results),
        adapter_config=json.dumps(config.to_dict(), indent=2, default=str),
        training_config=json.dumps(dict(training_config), indent=2, default=str) if training_config else None,
        limits=limits,
    )


def metric_name(key: str) -> str:
    """A readable name from a result key: `hd95_mm/spleen` -> `HD95 (mm), spleen`, `dice` -> `Dice`."""
    base, _, class_name = key.partition("/")
    head, _, unit = base.partition("_")
    name = head.capitalize() if head == "dice" else head.upper()
    if unit:
        name += f" ({unit.replace('_', ' ')})"
    return f"{name}, {class_name}" if class_name else name


def unit_of(key: str) -> str | None:
    """The distance unit a result key names (`hd95_mm/liver` -> `mm`, `nsd_px` -> `px`), None for overlaps."""
    unit = key.partition("/")[0].rpartition("_")[2]
    return unit if unit in DISTANCE_UNITS else None


def _distance_units(results: Mapping[str, float]) -> str | None:
    """The card's sentence on distance units, read from the result keys (never assumed to be millimetres)."""
    units = {unit_of(key) for key in results} - {None}
    if not units:
        return None
    names = {
        "mm": "millimetres (the images' voxel spacing)",
        "px": "pixels of the original image (no spacing)",
    }
    return "HD95 and NSD are in " + " and ".join(names[unit] for unit in sorted(units)) + "."


def is_count(key: str) -> bool:
    """Whether a result key counts cases (e.g. `hd95_undefined`) rather than scoring them."""
    base = key.partition("/")[0]
    return base.startswith("num_") or base.endswith(COUNT_SUFFIXES)


def save_adapter_with_card(model: PeftModel, output_dir: str | os.PathLike, card: ModelCard) -> Path:
    """Write the folder that is uploaded: adapter config, adapter weights (safetensors) and this card."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    write_card(card, output_dir / "README.md")
    return output_dir


def write_card(card: ModelCard, path: Path) -> None:
    """Save a card atomically (`writing.atomic_write`: a failed write leaves the previous card or nothing)."""
    atomic_write(path, card.save)


def check_hub_access(token: str | None = None) -> None:
    """Fail in a second, not after training, when an upload cannot happen: offline mode, or no token."""
    if constants.HF_HUB_OFFLINE:
        raise MedSAConnectionError(
            "Cannot push to the Hugging Face Hub: HF_HUB_OFFLINE=1 is set. Unset it, or train without "
            "--push_to_hub and publish later with `medsa push OUTPUT_DIR REPO_ID`."
        )
    if not (token or get_token()):
        raise MedSAValueError(
            "Cannot push to the Hugging Face Hub: no token. Log in with `hf auth login`, set HF_TOKEN, or pass "
            "--hub_token."
        )


def push_adapter_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    path_in_repo: str | None = None,
    commit_message: str = "Upload Med-SA adapter",
) -> str:
    """Upload the published files of `folder` (adapter, card, metrics; nothing else); returns the commit URL.

    Errors (offline, no token, refused) leave the folder as it is and say how to retry.
    """
    folder = Path(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise MedSAFileNotFoundError(
            f"{folder} lacks {missing}: a published adapter needs {list(ADAPTER_FILES)}. Write the folder with "
            "a training run, `model.save_pretrained(folder)` or `save_adapter_with_card()` first."
        )
    ModelCard.load(folder / "README.md")  # refuse a card whose metadata the Hub would reject
    check_hub_access(token)
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            path_in_repo=path_in_repo,
            allow_patterns=list(PUBLISHED_FILES),
            commit_message=commit_message,
        )
    except (OSError, HTTPError) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise MedSAFileError(
            f"Could not upload {folder} to the Hub repository {repo_id!r} ({reason}). Nothing was lost: the "
            f"adapter stays in {folder}; retry with `medsa push {folder} {repo_id}`."
        ) from error
    return str(commit)


def push_model(
    model: PeftModel,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Med-SA adapter",
) -> str:
    """`PeftModel.push_to_hub` for a Med-SA model: the adapter with the Med-SA card, no pickles."""
    check_hub_access(token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        write_card(
            build_model_card(model, repo_id=repo_id, adapter_name=model.active_adapter),
            Path(folder) / "README.md",
        )
        return push_adapter_folder(
            folder, repo_id, token=token, private=private, revision=revision, commit_message=commit_message
        )


def is_medsa_card(path: Path) -> bool:
    return path.is_file() and "medsa" in (ModelCard.load(path).data.tags or [])


def use_medsa_card_in_peft() -> None:
    """Make peft's `save_pretrained` and `push_to_hub` of a Med-SA model keep or write the Med-SA card.

    peft rewrites a saved card's tags and `push_to_hub` replaces it with transformers' generic card; for other
    peft methods both stay as they are.
    """
    if getattr(PeftModel.push_to_hub, "_medsa", False):
        return
    peft_card, peft_push = PeftModel.create_or_update_model_card, PeftModel.push_to_hub

    @functools.wraps(peft_card)
    def create_or_update_model_card(self: PeftModel, output_dir: str) -> None:
        if not _is_medsa(self):
            return peft_card(self, output_dir)
        path = Path(output_dir) / "README.md"
        if not is_medsa_card(path):  # a card written by a training run (with results) is kept
            write_card(build_model_card(self, adapter_name=self.active_adapter), path)

    @functools.wraps(peft_push)
    def push_to_hub(self: PeftModel, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if not _is_medsa(self):
            return peft_push(self, repo_id, *args, **kwargs)
        known = ("token", "private", "revision", "commit_message")
        unsupported = sorted(set(kwargs) - set(known)) + (["positional arguments"] if args else [])
        if unsupported:
            raise MedSAValueError(
                f"push_to_hub of a Med-SA model takes repo_id and {list(known)}; got {unsupported}."
            )
        return push_model(self, repo_id, **kwargs)

    push_to_hub._medsa = True
    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel.push_to_hub = push_to_hub


def _is_medsa(model: PeftModel) -> bool:
    from .config import MedSAConfig

    return isinstance(model.peft_config.get(model.active_adapter), MedSAConfig)


def _hub_model_id(name: str | None) -> str | None:
    """`name` if it names a Hub model (`org/model`), None for a local folder or nothing."""
    if not name or Path(name).exists() or name.count("/") != 1:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _usage(base_model: str, adapter: str, family: SamFamily) -> str:
    model, processor = family.image_model, family.processor
    return (
        "import peft_medsa  # registers Med-SA with peft\n"
        "from peft import PeftModel\n"
        f"from transformers import {model}, {processor}\n\n"
        f'base = {model}.from_pretrained("{base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "{adapter}").eval()\n'
        f'processor = {processor}.from_pretrained("{base_model}")  # prepares images, rescales prompts'
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# Imported first (before peft), this module triggers the peft registration midway, when the function above
# does not exist yet: apply it here (it does nothing the second time).
use_medsa_card_in_peft()
