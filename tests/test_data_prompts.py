"""Prompt simulation: clicks in (x, y) inside/outside the processed target, BBox tau, jitter, seeds, next click."""

import numpy as np
import pytest
from PIL import Image

from peft_medsa.data import PromptConfig, TaskSpec, box_iou, example_seed, next_click, tau_box, tight_box
from peft_medsa.data.examples import ExampleBuilder
from peft_medsa.data.preprocessing import SamPreprocessor
from peft_medsa.data.prompts import sample_box

SPEC = TaskSpec(name="t", format="parquet", path="/x", labels={1: "a", 2: "b", 3: "c"})


def builder(prompt, seed=0, image_size=64):
    return ExampleBuilder(
        SPEC, SamPreprocessor(image_size, mask_size=image_size // 2), PromptConfig.resolve(prompt), seed
    )


def wide_image_and_mask():
    """A non-square (30 x 90) image; class 1 is a thin wide bar, class 2 an L shape: a (row, col) swap fails."""
    image = np.random.default_rng(1).integers(0, 256, (30, 90), dtype=np.uint8)
    mask = np.zeros((30, 90), np.uint8)
    mask[3:7, 10:80] = 1
    mask[12:28, 5:12] = 2
    mask[22:28, 5:40] = 2
    return image, mask


@pytest.mark.parametrize("seed", range(10))
def test_clicks_are_xy_inside_their_target_and_negatives_outside(seed):
    image, mask = wide_image_and_mask()
    examples = builder(PromptConfig("points", num_positive=3, num_negative=3), seed).image_examples(
        image, mask, "c"
    )
    h, w = examples[0]["reshaped_input_size"]
    assert (h, w) == (21, 64)
    resized = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))  # the processed-frame target
    assert [e["class_id"] for e in examples] == [1, 2]  # one target per present class, class 3 absent
    for example in examples:
        points, labels = example["input_points"][0], example["input_labels"][0]  # (N, 2), (N,)
        assert labels.tolist() == [1, 1, 1, 0, 0, 0]
        x, y = points[:, 0].astype(int), points[:, 1].astype(int)
        assert np.all((x < w) & (y < h))
        inside = resized[y, x] == example["class_id"]
        assert inside[:3].all() and not inside[3:].any()


@pytest.mark.parametrize("tau", [0.5, 0.75, 0.9])
def test_bbox_tau_has_iou_tau_with_the_tight_box(tau):
    rng = np.random.default_rng(0)
    frame = (60, 80)
    for _ in range(200):  # includes boxes at the border and filling the frame (the shrinking fallback)
        x0, y0 = rng.integers(0, 79), rng.integers(0, 59)
        box = np.array([x0, y0, rng.integers(x0 + 1, 80), rng.integers(y0 + 1, 60)], np.float32)
        moved = tau_box(box, tau, rng, frame)
        assert box_iou(moved, box) == pytest.approx(tau, abs=1e-4)  # the stated tolerance
        assert moved[0] >= 0 and moved[1] >= 0 and moved[2] <= 79 and moved[3] <= 59
    full = np.array([0, 0, 79, 59], np.float32)
    assert box_iou(tau_box(full, tau, rng, frame), full) == pytest.approx(tau, abs=1e-4)


def test_bbox_tau_through_the_pipeline_uses_the_processed_target():
    image, mask = wide_image_and_mask()
    for example in builder("bbox-0.5").image_examples(image, mask, "c"):
        h, w = example["reshaped_input_size"]
        target = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)) == example["class_id"]
        assert box_iou(example["input_boxes"][0], tight_box(target)) == pytest.approx(0.5, abs=1e-4)


def test_jitter_keeps_boxes_inside_the_image():
    mask = np.zeros((40, 50), bool)
    mask[0:10, 42:50] = True  # touching the top-right corner
    config = PromptConfig("box", box_tau=0.75, box_jitter=15)
    boxes = np.stack([sample_box(mask, config, np.random.default_rng(s)) for s in range(300)])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 49 and boxes[:, [1, 3]].max() <= 39
    assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3])
    assert np.ptp(boxes[:, 0]) > 5  # the jitter does move the boxes


def test_prompts_depend_on_seed_case_slice_class_not_on_order():
    image, mask = wide_image_and_mask()
    make = builder("3-click", seed=7)
    a = make.image_examples(image, mask, "A") + make.image_examples(image, mask, "B")
    b = make.image_examples(image, mask, "B") + make.image_examples(image, mask, "A")

    def points(examples):
        return {(e["case_id"], e["class_id"]): e["input_points"].tolist() for e in examples}

    assert points(a) == points(b)
    assert points(a)[("A", 1)] != points(a)[("B", 1)]
    other = builder("3-click", seed=8).image_examples(image, mask, "A")
    assert points(other)[("A", 1)] != points(a)[("A", 1)]
    assert len({example_seed(0, "c", s, k) for s in range(20) for k in range(5)}) == 100


