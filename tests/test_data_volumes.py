"""3-D chunks and the collator: the volume-major (B*D) layout, the empty-slice policy, resampling, 2-D mode."""

import numpy as np
import pytest
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from peft_medsa.data import PromptConfig, SamDataCollator, TaskSpec, Volume
from peft_medsa.data.examples import ExampleBuilder
from peft_medsa.data.preprocessing import SamPreprocessor
from peft_medsa.data.volumes import chunk_starts, resample_volume

SPEC = TaskSpec(
    name="vol", format="volumes", path="/x", index="{split}.jsonl", labels={1: "a", 2: "b", 3: "c"}
)


def builder(prompt="1-click", depth=4, **kw):
    return ExampleBuilder(
        SPEC, SamPreprocessor(32, mask_size=16), PromptConfig.resolve(prompt), depth=depth, **kw
    )


def ramp_volume(num_slices=8, offset=0):
    """Slice k has intensity offset + 10 k, and class 1 is a box whose left edge is at column 2 k."""
    image = np.stack([np.full((32, 32), offset + 10 * k, np.uint8) for k in range(num_slices)])
    label = np.zeros_like(image)
    for k in range(num_slices):
        label[k, 10:20, 2 * k : 2 * k + 6] = 1
    return Volume(image, (2.5, 1.0, 1.0)), Volume(label, (2.5, 1.0, 1.0))


def normalised(value):  # what the Sam processor makes of a uint8 gray value, channel 0
    return (value / 255 - IMAGENET_DEFAULT_MEAN[0]) / IMAGENET_DEFAULT_STD[0]


def test_chunks_and_collator_are_volume_major():
    make = builder("box", depth=4)  # SPEC's intensity policy is `rgb`: uint8 slices pass unchanged
    volumes = [list(make.volume_examples(*ramp_volume(offset=o), case_id=f"v{o}")) for o in (0, 100)]
    assert [e["slice_index"] for e in volumes[0]] == [0, 4]
    example = volumes[0][1]  # slices 4..7
    assert example["pixel_values"].shape == (3, 4, 32, 32)
    assert example["input_boxes"].shape == (4, 1, 4) and example["labels"].shape == (4, 1, 16, 16)
    batch = SamDataCollator()([volumes[0][1], volumes[1][0]])  # volume 0 slices 4..7, volume 1 slices 0..3
    assert batch["pixel_values"].shape == (2, 3, 4, 32, 32)
    assert batch["input_boxes"].shape == (2, 4, 1, 4) and batch["labels"].shape == (2, 4, 1, 16, 16)
    expected_values = [40, 50, 60, 70, 100, 110, 120, 130]
    values = batch["pixel_values"][:, 0, :, 0, 0].reshape(-1)  # (B, D) -> B*D, volume-major
    torch.testing.assert_close(
        values, torch.tensor([normalised(v) for v in expected_values], dtype=torch.float32)
    )
    left_edges = batch["input_boxes"].flatten(0, 1)[:, 0, 0]  # row b*D + d holds slice d of volume b
    assert left_edges.tolist() == [2 * k for k in (4, 5, 6, 7, 0, 1, 2, 3)]
    label_left = (
        batch["labels"].flatten(0, 1)[:, 0, 5].float().argmax(dim=-1)
    )  # first labelled column, B*D rows
    assert label_left.tolist() == [4, 5, 6, 7, 0, 1, 2, 3]


def test_empty_slices_inside_a_chunk():
    image, label = ramp_volume()
    label.array[[1, 2]] = 0  # class 1 missing on slices 1 and 2 of the first chunk
    points = next(iter(builder("3-click").volume_examples(image, label, "c")))
    assert points["input_labels"][:, 0].tolist() == [[1] * 3, [-1] * 3, [-1] * 3, [1] * 3]  # not-a-point
    assert points["labels"][1:3].sum() == 0
    boxes = next(iter(builder("box").volume_examples(image, label, "c")))["input_boxes"][:, 0]
    np.testing.assert_array_equal(boxes[1], boxes[0])  # nearest labelled slice, the lower one on a tie
    np.testing.assert_array_equal(boxes[2], boxes[3])


