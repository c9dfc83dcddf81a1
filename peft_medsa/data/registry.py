"""The task registry: every medical task is a `TaskSpec` (data, not code), shipped as YAML in `tasks/`.

A task says where its files are (a Hub dataset or a local folder), how they are laid out (parquet image+mask
pairs or volume files listed by an index), which columns hold what, the label map, and the intensity policy
of its modality. Users add tasks from a YAML/JSON file or a dict with `register_task`, without touching the
package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..errors import MedSAFileNotFoundError, MedSAValueError
from ..validation import check_field_types, lists_to_tuples, load_data_file

FORMATS = ("parquet", "volumes", "images")
INTENSITY_KINDS = ("rgb", "window", "percentile", "minmax")
MASK_ENCODINGS = ("index", "binary")


@dataclass(frozen=True)
class IntensityPolicy:
    """How raw intensities become the 8-bit RGB image SAM was trained on.

    - `rgb`: 8-bit images pass unchanged (grayscale is repeated to 3 channels); other dtypes are min-max scaled.
    - `window`: CT windowing in HU, clip to `[level - width/2, level + width/2]`.
    - `percentile`: MR-style, clip to the `percentiles` of the voxels above the image minimum (background
      excluded), computed per volume (3-D) or per image (2-D).
    - `minmax`: scale the full range.
    """

    kind: Literal["rgb", "window", "percentile", "minmax"] = "rgb"
    level: float | None = None
    width: float | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self):
        check_field_types(self, "intensity policy", names=("level", "width", "percentiles"))
        if self.kind not in INTENSITY_KINDS:
            raise MedSAValueError(f"Unknown intensity kind {self.kind!r}; choose one of {INTENSITY_KINDS}.")
        if self.kind == "window" and (self.level is None or not self.width or self.width <= 0):
            raise MedSAValueError("A `window` intensity policy needs `level` and a positive `width` (in HU).")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise MedSAValueError(
                f"`percentiles` must satisfy 0 <= low < high <= 100, got {self.percentiles}."
            )


@dataclass(frozen=True)
class TaskSpec:
    """One segmentation task, as data.

    Source: `repo_id` (a Hub dataset, with optional `config` and `revision`) or `path` (a local folder in the
    same layout; `demo://NAME` names the offline demo cache). `splits` maps this package's split names to the
    source's. Layouts (`format`):

    - `parquet`: image+mask pairs in parquet shards (`data/{split}-*.parquet`), streamed by `datasets`.
    - `volumes`: 3-D files (NIfTI, NRRD, DICOM) listed per split by `index` (a JSON-lines file, one
      `{case_id, image, label}` row per case; paths relative to the root) or, without an index, matched by
      `image_glob`/`label_glob` (case id = file name without extension and `strip_suffixes`) and split by a
      stable hash of the case id with `split_fractions`.
    `split_by_hash: true` does the same for a source that ships fewer splits than the task (often only
    `train`): each task split reads its source split (`splits`) and keeps the cases whose hash falls into it.
    - `images`: a local folder of 2-D image/mask files (`image_glob`/`label_glob`, same pairing and split rule).

    `labels` maps mask values to class names (0 is background and implicit). `mask_encoding: binary` turns
    masks stored as 0/255 (possibly lossy, e.g. JPEG) into class 1 with `mask > mask_threshold`.
    `target_spacing` (dz, dy, dx in mm; `null` keeps an axis) resamples volumes before slicing.
    `verified` says whether a dataset card, viewer or file tree of the source confirmed the columns (or file
    names) and splits one by one; `verified_from` names that page. `note` says, for an unverified source, what
    was searched and what was (not) seen.
    """

    name: str
    format: Literal["parquet", "volumes", "images"]
    labels: Mapping[int, str]
    repo_id: str | None = None
    config: str | None = None
    revision: str | None = None
    path: str | None = None
    splits: Mapping[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    image_column: str = "image"
    mask_column: str = "mask"
    case_id_column: str | None = None
    slice_column: str | None = None
    index: str | None = None
    image_glob: str | None = None
    label_glob: str | None = None
    strip_suffixes: tuple[str, ...] = ()
    split_fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1}
    )
    split_by_hash: bool = False
    modality: str = "unknown"
    intensity: IntensityPolicy = IntensityPolicy()
    mask_encoding: Literal["index", "binary"] = "index"
    mask_threshold: float = 127
    target_spacing: tuple[float | None, float | None, float | None] | None = None
    verified: bool = False
    verified_from: str | None = None
    note: str = ""
    description: str = ""
    license: str = "unknown"
    homepage: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise MedSAValueError(f"A task's `name` must be a non-empty string, got {self.name!r}.")
        if self.format not in FORMATS:
            raise MedSAValueError(
                f"Task {self.name!r}: unknown format {self.format!r}; choose one of {FORMATS}."
            )
        if (self.repo_id is None) == (self.path is None):
            raise MedSAValueError(
                f"Task {self.name!r}: give exactly one source, `repo_id` (Hub) or `path` (local)."
            )
        check_field_types(self, f"Task {self.name!r}")
        if not self.labels:
            raise MedSAValueError(f"Task {self.name!r}: `labels` (class id -> name) must not be empty.")
        bad = [k for k in self.labels if not 0 < k < 256]
        if bad:
            raise MedSAValueError(
                f"Task {self.name!r}: class ids must be in 1..255 (0 is background), got {bad}."
            )
        if self.mask_encoding not in MASK_ENCODINGS:
            raise MedSAValueError(
                f"Task {self.name!r}: unknown mask_encoding {self.mask_encoding!r}; use {MASK_ENCODINGS}."
            )
        if self.mask_encoding == "binary" and set(self.labels) != {1}:
            raise MedSAValueError(
                f"Task {self.name!r}: a binary mask encoding needs exactly one class with id 1."
            )
        if self.format != "parquet" and not (self.index or (self.image_glob and self.label_glob)):
            raise MedSAValueError(
                f"Task {self.name!r}: a {self.format} task needs an `index` or both `image_glob` and `label_glob`."
            )
        if any(f < 0 for f in self.split_fractions.values()) or not sum(self.split_fractions.values()) > 0:
            raise MedSAValueError(
                f"Task {self.name!r}: `split_fractions` must be >= 0 with a positive sum, got "
                f"{dict(self.split_fractions)}."
            )
        if self.target_spacing is not None and any(s is not None and s <= 0 for s in self.target_spacing):
            raise MedSAValueError(
                f"Task {self.name!r}: `target_spacing` (dz, dy, dx) must be positive millimetres or null, got "
                f"{self.target_spacing}."
            )
        if self.split_by_hash and set(self.splits) != set(self.split_fractions):
            raise MedSAValueError(
                f"Task {self.name!r}: split_by_hash needs `split_fractions` for exactly the splits in `splits` "
                f"({sorted(self.splits)}), got {sorted(self.split_fractions)}."
            )
        if self.split_by_hash and self.format != "parquet" and self.index is None:
            raise MedSAValueError(
                f"Task {self.name!r}: split_by_hash applies to parquet tasks and indexed volumes; volumes found "
                "by `image_glob` are always split by hash."
            )
        if self.format == "images" and self.repo_id is not None:
            raise MedSAValueError(
                f"Task {self.name!r}: the `images` format reads local folders only; use `path`."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Builds a spec from plain data (a parsed YAML/JSON file), rejecting unknown keys by name."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedSAValueError(
                f"Unknown task field(s) {unknown} in task {data.get('name')!r}; known fields: {sorted(known)}."
            )
        missing = [key for key in ("name", "format", "labels") if key not in data]
        if missing:
            raise MedSAValueError(f"Task {data.get('name')!r} is missing required field(s) {missing}.")
        name = data.get("name")
        data["labels"] = _class_ids(name, data["labels"])
        intensity = data.get("intensity")
        if intensity is not None and not isinstance(intensity, (Mapping, IntensityPolicy)):
            raise MedSAValueError(
                f"Task {name!r}: `intensity` must be a mapping such as {{kind: {intensity}}}, got {intensity!r}."
            )
        if isinstance(intensity, Mapping):
            intensity = dict(intensity)
            unknown = sorted(set(intensity) - {f.name for f in dataclasses.fields(IntensityPolicy)})
            if unknown:
                raise MedSAValueError(
                    f"Task {name!r}: unknown intensity field(s) {unknown}; use kind, level, width, percentiles."
                )
            data["intensity"] = IntensityPolicy(**lists_to_tuples(IntensityPolicy, intensity))
        return cls(**lists_to_tuples(cls, data))

    @classmethod
    def from_file(cls, path: str | Path) -> TaskSpec:
        """Reads a spec from a `.yaml`/`.yml`/`.json` file."""
        path = Path(path)
        if not path.is_file():
            raise MedSAFileNotFoundError(f"No task file at {path}.")
        data = load_data_file(path)
        if not isinstance(data, Mapping):
            raise MedSAValueError(
                f"Task file {path} must hold a mapping of task fields, got {type(data).__name__}."
            )
        return cls.from_dict(data)

    def source_name(self) -> str:
        """A human-readable source for messages: the Hub repo id or the local path."""
        return self.repo_id if self.repo_id is not None else str(self.path)


def _class_ids(task: Any, labels: Any) -> dict[int, str]:
    """`labels` with integer class ids: YAML and JSON give `1:` or `"1":`; anything else is a mistake."""
    if not isinstance(labels, Mapping):
        raise MedSAValueError(
            f"Task {task!r}: `labels` must map class ids to names, e.g. {{1: liver}}, got {labels!r}."
        )
    ids = {}
    for key, value in labels.items():
        try:
            class_id = int(key) if not isinstance(key, (bool, float)) else None
        except (TypeError, ValueError):
            class_id = None
        if class_id is None or not isinstance(value, str):
            raise MedSAValueError(
                f"Task {task!r}: `labels` must map integer class ids to names (e.g. {{1: liver}}); got "
                f"{key!r}: {value!r}."
            )
        ids[class_id] = value
    return ids


_REGISTRY: dict[str, TaskSpec] = {}


def _load_builtin_tasks() -> None:
    if _REGISTRY:
        return
    for entry in sorted(resources.files(__package__).joinpath("tasks").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            spec = TaskSpec.from_dict(load_data_file(entry))
            _REGISTRY[spec.name] = spec


def register_task(task: TaskSpec | Mapping[str, Any] | str | Path, overwrite: bool = False) -> TaskSpec:
    """Adds a task from a `TaskSpec`, a dict or a YAML/JSON file; returns the registered spec."""
    _load_builtin_tasks()
    if isinstance(task, TaskSpec):
        spec = task
    elif isinstance(task, Mapping):
        spec = TaskSpec.from_dict(task)
    else:
        spec = TaskSpec.from_file(task)
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise MedSAValueError(
            f"A task named {spec.name!r} is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Returns the registered task `name`, or raises with the list of known tasks."""
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise MedSAValueError(
            f"Unknown task {name!r}. Registered tasks: {sorted(_REGISTRY)}. Register your own with "
            "`register_task(dict_or_yaml_path)` or pass a YAML/JSON task file or a local folder to `load_task`."
        )
    return _REGISTRY[name]


def list_tasks() -> list[str]:
    """Names of all registered tasks."""
    _load_builtin_tasks()
    return sorted(_REGISTRY)