def test_next_click_goes_deep_into_the_largest_error():
    target = np.zeros((2, 40, 40), bool)
    prediction = np.zeros((2, 40, 40), bool)
    target[0, 5:25, 5:25] = True  # case 0: the bottom-right part of the target is missed
    prediction[0, 5:25, 5:15] = True
    prediction[1, 10:31, 20:31] = True  # case 1: a pure false positive
    points, labels = next_click(prediction, target)
    assert labels.tolist() == [1, 0]
    assert 5 + 10 <= points[0, 0] <= 24 and 5 <= points[0, 1] <= 24  # x in the missed columns
    x, y = points[0].astype(int)
    assert min(x - 15 + 1, 24 - x + 1, y - 5 + 1, 24 - y + 1) == 5  # as deep as the 10 x 20 region allows
    assert points[1, 0] == 25 and 15 <= points[1, 1] <= 25  # the 11-wide region's middle column, 6 px deep
    _, perfect = next_click(target[0], target[0])
    assert perfect == -1  # nothing left to correct: not-a-point
    scaled, _ = next_click(prediction[1], target[1], scale=4.0)  # masks at 1/4 of the input frame
    assert scaled.tolist() == ((points[1] + 0.5) * 4 - 0.5).tolist()  # pixel centres stay aligned


def test_prompt_config_validation():
    with pytest.raises(ValueError, match="Unknown prompt preset 'bbox'"):
        PromptConfig.resolve("bbox")
    with pytest.raises(ValueError, match="box_tau is an IoU"):
        PromptConfig("box", box_tau=1.5)
    with pytest.raises(ValueError, match="num_positive \\+ num_negative >= 1"):
        PromptConfig("points", num_positive=0)


def test_sam_box_noise_is_bounded_and_has_the_specified_spread():
    """SAM's training noise: per coordinate std 10 % of the box side, clipped to 20 px of a 1024-px input."""
    mask = np.zeros((1024, 1024), bool)
    mask[100:400, 200:260] = True  # 60 px wide, 300 px tall: std 6 px on x; 30 px, clipped to 20, on y
    config = PromptConfig("box", box_noise=0.1)
    rng = np.random.default_rng(0)
    offsets = np.stack([sample_box(mask, config, rng) - tight_box(mask) for _ in range(4000)])
    assert np.abs(offsets).max() <= 20.0 + 1e-4
    assert offsets[:, [0, 2]].std() == pytest.approx(6.0, rel=0.05)  # the cap is rarely reached on x
    assert np.abs(offsets[:, [1, 3]]).max() == pytest.approx(20.0)  # ...and often on y
    small = np.zeros((128, 128), bool)  # a 128-px model input: the cap scales to 20 * 128 / 1024 = 2.5 px
    small[10:100, 10:100] = True
    offsets = np.stack([sample_box(small, config, rng) - tight_box(small) for _ in range(200)])
    assert np.abs(offsets).max() == pytest.approx(2.5)


def test_only_training_boxes_are_noised():
    image, mask = wide_image_and_mask()
    fixed = builder("box").image_examples(image, mask, "c")
    noisy = builder(PromptConfig("box", box_noise=0.1)).image_examples(image, mask, "c")
    again = builder(PromptConfig("box", box_noise=0.1)).image_examples(image, mask, "c")
    for f, n, a in zip(fixed, noisy, again, strict=True):
        assert np.array_equal(f["input_boxes"], np.round(f["input_boxes"]))  # evaluation: the tight box
        assert not np.array_equal(f["input_boxes"], n["input_boxes"])
        assert np.array_equal(n["input_boxes"], a["input_boxes"])  # seeded: reproducible


@pytest.mark.parametrize("seed", range(5))
def test_sampled_corrective_clicks_fall_inside_the_previous_error_region(seed):
    rng = np.random.default_rng(seed)
    target = rng.random((4, 32, 32)) > 0.6
    prediction = rng.random((4, 32, 32)) > 0.6
    prediction[3] = target[3]  # nothing left to correct
    points, labels = next_click(prediction, target, rng=np.random.default_rng(seed))
    for k in range(3):
        col, row = points[k].astype(int)
        assert prediction[k, row, col] != target[k, row, col]  # an error pixel...
        assert labels[k] == int(target[k, row, col])  # ...positive where missed, negative where extra
    assert labels[3] == -1
    again, _ = next_click(prediction, target, rng=np.random.default_rng(seed))
    assert np.array_equal(points, again)
