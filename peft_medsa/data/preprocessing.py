"""Preprocessing consistent with SAM: intensity policy per modality, then the transformers Sam processor.

Raw intensities (CT in HU, MR, 16-bit or RGB) become the 8-bit RGB image SAM was trained on; the Sam image
processor (`SamImageProcessorPil`, Pillow only) then resizes the longest side to the model's image size, pads,
normalises with ImageNet statistics and resizes label maps (nearest) to the mask decoder's resolution 4E,
E = image_size // patch_size. The same label map is also resized to the unpadded input frame, where prompts
are sampled, so clicks and boxes are in the frame of `pixel_values`.

SAM 2 and the SAM 3 tracker (`preprocessor_for`) are prepared as their own processors do: the image is
stretched to the square input (no padding) and normalised with the family's statistics. Their processors need
torchvision, which this package does not require, so the same Pillow processor does it with a square resize.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import SamImageProcessorPil
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict

from ..errors import MedSAValueError
from ..families import family_of_checkpoint
from .registry import IntensityPolicy


def to_uint8(array: np.ndarray, policy: IntensityPolicy, reference: np.ndarray | None = None) -> np.ndarray:
    """Maps raw intensities to uint8 following `policy`; statistics come from `reference` (e.g. the whole
    volume, so that all its slices share one mapping) or from `array` itself."""
    if policy.kind == "rgb" and array.dtype == np.uint8:
        return array
    reference = array if reference is None else reference
    if policy.kind == "window":
        low, high = policy.level - policy.width / 2, policy.level + policy.width / 2
    elif policy.kind == "percentile":
        foreground = reference[reference > reference.min()]
        low, high = np.percentile(foreground if foreground.size else reference, policy.percentiles)
    else:  # minmax, or rgb with a non-8-bit input
        low, high = float(reference.min()), float(reference.max())
    scale = 255.0 / max(float(high - low), 1e-6)
    return np.clip((array.astype(np.float32) - low) * scale, 0, 255).round().astype(np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3) uint8 -> (H, W, 3)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise MedSAValueError(f"Expected a grayscale or RGB image, got shape {image.shape}.")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def decode_mask(
    mask: np.ndarray,
    labels: Mapping[int, str],
    encoding: str = "index",
    threshold: float = 127,
    volume: bool = False,
    where: str = "",
) -> np.ndarray:
    """A stored mask -> a label map of class ids (uint8, same spatial shape), checked against the label map.

    `index`: values are class ids (0 = background) and must all be in `labels`. `binary`: `mask > threshold`
    is class 1 (for masks stored as 0/255, possibly with compression noise); 2-D RGB masks are averaged first.
    `volume` says a 3-D mask is (D, H, W) rather than (H, W, channels).
    """
    if mask.ndim == 3 and not volume:
        if encoding != "binary":
            raise MedSAValueError(
                f"{where}mask has {mask.shape[2]} channels; an `index` mask must be single-channel "
                "(set `mask_encoding: binary` for black/white RGB masks)."
            )
        mask = mask.mean(axis=2)
    if encoding == "binary":
        return (mask > threshold).astype(np.uint8)
    values = np.unique(mask)
    unknown = sorted(set(values.tolist()) - set(labels) - {0})
    if unknown:
        raise MedSAValueError(
            f"{where}mask holds value(s) {unknown[:10]} that are not in the task's label map {dict(labels)}; "
            "add them to `labels`, or use `mask_encoding: binary` for 0/255 masks."
        )
    return mask.astype(np.uint8)


@dataclass
class ProcessedImages:
    """The processor's output for n images: `pixel_values` (n, 3, S, S) float32; `labels` (n, Hm, Wm) uint8
    class ids at the mask-decoder resolution; `targets` n label maps (h, w) in the unpadded input frame. Without
    label maps (images to segment, not to train on) `labels` and `targets` are None."""

    pixel_values: np.ndarray
    labels: np.ndarray | None
    targets: list[np.ndarray] | None
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int]


class SamPreprocessor:
    """Runs the transformers Sam image processor at a given model image size and mask-decoder resolution.

    `keep_aspect_ratio=False` stretches images to the square input instead of resizing the longest side and
    padding (SAM 2's frame); `image_mean` and `image_std` default to SAM's (ImageNet) statistics.
    """

    def __init__(
        self,
        image_size: int = 1024,
        mask_size: int | None = None,
        keep_aspect_ratio: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ):
        self.image_size = image_size
        self.mask_size = image_size // 4 if mask_size is None else mask_size
        self.keep_aspect_ratio = keep_aspect_ratio
        processor = SamImageProcessorPil if keep_aspect_ratio else _StretchingImageProcessor
        statistics = {"image_mean": image_mean, "image_std": image_std}
        self.image_processor = processor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": self.mask_size},
            mask_pad_size={"height": self.mask_size, "width": self.mask_size},
            **{name: list(value) for name, value in statistics.items() if value is not None},
        )

    def prompt_scale(self, height: int, width: int) -> tuple[float, float]:
        """The (x, y) factors that take a point of a height x width image into the model's input frame."""
        if self.keep_aspect_ratio:
            scale = self.image_size / max(height, width)
            return scale, scale
        return self.image_size / width, self.image_size / height

    def __call__(
        self, images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray] | None = None
    ) -> ProcessedImages:
        """`images` (H, W, 3) uint8 and `label_maps` (H, W) uint8, all of one size (slices of one volume)."""
        encoding = self.image_processor(  # channels-last, stated: a 3-row image is not 3 channels
            images=list(images),
            segmentation_maps=None if label_maps is None else list(label_maps),
            input_data_format=ChannelDimension.LAST,
            return_tensors="np",
        )
        targets = None
        if label_maps is not None:
            targets = [
                self.image_processor.resize(
                    m[None],
                    SizeDict(longest_edge=self.image_size),
                    PILImageResampling.NEAREST,
                    input_data_format=ChannelDimension.FIRST,
                )[0]
                for m in label_maps
            ]  # each (h, w): the same nearest resize the processor applies, without padding
        return ProcessedImages(
            pixel_values=encoding["pixel_values"],
            labels=None if label_maps is None else encoding["labels"].astype(np.uint8),
            targets=targets,
            original_size=tuple(int(v) for v in encoding["original_sizes"][0]),
            reshaped_size=tuple(int(v) for v in encoding["reshaped_input_sizes"][0]),
        )


class _StretchingImageProcessor(SamImageProcessorPil):
    """SAM 2's resize: every image (and label map) becomes the square `longest_edge` x `longest_edge`."""

    def _get_preprocess_shape(self, old_shape: tuple[int, int], longest_edge: int) -> tuple[int, int]:
        return longest_edge, longest_edge


def preprocessor_for(model_config: Any) -> SamPreprocessor:
    """The preprocessing of the model with `model_config` (a SamConfig, Sam2Config, Sam3TrackerConfig or one of
    their video configs): its family's frame and statistics at its input size, labels at the mask decoder's
    resolution 4 * (image_size // patch_size)."""
    family = family_of_checkpoint(model_config.model_type, type(model_config).__name__)
    prompt_encoder = model_config.prompt_encoder_config
    return SamPreprocessor(
        prompt_encoder.image_size,
        4 * (prompt_encoder.image_size // prompt_encoder.patch_size),
        keep_aspect_ratio=family.keeps_aspect_ratio,
        image_mean=family.image_mean,
        image_std=family.image_std,
    )
