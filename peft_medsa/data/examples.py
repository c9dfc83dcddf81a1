"""Turns (image, mask) pairs and volumes into examples with `SamModel.forward`'s keyword names.

One example per (image or chunk, present class): a multi-class mask is split into one binary target per class
present, each with its own prompts (P = 1 target per example). Shapes:

- 2-D: `pixel_values` (3, S, S), `input_points` (1, N, 2) + `input_labels` (1, N) or `input_boxes` (1, 4),
  `labels` (1, Hm, Wm);
- 3-D chunk of D slices: `pixel_values` (3, D, S, S), `input_points` (D, 1, N, 2) + `input_labels` (D, 1, N)
  or `input_boxes` (D, 1, 4), `labels` (D, 1, Hm, Wm);

plus metadata: `case_id`, `slice_index` (first slice of a chunk), `class_id`, `original_size` (H, W),
`reshaped_input_size` (h, w) and `spacing` (dz, dy, dx; NaN when the source has none). Evaluation examples
(`keep_original_target=True`) also carry `original_target`, the binary target at the label's own resolution,
(H, W) or (D, H, W) bool: metrics compare predictions mapped back to that grid with it, in its own spacing.
Training examples leave it out (it is not needed for the loss and would only add memory).

A target is present on a slice when it has pixels both in the input frame (where clicks are drawn) and at
the mask-decoder resolution (where the loss is computed); smaller ones are dropped. Empty targets: with
`empty_targets="skip"` (default) an image, slice or chunk without any class yields nothing; with `"keep"`
(points only) it yields one example of class 0 with not-a-point prompts and an empty label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import MedSAValueError
from .preprocessing import ProcessedImages, SamPreprocessor, decode_mask, to_rgb, to_uint8
from .prompts import PromptConfig, example_seed, not_a_point_prompt, sample_prompt
from .readers import Volume, check_same_geometry
from .registry import TaskSpec
from .volumes import chunk_starts, fill_empty_slices, resample_volume

UNKNOWN_SPACING = (float("nan"),) * 3


@dataclass
class ExampleBuilder:
    """Builds examples for one task at one image size, prompt setting, seed and (for volumes) chunk depth.

    `depth=None` gives 2-D examples (volumes slice by slice); an integer gives 3-D chunks of `depth`
    consecutive slices every `stride` slices.
    """

    spec: TaskSpec
    preprocessor: SamPreprocessor
    prompt: PromptConfig
    seed: int = 0
    depth: int | None = None
    stride: int | None = None
    empty_targets: Literal["skip", "keep"] = "skip"
    keep_original_target: bool = False

    def __post_init__(self):
        if self.empty_targets not in ("skip", "keep"):
            raise MedSAValueError(f"empty_targets must be 'skip' or 'keep', got {self.empty_targets!r}.")
        if self.empty_targets == "keep" and self.prompt.kind == "box":
            raise MedSAValueError(
                "empty_targets='keep' needs point prompts (not-a-point); a box cannot point at nothing."
            )

    def image_examples(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        case_id: str,
        slice_index: int = 0,
        spacing: tuple[float, float, float] = UNKNOWN_SPACING,
    ) -> list[dict[str, Any]]:
        """Examples of one 2-D image (H, W) or (H, W, C) with its mask (H, W)."""
        where = f"Task {self.spec.name!r}, case {case_id!r}: "
        if image.shape[:2] != mask.shape[:2]:
            raise MedSAValueError(
                f"{where}image size {image.shape[:2]} and mask size {mask.shape[:2]} differ; "
                "each mask must be pixel-aligned with its image."
            )
        label_map = self._decode(mask, volume=False, where=where)
        if self._skip(label_map):
            return []
        processed = self.preprocessor([to_rgb(to_uint8(image, self.spec.intensity))], [label_map])
        return self._examples(processed, label_map[None], case_id, slice_index, spacing, volumetric=False)

    def volume_examples(self, image: Volume, label: Volume, case_id: str) -> Iterator[dict[str, Any]]:
        """Examples of one volume: slice by slice (`depth=None`) or chunks of `depth` slices."""
        where = f"Task {self.spec.name!r}, case {case_id!r}: "
        check_same_geometry(image, label, where)
        if image.array.size == 0:
            raise MedSAValueError(f"{where}the volume is empty (shape {image.array.shape}).")
        if self.spec.target_spacing is not None:
            image, label = resample_volume(image, label, self.spec.target_spacing)
        label_map = self._decode(label.array, volume=True, where=where)  # (D, H, W)
        gray = to_uint8(image.array, self.spec.intensity)  # one intensity mapping for the whole volume
        if self.depth is None:
            for k in range(len(gray)):
                if not self._skip(label_map[k]):
                    processed = self.preprocessor([to_rgb(gray[k])], [label_map[k]])
                    yield from self._examples(
                        processed, label_map[k : k + 1], case_id, k, image.spacing, volumetric=False
                    )
            return
        for start in chunk_starts(len(gray), self.depth, self.stride):
            chunk = slice(start, start + self.depth)
            if not self._skip(label_map[chunk]):
                processed = self.preprocessor([to_rgb(s) for s in gray[chunk]], list(label_map[chunk]))
                yield from self._examples(
                    processed, label_map[chunk], case_id, start, image.spacing, volumetric=True
                )

    def _decode(self, mask: np.ndarray, volume: bool, where: str) -> np.ndarray:
        spec = self.spec
        return decode_mask(
            mask, spec.labels, spec.mask_encoding, spec.mask_threshold, volume=volume, where=where
        )

    def _skip(self, label_map: np.ndarray) -> bool:
        return self.empty_targets == "skip" and not label_map.any()

    def _examples(
        self,
        processed: ProcessedImages,
        label_maps: np.ndarray,
        case_id: str,
        first_slice: int,
        spacing,
        volumetric: bool,
    ) -> list[dict[str, Any]]:
        """The examples of n processed slices; `label_maps` (n, H, W) are their class ids at full resolution."""
        num_slices = len(processed.targets)
        present = {
            c: [
                bool((processed.targets[k] == c).any() and (processed.labels[k] == c).any())
                for k in range(num_slices)
            ]
            for c in self.spec.labels
        }
        examples = []
        for class_id, on_slice in present.items():
            if not any(on_slice):
                continue
            prompts = [
                sample_prompt(
                    processed.targets[k] == class_id,
                    self.prompt,
                    self._rng(case_id, first_slice + k, class_id),
                )
                if on_slice[k]
                else None
                for k in range(num_slices)
            ]
            examples.append(
                self._example(
                    processed,
                    fill_empty_slices(prompts, self.prompt),
                    processed.labels == class_id,
                    volumetric,
                )
                | self._original(label_maps == class_id, volumetric)
                | {"class_id": class_id}
            )
        if not examples and self.empty_targets == "keep":
            prompts = [not_a_point_prompt(self.prompt)] * num_slices
            examples.append(
                self._example(processed, prompts, np.zeros_like(processed.labels, bool), volumetric)
                | self._original(np.zeros_like(label_maps, bool), volumetric)
                | {"class_id": 0}
            )
        metadata = {
            "case_id": str(case_id),
            "slice_index": first_slice,
            "original_size": np.array(processed.original_size, np.int64),
            "reshaped_input_size": np.array(processed.reshaped_size, np.int64),
            "spacing": np.array(spacing, np.float32),
        }
        return [example | metadata for example in examples]

    def _original(self, target: np.ndarray, volumetric: bool) -> dict[str, np.ndarray]:
        """`original_target` (evaluation only): (n, H, W) for a chunk, (H, W) for one slice or image."""
        if not self.keep_original_target:
            return {}
        return {"original_target": target if volumetric else target[0]}

    def _rng(self, case_id: str, slice_index: int, class_id: int) -> np.random.Generator:
        return np.random.default_rng(example_seed(self.seed, case_id, slice_index, class_id))

    @staticmethod
    def _example(
        processed: ProcessedImages, prompts: list[dict], target: np.ndarray, volumetric: bool
    ) -> dict:
        """Stacks n slices' pixel values, prompts (P = 1) and binary labels into one example."""
        prompt_arrays = {
            key: np.stack([p[key] for p in prompts])[:, None] for key in prompts[0]
        }  # (n, 1, ...)
        labels = target.astype(np.int64)[:, None]  # (n, 1, Hm, Wm)
        if volumetric:
            pixel_values = processed.pixel_values.transpose(1, 0, 2, 3)  # (n, 3, S, S) -> (3, D=n, S, S)
            return {"pixel_values": np.ascontiguousarray(pixel_values), **prompt_arrays, "labels": labels}
        return {
            "pixel_values": processed.pixel_values[0],
            **{k: v[0] for k, v in prompt_arrays.items()},
            "labels": labels[0],
        }
