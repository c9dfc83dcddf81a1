"""Shared fixtures: one tiny random SamConfig for every test (platform-facts: 137,900 parameters)."""

from __future__ import annotations

import pytest
import torch
from transformers import SamConfig, SamModel


def tiny_sam_config(**vision_overrides) -> SamConfig:
    """A SamConfig small enough for CPU tests, with a windowed (0) and a global (1) vision block."""
    vision = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        output_channels=32,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=16,
        mlp_dim=128,
    )
    vision.update(vision_overrides)
    return SamConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=vision["image_size"], patch_size=vision["patch_size"]),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


@pytest.fixture
def sam_config() -> SamConfig:
    return tiny_sam_config()


@pytest.fixture
def sam_model(sam_config) -> SamModel:
    torch.manual_seed(0)
    return SamModel(sam_config).eval()
