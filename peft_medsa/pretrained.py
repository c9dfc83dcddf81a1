"""Where a SAM checkpoint, a Med-SA adapter or a task's dataset comes from: a local path or a Hub id.

A local path is never sent to the Hub. A Hub id is looked up in the cache and the Hub is asked once, with a short
timeout, before any library downloads: without network transformers and peft retry for close to a minute and
then fail naming neither the id nor the way out (offline mode, or a local copy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from torch import nn

from .errors import MedSAConnectionError, MedSAFileError, MedSAFileNotFoundError, MedSAValueError
from .families import family_of_checkpoint
from .validation import load_data_file

# Seconds the Hub gets to answer whether a repository exists, before it counts as unreachable.
HUB_TIMEOUT = 3.0


def load_sam(name_or_path: str, video: bool | None = False, dtype: torch.dtype | None = None) -> nn.Module:
    """The model at a local folder or Hub id, of the class its config's `model_type` names (SAM, SAM 2 or SAM 3
    tracker: `peft_medsa.families`); a missing, unreachable, unreadable or foreign checkpoint is named.

    `video=False` loads the image model (training, evaluation, 2-D prediction; a SAM 2 video checkpoint, such as
    `facebook/sam2.1-hiera-tiny`, loads its image parts). `True` loads the video model, which propagates prompts through a
    volume, and needs a video checkpoint (one with memory weights). `None`: the video model if the checkpoint is
    one, else the image model. `dtype` is the dtype of the loaded weights (None: as saved, float32 for SAM).
    """
    from transformers import PretrainedConfig

    kwargs = hub_kwargs(name_or_path, "SAM checkpoint", "config.json")
    where = f"SAM checkpoint {name_or_path}"
    try:
        model_type = PretrainedConfig.get_config_dict(name_or_path, **kwargs)[0].get("model_type")
        family = family_of_checkpoint(model_type, where)
        is_video = family.model_types()[model_type]
        if video and not is_video:
            raise MedSAValueError(
                f"{where} is a {family.name} image checkpoint ({model_type!r}) without the memory weights that "
                "propagate a prompt through a volume; use a video checkpoint of the family"
                + (" (e.g. facebook/sam2.1-hiera-tiny)." if family.video_model else ": SAM has none.")
            )
        return family.model_class(video=is_video if video is None else video).from_pretrained(
            name_or_path, dtype=dtype, **kwargs
        )
    except (OSError, SafetensorError) as error:  # the folder or cache entry lacks readable weights
        raise MedSAFileError(f"{where}: {' '.join(str(error).split())}") from error


def load_adapter(model: nn.Module, name_or_path: str) -> nn.Module:
    """`model` with the Med-SA adapter at a local folder or Hub id (checked before anything is loaded)."""
    from peft import PeftModel

    kwargs = hub_kwargs(name_or_path, "Med-SA adapter", "adapter_config.json")
    if Path(name_or_path).is_dir():
        load_data_file(
            Path(name_or_path) / "adapter_config.json"
        )  # peft would report bad JSON without the file
    return PeftModel.from_pretrained(model, name_or_path, **kwargs)


def hub_kwargs(
    name_or_path: str,
    what: str,
    marker: str,
    repo_type: Literal["model", "dataset"] = "model",
    revision: str | None = None,
) -> dict[str, Any]:
    """The extra `from_pretrained` keyword arguments to load `name_or_path` without waiting on the network.

    `what` names the thing in messages ("SAM checkpoint", "Med-SA adapter"); `marker` is a file it must hold
    (`config.json`, `adapter_config.json`). Returns `{}` (a local folder, or a reachable Hub repository) or
    `{"local_files_only": True}` (a cached Hub repository while the Hub cannot be reached); raises
    `MedSAFileNotFoundError` or `MedSAConnectionError` naming the path or id and what to do otherwise.
    """
    path = Path(name_or_path).expanduser()
    if path.exists() or path.is_symlink() or _looks_local(name_or_path):
        check_local_folder(path, what, marker)
        return {}
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise MedSAFileNotFoundError(
            f"{what} {name_or_path!r} is neither an existing local path nor a valid Hub id (owner/name)."
        ) from None
    cached = isinstance(
        try_to_load_from_cache(name_or_path, marker, revision=revision, repo_type=repo_type), str
    )
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise _unreachable(
            name_or_path, what, repo_type, "HF_HUB_OFFLINE=1 is set and it is not in the cache"
        )
    try:
        HfApi().repo_info(name_or_path, repo_type=repo_type, revision=revision, timeout=HUB_TIMEOUT)
    except RepositoryNotFoundError:
        raise MedSAFileNotFoundError(
            f"{what} {name_or_path!r}: no such Hub repository (or it is private: log in with `hf auth login`), "
            "and no local path of that name."
        ) from None
    except Exception as error:  # DNS, refused, timeout, proxy: the Hub is unreachable whatever the cause
        if cached:
            return {"local_files_only": True}
        raise _unreachable(name_or_path, what, repo_type, f"{type(error).__name__}") from error
    return {}


def check_local_folder(path: Path, what: str, marker: str) -> None:
    """A local path must be a folder holding `marker` (a dangling link or a stray file is not)."""
    if path.is_symlink() and not path.exists():
        raise MedSAFileNotFoundError(f"{what} {path} is a link to {os.readlink(path)}, which does not exist.")
    if not path.exists():
        raise MedSAFileNotFoundError(f"{what} {path} does not exist.")
    if not path.is_dir():
        raise MedSAFileNotFoundError(f"{what} {path} is a file; give the folder that holds {marker}.")
    if not (path / marker).is_file():
        raise MedSAFileNotFoundError(
            f"{what} folder {path} has no {marker}; is it the folder written by `save_pretrained`?"
        )


def _looks_local(name: str) -> bool:
    """A name only a path can have: absolute, relative to `.`/`~`, or more than one `/`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _unreachable(repo_id: str, what: str, repo_type: str, why: str) -> MedSAConnectionError:
    flag = "--repo-type dataset " if repo_type == "dataset" else ""
    return MedSAConnectionError(
        f"{what} {repo_id!r} is a Hub id, and the Hub cannot be reached ({why}). Download it where the Hub is "
        f"reachable (`hf download {repo_id} {flag}--local-dir DIR`) and pass DIR instead, or run once online "
        "so that it is cached and then set HF_HUB_OFFLINE=1."
    )


def default_device() -> str:
    """CUDA when present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
