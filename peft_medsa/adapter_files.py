"""Checks on a saved adapter before peft loads it: safetensors only (never pickle), intact, and fitting the base."""

from __future__ import annotations

import os
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from .errors import MedSAFileNotFoundError, MedSAValueError


def check_adapter_file(model_id: str, subfolder: str | None = None, **hub_kwargs: Any) -> None:
    """Raise a clear error if the adapter at `model_id` is pickled, truncated or corrupted.

    Local folders are checked in place; for a Hub repository the file is fetched into the Hub cache (where peft
    then finds it). If the Hub cannot be reached, peft's own loader reports that.
    """
    folder = os.path.join(model_id, subfolder) if subfolder else model_id
    if os.path.isdir(folder):
        weights = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
        if not os.path.isfile(weights):
            if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
                raise MedSAValueError(
                    f"{folder} holds a pickled adapter ({WEIGHTS_NAME}); Med-SA loads safetensors only, since "
                    "unpickling can run arbitrary code. Re-save it with `save_pretrained` (safetensors by default)."
                )
            raise MedSAFileNotFoundError(
                f"The adapter folder {folder} has no {SAFETENSORS_WEIGHTS_NAME} (or it is a dangling link); "
                "is it the folder written by `save_pretrained`?"
            )
    else:
        try:
            weights = hf_hub_download(model_id, SAFETENSORS_WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
        except Exception:  # offline, private, or missing: peft's loader raises its own, precise error
            return
    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except SafetensorError as error:
        raise MedSAValueError(
            f"The adapter file {weights} is truncated or corrupted ({error}). Download or save it again."
        ) from error


def check_adapter_keys(
    model: torch.nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Raise, naming the keys, unless the file holds exactly the adapter weights this model expects for
    `adapter_name`, all finite.

    `state_dict` is the file's content with keys as peft maps them onto the model. A key no adapter of the model has
    comes from an adapter for a base with more blocks, an edited `layers_to_transform`, or base-model weights (which
    would silently overwrite frozen SAM weights); a missing one would leave that adapter at its initial value.
    """
    expected = {key for key in model.state_dict() if _is_adapter_key(key, adapter_name)}
    unexpected, missing = sorted(set(state_dict) - expected), sorted(expected - set(state_dict))
    if unexpected or missing:
        problems = []
        if unexpected:
            problems.append(
                f"{len(unexpected)} key(s) that are no Med-SA adapter (or modules_to_save) weight of this model "
                f"{_names(unexpected)}"
            )
        if missing:
            problems.append(f"{len(missing)} adapter weight(s) missing {_names(missing)}")
        raise MedSAValueError(
            "This adapter file does not match its adapter_config.json and this base model: "
            + "; ".join(problems)
            + ". Was it trained on a SAM with other blocks, was layers_to_transform edited, or does it carry "
            "base-model weights? Load it onto the base it was trained on, with its own adapter_config.json."
        )
    non_finite = sorted(key for key, tensor in state_dict.items() if not torch.isfinite(tensor).all())
    if non_finite:
        raise MedSAValueError(
            f"This adapter file holds NaN or infinite values in {len(non_finite)} tensor(s) {_names(non_finite)}; "
            "the training that wrote it diverged. Use an earlier checkpoint."
        )


def _is_adapter_key(key: str, adapter_name: str) -> bool:
    parts = key.split(".")
    medsa = any(part.startswith("medsa_") for part in parts) and adapter_name in parts
    return medsa or f"modules_to_save.{adapter_name}." in key


def _names(keys: list[str]) -> str:
    shown = [key.removeprefix("base_model.model.") for key in keys[:4]]
    return f"({', '.join(shown)}{', ...' if len(keys) > 4 else ''})"


def check_adapter_shapes(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise if the adapter's tensors do not fit the model, e.g. trained on ViT-B and loaded onto ViT-L."""
    model_state = model.state_dict()
    mismatched = [
        f"{key}: {tuple(tensor.shape)} in the adapter, {tuple(model_state[key].shape)} in the model"
        for key, tensor in state_dict.items()
        if key in model_state and model_state[key].shape != tensor.shape
    ]
    if mismatched:
        raise MedSAValueError(
            "This Med-SA adapter was trained on a SAM of another size and does not fit this base model "
            f"({len(mismatched)} tensors differ), e.g.\n  " + "\n  ".join(mismatched[:3]) + "\n"
            "Load it onto the base model named by `base_model_name_or_path` in its adapter_config.json."
        )
