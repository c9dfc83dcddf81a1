"""`load_task`: one entry point from a task name, spec or folder to a stream of SamModel-ready examples.

Sources go through one path whatever their origin: parquet image+mask tasks stream with
`datasets.load_dataset(..., streaming=True)` (a local folder in the Hub layout loads the same way); volume
tasks list their cases eagerly (index file or file globs) and download each volume lazily with
`huggingface_hub.hf_hub_download`, one at a time, inside an `IterableDataset.from_generator` whose shards are
the cases (so DataLoader workers split the cases). Examples are built by `ExampleBuilder`; their arrays
become tensors with `torch.from_numpy` (no copy: the `datasets` torch format would copy each 12 MB image).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset, Image, IterableDataset, load_dataset
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ..errors import MedSAConnectionError, MedSAFileNotFoundError, MedSAValueError
from ..pretrained import hub_kwargs
from .examples import ExampleBuilder
from .preprocessing import SamPreprocessor, preprocessor_for
from .prompts import PromptConfig
from .readers import pil_to_array, read_image, read_image_bytes, read_volume
from .registry import TaskSpec, get_task

DEMO_SCHEME = "demo://"
TASK_FILE_NAMES = ("task.yaml", "task.yml", "task.json")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def load_task(
    task_or_path: str | Path | TaskSpec | Mapping[str, Any],
    split: str = "train",
    streaming: bool = True,
    prompt: str | Mapping[str, Any] | PromptConfig = "1-click",
    seed: int = 0,
    image_size: int = 1024,
    patch_size: int = 16,
    sam_config: Any | None = None,
    depth: int | None = None,
    stride: int | None = None,
    empty_targets: Literal["skip", "keep"] = "skip",
    data_dir: str | Path | None = None,
    keep_original_target: bool = False,
) -> IterableDataset:
    """Loads a task as an `IterableDataset` of examples for `SamModel` (see `peft_medsa.data.examples`).

    Args:
        task_or_path: a registered task name, a `TaskSpec` or dict, a YAML/JSON task file, or a folder
            holding `task.yaml` (its relative `path` is resolved against the folder).
        split: `train`, `validation` or `test` (mapped to the source's names by the spec's `splits`).
        streaming: parquet tasks stream from the Hub without downloading whole datasets; `False` downloads
            the split first (then iterates it the same way). Volume tasks always fetch one volume at a time.
        prompt: a preset (`1-click`, `3-click`, `box`, `bbox-0.5`, `bbox-0.75`), a dict or a `PromptConfig`.
        seed: prompts are a function of (seed, case id, slice, class) only; change it to resample them.
        image_size, patch_size: the model's input size and ViT patch; labels come out at the mask decoder's
            resolution 4 * (image_size // patch_size). `sam_config` (the model's config: SAM, SAM 2 or SAM 3
            tracker) overrides both and prepares images as that model's processor does (`preprocessor_for`).
        depth: volumes only: None gives 2-D slices, an integer D chunks of D slices (3-D examples).
        stride: slices between chunk starts (default `depth`).
        empty_targets: `skip` images/slices/chunks without foreground, or `keep` them (points only).
        data_dir: a local copy of a Hub task, in the same layout (e.g. from `hf download ... --local-dir`).
        keep_original_target: evaluation sets: each example also carries its target at the label's own
            resolution (`original_target`), against which metrics are computed.
    """
    spec = resolve_task(task_or_path)
    preprocessor = (
        SamPreprocessor(image_size, mask_size=4 * (image_size // patch_size))
        if sam_config is None
        else preprocessor_for(sam_config)
    )
    builder = ExampleBuilder(
        spec=spec,
        preprocessor=preprocessor,
        prompt=PromptConfig.resolve(prompt),
        seed=seed,
        depth=depth,
        stride=stride,
        empty_targets=empty_targets,
        keep_original_target=keep_original_target,
    )
    if split not in spec.splits:
        raise MedSAValueError(
            f"Task {spec.name!r} has no split {split!r}; its splits are {sorted(spec.splits)}."
        )
    if depth is not None and spec.format != "volumes":
        raise MedSAValueError(
            f"`depth` makes 3-D chunks of volumes; task {spec.name!r} is a 2-D {spec.format} task."
        )
    if data_dir is not None:
        spec = replace(spec, repo_id=None, path=str(data_dir))
    spec = _resolve_demo(spec)
    if spec.repo_id is not None and not constants.HF_HUB_OFFLINE:
        with _hub_access(spec):  # one quick question first: the libraries retry for minutes without network
            hub_kwargs(spec.repo_id, f"Task {spec.name!r}", "README.md", "dataset", spec.revision)
    if spec.path is not None and not Path(spec.path).is_dir():
        raise MedSAFileNotFoundError(f"Task {spec.name!r}: no local folder at {spec.path}.")
    source_split = spec.splits[split]
    if spec.format == "parquet":
        dataset = _parquet_pairs(spec, source_split, streaming)
    elif spec.format == "images":
        dataset = _local_image_pairs(spec, source_split)
    else:
        cases = _volume_cases(spec, source_split)
        if spec.split_by_hash:
            cases = [c for c in cases if hash_split(c["case_id"], spec.split_fractions) == split]
        return IterableDataset.from_generator(
            _volume_examples, gen_kwargs={"cases": cases, "spec": spec, "builder": builder}
        )
    return dataset.map(
        _pair_examples,
        batched=True,
        batch_size=1,
        remove_columns=dataset.column_names,
        fn_kwargs={"spec": spec, "builder": builder, "split": split if spec.split_by_hash else None},
    )


def resolve_task(task_or_path: str | Path | TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """A `TaskSpec` from a spec, a dict, a registered name, a task file or a folder holding `task.yaml`."""
    if isinstance(task_or_path, TaskSpec):
        return task_or_path
    if isinstance(task_or_path, Mapping):
        return TaskSpec.from_dict(task_or_path)
    path = Path(task_or_path)
    if path.is_dir():
        for name in TASK_FILE_NAMES:
            if (path / name).is_file():
                return _task_from_file(path / name)
        raise MedSAFileNotFoundError(
            f"{path} is a folder without a task file ({', '.join(TASK_FILE_NAMES)}). Add one describing its "
            "format, columns and label map (see docs/data.md), or pass a registered task with data_dir=."
        )
    if path.suffix in (".yaml", ".yml", ".json"):
        return _task_from_file(path)
    return get_task(str(task_or_path))


def _task_from_file(path: Path) -> TaskSpec:
    spec = TaskSpec.from_file(path)
    if spec.path is not None and not spec.path.startswith(DEMO_SCHEME) and not Path(spec.path).is_absolute():
        spec = replace(spec, path=str((path.parent / spec.path).resolve()))
    return spec


def _resolve_demo(spec: TaskSpec) -> TaskSpec:
    if spec.path is None or not spec.path.startswith(DEMO_SCHEME):
        return spec
    from .demo import prepare_demo_task

    return replace(spec, path=str(prepare_demo_task() / spec.path[len(DEMO_SCHEME) :]))


@contextmanager
def _hub_access(spec: TaskSpec) -> Iterator[None]:
    """Turns "the Hub cannot be reached" into an error naming the dataset and the local-copy route."""
    try:
        yield
    except (ConnectionError, LocalEntryNotFoundError) as error:
        cause = error.__cause__ if isinstance(error, MedSAConnectionError) and error.__cause__ else error
        why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else type(cause).__name__
        raise MedSAConnectionError(
            f"Task {spec.name!r} reads the Hub dataset {spec.repo_id!r}, which cannot be reached ({why}). "
            f"Download it where the Hub is reachable (`hf download {spec.repo_id} --repo-type dataset "
            f"--local-dir DIR`) and call `load_task({spec.name!r}, data_dir=DIR)` (`--data_dir DIR` in medsa train)."
        ) from error


def _parquet_pairs(spec: TaskSpec, split: str, streaming: bool) -> IterableDataset:
    if spec.path is not None:
        dataset = load_dataset(spec.path, split=split, streaming=streaming)
    else:
        with _hub_access(spec):
            dataset = load_dataset(
                spec.repo_id, spec.config, split=split, streaming=streaming, revision=spec.revision
            )
    if not streaming:
        dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 16)))
    columns = [spec.image_column, spec.mask_column] + [
        c for c in (spec.case_id_column, spec.slice_column) if c
    ]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise MedSAValueError(
            f"Task {spec.name!r}: column(s) {missing} not found in {spec.source_name()} (split {split!r}); its "
            f"columns are {dataset.column_names}. Fix `image_column`/`mask_column`/... in the task spec."
        )
    for column in (spec.image_column, spec.mask_column):
        if isinstance(dataset.features[column], Image):
            dataset = dataset.cast_column(column, Image(decode=False))  # decode ourselves, keeping bit depth
    return dataset


def _matched_pairs(spec: TaskSpec, files: list[str]) -> list[dict[str, str]]:
    """Pairs image and label files by case id (file name without extension and `strip_suffixes`)."""

    def case_id(file: str) -> str:
        name = Path(file).name
        for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        for suffix in spec.strip_suffixes:
            name = name.removesuffix(suffix)
        return name

    images = {case_id(f): f for f in sorted(files) if fnmatch.fnmatch(f, spec.image_glob)}
    labels = {case_id(f): f for f in sorted(files) if fnmatch.fnmatch(f, spec.label_glob)}
    unpaired = sorted(set(images) ^ set(labels))
    if not images or unpaired:
        raise MedSAValueError(
            f"Task {spec.name!r}: image_glob {spec.image_glob!r} and label_glob {spec.label_glob!r} matched "
            f"{len(images)} images and {len(labels)} labels in {spec.source_name()}; unpaired case ids: {unpaired[:10]}."
        )
    return [{"case_id": c, "image": images[c], "label": labels[c]} for c in sorted(images)]


def hash_split(case_id: str, fractions: Mapping[str, float]) -> str:
    """The split of a case from a stable hash of its id, so a case never moves between splits."""
    position = int.from_bytes(hashlib.blake2b(case_id.encode(), digest_size=8).digest(), "little") / 2**64
    total = sum(fractions.values())
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction / total
        if position < cumulative:
            return name
    return name


def _list_files(spec: TaskSpec) -> list[str]:
    if spec.path is not None:
        root = Path(spec.path)
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    with _hub_access(spec):
        return HfApi().list_repo_files(spec.repo_id, repo_type="dataset", revision=spec.revision)


def _volume_cases(spec: TaskSpec, split: str) -> list[dict[str, str]]:
    """The split's cases as {case_id, image, label} with paths relative to the source root."""
    if spec.index is not None:
        with open(_fetch(spec, spec.index.format(split=split))) as index:
            rows = [json.loads(line) for line in index if line.strip()]
        cases = [_index_case(spec, split, row) for row in rows]
    else:
        cases = [
            c
            for c in _matched_pairs(spec, _list_files(spec))
            if hash_split(c["case_id"], spec.split_fractions) == split
        ]
    if not cases:
        raise MedSAValueError(f"Task {spec.name!r}: split {split!r} of {spec.source_name()} lists no case.")
    return cases


