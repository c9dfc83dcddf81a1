"""Prompt simulation for SAM: seeded clicks and boxes, the paper's "BBox tau" boxes, and iterative clicks.

All coordinates are SAM's (x, y) = (column, row) pixel indices in the processed frame (the resized image
inside `pixel_values`), which is where `SamModel` expects them. Each example draws from its own generator,
seeded by (seed, case id, slice, class), so prompts do not depend on iteration order or worker count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import MedSAValueError

NOT_A_POINT = -1  # SAM's label for "no point here" (its prompt encoder has a learned embedding for it)
SAM_INPUT_SIZE = 1024  # the input side SAM's pixel figures refer to (e.g. its 20-px cap on box noise)


@dataclass(frozen=True)
class PromptConfig:
    """Which prompt each target gets.

    `points`: `num_positive` clicks drawn uniformly inside the target and `num_negative` outside it (anywhere
    else in the image). `box`: the target's tight box, then, if `box_tau` is set, moved so that its IoU with
    the tight box is `box_tau` (see `tau_box`), then each corner jittered by up to `box_jitter` pixels, then,
    if `box_noise` is set, SAM's training noise (see `noisy_box`), and clipped to the image.
    """

    kind: Literal["points", "box"] = "points"
    num_positive: int = 1
    num_negative: int = 0
    box_tau: float | None = None
    box_jitter: float = 0.0
    box_noise: float = 0.0
    box_noise_max: float = 20.0

    def __post_init__(self):
        if self.kind not in ("points", "box"):
            raise MedSAValueError(f"Prompt kind must be 'points' or 'box', got {self.kind!r}.")
        if self.kind == "points" and (self.num_positive < 0 or self.num_negative < 0 or self.num_points == 0):
            raise MedSAValueError("A point prompt needs num_positive + num_negative >= 1, both non-negative.")
        if self.box_tau is not None and not 0 < self.box_tau <= 1:
            raise MedSAValueError(f"box_tau is an IoU and must be in (0, 1], got {self.box_tau}.")
        if self.box_jitter < 0:
            raise MedSAValueError(f"box_jitter must be >= 0 pixels, got {self.box_jitter}.")
        if self.box_noise < 0 or self.box_noise_max < 0:
            raise MedSAValueError(
                f"box_noise (a fraction of the box side) and box_noise_max (pixels) must be >= 0, got "
                f"{self.box_noise} and {self.box_noise_max}."
            )

    @property
    def num_points(self) -> int:
        return self.num_positive + self.num_negative

    @classmethod
    def resolve(cls, prompt: str | Mapping | PromptConfig) -> PromptConfig:
        """Accepts a `PromptConfig`, a dict of its fields or a preset name (see `PROMPT_PRESETS`)."""
        if isinstance(prompt, PromptConfig):
            return prompt
        if isinstance(prompt, Mapping):
            return cls(**prompt)
        if prompt not in PROMPT_PRESETS:
            raise MedSAValueError(
                f"Unknown prompt preset {prompt!r}; choose one of {sorted(PROMPT_PRESETS)} or pass a PromptConfig."
            )
        return PROMPT_PRESETS[prompt]


# The paper's settings: 1 or 3 positive clicks, a box, and boxes overlapping 50 % / 75 % of the target.
PROMPT_PRESETS = {
    "1-click": PromptConfig("points", num_positive=1),
    "3-click": PromptConfig("points", num_positive=3),
    "box": PromptConfig("box"),
    "bbox-0.5": PromptConfig("box", box_tau=0.5),
    "bbox-0.75": PromptConfig("box", box_tau=0.75),
}


def example_seed(seed: int, case_id: str, slice_index: int, class_id: int) -> int:
    """A 64-bit seed that depends only on (seed, case, slice, class), not on order or workers."""
    key = f"{seed}|{case_id}|{slice_index}|{class_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The smallest box holding a non-empty mask (H, W): [x0, y0, x1, y1], inclusive pixel indices."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes whose corners are inclusive pixel indices (extent x1 - x0 + 1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy

    def area(box):
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    return float(inter / (area(a) + area(b) - inter))


def tau_box(box: np.ndarray, tau: float, rng: np.random.Generator, frame: tuple[int, int]) -> np.ndarray:
    """A box whose IoU with `box` is `tau` (the paper's "BBox tau"), inside the `frame` (h, w).

    The box keeps its size and is shifted: with extents w, h and shifts dx, dy the IoU is
    (w-dx)(h-dy) / (2wh - (w-dx)(h-dy)), so the shifts satisfy (1-dx/w)(1-dy/h) = 2 tau / (1 + tau); a random
    exponent splits that factor between the axes and random signs pick the direction. When no direction
    keeps the box inside the frame, it shrinks instead, by sqrt(tau) per side at a random place inside
    `box` (IoU = tau again). Exact up to float rounding, except for targets narrower than 2 px.
    """
    height, width = frame
    extent = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1], dtype=np.float64)
    ratio = 2 * tau / (1 + tau)
    u = rng.uniform()
    shift = extent * (1 - np.array([ratio**u, ratio ** (1 - u)]))
    out = box.astype(np.float64).copy()
    limits = (width - 1, height - 1)
    for axis in range(2):
        low, high = out[axis], out[axis + 2]
        signs = [1.0, -1.0] if rng.uniform() < 0.5 else [-1.0, 1.0]
        feasible = [s for s in signs if low + s * shift[axis] >= 0 and high + s * shift[axis] <= limits[axis]]
        if not feasible:
            break
        out[[axis, axis + 2]] += feasible[0] * shift[axis]
    else:
        return out.astype(np.float32)
    side = np.sqrt(tau) * extent
    start = box[:2] + rng.uniform(size=2) * (extent - side)
    end = np.maximum(start + side - 1, start)
    return np.concatenate([start, end]).astype(np.float32)


def sample_points(
    mask: np.ndarray, config: PromptConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Clicks for a non-empty binary `mask` (h, w): points (N, 2) float32 (x, y) and labels (N,) int64 (1 inside,
    0 outside). Negatives come from the rest of the image; if there is none, they become not-a-point (-1)."""

    def draw(rows: np.ndarray, cols: np.ndarray, count: int) -> np.ndarray:
        picks = rng.choice(len(rows), size=count, replace=len(rows) < count)
        return np.stack([cols[picks], rows[picks]], axis=1)  # (count, 2) in (x, y)

    inside = np.nonzero(mask)
    points = [draw(*inside, config.num_positive)]
    labels = [np.ones(config.num_positive, np.int64)]
    if config.num_negative:
        outside = np.nonzero(~mask)
        if len(outside[0]):
            points.append(draw(*outside, config.num_negative))
            labels.append(np.zeros(config.num_negative, np.int64))
        else:
            points.append(np.zeros((config.num_negative, 2)))
            labels.append(np.full(config.num_negative, NOT_A_POINT, np.int64))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels)


