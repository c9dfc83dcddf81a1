"""Volumes for SD-Trans: resampling with real interpolation, chunks of D slices, and the empty-slice policy.

A 3-D example is a chunk of D consecutive slices. The core model takes `pixel_values` (B, C, D, H, W) and
treats prompts and outputs per slice, batch B*D volume-major, so every slice of a chunk needs a prompt even
where the target is absent. Policy for such empty slices (the target is present elsewhere in the chunk):

- point prompts: all N clicks are SAM's not-a-point (label -1): the slice is told nothing and its label is
  empty, so the model learns to predict nothing without a prompt pointing at the object;
- box prompts: the box of the nearest slice of the chunk that holds the target (the lower slice on a tie),
  as a user drawing one box for a stack would; its label stays empty.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import MedSAValueError
from .prompts import PromptConfig, not_a_point_prompt
from .readers import Volume


def resample_volume(
    image: Volume, label: Volume, target_spacing: tuple[float | None, float | None, float | None]
) -> tuple[Volume, Volume]:
    """Resamples an image (linear) and its label map (nearest) to `target_spacing` (dz, dy, dx; None keeps
    that axis). Real interpolation on the voxel grid (`scipy.ndimage.zoom`, grid mode): never tiling."""
    current = np.asarray(image.spacing, float)
    target = np.array([c if t is None else t for c, t in zip(current, target_spacing, strict=False)], float)
    factors = current / target
    if np.allclose(factors, 1.0):
        return image, label
    resampled = ndimage.zoom(image.array.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    labels = ndimage.zoom(label.array, factors, order=0, mode="nearest", grid_mode=True)
    spacing = tuple(float(s) for s in current * np.asarray(image.array.shape) / np.asarray(resampled.shape))
    return Volume(resampled, spacing), Volume(labels, spacing)


def chunk_starts(num_slices: int, depth: int, stride: int | None = None) -> list[int]:
    """First slice of each chunk of `depth` slices, every `stride` (default `depth`, no overlap); the last
    chunk is aligned to the end so every slice is covered. Raises if the volume is shorter than a chunk."""
    if depth < 1:
        raise MedSAValueError(f"chunk depth must be >= 1, got {depth}.")
    if num_slices < depth:
        raise MedSAValueError(
            f"The volume has {num_slices} slices, fewer than the chunk depth {depth}; use a smaller `depth`."
        )
    stride = depth if stride is None else stride
    starts = list(range(0, num_slices - depth + 1, stride))
    if starts[-1] != num_slices - depth:
        starts.append(num_slices - depth)
    return starts


def fill_empty_slices(
    prompts: list[dict[str, np.ndarray] | None], config: PromptConfig
) -> list[dict[str, np.ndarray]]:
    """Gives every slice of a chunk a prompt, following the module's empty-slice policy (None = empty)."""
    present = [k for k, prompt in enumerate(prompts) if prompt is not None]
    if not present:
        raise MedSAValueError("A chunk needs at least one slice holding the target.")
    if config.kind == "points":
        return [prompt if prompt is not None else not_a_point_prompt(config) for prompt in prompts]
    return [prompts[min(present, key=lambda p: (abs(p - k), p))] for k in range(len(prompts))]