def _index_case(spec: TaskSpec, split: str, row: Any) -> dict[str, str]:
    """One index row as {case_id, image, label}. A row whose keys do not match the spec's columns, or whose image
    or mask column holds no path (e.g. a list of organ names), means a wrong spec: named with what was found."""
    expected = [spec.image_column, spec.mask_column] + ([spec.case_id_column] if spec.case_id_column else [])
    keys = {key: type(value).__name__ for key, value in row.items()} if isinstance(row, Mapping) else {}
    missing = [key for key in expected if key not in keys]
    not_paths = [key for key in expected[:2] if keys.get(key, "str") != "str"]
    if missing or not_paths:
        problem = f"no key(s) {missing}" if missing else f"no file path under {not_paths}"
        raise MedSAValueError(
            f"Task {spec.name!r}: the rows of {spec.index.format(split=split)} in {spec.source_name()} have "
            f"{problem}. The spec expects keys {expected} (image_column, mask_column[, case_id_column]), paths "
            f"under the first two; found {keys or repr(row)}. Fix the spec's columns."
        )
    case_id = row[spec.case_id_column] if spec.case_id_column else Path(row[spec.image_column]).name
    return {"case_id": str(case_id), "image": row[spec.image_column], "label": row[spec.mask_column]}


def _fetch(spec: TaskSpec, relative: str) -> Path:
    """A file (or DICOM folder) of the task: local, or downloaded from the Hub into its cache on demand."""
    if spec.path is not None:
        path = Path(spec.path) / relative
        if not path.exists():
            raise MedSAFileNotFoundError(f"Task {spec.name!r}: {relative} not found under {spec.path}.")
        return path
    with _hub_access(spec):
        if Path(relative).suffix:
            return Path(hf_hub_download(spec.repo_id, relative, repo_type="dataset", revision=spec.revision))
        root = snapshot_download(
            spec.repo_id, repo_type="dataset", revision=spec.revision, allow_patterns=f"{relative}/*"
        )
        return Path(root) / relative


