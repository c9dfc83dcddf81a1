"""Segmenting files with a Med-SA adapter: a 2-D image or a volume in, a mask in the same format and geometry out.

Files are read through `data/readers.py`, the reader training uses, so the model sees exactly the slices it
was trained on (the canonical (S, P, L) orientation), and the mask goes back in the input's own voxel order.

Prompt frame (the command line's and `predict_file`'s):
- 2-D images (PNG/JPEG, single-frame DICOM): x is the column, y the row, in pixels.
- Volumes (NIfTI/NRRD): the file's own voxel indices, as ITK-SNAP and 3D Slicer show them: a click (i, j) on
  slice k is voxel [i, j, k] of the array as stored (nibabel's `dataobj`, pynrrd's `read`); slices are the
  third voxel axis. Prompts are converted once into the canonical frame. The file's third axis must be its
  slice (inferior-superior) axis, as in axial scans; otherwise prediction refuses with a message saying how to
  reorient the file.
- DICOM series (a folder): x is the column, y the row of its images, and slice k the position in the series
  sorted along the slice normal (the order a viewer scrolls through).

Outputs, written atomically (a temporary file in the output's folder, then `os.replace`, so a failed write
leaves no partial file and an input can be its own output):
- NIfTI / NRRD: a uint8 0/1 mask with the input's shape, affine and header (intensity scaling reset);
- DICOM image or series: one DICOM Segmentation (SEG, via highdicom) in a new series that references every
  source image, saved as `.dcm`: a SEG object, not an image, so a PACS files it beside the scan, not in it;
- PNG/JPEG: a 0/255 grayscale picture.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_erosion
from tqdm.auto import tqdm

from .data.preprocessing import preprocessor_for, to_rgb, to_uint8
from .data.readers import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    FileLayout,
    Volume,
    file_suffix,
    read_image,
    read_volume,
)
from .data.registry import IntensityPolicy
from .errors import MedSAFileError, MedSAValueError
from .mask_selection import predict_masks
from .pretrained import default_device, load_adapter, load_sam
from .writing import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NRRD_SUFFIXES
# The suffixes a mask may be written with, per input suffix (NRRD masks are always attached `.nrrd` files).
OUTPUT_SUFFIXES = {
    **dict.fromkeys(IMAGE_SUFFIXES, IMAGE_SUFFIXES),
    **dict.fromkeys(NIFTI_SUFFIXES, NIFTI_SUFFIXES),
    **dict.fromkeys(NRRD_SUFFIXES, (".nrrd",)),
    **dict.fromkeys(DICOM_SUFFIXES, DICOM_SUFFIXES),
}


@dataclass
class Prompt:
    """The prompt of one image or slice: positive/negative clicks (x, y) and/or a box (x1, y1, x2, y2)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    negative_points: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def check(self, width: int, height: int, where: str, axes: str = "x, y") -> None:
        """Refuses non-finite coordinates, coordinates outside a `width` x `height` frame and empty boxes."""
        first, second = axes.split(", ")
        coordinates = [*self.points, *self.negative_points] + (
            [self.box[:2], self.box[2:]] if self.box else []
        )
        if not all(math.isfinite(v) for c in coordinates for v in c):
            raise MedSAValueError(f"{where}: prompt coordinates must be finite numbers, got {coordinates}.")
        outside = [c for c in coordinates if not (0 <= c[0] < width and 0 <= c[1] < height)]
        if outside:
            raise MedSAValueError(
                f"{where}: prompt coordinates {outside} lie outside the image; expected {first} in "
                f"[0, {width}) and {second} in [0, {height})."
            )
        if self.box and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise MedSAValueError(
                f"{where}: the box {self.box} must have {first}1 < {first}2 and {second}1 < {second}2."
            )

    def moved(self, to: Callable[[float, float], tuple[float, float]]) -> Prompt:
        """The same prompt in another frame; `to` maps one (x, y). Box corners are re-sorted (a flip swaps them)."""
        box = None
        if self.box:
            (xa, ya), (xb, yb) = to(*self.box[:2]), to(*self.box[2:])
            box = (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        return Prompt([to(*p) for p in self.points], [to(*p) for p in self.negative_points], box)


@dataclass
class Prediction:
    """One slice of what `predict_file` wrote, to look at: the `image` and `mask` (H, W) with the `prompt` on
    it, in the canonical (viewing) frame; `slice_index` is the file's slice k (0 for a 2-D image)."""

    image: np.ndarray
    mask: np.ndarray
    prompt: Prompt
    slice_index: int


def read_boxes_file(path: Path) -> dict[int, Prompt]:
    """A JSON file `{"<k>": [i1, j1, i2, j2], ...}`: one box per prompted slice k of a volume."""
    expected = f'{path}: expected JSON like {{"12": [i1, j1, i2, j2]}}, one box of 4 numbers per slice'
    try:
        boxes = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise MedSAValueError(f"{expected}; the file is not valid JSON ({error}).") from None
    if not isinstance(boxes, dict) or not boxes:
        raise MedSAValueError(f"{expected}; got {type(boxes).__name__} {str(boxes)[:80]}.")
    prompts = {}
    for key, box in boxes.items():
        if not key.isdigit():
            raise MedSAValueError(f"{expected}; {key!r} is not a slice index (a whole number >= 0).")
        numeric = isinstance(box, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in box
        )
        if not numeric or len(box) != 4:
            raise MedSAValueError(f"{expected}; slice {key} has {box!r}.")
        prompts[int(key)] = Prompt(box=tuple(float(v) for v in box))
    return prompts


class Segmenter:
    """Runs a (Med-SA adapted) SAM, SAM 2 or SAM 3 tracker model on raw 2-D slices with prompts in their own pixel
    frame; a SAM 2-family video model (`load_model(..., video=True)`) instead propagates prompts on key slices
    through a volume (`propagate`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        intensity: IntensityPolicy | None = None,
        device: str | torch.device | None = None,
    ):
        self.device = _device(device)
        self.model = model.eval().to(self.device)
        self.preprocessor = preprocessor_for(model.config)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PeftModel
        # A video model segments volumes only, by propagation.
        self.video = hasattr(base, "propagate_in_video_iterator")
        self.intensity = intensity or IntensityPolicy("percentile")
        peft_config = getattr(model, "peft_config", {}).get("default")
        self.depth_attention = bool(peft_config and peft_config.depth_attention)

    def __call__(
        self, slices: Sequence[np.ndarray], prompts: Sequence[Prompt], reference: np.ndarray | None = None
    ) -> np.ndarray:
        """Binary masks (n, H, W) for n raw slices of one size, mapped to 8 bits by the intensity policy with
        the statistics of `reference` (e.g. the whole volume) or of each slice."""
        return self.segment([to_uint8(s, self.intensity, reference) for s in slices], prompts)

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt]) -> np.ndarray:
        """Binary masks (n, H, W) for n 8-bit images (H, W) or (H, W, 3) of one size. With a depth adapter,
        they are consecutive slices of one volume and run through SD-Trans together; otherwise each is 2-D."""
        return self.decode(self.embed(images), prompts)[0]

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> SliceEmbeddings:
        """The image encoder's output for n 8-bit images: the costly step, computed once per image and reused
        for every prompt (`decode`)."""
        if self.video:
            raise MedSAValueError(
                f"This Segmenter holds a video model ({type(self.model).__name__}), which segments volumes by "
                "propagation; for 2-D images load the image model: load_model(base, adapter)."
            )
        images = [to_rgb(image) for image in images]
        height, width = images[0].shape[:2]
        processed = self.preprocessor(images)
        pixel_values = torch.from_numpy(processed.pixel_values)  # (n, 3, S, S)
        if self.depth_attention and len(images) > 1:
            pixel_values = pixel_values.transpose(0, 1)[None]  # (1, 3, n, S, S): one volume
        return SliceEmbeddings(
            self.model.get_image_embeddings(pixel_values.to(self.device)),
            processed.original_size,
            processed.reshaped_size,
            self.preprocessor.prompt_scale(height, width),
        )

    @torch.no_grad()
    def decode(self, embeddings: SliceEmbeddings, prompts: Sequence[Prompt]) -> tuple[np.ndarray, np.ndarray]:
        """Binary masks (n, H, W) and their predicted IoU (n,) for one prompt per embedded slice: the prompt
        encoder and mask decoder only, what a new click costs."""
        n = len(prompts)
        prompt_tensors = _prompt_tensors(prompts, embeddings.scale)
        inputs = {
            "image_embeddings": embeddings.tensor,
            **{k: v.to(self.device) for k, v in prompt_tensors.items()},
        }
        outputs = predict_masks(self.model, inputs)  # one mask or three: the rule training and evaluation use
        iou = outputs.iou_scores[:, 0].float().cpu()  # (n, M)
        best = iou.argmax(dim=-1)  # (n,): the only mask, or the one the IoU head ranks first (select_masks)
        logits = outputs.pred_masks[torch.arange(n), 0, best].float().cpu()  # (n, h, w)
        masks = self.preprocessor.image_processor.post_process_masks(  # unpad, resize to the input's size
            logits[:, None, None], [embeddings.original_size] * n, [embeddings.reshaped_size] * n
        )
        return np.stack([m[0, 0].numpy() for m in masks]), iou[torch.arange(n), best].numpy()

    def propagate(
        self, volume: np.ndarray, prompts: Mapping[int, Prompt], slices: range | None = None
    ) -> np.ndarray:
        """Binary masks (D, H, W) of a uint8 volume (D, H, W) from prompts on key slices, carried through
        `slices` (default: all) in both directions by the video model's memory (`peft_medsa.video.propagate`)."""
        from .video import propagate

        return propagate(self.model, volume, prompts, slices)


@dataclass
class SliceEmbeddings:
    """Image embeddings of n slices (SAM: (n, C, E, E); SAM 2: its list of feature maps) and the sizes that map
    the decoder's masks back to the input."""

    tensor: torch.Tensor | list[torch.Tensor]
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int]
    scale: tuple[float, float]  # (x, y): model frame / input pixel frame, for the prompts


