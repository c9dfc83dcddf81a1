"""Segmenting files with a Med-SA adapter: a 2-D image or a volume in, a mask in the same format and geometry out.

Prompts are in the input's own pixel frame: x is the column, y the row. For a volume, slice k is
`data[:, :, k]` of the file's voxel array (as nibabel or pynrrd load it), so x indexes axis 1 and y axis 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_erosion
from tqdm.auto import tqdm
from transformers import SamModel

from .data.preprocessing import SamPreprocessor, to_rgb, to_uint8
from .data.readers import DICOM_SUFFIXES, NIFTI_SUFFIXES, NRRD_SUFFIXES, file_suffix, read_image
from .data.registry import IntensityPolicy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NRRD_SUFFIXES


@dataclass
class Prompt:
    """The prompt of one image or slice: positive/negative clicks (x, y) and/or a box (x1, y1, x2, y2)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    negative_points: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def check_inside(self, height: int, width: int, where: str) -> None:
        coordinates = [*self.points, *self.negative_points] + (
            [self.box[:2], self.box[2:]] if self.box else []
        )
        outside = [c for c in coordinates if not (0 <= c[0] < width and 0 <= c[1] < height)]
        if outside:
            raise ValueError(
                f"{where}: prompt coordinates {outside} lie outside the image ({width} x {height} px, x < {width}, y < {height})."
            )
        if self.box and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise ValueError(f"{where}: the box {self.box} must have x1 < x2 and y1 < y2.")


def read_boxes_file(path: Path) -> dict[int, Prompt]:
    """A JSON file `{"<slice>": [x1, y1, x2, y2], ...}`: one box per prompted slice of a volume."""
    try:
        boxes = json.loads(Path(path).read_text())
        return {int(index): Prompt(box=tuple(float(v) for v in box)) for index, box in boxes.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f'{path}: expected JSON like {{"12": [x1, y1, x2, y2]}}, one box per slice ({error}).'
        ) from None


