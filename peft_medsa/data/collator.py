"""The data collator for the Hugging Face Trainer: examples -> a batch of `SamModel.forward` inputs + labels.

2-D examples are stacked: `pixel_values` (B, 3, S, S), `input_points` (B, P, N, 2), `input_labels` (B, P, N)
or `input_boxes` (B, P, 4), `labels` (B, P, Hm, Wm). 3-D examples follow the core model's contract:
`pixel_values` are stacked to (B, 3, D, S, S) and the per-slice prompts and labels to (B, D, P, ...): every
tensor keeps the batch as its first dimension, which accelerate needs to split and dispatch batches. The
Med-SA model flattens such prompts to its B*D slices, volume-major; the loss and the metrics flatten labels
the same way (metrics score each volume in 3-D).

Metadata (`case_id`, `slice_index`, `class_id`, `original_size`, `reshaped_input_size`, `spacing`) never
reaches the model: the collator drops every key outside `MODEL_KEYS`, so it works with the Trainer's
`remove_unused_columns=False` (recommended: `SamModel.forward` has no `labels` argument, so with `True`
the Trainer would drop `labels` too unless `label_names=["labels"]`). `return_metadata=True` keeps it under
the single key `metadata` (a dict of lists) for custom evaluation loops, which must pop it before calling
the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from ..errors import MedSAValueError

MODEL_KEYS = ("pixel_values", "input_points", "input_labels", "input_boxes", "labels")


@dataclass
class SamDataCollator:
    """Collates 2-D or 3-D (chunk) examples from `load_task` into a dict of tensors."""

    return_metadata: bool = False

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise MedSAValueError("Cannot collate an empty list of examples.")
        keys = [k for k in MODEL_KEYS if k in features[0]]
        if "pixel_values" not in keys:
            raise MedSAValueError(f"Examples need `pixel_values`; got keys {sorted(features[0])}.")
        for feature in features[1:]:
            if [k for k in MODEL_KEYS if k in feature] != keys:
                raise MedSAValueError(
                    "All examples of a batch need the same prompt kind (points or boxes) and keys."
                )
        ndims = {torch.as_tensor(f["pixel_values"]).ndim for f in features}
        if len(ndims) != 1 or ndims.pop() not in (3, 4):
            raise MedSAValueError(
                "`pixel_values` must be (3, H, W) for every example or (3, D, H, W) for every example."
            )
        batch = {}
        for key in keys:
            tensors = [torch.as_tensor(f[key]) for f in features]
            if len({tuple(t.shape) for t in tensors}) != 1:
                raise MedSAValueError(
                    f"`{key}` shapes differ across the batch: {[tuple(t.shape) for t in tensors]}."
                )
            # default_collate stacks into shared memory inside DataLoader workers (no extra copy to send it).
            batch[key] = default_collate(tensors)  # (B, ...); for volumes (B, D, ...) except pixel_values
        if self.return_metadata:
            extra = [k for k in features[0] if k not in MODEL_KEYS]
            batch["metadata"] = {k: [_plain(f[k]) for f in features] for k in extra}
        return batch


def _plain(value: Any) -> Any:
    """Tensors and arrays in metadata become Python scalars or lists."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    return value