def _volume_examples(
    cases: list[dict[str, str]], spec: TaskSpec, builder: ExampleBuilder
) -> Iterator[dict[str, Any]]:
    for case in cases:  # one volume in memory at a time
        image, label = read_volume(_fetch(spec, case["image"])), read_volume(_fetch(spec, case["label"]))
        yield from map(_to_torch, builder.volume_examples(image, label, case["case_id"]))


def _local_image_pairs(spec: TaskSpec, split: str) -> IterableDataset:
    cases = [
        c
        for c in _matched_pairs(spec, _list_files(spec))
        if hash_split(c["case_id"], spec.split_fractions) == split
    ]
    if not cases:
        raise MedSAValueError(f"Task {spec.name!r}: split {split!r} of {spec.source_name()} lists no image.")
    root = Path(spec.path)
    table = {
        spec.image_column: [str(root / c["image"]) for c in cases],
        spec.mask_column: [str(root / c["label"]) for c in cases],
        "case_id": [c["case_id"] for c in cases],
    }
    return Dataset.from_dict(table).to_iterable_dataset(num_shards=min(len(cases), 16))


def _as_array(value: Any) -> np.ndarray:
    """An image cell as an array: undecoded Image struct (bytes/path), file path, PIL image or nested list."""
    from PIL import Image as PILImage

    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return read_image_bytes(value["bytes"], value.get("path") or "an image cell")
        return read_image(value["path"])
    if isinstance(value, str):
        return read_image(value)
    if isinstance(value, PILImage.Image):
        return pil_to_array(value)
    return np.asarray(value)