class Segmenter:
    """Runs a (Med-SA adapted) SamModel on raw 2-D slices with prompts in their own pixel frame."""

    def __init__(self, model: torch.nn.Module, intensity: IntensityPolicy | None = None):
        self.model = model.eval()
        vision = model.config.vision_config
        self.image_size = vision.image_size
        self.preprocessor = SamPreprocessor(self.image_size, 4 * (self.image_size // vision.patch_size))
        self.intensity = intensity or IntensityPolicy("percentile")
        peft_config = getattr(model, "peft_config", {}).get("default")
        self.depth_attention = bool(peft_config and peft_config.depth_attention)

    @torch.no_grad()
    def __call__(
        self, slices: Sequence[np.ndarray], prompts: Sequence[Prompt], reference: np.ndarray | None = None
    ) -> np.ndarray:
        """Binary masks (n, H, W) for n slices of one size. With a depth adapter, the slices are consecutive
        slices of one volume and run through SD-Trans together; otherwise each is a 2-D image."""
        images = [to_rgb(to_uint8(s, self.intensity, reference)) for s in slices]
        height, width = slices[0].shape[:2]
        processed = self.preprocessor(images, [np.zeros((height, width), np.uint8)] * len(images))
        scale = self.image_size / max(height, width)
        pixel_values = torch.from_numpy(processed.pixel_values)  # (n, 3, S, S)
        if self.depth_attention and len(slices) > 1:
            pixel_values = pixel_values.transpose(0, 1)[None]  # (1, 3, n, S, S): one volume
        inputs = {"pixel_values": pixel_values, **_prompt_tensors(prompts, scale)}
        outputs = self.model(**inputs)
        best = outputs.iou_scores[:, 0].argmax(dim=-1)  # (n,)
        logits = outputs.pred_masks[torch.arange(len(slices)), 0, best]  # (n, h, w)
        masks = self.preprocessor.image_processor.post_process_masks(  # unpad, resize to the input's size
            logits[:, None, None],
            [processed.original_size] * len(slices),
            [processed.reshaped_size] * len(slices),
        )
        return np.stack([m[0, 0].numpy() for m in masks])  # (n, H, W) bool


def _prompt_tensors(prompts: Sequence[Prompt], scale: float) -> dict[str, torch.Tensor]:
    """SamModel's prompt inputs for n prompts, rescaled to the model frame (all with boxes, or all without)."""
    kinds = {p.box is not None for p in prompts}
    if len(kinds) != 1:
        raise ValueError("Give every slice a box, or none of them.")
    tensors = {}
    if kinds.pop():
        tensors["input_boxes"] = (
            torch.tensor([[p.box] for p in prompts], dtype=torch.float32) * scale
        )  # (n, 1, 4)
    counts = {len(p.points) + len(p.negative_points) for p in prompts}
    if counts != {0}:
        if len(counts) != 1:
            raise ValueError("Give every slice the same number of clicks.")
        points = [[*p.points, *p.negative_points] for p in prompts]
        labels = [[1] * len(p.points) + [0] * len(p.negative_points) for p in prompts]
        tensors["input_points"] = torch.tensor(points, dtype=torch.float32)[:, None] * scale  # (n, 1, N, 2)
        tensors["input_labels"] = torch.tensor(labels)[:, None]  # (n, 1, N)
    if not tensors:
        raise ValueError("No prompt given: pass clicks, a box, or a boxes file.")
    return tensors


def predict_file(
    segmenter: Segmenter,
    input_path: Path,
    output_path: Path,
    prompts: Mapping[int, Prompt],
    depth: int = 8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Segment `input_path` and write the mask to `output_path` in the input's format and geometry.

    `prompts` maps a slice index to its prompt (index 0 for a 2-D image). Returns the image, the mask
    (for volumes, of the middle prompted slice) and that slice's index, for an overlay.
    """
    suffix = file_suffix(input_path)
    if suffix not in SUPPORTED:
        raise ValueError(f"{input_path}: unsupported format {suffix!r}; use one of {', '.join(SUPPORTED)}.")
    if file_suffix(output_path) != suffix:
        raise ValueError(f"The output {output_path} must have the input's format ({suffix}).")
    if suffix in NIFTI_SUFFIXES + NRRD_SUFFIXES:
        return _predict_volume(segmenter, input_path, output_path, prompts, depth)
    image = read_image(input_path)
    prompt = prompts.get(0)
    if prompt is None or len(prompts) != 1:
        raise ValueError(
            f"{input_path} is a 2-D image: give one prompt (clicks or a box), not per-slice boxes."
        )
    prompt.check_inside(*image.shape[:2], where=str(input_path))
    mask = segmenter([image], [prompt])[0]
    if suffix in DICOM_SUFFIXES:
        _write_dicom_mask(input_path, output_path, mask)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(output_path)
    return image, mask, 0


def _predict_volume(
    segmenter: Segmenter, input_path: Path, output_path: Path, prompts: Mapping[int, Prompt], depth: int
):
    data, write = _load_volume(input_path)
    if data.ndim != 3 or data.size == 0:
        raise ValueError(f"{input_path}: expected a non-empty 3-D volume, got shape {data.shape}.")
    outside = sorted(k for k in prompts if not 0 <= k < data.shape[2])
    if outside:
        raise ValueError(
            f"{input_path}: prompted slices {outside} do not exist (the volume has {data.shape[2]} slices, 0..{data.shape[2] - 1})."
        )
    for index, prompt in prompts.items():
        prompt.check_inside(data.shape[0], data.shape[1], where=f"{input_path}, slice {index}")
    mask = np.zeros(data.shape, dtype=np.uint8)
    runs = _consecutive_runs(sorted(prompts), depth if segmenter.depth_attention else 1)
    for run in tqdm(runs, desc="slices", unit="chunk", disable=len(runs) < 4):
        slices = [data[:, :, k] for k in run]
        mask[:, :, run] = segmenter(slices, [prompts[k] for k in run], reference=data).transpose(1, 2, 0)
    write(output_path, mask)
    middle = sorted(prompts)[len(prompts) // 2]
    return data[:, :, middle], mask[:, :, middle].astype(bool), middle


def _consecutive_runs(indices: list[int], depth: int) -> list[list[int]]:
    """Group sorted slice indices into runs of consecutive slices, at most `depth` long (SD-Trans chunks)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1 and len(runs[-1]) < depth:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _load_volume(path: Path):
    """The voxel array and a writer that saves a mask with the same geometry (NIfTI affine, NRRD header)."""
    if file_suffix(path) in NIFTI_SUFFIXES:
        image = nib.load(str(path))

        def write(output: Path, mask: np.ndarray) -> None:
            header = image.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1, 0)
            nib.save(nib.Nifti1Image(mask, image.affine, header), str(output))

        return np.asanyarray(image.dataobj), write
    import nrrd

    data, header = nrrd.read(str(path))

    def write(output: Path, mask: np.ndarray) -> None:
        nrrd.write(str(output), mask, header={**header, "type": "uint8", "encoding": "gzip"})

    return data, write


def _write_dicom_mask(input_path: Path, output_path: Path, mask: np.ndarray) -> None:
    """The mask as a DICOM image with the input's geometry (position, orientation, spacing) and a new UID."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dataset = pydicom.dcmread(str(input_path))
    for tag in list(dataset.keys()):
        if tag.group in range(0x6000, 0x6020, 2):  # overlays belong to the source image
            del dataset[tag]
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.SeriesDescription = "Med-SA segmentation"
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 1, 8, 8, 7
    dataset.PixelRepresentation = 0
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if name in dataset:
            delattr(dataset, name)
    dataset.PixelData = mask.astype(np.uint8).tobytes()
    dataset.Rows, dataset.Columns = mask.shape
    dataset.save_as(str(output_path), enforce_file_format=True)


def write_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    prompt: Prompt,
    output: Path,
    target: np.ndarray | None = None,
    zoom: int = 1,
) -> None:
    """An RGB picture for a person: the image, the mask tinted and outlined in red, the `target` (when known)
    outlined in green, clicks and the box in yellow (negative clicks in cyan); `zoom` enlarges small images."""
    rgb = to_rgb(to_uint8(image, IntensityPolicy("percentile"))).copy()
    rgb[mask] = (0.7 * rgb[mask] + [76, 0, 0]).astype(np.uint8)
    rgb[mask & ~binary_erosion(mask)] = [255, 0, 0]
    if target is not None:
        rgb[target & ~binary_erosion(target)] = [0, 255, 0]
    height, width = mask.shape
    for points, colour in ((prompt.points, [255, 255, 0]), (prompt.negative_points, [0, 255, 255])):
        for x, y in points:
            rgb[max(int(y) - 2, 0) : int(y) + 3, max(int(x) - 2, 0) : int(x) + 3] = colour
    if prompt.box:
        x1, y1, x2, y2 = (round(v) for v in prompt.box)
        x2, y2 = min(x2, width - 1), min(y2, height - 1)
        rgb[[y1, y2], x1 : x2 + 1] = [255, 255, 0]
        rgb[y1 : y2 + 1, [x1, x2]] = [255, 255, 0]
    Image.fromarray(rgb).resize((zoom * width, zoom * height), Image.NEAREST).save(output)


def load_model(base: str, adapter: str | None) -> torch.nn.Module:
    """A SamModel, with the Med-SA adapter at `adapter` when given."""
    from peft import PeftModel

    model = SamModel.from_pretrained(base)
    return PeftModel.from_pretrained(model, adapter) if adapter else model
