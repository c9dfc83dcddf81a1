"""Checks on a saved adapter before peft loads it: safetensors only (never pickle), intact, and fitting the base."""

from __future__ import annotations

import os
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open


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
                raise ValueError(
                    f"{folder} holds a pickled adapter ({WEIGHTS_NAME}); Med-SA loads safetensors only, since "
                    "unpickling can run arbitrary code. Re-save it with `save_pretrained` (safetensors by default)."
                )
            return
    else:
        try:
            weights = hf_hub_download(model_id, SAFETENSORS_WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
        except Exception:  # offline, private, or missing: peft's loader raises its own, precise error
            return
    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except SafetensorError as error:
        raise ValueError(
            f"The adapter file {weights} is truncated or corrupted ({error}). Download or save it again."
        ) from error


def check_adapter_shapes(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise if the adapter's tensors do not fit the model, e.g. trained on ViT-B and loaded onto ViT-L."""
    model_state = model.state_dict()
    mismatched = [
        f"{key}: {tuple(tensor.shape)} in the adapter, {tuple(model_state[key].shape)} in the model"
        for key, tensor in state_dict.items()
        if key in model_state and model_state[key].shape != tensor.shape
    ]
    if mismatched:
        raise ValueError(
            "This Med-SA adapter was trained on a SAM of another size and does not fit this base model "
            f"({len(mismatched)} tensors differ), e.g.\n  " + "\n  ".join(mismatched[:3]) + "\n"
            "Load it onto the base model named by `base_model_name_or_path` in its adapter_config.json."
        )
