"""The committed offline base `models/sam-small-synthetic`: it loads, is small, segments what a box shows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import SamModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pretraining"))

from pretrain_small_sam import IMAGE_SIZE, MASK_SIZE, synthetic_dice  # noqa: E402 (after the path insert)
from synthetic_shapes import SyntheticShapes  # noqa: E402

CHECKPOINT = ROOT / "models" / "sam-small-synthetic"
# Measured: 0.590 on these shapes (seed 20240); a random SAM of the same config scores 0.07-0.08.
MIN_DICE = 0.45


@pytest.fixture(scope="module")
def shapes() -> list[dict]:
    """Fresh shapes from a seed that neither training nor its held-out set uses; exact boxes."""
    data = SyntheticShapes(IMAGE_SIZE, MASK_SIZE, seed=20240)
    return [data.batch(16, 2, prompt="box", jitter=False) for _ in range(3)]


def test_checkpoint_loads_and_is_small():
    model = SamModel.from_pretrained(CHECKPOINT)
    assert (CHECKPOINT / "model.safetensors").stat().st_size < 20 * 2**20
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.config.vision_config.image_size == IMAGE_SIZE
    assert "mask-generation" in (CHECKPOINT / "README.md").read_text()


def test_pretrained_base_segments_box_prompted_shapes(shapes):
    torch.manual_seed(0)
    assert synthetic_dice(SamModel.from_pretrained(CHECKPOINT), shapes) > MIN_DICE


def test_random_base_fails_the_same_check(shapes):
    """The threshold means something: the same architecture with random weights stays far below it."""
    torch.manual_seed(0)
    random_model = SamModel(SamModel.from_pretrained(CHECKPOINT).config)
    assert synthetic_dice(random_model, shapes) < MIN_DICE / 2