def _device(device: str | torch.device | None) -> torch.device:
    try:
        device = torch.device(device or default_device())
    except RuntimeError as error:
        raise MedSAValueError(f"Unknown device {device!r} ({error}); use e.g. cpu, cuda or cuda:0.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedSAValueError(f"Device {device} asked for, but no CUDA GPU is available; use --device cpu.")
    return device


def _prompt_tensors(prompts: Sequence[Prompt], scale: tuple[float, float]) -> dict[str, torch.Tensor]:
    """SamModel's prompt inputs for n prompts, rescaled to the model frame (all with boxes, or all without)."""
    scale = torch.tensor(scale, dtype=torch.float32)  # (x, y)
    kinds = {p.box is not None for p in prompts}
    if len(kinds) != 1:
        raise MedSAValueError("Give every slice a box, or none of them.")
    tensors = {}
    if kinds.pop():
        boxes = torch.tensor([[p.box] for p in prompts], dtype=torch.float32)  # (n, 1, 4)
        tensors["input_boxes"] = boxes * scale.repeat(2)  # x1, y1, x2, y2
    counts = {len(p.points) + len(p.negative_points) for p in prompts}
    if counts != {0}:
        if len(counts) != 1:
            raise MedSAValueError("Give every slice the same number of clicks.")
        points = [[*p.points, *p.negative_points] for p in prompts]
        labels = [[1] * len(p.points) + [0] * len(p.negative_points) for p in prompts]
        tensors["input_points"] = torch.tensor(points, dtype=torch.float32)[:, None] * scale  # (n, 1, N, 2)
        tensors["input_labels"] = torch.tensor(labels)[:, None]  # (n, 1, N)
    if not tensors:
        raise MedSAValueError("No prompt given: pass clicks, a box, or a boxes file.")
    return tensors


@dataclass
class InputImage:
    """A file as `predict_file` sees it: `slices` in the canonical (viewing) orientation the model runs on,
    (D, H, W) for a volume and (1, H, W[, C]) for a 2-D image, and the way to and from the file's own frame,
    where prompts are given (see the module docstring). `k` below is always the file's slice index.

    `spacing` is the (row, column) pixel spacing in mm and `slice_spacing` the distance between slices, when
    the file records them (a PNG does not).
    """

    path: Path
    slices: np.ndarray
    spacing: tuple[float, float] | None
    slice_spacing: float | None = None
    layout: FileLayout | None = None  # volumes: how the file stores its voxels
    _gray: tuple[IntensityPolicy, np.ndarray] | None = field(default=None, repr=False)

    @property
    def is_volume(self) -> bool:
        return self.layout is not None

    @property
    def num_slices(self) -> int:
        return len(self.slices)

    @property
    def frame_size(self) -> tuple[int, int]:
        """The prompt frame's extent: (i, j) voxel counts of a volume, (width, height) of an image."""
        return (
            tuple(self.layout.shape[:2]) if self.is_volume else (self.slices.shape[2], self.slices.shape[1])
        )

    @property
    def reference(self) -> np.ndarray | None:
        """What intensities are scaled against: the whole volume (as `predict_file` does), or the image itself."""
        return self.slices if self.is_volume else None

    def slice(self, k: int) -> np.ndarray:
        """File slice k in the canonical view."""
        return self.slices[self._canonical_index(k)]

    def model_input(self, k: int, intensity: IntensityPolicy) -> np.ndarray:
        """File slice k as the 8-bit image `predict_file` gives the model: one mapping for a whole volume (as in
        training), computed once and kept; a 2-D image mapped by itself."""
        if not self.is_volume:
            return to_uint8(self.slices[0], intensity)
        if self._gray is None or self._gray[0] != intensity:
            self._gray = (intensity, to_uint8(self.slices, intensity))
        return self._gray[1][self._canonical_index(k)]

    def to_file(self, x: float, y: float, k: int) -> tuple[float, float]:
        """The prompt-frame coordinates of pixel (x = column, y = row) of `slice(k)`."""
        if not self.is_volume:
            return x, y
        i, j, _ = self.layout.to_file((self._canonical_index(k), y, x))
        return i, j

    def _canonical_index(self, k: int) -> int:
        """The canonical slice d of file slice k (0 for a 2-D image)."""
        return round(self.layout.to_canonical((0, 0, k))[0]) if self.is_volume else 0

    def canonical_prompt(self, prompt: Prompt, k: int) -> Prompt:
        """`prompt` on file slice k, checked, in the frame of `slice(k)`: what the model is given."""
        if not self.is_volume:
            prompt.check(*self.frame_size, str(self.path.name), axes="x, y")
            return prompt
        canonical, _ = _canonical_prompts(self.layout, {k: prompt}, self.path.name)
        return next(iter(canonical.values()))


def read_input(path: str | Path) -> InputImage:
    """Reads what `predict_file` accepts, with its spacing; an unusable file is one MedSAError naming it."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in SUPPORTED:
        raise MedSAFileError(
            f"{path.name}: unsupported format {suffix!r}; use one of {', '.join(SUPPORTED)}."
        )
    if suffix in NIFTI_SUFFIXES + NRRD_SUFFIXES:
        volume = read_volume(path)
        _check_slice_axis(volume.layout, path.name)
        _check_contrast(volume.array, path.name)
        return InputImage(path, volume.array, volume.spacing[1:], volume.spacing[0], volume.layout)
    image = read_image(path)
    _check_contrast(image, path.name)
    spacing = read_volume(path).spacing[1:] if suffix in DICOM_SUFFIXES else None
    return InputImage(path, image[None], spacing)


def predict_file(
    segmenter: Segmenter,
    input_path: str | Path,
    output_path: str | Path,
    prompts: Prompt | Mapping[int, Prompt],
    depth: int = 8,
    propagate: range | None = None,
) -> Prediction:
    """Segment `input_path` and write the mask to `output_path` in the input's format and geometry.

    `prompts` is one prompt (for a 2-D image, or for every slice of a volume) or a mapping slice k -> prompt,
    in the frame the module describes. A SAM or SAM 2 image model segments the prompted slices of a volume, each
    on its own (SD-Trans: `depth` slices together); a SAM 2-family video model takes them as key slices and
    propagates them through the file slices `propagate` (default: all), leaving the other slices empty.
    Returns the middle prompted slice, for an overlay.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    suffix = file_suffix(input_path)
    if input_path.is_dir():  # a DICOM series
        if file_suffix(output_path) not in DICOM_SUFFIXES:
            raise MedSAValueError(
                f"The output {output_path} must be a .dcm file for the DICOM series {input_path} "
                "(the mask is one DICOM Segmentation object)."
            )
        return _predict_volume(segmenter, input_path, output_path, prompts, depth, propagate)
    if suffix not in SUPPORTED:
        raise MedSAFileError(
            f"{input_path}: unsupported format {suffix!r}; use one of {', '.join(SUPPORTED)}."
        )
    if file_suffix(output_path) not in OUTPUT_SUFFIXES[suffix]:
        raise MedSAValueError(
            f"The output {output_path} must be a {' or '.join(OUTPUT_SUFFIXES[suffix])} file for a {suffix} input"
            + (" (the mask is a DICOM Segmentation object)." if suffix in DICOM_SUFFIXES else ".")
        )
    if suffix in NIFTI_SUFFIXES + NRRD_SUFFIXES:
        return _predict_volume(segmenter, input_path, output_path, prompts, depth, propagate)
    if propagate is not None:
        raise MedSAValueError(f"{input_path} is a 2-D image: there are no slices to propagate through.")
    if isinstance(prompts, Mapping):
        if list(prompts) != [0]:
            raise MedSAValueError(
                f"{input_path} is a 2-D image: give one prompt (clicks or a box), not per-slice prompts."
            )
        prompts = prompts[0]
    source = read_volume(input_path) if suffix in DICOM_SUFFIXES else None
    if source is not None and len(source.array) != 1:
        raise MedSAFileError(
            f"{input_path}: expected a single-frame DICOM image, got {len(source.array)} frames."
        )
    image = read_image(input_path) if source is None else source.array[0]
    _check_contrast(image, str(input_path))
    prompts.check(image.shape[1], image.shape[0], str(input_path), axes="x, y")
    mask = segmenter([image], [prompts])[0]
    if source is not None:
        atomic_write(output_path, lambda path: _write_dicom_seg(source, mask[None], path))
    else:
        atomic_write(output_path, lambda path: Image.fromarray(mask.astype(np.uint8) * 255).save(path))
    return Prediction(image, mask, prompts, 0)


def _predict_volume(
    segmenter: Segmenter,
    input_path: Path,
    output_path: Path,
    prompts: Prompt | Mapping[int, Prompt],
    depth: int,
    propagate: range | None = None,
) -> Prediction:
    volume = read_volume(input_path)
    _check_contrast(volume.array, str(input_path))
    canonical, file_slices = _canonical_prompts(volume.layout, prompts, str(input_path))
    gray = to_uint8(volume.array, segmenter.intensity)  # one mapping for the whole volume, as in training
    if segmenter.video:
        slices = _canonical_range(volume.layout, propagate, file_slices, str(input_path))
        mask = segmenter.propagate(gray, canonical, slices).astype(np.uint8)
    elif propagate is not None:
        raise MedSAValueError(
            f"Propagating prompts through slices needs a SAM 2-family video checkpoint (e.g. "
            f"facebook/sam2.1-hiera-tiny); {type(segmenter.model).__name__} segments the prompted slices only."
        )
    else:
        mask = np.zeros(volume.array.shape, dtype=np.uint8)
        runs = _consecutive_runs(sorted(canonical), depth if segmenter.depth_attention else 1)
        for run in tqdm(runs, desc="slices", unit="chunk", disable=len(runs) < 4):
            mask[run] = segmenter.segment([gray[d] for d in run], [canonical[d] for d in run])
    write = {".nii": _write_nifti, ".nii.gz": _write_nifti, ".nrrd": _write_nrrd, ".nhdr": _write_nrrd}.get(
        file_suffix(input_path), _write_dicom_seg
    )
    atomic_write(output_path, lambda path: write(volume, mask, path))
    middle = sorted(canonical)[len(canonical) // 2]
    return Prediction(volume.array[middle], mask[middle].astype(bool), canonical[middle], file_slices[middle])


def _canonical_prompts(
    layout: FileLayout, prompts: Prompt | Mapping[int, Prompt], where: str
) -> tuple[dict[int, Prompt], dict[int, int]]:
    """Prompts (x, y) on file slices k, in the file's `prompt_axes` -> prompts on canonical slices d with
    (x=w, y=h), and each canonical slice's file index k."""
    _check_slice_axis(layout, where)
    x_axis = layout.prompt_axes[0]
    width, height, depth = (layout.shape[axis] for axis in layout.prompt_axes)
    if isinstance(prompts, Prompt):
        prompts = dict.fromkeys(range(depth), prompts)
    missing = sorted(k for k in prompts if not 0 <= k < depth)
    if missing:
        raise MedSAValueError(
            f"{where}: prompted slices {missing} do not exist; expected slice indices k in 0..{depth - 1}"
            + (" (the file's third voxel axis)." if layout.prompt_axes == (0, 1, 2) else ".")
        )
    canonical, file_slices = {}, {}
    for k, prompt in prompts.items():
        prompt.check(width, height, f"{where}, slice {k}", axes="i, j" if x_axis == 0 else "x, y")
        d = round(layout.to_canonical(_voxel(layout, 0, 0, k))[0])
        # (x, y) on file slice k -> (w, h) on canonical slice d
        canonical[d] = prompt.moved(lambda x, y, k=k: layout.to_canonical(_voxel(layout, x, y, k))[:0:-1])
        file_slices[d] = k
    return canonical, file_slices


def _canonical_range(
    layout: FileLayout, propagate: range | None, file_slices: Mapping[int, int], where: str
) -> range:
    """The canonical slices d of the file slices k in `propagate` (default: all), which must hold every key slice;
    the slice axis is the file's third (checked), so the file range is a canonical range, maybe reversed."""
    depth = layout.shape[layout.prompt_axes[2]]
    propagate = range(depth) if propagate is None else propagate
    if propagate.step != 1 or not 0 <= propagate.start < propagate.stop <= depth:
        raise MedSAValueError(
            f"{where}: cannot propagate through slices {propagate.start}:{propagate.stop}; expected START:STOP "
            f"within 0:{depth} (STOP excluded)."
        )
    outside = sorted(k for k in file_slices.values() if k not in propagate)
    if outside:
        raise MedSAValueError(
            f"{where}: prompted slices {outside} lie outside the slices to propagate through "
            f"({propagate.start}:{propagate.stop}); widen the range or prompt slices inside it."
        )
    ends = [
        round(layout.to_canonical(_voxel(layout, 0, 0, k))[0]) for k in (propagate.start, propagate.stop - 1)
    ]
    return range(min(ends), max(ends) + 1)


def _voxel(layout: FileLayout, x: float, y: float, k: float) -> tuple[float, float, float]:
    """The file voxel index of prompt-frame point (x, y) on file slice k."""
    index = [0.0, 0.0, 0.0]
    x_axis, y_axis, k_axis = layout.prompt_axes
    index[x_axis], index[y_axis], index[k_axis] = x, y, k
    return tuple(index)


def _check_slice_axis(layout: FileLayout, where: str) -> None:
    if layout.slice_axis != layout.prompt_axes[2]:
        axes = "".join(
            nib.orientations.ornt2axcodes(layout.orientation, (("R", "L"), ("A", "P"), ("I", "S")))
        )
        raise MedSAValueError(
            f"{where}: the file's voxel axes run toward {axes}, so its third axis is not the slice "
            "(inferior-superior) axis that prompts and training use; save it with the slice axis third "
            "(e.g. nibabel.as_closest_canonical) and give prompts in that file's voxel indices."
        )


def _check_contrast(array: np.ndarray, where: str) -> None:
    if array.min() == array.max():
        raise MedSAValueError(
            f"{where}: every pixel has the value {array.flat[0]}; expected an image with some contrast to "
            "segment (is it blank, or the wrong file?)."
        )


def _consecutive_runs(indices: list[int], depth: int) -> list[list[int]]:
    """Group sorted slice indices into runs of consecutive slices, at most `depth` long (SD-Trans chunks)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1 and len(runs[-1]) < depth:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _write_nifti(volume: Volume, mask: np.ndarray, path: Path) -> None:
    """The canonical mask in the source NIfTI's voxel order, shape, affine and header, as uint8 0/1."""
    header = volume.layout.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image_type = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_type(volume.layout.to_file_order(mask), header.get_best_affine(), header)
    nib.save(image, str(path))


def _write_nrrd(volume: Volume, mask: np.ndarray, path: Path) -> None:
    """The canonical mask in the source NRRD's voxel order with its space, directions and origin."""
    import nrrd

    encoding = {"type", "encoding", "endian", "data file", "datafile", "line skip", "byte skip"}
    header = {k: v for k, v in volume.layout.header.items() if k not in encoding}
    nrrd.write(str(path), volume.layout.to_file_order(mask), header={**header, "encoding": "gzip"})


def _write_dicom_seg(source: Volume, mask: np.ndarray, path: Path) -> None:
    """A binary DICOM Segmentation of the source image(s), in a new series that references them."""
    import highdicom
    from pydicom.sr.codedict import codes

    from . import __version__

    segment = highdicom.seg.SegmentDescription(
        segment_number=1,
        segment_label="Med-SA",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=highdicom.AlgorithmIdentificationSequence(
            name="peft-medsa Med-SA", version=__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    segmentation = highdicom.seg.Segmentation(
        source_images=source.layout.header,
        pixel_array=mask.astype(bool),
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=highdicom.UID(),
        series_number=int(source.layout.header[0].get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer="peft-medsa",
        manufacturer_model_name="Med-SA",
        software_versions=__version__,
        device_serial_number="none",
        series_description="Med-SA segmentation",
        omit_empty_frames=False,
    )
    segmentation.save_as(str(path))


def write_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    prompt: Prompt,
    output: Path,
    target: np.ndarray | None = None,
    zoom: int = 1,
) -> None:
    """An RGB picture for a person: see `draw_overlay`; `zoom` enlarges small images."""
    rgb = draw_overlay(to_rgb(to_uint8(image, IntensityPolicy("percentile"))), mask, prompt, target)
    height, width = mask.shape
    picture = Image.fromarray(rgb).resize((zoom * width, zoom * height), Image.NEAREST)
    atomic_write(Path(output), lambda path: picture.save(path, format="PNG"))


def draw_overlay(
    rgb: np.ndarray,
    mask: np.ndarray | None,
    prompt: Prompt,
    target: np.ndarray | None = None,
    opacity: float = 0.3,
) -> np.ndarray:
    """A copy of the 8-bit RGB image with the mask tinted (`opacity`) and outlined in red, the `target` (when
    known) outlined in green, clicks and the box in yellow (negative clicks in cyan)."""
    rgb = rgb.copy()
    height, width = rgb.shape[:2]
    if mask is not None:
        rgb[mask] = ((1 - opacity) * rgb[mask] + opacity * np.array([255, 0, 0])).astype(np.uint8)
        rgb[mask & ~binary_erosion(mask)] = [255, 0, 0]
    if target is not None:
        rgb[target & ~binary_erosion(target)] = [0, 255, 0]
    for points, colour in ((prompt.points, [255, 255, 0]), (prompt.negative_points, [0, 255, 255])):
        for x, y in points:
            rgb[max(round(y) - 2, 0) : round(y) + 3, max(round(x) - 2, 0) : round(x) + 3] = colour
    if prompt.box:
        x1, y1, x2, y2 = (round(v) for v in prompt.box)
        x2, y2 = min(x2, width - 1), min(y2, height - 1)
        rgb[[y1, y2], x1 : x2 + 1] = [255, 255, 0]
        rgb[y1 : y2 + 1, [x1, x2]] = [255, 255, 0]
    return rgb


def load_model(base: str, adapter: str | None, video: bool | None = False) -> torch.nn.Module:
    """The SAM, SAM 2 or SAM 3 tracker model at `base`, with the Med-SA adapter at `adapter` when given (an adapter
    trained on a SAM 2 image model loads onto its video model). `video`: see `peft_medsa.pretrained.load_sam`."""
    model = load_sam(base, video)
    return load_adapter(model, adapter) if adapter else model
