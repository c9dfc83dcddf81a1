"""Shared fixtures: one tiny random SamConfig for every test (platform-facts: 137,900 parameters)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
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


def masks_in_fresh_process(
    model_class: str, base: Path, adapter: Path, inputs: dict[str, torch.Tensor], folder: Path
) -> torch.Tensor:
    """`pred_masks` of `PeftModel.from_pretrained(<model_class>.from_pretrained(base), adapter)` on `inputs`, computed
    in a new Python process: loading must work from the saved files alone."""
    save_file({k: v.contiguous() for k, v in inputs.items()}, folder / "inputs.safetensors")
    # The child uses this process's thread count: another test (e.g. a benchmark) may have changed it here, and a
    # different count changes the summation order of CPU kernels, hence the last bit of the masks.
    script = textwrap.dedent(f"""
        import torch, peft_medsa
        torch.set_num_threads({torch.get_num_threads()})
        from peft import PeftModel
        from safetensors.torch import load_file, save_file
        from transformers import {model_class} as Model
        model = PeftModel.from_pretrained(Model.from_pretrained({str(base)!r}), {str(adapter)!r}).eval()
        with torch.no_grad():
            masks = model(**load_file({str(folder / "inputs.safetensors")!r})).pred_masks
        save_file({{"masks": masks.contiguous()}}, {str(folder / "masks.safetensors")!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return load_file(folder / "masks.safetensors")["masks"]


def point_prompts(batch: int, points: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """One positive-click prompt set per image: input_points (batch, 1, points, 2) in (x, y), input_labels."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_points": torch.rand(batch, 1, points, 2, generator=generator) * size,
        "input_labels": torch.ones(batch, 1, points, dtype=torch.long),
    }


# The SAM 2 family (issue 13) --------------------------------------------------------------------------------------
# Hiera: 4 stages of widths 16/32/64/128 (blocks 1, 3 and 5 change width and pool queries), windowed and global
# blocks. SAM 3 tracker: a 2-block ViT with rotary positions, one windowed and one global block.
def tiny_sam2_config(config_class=None):
    """A Sam2Config (or Sam2VideoConfig) for 64 px images, with SAM's wide init so outputs are of order 1."""
    from transformers import Sam2Config

    init = {"initializer_range": 0.2}
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 16,
        "embed_dim_per_stage": [16, 32, 64, 128],
        "num_attention_heads_per_stage": [1, 1, 2, 2],
        "blocks_per_stage": [1, 2, 2, 1],
        "global_attention_blocks": [4],
        "window_size_per_stage": [4, 4, 4, 2],
        "window_positional_embedding_background_size": [4, 4],
        "image_size": [64, 64],
        **init,
    }
    vision = {
        "backbone_config": backbone,
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
        "fpn_hidden_size": 128,
        **init,
    }
    return _build(config_class or Sam2Config, vision, 64, 16)


def tiny_sam3_tracker_config(config_class=None):
    """A Sam3TrackerConfig (or Sam3TrackerVideoConfig) for 56 px images (4x4 patches of 14 px)."""
    from transformers import Sam3TrackerConfig

    init = {"initializer_range": 0.2}
    backbone = {
        "model_type": "sam3_vit_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "global_attn_indexes": [1],
        "image_size": 56,
        "patch_size": 14,
        "pretrain_image_size": 28,
        "window_size": 2,
        **init,
    }
    vision = {
        "backbone_config": backbone,
        "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
        "fpn_hidden_size": 128,
        **init,
    }
    return _build(config_class or Sam3TrackerConfig, vision, 56, 14)


def _build(config_class, vision: dict, image_size: int, patch_size: int):
    """The config with a small prompt encoder and mask decoder; video configs also get a small memory and the
    top-level image size (their own default, 1024 or 1008, would override the vision and prompt encoders' sizes).
    The decoder is 128 wide: transformers fixes the memory width at 64 and only handles object pointers wider
    than the memory (as in every released checkpoint, 256 vs 64)."""
    init = {"initializer_range": 0.2}
    video = {}
    if "Video" in config_class.__name__:
        feature_size = image_size // patch_size  # the image embedding's side, as the prompt encoder sees it
        video = {
            "image_size": image_size,
            "memory_attention_hidden_size": 128,
            "memory_attention_num_layers": 1,
            "memory_attention_feed_forward_hidden_size": 64,
            "memory_attention_rope_feat_sizes": [feature_size, feature_size],
            "memory_encoder_hidden_size": 128,
            "mask_downsampler_embed_dim": 128,
            "memory_fuser_embed_dim": 128,
            "memory_fuser_intermediate_dim": 64,
        }
    return config_class(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=128, image_size=image_size, patch_size=patch_size, **init),
        mask_decoder_config=dict(
            hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, **init
        ),
        **video,
        **init,
    )
