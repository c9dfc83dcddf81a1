"""Publishing a Med-SA adapter: its model card (from `model_cards/`), the folder to upload, and the upload."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from peft import PeftModel

from .errors import MedSAFileNotFoundError

# The files a published adapter consists of; nothing else is uploaded.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "medsa_adapter.md"
TAGS = ["medical-imaging", "segment-anything", "medsa", "peft", "image-segmentation"]


def build_model_card(
    model: PeftModel,
    *,
    task_name: str,
    metrics: Mapping[str, float],
    eval_split: str,
    eval_prompt: str,
    limits: str,
    training_config: Mapping[str, Any],
    repo_id: str | None = None,
    dataset_id: str | None = None,
    nsd_tolerance: float = 1.0,
    adapter_name: str = "default",
    template_path: Path = DEFAULT_TEMPLATE,
) -> ModelCard:
    """Render the card of a trained adapter: Hub metadata (model-index results), usage, configuration, limits.

    `metrics` are the evaluation's flat results (`dice`, `iou`, `hd95`, `nsd`, `dice/<class>`, ...); undefined
    (NaN) values are listed in the table but left out of the machine-readable model-index.
    """
    if not Path(template_path).is_file():
        raise MedSAFileNotFoundError(
            f"Model card template {template_path} not found: it ships in the repository's model_cards/ folder "
            "(install peft-medsa from a source checkout, or pass template_path=...)."
        )
    config = model.peft_config[adapter_name]
    base_model = config.base_model_name_or_path or "a SamModel"
    model_name = repo_id.split("/")[-1] if repo_id else f"medsa-{config.preset}-{_slug(task_name)}"
    results = {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}
    card_data = ModelCardData(
        library_name="peft",
        base_model=config.base_model_name_or_path,
        pipeline_tag="mask-generation",
        tags=[*TAGS, f"medsa-{config.preset}"],
        datasets=[dataset_id] if dataset_id else None,
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset_id or _slug(task_name),
                dataset_name=task_name,
                dataset_split=eval_split,
                metric_type=key,
                metric_value=round(value, 4),
            )
            for key, value in results.items()
            if math.isfinite(value)
        ]
        or None,
    )
    trainable, total = model.get_nb_trainable_parameters()
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        base_model=base_model,
        base_model_link=f"https://huggingface.co/{base_model}"
        if "/" in base_model and not Path(base_model).exists()
        else "#",
        task_name=task_name,
        dataset_id=dataset_id,
        trainable_parameters=f"{trainable:,}",
        trainable_percent=f"{100 * trainable / (total - trainable):.2f} %",
        usage=_usage(base_model, repo_id or "path/to/this/adapter"),
        eval_split=eval_split,
        eval_prompt=eval_prompt,
        nsd_tolerance=nsd_tolerance,
        results=[
            (key, f"{value:.4f}" if math.isfinite(value) else "undefined") for key, value in results.items()
        ],
        adapter_config=json.dumps(config.to_dict(), indent=2, default=str),
        training_config=json.dumps(dict(training_config), indent=2, default=str),
        limits=limits,
    )


def save_adapter_with_card(model: PeftModel, output_dir: Path, card: ModelCard) -> Path:
    """Write the folder that would be uploaded: adapter config, adapter weights (safetensors) and the card."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    card.save(output_dir / "README.md")  # replaces peft's generic card
    return output_dir


def push_adapter_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload Med-SA adapter",
) -> str:
    """Upload a folder written by `save_adapter_with_card` to the Hub (the adapter files only); returns the commit URL."""
    folder = Path(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise MedSAFileNotFoundError(
            f"{folder} lacks {missing}: write it with save_adapter_with_card() first."
        )
    ModelCard.load(folder / "README.md")  # refuse a card whose metadata the Hub would reject
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        allow_patterns=list(ADAPTER_FILES),
        commit_message=commit_message,
    )
    return str(commit)


def _usage(base_model: str, adapter: str) -> str:
    return (
        "import peft_medsa  # registers Med-SA with peft\n"
        "from peft import PeftModel\n"
        "from transformers import SamModel, SamProcessor\n\n"
        f'base = SamModel.from_pretrained("{base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "{adapter}").eval()\n'
        f'processor = SamProcessor.from_pretrained("{base_model}")  # resize, pad, normalise; rescale prompts'
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