def _content_id(value: Any) -> str:
    """A stable case id for a row without an id column: the file name, or a hash of the image bytes."""
    if isinstance(value, dict) and value.get("path"):
        return Path(value["path"]).stem
    if isinstance(value, dict) and value.get("bytes") is not None:
        return hashlib.sha1(value["bytes"]).hexdigest()[:16]
    if isinstance(value, str):
        return Path(value).stem
    return hashlib.sha1(np.ascontiguousarray(_as_array(value)).tobytes()).hexdigest()[:16]


def _pair_examples(
    batch: dict[str, list], spec: TaskSpec, builder: ExampleBuilder, split: str | None = None
) -> dict[str, list]:
    """`datasets` batched map (batch size 1): one image+mask row -> its examples (one per present class);
    with `split`, rows whose case id hashes to another split give none (`TaskSpec.split_by_hash`)."""
    case_column = (
        spec.case_id_column if spec.case_id_column in batch else "case_id" if "case_id" in batch else None
    )
    out: dict[str, list] = defaultdict(list)
    for row in range(len(batch[spec.image_column])):
        image_cell = batch[spec.image_column][row]
        case_id = str(batch[case_column][row]) if case_column else _content_id(image_cell)
        if split is not None and hash_split(case_id, spec.split_fractions) != split:
            continue
        slice_index = int(batch[spec.slice_column][row]) if spec.slice_column else 0
        examples = builder.image_examples(
            _as_array(image_cell), _as_array(batch[spec.mask_column][row]), case_id, slice_index
        )
        for example in map(_to_torch, examples):
            for key, value in example.items():
                out[key].append(value)
    return dict(out)


def _to_torch(example: dict[str, Any]) -> dict[str, Any]:
    """Arrays and numbers -> tensors sharing memory with the arrays; strings stay strings."""
    return {k: v if isinstance(v, str) else torch.from_numpy(np.asarray(v)) for k, v in example.items()}
