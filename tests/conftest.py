"""Shared fixtures: one tiny random SamConfig for every test (platform-facts: 137,900 parameters)."""

from __future__ import annotations

import pytest
import torch
from transformers import SamConfig, SamModel


def tiny_sam_config(**vision_overrides) -> SamConfig:
    """A SamConfig small enough for CPU tests, with a windowed (0) and a global (1) vision block."""
    vision = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
        "output_channels": 32,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": 16,
        "mlp_dim": 128,
    }
    vision.update(vision_overrides)
    # A wider init than SAM's 0.02 gives masks of order 1 instead of 1e-5, so that equalities in tests mean something.
    init = {"initializer_range": 0.2}
    return SamConfig(
        vision_config={**vision, **init},
        prompt_encoder_config=dict(
            hidden_size=32, image_size=vision["image_size"], patch_size=vision["patch_size"], **init
        ),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, **init
        ),
        **init,
    )


@pytest.fixture
def sam_config() -> SamConfig:
    return tiny_sam_config()


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    """The tiny SAM (seed 0) saved as a checkpoint folder, what `--model_name_or_path` takes."""
    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(path)
    return path


@pytest.fixture
def sam_model(sam_config) -> SamModel:
    torch.manual_seed(0)
    return SamModel(sam_config).eval()


def randomize_adapters(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give every Med-SA adapter weight a random value, so adapters change outputs (they start as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part.startswith("medsa_") for part in name.split(".")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def point_prompts(batch: int, points: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """One positive-click prompt set per image: input_points (batch, 1, points, 2) in (x, y), input_labels."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_points": torch.rand(batch, 1, points, 2, generator=generator) * size,
        "input_labels": torch.ones(batch, 1, points, dtype=torch.long),
    }