def sample_box(mask: np.ndarray, config: PromptConfig, rng: np.random.Generator) -> np.ndarray:
    """A box (4,) float32 [x0, y0, x1, y1] for a non-empty binary `mask` (h, w), inside the image."""
    height, width = mask.shape
    box = tight_box(mask)
    if config.box_tau is not None:
        box = tau_box(box, config.box_tau, rng, (height, width))
    if config.box_jitter:
        box = box + rng.uniform(-config.box_jitter, config.box_jitter, size=4).astype(np.float32)
    if config.box_noise:
        box = noisy_box(
            box, config.box_noise, config.box_noise_max * max(height, width) / SAM_INPUT_SIZE, rng
        )
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    return np.array(
        [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])], np.float32
    )


def noisy_box(box: np.ndarray, std: float, limit: float, rng: np.random.Generator) -> np.ndarray:
    """SAM's training boxes (Kirillov et al. 2023, appendix A): each coordinate gets Gaussian noise whose standard
    deviation is `std` (SAM: 10 %) of the box side along its axis, clipped to `limit` pixels (SAM: 20 px of its
    1024-px input; `sample_box` scales that to the frame). Evaluation boxes get none."""
    extent = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2, dtype=np.float64)
    noise = np.clip(rng.normal(0.0, std * extent), -limit, limit)
    return (box + noise).astype(np.float32)


def sample_prompt(mask: np.ndarray, config: PromptConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The prompt for one non-empty target: {input_points (N, 2), input_labels (N,)} or {input_boxes (4,)}."""
    if config.kind == "box":
        return {"input_boxes": sample_box(mask, config, rng)}
    points, labels = sample_points(mask, config, rng)
    return {"input_points": points, "input_labels": labels}


def not_a_point_prompt(config: PromptConfig) -> dict[str, np.ndarray]:
    """N not-a-point clicks (label -1): SAM's way of saying "no object prompt here"."""
    return {
        "input_points": np.zeros((config.num_points, 2), np.float32),
        "input_labels": np.full(config.num_points, NOT_A_POINT, np.int64),
    }


def next_click(
    prediction: np.ndarray, target: np.ndarray, scale: float = 1.0, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The next corrective click for each mask of `prediction`/`target` (..., H, W), as in interactive SAM.

    A click in a missed region (target, not predicted) is positive (label 1), one in a false-positive region
    negative (0); with no error left, the label is not-a-point (-1). Where the click goes:
    - `rng=None` (evaluation, deterministic): in the largest connected error region, at its pixel farthest
      from the region's border (Euclidean distance transform), so it sits well inside;
    - with a generator (training, as SAM: "sampled uniformly from the error region between the previous mask
      prediction and the ground truth"): any error pixel, uniformly.
    Returns points (..., 2) float32 in (x, y) and labels (...,) int64. `scale` maps mask pixels to the input
    frame (e.g. image_size / mask_size when the masks are at the mask-decoder resolution), keeping pixel
    centres aligned.
    """
    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    if prediction.shape != target.shape:
        raise MedSAValueError(
            f"prediction {prediction.shape} and target {target.shape} must have the same shape."
        )
    lead = prediction.shape[:-2]
    points = np.zeros((*lead, 2), np.float32)
    labels = np.full(lead, NOT_A_POINT, np.int64)
    for index in np.ndindex(*lead):
        click = (
            _deepest_error(prediction[index], target[index])
            if rng is None
            else _sampled_error(prediction[index], target[index], rng)
        )
        if click is None:
            continue
        row, col = click
        points[index] = ((col + 0.5) * scale - 0.5, (row + 0.5) * scale - 0.5)
        labels[index] = int(target[index][row, col])
    return points, labels


def _deepest_error(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int] | None:
    """The pixel farthest inside the largest connected error region (missed or false positive), or None."""
    best_size, best = 0, None
    for errors in (target & ~prediction, prediction & ~target):
        components, count = ndimage.label(errors)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            if sizes.max() > best_size:
                best_size, best = sizes.max(), components == sizes.argmax() + 1
    if best is None:
        return None
    depth = ndimage.distance_transform_edt(np.pad(best, 1))[1:-1, 1:-1]  # image border counts as border
    return np.unravel_index(depth.argmax(), depth.shape)


def _sampled_error(
    prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[int, int] | None:
    """A uniformly drawn error pixel (missed or false positive), or None."""
    rows, cols = np.nonzero(prediction ^ target)
    if not len(rows):
        return None
    pick = rng.integers(len(rows))
    return rows[pick], cols[pick]
