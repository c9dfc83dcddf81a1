"""Volumes as videos: prompt a few key slices and let a SAM 2-family video model propagate through the rest.

This is how MedSAM2 and Medical SAM 2 segment CT/MR volumes: slices are frames, and the model's memory (memory
encoder + memory attention) carries the object from the prompted slices to their neighbours, in both directions.
The model is `Sam2VideoModel` or `Sam3TrackerVideoModel`, bare or with a Med-SA adapter (a `Sam2Model` adapter loads
onto `Sam2VideoModel` of the same checkpoint: the adapter keys are the same).

Frames are prepared as the image path prepares training slices (`peft_medsa.data.preprocessing.preprocessor_for`),
not by `Sam2VideoProcessor`: transformers' SAM 2 processors need torchvision, which this package does not require.
The preparation is the processor's: stretch each slice to the model's square input size (bilinear), scale to
[0, 1], normalise with the family's mean and std; prompts are scaled the same way and the predicted masks are
resized back to the slice size (bilinear on the logits, then thresholded at 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import Sam2VideoInferenceSession, Sam3TrackerVideoInferenceSession

from .data.preprocessing import preprocessor_for, to_rgb
from .errors import MedSAValueError
from .families import SAM2, SAM3_TRACKER, SamFamily, family_of
from .predict import Prompt

# Each family's inference session: the video memory of one `propagate` call.
_SESSIONS = {SAM2: Sam2VideoInferenceSession, SAM3_TRACKER: Sam3TrackerVideoInferenceSession}
_OBJECT_ID = 1  # one object per call: the prompted structure


@torch.no_grad()
def propagate(
    model: nn.Module,
    volume: np.ndarray,
    prompts: Mapping[int, Prompt],
    slices: range | None = None,
) -> np.ndarray:
    """Segment `volume` from prompts on a few key slices, propagated in both directions by the video memory.

    Args:
        model: a `Sam2VideoModel` or `Sam3TrackerVideoModel`, or a `PeftModel` over one.
        volume: (D, H, W) or (D, H, W, 3) uint8 slices, already mapped to 8-bit (e.g. by
            `peft_medsa.data.preprocessing.to_uint8` with the task's intensity policy).
        prompts: key slice index -> its `Prompt` (clicks and/or a box, in the slice's pixel frame: x = column).
        slices: the slices to segment (a step-1 range holding every key slice); default: all D slices.

    Returns:
        (D, H, W) bool masks. Slices outside `slices` stay False and are never shown to the model.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    family = _video_family(base)
    volume = _check_volume(volume)
    depth, height, width = volume.shape[:3]
    slices = range(depth) if slices is None else slices
    _check_prompts(prompts, slices, depth, height, width)

    device, dtype = next(base.parameters()).device, next(base.parameters()).dtype
    preprocessor = preprocessor_for(base.config)
    frames = [to_rgb(image) for image in volume[slices.start : slices.stop]]
    pixel_values = preprocessor(frames).pixel_values
    session = _SESSIONS[family](
        video=torch.from_numpy(pixel_values),  # (n, 3, S, S)
        video_height=height,
        video_width=width,
        inference_device=device,
        inference_state_device=device,
        video_storage_device=device,
        dtype=dtype,
    )
    keys = sorted(k - slices.start for k in prompts)  # frame index = slice index - slices.start
    for frame in keys:  # each key slice becomes a conditioning frame, prompted on its own
        _add_prompt(session, frame, prompts[frame + slices.start], preprocessor.prompt_scale(height, width))
        base(inference_session=session, frame_idx=frame)

    logits: dict[int, torch.Tensor] = {}
    # Forward from the first key slice to the end, then backward from the last one to the start: slices between
    # key slices keep the backward pass, whose memory has seen the frames on both sides.
    for reverse, start in ((False, keys[0]), (True, keys[-1])):
        for output in base.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
            logits[output.frame_idx] = output.pred_masks[0, 0]

    masks = np.zeros((depth, height, width), dtype=bool)
    for frame, frame_logits in logits.items():
        resized = F.interpolate(frame_logits[None, None].float(), (height, width), mode="bilinear")
        masks[slices.start + frame] = (resized[0, 0] > 0).cpu().numpy()
    return masks


def _video_family(model: nn.Module) -> SamFamily:
    family = family_of(model)
    if family not in _SESSIONS or not hasattr(model, "propagate_in_video_iterator"):
        raise MedSAValueError(
            f"propagate needs a SAM 2-family video model (Sam2VideoModel, Sam3TrackerVideoModel); got "
            f"{type(model).__name__}. Load the checkpoint with Sam2VideoModel.from_pretrained(...): an adapter "
            "trained on Sam2Model loads onto it unchanged."
        )
    return family


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.dtype != np.uint8 or not (volume.ndim == 3 or (volume.ndim == 4 and volume.shape[3] == 3)):
        raise MedSAValueError(
            f"volume must be (slices, height, width) or (slices, height, width, 3) uint8; got {volume.dtype} of "
            f"shape {volume.shape}. Map intensities to 8 bits first (peft_medsa.data.preprocessing.to_uint8)."
        )
    return volume


def _check_prompts(prompts: Mapping[int, Prompt], slices: range, depth: int, height: int, width: int) -> None:
    if slices.step != 1 or not 0 <= slices.start < slices.stop <= depth:
        raise MedSAValueError(f"slices must be a step-1 range within 0..{depth}, got {slices}.")
    if not prompts:
        raise MedSAValueError("prompts is empty: give a Prompt for at least one key slice.")
    outside = sorted(k for k in prompts if k not in slices)
    if outside:
        raise MedSAValueError(
            f"key slices {outside} lie outside the slices to segment ({slices.start}..{slices.stop - 1})."
        )
    for index, prompt in prompts.items():
        if not (prompt.points or prompt.negative_points or prompt.box):
            raise MedSAValueError(f"slice {index}: the prompt has no click and no box.")
        prompt.check(width, height, f"slice {index}")


def _add_prompt(session, frame: int, prompt: Prompt, scale: tuple[float, float]) -> None:
    """Clicks (label 1 / 0) and a box (its corners, labels 2 and 3, first) in the model's input frame."""
    points = [*((p, 1) for p in prompt.points), *((p, 0) for p in prompt.negative_points)]
    if prompt.box is not None:
        points = [(prompt.box[:2], 2), (prompt.box[2:], 3), *points]
    coords = torch.tensor([[x * scale[0], y * scale[1]] for (x, y), _ in points], dtype=torch.float32)
    labels = torch.tensor([label for _, label in points], dtype=torch.int32)
    object_index = session.obj_id_to_idx(_OBJECT_ID)
    session.add_point_inputs(
        object_index, frame, {"point_coords": coords[None, None], "point_labels": labels[None, None]}
    )
    session.remove_mask_inputs(object_index, frame)
    session.obj_with_new_inputs = [_OBJECT_ID]