def test_multiclass_chunk_gives_one_example_per_present_class_with_its_own_prompts():
    image, label = ramp_volume()
    label.array[:, 25:30, 25:30] = 3
    examples = list(builder("1-click").volume_examples(image, label, "c"))
    assert [(e["slice_index"], e["class_id"]) for e in examples] == [(0, 1), (0, 3), (4, 1), (4, 3)]
    for example in examples:
        x, _y = example["input_points"][0, 0, 0]
        assert (x >= 24) == (example["class_id"] == 3)  # class 3 sits at columns 25..29 (scaled 32/32)


def test_slice_wise_2d_mode_for_volumes():
    examples = list(builder(depth=None).volume_examples(*ramp_volume(num_slices=3), case_id="c"))
    assert [e["slice_index"] for e in examples] == [0, 1, 2]
    assert examples[0]["pixel_values"].shape == (3, 32, 32) and examples[0]["input_points"].shape == (1, 1, 2)
    assert examples[0]["spacing"].tolist() == [2.5, 1.0, 1.0]


def test_resampling_interpolates_and_keeps_labels_in_the_label_set():
    rng = np.random.default_rng(0)
    label = Volume(rng.integers(0, 4, (6, 20, 20)).astype(np.uint8), (3.0, 1.0, 1.0))
    image = Volume(np.linspace(0, 1000, 6 * 400).reshape(6, 20, 20).astype(np.float32), (3.0, 1.0, 1.0))
    image2, label2 = resample_volume(image, label, (1.5, None, 0.5))
    assert image2.array.shape == label2.array.shape == (12, 20, 40)
    assert image2.spacing == (1.5, 1.0, 0.5)
    assert set(np.unique(label2.array)) <= {0, 1, 2, 3}
    assert len(np.unique(image2.array)) > len(np.unique(image.array))  # interpolated, not repeated or tiled
    assert 0 <= image2.array.min() and image2.array.max() <= 1000


def test_chunk_starts_and_volume_errors():
    assert chunk_starts(10, 4) == [0, 4, 6]
    assert chunk_starts(10, 4, stride=2) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="has 3 slices, fewer than the chunk depth 4"):
        chunk_starts(3, 4)
    image, label = ramp_volume()
    with pytest.raises(ValueError, match=r"image volume \(8, 32, 32\) and label volume \(8, 32, 16\) differ"):
        next(builder().volume_examples(image, Volume(label.array[..., :16], label.spacing), "c"))
    with pytest.raises(ValueError, match="the volume is empty"):
        next(
            builder().volume_examples(
                Volume(np.zeros((0, 4, 4)), (1, 1, 1)), Volume(np.zeros((0, 4, 4)), (1, 1, 1)), "c"
            )
        )


def test_empty_target_policy():
    image, label = ramp_volume(num_slices=4)
    label.array[:] = 0
    assert list(builder().volume_examples(image, label, "c")) == []  # skip
    kept = list(builder(empty_targets="keep").volume_examples(image, label, "c"))
    assert len(kept) == 1 and kept[0]["class_id"] == 0 and kept[0]["labels"].sum() == 0
    assert (kept[0]["input_labels"] == -1).all()
    with pytest.raises(ValueError, match="needs point prompts"):
        builder("box", empty_targets="keep")


def test_collator_metadata_and_errors():
    examples = list(builder(depth=None).volume_examples(*ramp_volume(num_slices=2), case_id="c"))
    batch = SamDataCollator()(examples)
    assert set(batch) == {"pixel_values", "input_points", "input_labels", "labels"}
    with_metadata = SamDataCollator(return_metadata=True)(examples)
    assert with_metadata["metadata"]["case_id"] == ["c", "c"] and with_metadata["metadata"][
        "slice_index"
    ] == [0, 1]
    chunk = next(iter(builder(depth=2).volume_examples(*ramp_volume(num_slices=2), case_id="c")))
    with pytest.raises(ValueError, match=r"\(3, H, W\) for every example or \(3, D, H, W\)"):
        SamDataCollator()([examples[0], chunk])
    with pytest.raises(ValueError, match="empty list"):
        SamDataCollator()([])
