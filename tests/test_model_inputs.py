"""Bad model inputs end in a MedSAValueError saying what was expected, never in NaN masks or a raw RuntimeError."""

import pytest
import torch
from conftest import point_prompts
from peft import get_peft_model

from peft_medsa import MedSAConfig, MedSAValueError

NAN = float("nan")


def images(batch=2, size=64):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def with_value(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


@pytest.fixture
def model(sam_model):
    return get_peft_model(sam_model, MedSAConfig(depth_attention=True)).eval()


def call(model, pixel_values=None, **prompts):
    with torch.no_grad():
        return model(pixel_values=pixel_values, multimask_output=False, **prompts)


CASES = {
    "NaN pixel": (
        lambda: {"pixel_values": with_value(images(), (0, 1, 5, 5), NAN), **point_prompts(2)},
        r"pixel_values hold 1 NaN or infinite value\(s\)",
    ),
    "inf pixels in a volume": (
        lambda: {
            "pixel_values": with_value(images(2).unsqueeze(0).transpose(1, 2), (0, 0, 1), float("inf")),
            **point_prompts(2),
        },
        r"pixel_values hold 4096 NaN or infinite value\(s\)",
    ),
    "empty batch": (
        lambda: {"pixel_values": images(0), **point_prompts(0)},
        r"pixel_values of shape \(0, 3, 64, 64\) hold no image",
    ),
    "volume without slices": (
        lambda: {"pixel_values": torch.zeros(1, 3, 0, 64, 64), **point_prompts(0)},
        r"pixel_values of shape \(1, 3, 0, 64, 64\) hold no image",
    ),
    "NaN click": (
        lambda: {
            "pixel_values": images(),
            **{
                **point_prompts(2),
                "input_points": with_value(point_prompts(2)["input_points"], (1, 0, 0, 0), NAN),
            },
        },
        "input_points holds NaN or infinite values",
    ),
    "infinite box": (
        lambda: {"pixel_values": images(), "input_boxes": torch.tensor([[[0, 0, float("inf"), 9.0]]] * 2)},
        "input_boxes holds NaN or infinite values",
    ),
    "fewer labels than points": (
        lambda: {
            "pixel_values": images(),
            "input_points": torch.rand(2, 1, 3, 2) * 64,
            "input_labels": torch.ones(2, 1, 2, dtype=torch.long),
        },
        r"input_points \(2, 1, 3, 2\) and input_labels \(2, 1, 2\) disagree: give one label per point",
    ),
    "points without labels": (
        lambda: {"pixel_values": images(), "input_points": torch.rand(2, 1, 3, 2) * 64},
        "input_points need input_labels",
    ),
    "prompt batch differs": (
        lambda: {"pixel_values": images(), **point_prompts(3)},
        "input_points has batch 3, but a batch of 2 image",
    ),
    "points of wrong rank": (
        lambda: {
            "pixel_values": images(),
            "input_points": torch.rand(2, 3, 2),
            "input_labels": torch.ones(2, 1, 3),
        },
        r"input_points must be a 4-D tensor",
    ),
    "mask prompt of wrong size": (
        lambda: {"pixel_values": images(), **point_prompts(2), "input_masks": torch.zeros(2, 1, 64, 64)},
        r"input_masks must have shape \(batch, 1, 32, 32\) for this SAM .*got \(2, 1, 64, 64\)",
    ),
    "embeddings of wrong width": (
        lambda: {"image_embeddings": torch.zeros(2, 16, 8, 8), **point_prompts(2)},
        r"image_embeddings must have shape \(batch >= 1, 32, 8, 8\) for this SAM, got \(2, 16, 8, 8\)",
    ),
    "embeddings of wrong rank": (
        lambda: {"image_embeddings": torch.zeros(32, 8, 8), **point_prompts(2)},
        r"image_embeddings must have shape \(batch >= 1, 32, 8, 8\) for this SAM, got \(32, 8, 8\)",
    ),
    "NaN embeddings": (
        lambda: {"image_embeddings": torch.full((2, 32, 8, 8), NAN), **point_prompts(2)},
        "image_embeddings hold NaN or infinite values",
    ),
    "wrong image size": (
        lambda: {"pixel_values": images(size=48), **point_prompts(2)},
        r"do not fit this SAM: it takes 3 channels at 64x64",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_inputs_are_refused_with_what_was_expected(model, case):
    make, message = CASES[case]
    inputs = make()
    with pytest.raises(MedSAValueError, match=message):
        call(model, **inputs)


def test_good_inputs_still_run(model):
    outputs = call(model, images(), **point_prompts(2))
    assert outputs.pred_masks.shape == (2, 1, 1, 32, 32) and torch.isfinite(outputs.pred_masks).all()


def test_deleting_the_only_adapter_is_refused_and_the_model_still_runs(model):
    with pytest.raises(MedSAValueError, match=r"'default' is the only adapter .* Use `model.unload\(\)`"):
        model.delete_adapter("default")
    assert torch.isfinite(call(model, images(), **point_prompts(2)).pred_masks).all()


def test_deleting_one_of_two_adapters_still_works(model):
    model.add_adapter("other", MedSAConfig())
    model.delete_adapter("default")
    assert list(model.peft_config) == ["other"]
