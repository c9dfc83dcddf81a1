"""Volumes as videos (peft_medsa.video.propagate) on tiny random SAM 2-family video models."""

import numpy as np
import pytest
import torch
from conftest import randomize_adapters, tiny_sam2_config, tiny_sam3_tracker_config
from peft import get_peft_model
from transformers import (
    Sam2Model,
    Sam2VideoConfig,
    Sam2VideoModel,
    Sam3TrackerVideoConfig,
    Sam3TrackerVideoModel,
)

from peft_medsa import MedSAConfig, MedSAValueError
from peft_medsa.predict import Prompt
from peft_medsa.video import propagate

DEPTH, HEIGHT, WIDTH = 7, 40, 50
BOX = Prompt(box=(15.0, 10.0, 35.0, 30.0))


@pytest.fixture(scope="module")
def sam2_video():
    torch.manual_seed(0)
    return Sam2VideoModel(tiny_sam2_config(Sam2VideoConfig)).eval()


@pytest.fixture(scope="module")
def volume():
    """A bright box in every slice over noise, as uint8 (D, H, W)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 40, (DEPTH, HEIGHT, WIDTH), dtype=np.uint8)
    data[:, 10:30, 15:35] += 180
    return data


def frames_seen(model, monkeypatch) -> list[int]:
    """The frame indices the video model runs on, in order."""
    seen = []
    forward = type(model).forward

    def counted(self, inference_session, frame_idx=None, **kwargs):
        seen.append(frame_idx)
        return forward(self, inference_session, frame_idx=frame_idx, **kwargs)

    monkeypatch.setattr(type(model), "forward", counted)
    return seen


def test_a_prompt_on_one_slice_segments_the_others_both_ways(sam2_video, volume, monkeypatch):
    seen = frames_seen(sam2_video, monkeypatch)
    masks = propagate(sam2_video, volume, {3: BOX}, slices=range(1, 6))
    assert masks.shape == volume.shape and masks.dtype == bool  # the input's geometry
    assert all(masks[k].any() for k in range(1, 6))  # every slice in range gets a mask
    assert not masks[0].any() and not masks[6].any()  # slices outside the range stay empty...
    # ...and are never shown to the model (frame i is slice i + 1): the key slice, forward to the end, backward.
    assert seen == [2, 2, 3, 4, 2, 1, 0]
    assert not np.array_equal(masks[1], masks[5])  # each slice is segmented on its own image


def test_several_key_slices_and_the_whole_volume_by_default(sam2_video, volume, monkeypatch):
    seen = frames_seen(sam2_video, monkeypatch)
    masks = propagate(sam2_video, volume, {1: BOX, 5: Prompt(points=[(25.0, 20.0)])})
    assert masks.shape == volume.shape and masks.any()
    # Both key slices are conditioning frames first; then forward from the first, backward from the last.
    assert seen == [1, 5, 1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0]


def test_the_adapter_is_used(volume):
    torch.manual_seed(0)
    model = get_peft_model(Sam2VideoModel(tiny_sam2_config(Sam2VideoConfig)).eval(), MedSAConfig())
    segment = {"volume": volume, "prompts": {3: BOX}, "slices": range(2, 5)}
    with model.disable_adapter():
        base_masks = propagate(model, **segment)
    assert np.array_equal(propagate(model, **segment), base_masks)  # identity at step 0
    randomize_adapters(model, seed=1, std=0.3)
    assert not np.array_equal(propagate(model, **segment), base_masks)


def test_sam3_tracker_video_model(volume):
    torch.manual_seed(0)
    model = Sam3TrackerVideoModel(tiny_sam3_tracker_config(Sam3TrackerVideoConfig)).eval()
    masks = propagate(model, volume, {2: BOX}, slices=range(0, 4))
    assert masks.shape == volume.shape and all(masks[k].any() for k in range(4)) and not masks[4:].any()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompts": {}}, r"prompts is empty"),
        (
            {"prompts": {6: BOX}, "slices": range(1, 5)},
            r"key slices \[6\] lie outside the slices to segment \(1\.\.4\)",
        ),
        ({"prompts": {1: BOX}, "slices": range(0, 9)}, r"slices must be a step-1 range within 0\.\.7"),
        ({"prompts": {1: Prompt()}}, r"slice 1: the prompt has no click and no box"),
        (
            {"prompts": {1: Prompt(points=[(60.0, 5.0)])}},
            r"slice 1: prompt coordinates \[\(60\.0, 5\.0\)\] lie outside",
        ),
        (
            {"volume": np.zeros((3, 8, 8), np.float32), "prompts": {1: BOX}},
            r"volume must be .* uint8; got float32",
        ),
    ],
)
def test_clear_errors(sam2_video, volume, arguments, message):
    with pytest.raises(MedSAValueError, match=message):
        propagate(sam2_video, **{"volume": volume, **arguments})


def test_an_image_model_is_refused(volume):
    with pytest.raises(MedSAValueError, match=r"propagate needs a SAM 2-family video model.*got Sam2Model"):
        propagate(Sam2Model(tiny_sam2_config()), volume, {1: BOX})
