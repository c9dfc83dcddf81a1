"""Med-SA on the SAM 2 family (tiny random Sam2Model / Sam3TrackerModel and their video twins): issue 13."""

import copy

import pytest
import torch
from conftest import masks_in_fresh_process, randomize_adapters, tiny_sam2_config, tiny_sam3_tracker_config
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import (
    Sam2Model,
    Sam2VideoConfig,
    Sam2VideoModel,
    Sam3TrackerModel,
    Sam3TrackerVideoConfig,
    Sam3TrackerVideoModel,
)

from peft_medsa import PRESETS, MedSAConfig, MedSAValueError
from peft_medsa.families import SAM2, family_of
from peft_medsa.layer import MedSAAttentionLayer, MedSADecoderLayer, MedSAMLPLayer

# name -> (image model class, video model class, config builder, image size)
FAMILIES = {
    "sam2": (Sam2Model, Sam2VideoModel, tiny_sam2_config, Sam2VideoConfig, 64),
    "sam3_tracker": (
        Sam3TrackerModel,
        Sam3TrackerVideoModel,
        tiny_sam3_tracker_config,
        Sam3TrackerVideoConfig,
        56,
    ),
}


def base_model(family: str, video: bool = False, seed: int = 0) -> nn.Module:
    image_class, video_class, config, video_config, _ = FAMILIES[family]
    torch.manual_seed(seed)
    if video:
        return video_class(config(video_config)).eval()
    return image_class(config()).eval()


def inputs(family: str, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    size = FAMILIES[family][-1]
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "input_points": torch.rand(batch, 1, 2, 2, generator=generator) * size,
        "input_labels": torch.ones(batch, 1, 2, dtype=torch.long),
    }


def masks(model: nn.Module, **model_inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs).pred_masks


def adapted(family: str, preset: str = "paper", seed: int | None = None, **overrides) -> PeftModel:
    model = get_peft_model(base_model(family), MedSAConfig.from_preset(preset, **overrides)).eval()
    if seed is not None:
        randomize_adapters(model, seed)
    return model


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identity_at_start_and_adapters_change_outputs(family, preset):
    base, data = base_model(family), inputs(family)
    expected = masks(base, **data)
    assert expected.abs().mean() > 0.1  # the tiny config's wide init: not a vacuous equality
    model = adapted(family, preset)
    assert torch.equal(masks(model, **data), expected)
    randomize_adapters(model, seed=3)
    assert (masks(model, **data) - expected).abs().max() > 0.1
    with model.disable_adapter():
        assert torch.equal(masks(model, **data), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_only_adapters_train_and_every_block_is_adapted(family):
    model = adapted(family)
    blocks = SAM2.blocks(model.base_model.model) if family == "sam2" else None
    blocks = blocks or model.base_model.model.vision_encoder.backbone.layers
    attention_name = "attn" if family == "sam2" else "attention"
    assert all(isinstance(getattr(block, attention_name), MedSAAttentionLayer) for block in blocks)
    assert all(isinstance(block.mlp, MedSAMLPLayer) for block in blocks)
    decoder_blocks = model.base_model.model.mask_decoder.transformer.layers
    assert all(isinstance(block, MedSADecoderLayer) for block in decoder_blocks)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".medsa_" in name for name in trainable)
    # Encoder memory attention of the video twin is not a target: only the image encoder and the mask decoder.
    video = get_peft_model(base_model(family, video=True), MedSAConfig())
    adapted_names = {
        name for name, m in video.named_modules() if isinstance(m, MedSAAttentionLayer | MedSAMLPLayer)
    }
    assert adapted_names and all(".vision_encoder.backbone." in name for name in adapted_names)


def test_adapters_follow_each_hiera_blocks_width():
    model = adapted("sam2")
    blocks = model.base_model.model.vision_encoder.backbone.blocks
    stage_changes = [i for i, block in enumerate(blocks) if block.dim != block.dim_out]
    assert stage_changes == [1, 3, 5]  # the tiny config covers every Hiera stage transition
    for block in blocks:
        space, mlp = block.attn, block.mlp
        # Space adapter on the attention output (dim_out, after query pooling); MLP adapter on the MLP's input.
        assert (
            space.medsa_space_down["default"].in_features
            == space.base_layer.proj.out_features
            == block.dim_out
        )
        assert space.medsa_space_up["default"].out_features == block.dim_out
        assert (
            mlp.medsa_mlp_down["default"].in_features == mlp.base_layer.proj_in.in_features == block.dim_out
        )
        assert space.medsa_space_down["default"].out_features == round(0.25 * block.dim_out)
    assert blocks[1].dim == 16 and blocks[1].attn.medsa_space_down["default"].in_features == 32


def test_hyper_prompt_sees_exactly_the_prompt_tokens(monkeypatch):
    """SAM 2's decoder queries start with an object-score token, the IoU token and 4 mask tokens."""
    model = adapted("sam2", seed=1)
    assert {layer.num_output_tokens for layer in model.base_model.model.mask_decoder.transformer.layers} == {
        6
    }
    seen = []
    original = MedSADecoderLayer.hyper_prompt_adapter

    def spy(self, adapter_name, x, prompt_tokens):
        seen.append((x.shape[2], prompt_tokens.shape[2]))
        return original(self, adapter_name, x, prompt_tokens)

    monkeypatch.setattr(MedSADecoderLayer, "hyper_prompt_adapter", spy)
    masks(model, **inputs("sam2"))
    # 2 clicks plus the padding point SAM 2 adds without a box: 3 prompt tokens after the 6 output tokens.
    assert seen == [(9, 3), (9, 3)]


def test_layers_to_transform_by_block_index():
    model = adapted("sam2", layers_to_transform=[1, 4])
    blocks = model.base_model.model.vision_encoder.backbone.blocks
    wrapped = [i for i, block in enumerate(blocks) if isinstance(block.attn, MedSAAttentionLayer)]
    assert wrapped == [1, 4] and [i for i, b in enumerate(blocks) if isinstance(b.mlp, MedSAMLPLayer)] == [
        1,
        4,
    ]
    with pytest.raises(
        ValueError, match=r"names blocks \[6\], but this image encoder has 6 blocks \(0\.\.5\)"
    ):
        adapted("sam2", layers_to_transform=[6])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_depth_attention_is_refused_with_the_video_path_named(family):
    with pytest.raises(
        MedSAValueError, match=r"depth_attention=True \(SD-Trans\) needs SAM's ViT blocks.*video"
    ):
        adapted(family, depth_attention=True)


def test_models_outside_the_families_are_refused():
    class EdgeTamModel(nn.Module):  # the layout of transformers' EdgeTAM: a timm backbone, SAM 2's decoder
        def __init__(self):
            super().__init__()
            self.vision_encoder = nn.Module()
            self.vision_encoder.backbone = nn.Sequential(nn.Conv2d(3, 8, 3))
            self.mask_decoder = nn.Module()
            self.mask_decoder.transformer = nn.Module()

    with pytest.raises(
        TypeError, match=r"Med-SA adapts Segment Anything models.*got EdgeTamModel.*convolutional"
    ):
        get_peft_model(EdgeTamModel(), MedSAConfig())
    with pytest.raises(TypeError, match=r"SAM 2: Sam2Model, Sam2VideoModel.*got Linear"):
        family_of(nn.Linear(2, 2))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_named_adapters_and_unload(family):
    base, data = base_model(family), inputs(family)
    expected = masks(base, **data)
    model = get_peft_model(copy.deepcopy(base), MedSAConfig()).eval()
    model.add_adapter("second", MedSAConfig.from_preset("encoder-only"))
    randomize_adapters(model, seed=5)
    first = masks(model, **data)
    model.set_adapter("second")
    second = masks(model, **data)
    assert (first - second).abs().max() > 1e-3 and (second - expected).abs().max() > 1e-3
    assert all(".second." in n for n, p in model.named_parameters() if p.requires_grad)
    model.set_adapter("default")
    assert torch.equal(masks(model, **data), first)
    model.delete_adapter("second")
    assert not any(".second." in n for n, _ in model.named_parameters())
    unloaded = model.unload()
    assert type(unloaded) is type(base) and not any("medsa" in n for n, _ in unloaded.named_parameters())
    assert torch.equal(masks(unloaded, **data), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradient_checkpointing_and_bf16_autocast(family, monkeypatch):
    data = inputs(family)
    mlp_calls = []
    mlp_forward = MedSAMLPLayer.forward
    monkeypatch.setattr(MedSAMLPLayer, "forward", lambda self, x: mlp_calls.append(1) or mlp_forward(self, x))

    def adapter_gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = adapted(family, seed=4).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        mlp_calls.clear()
        model(**data).pred_masks.square().mean().backward()
        blocks = sum(isinstance(m, MedSAMLPLayer) for m in model.modules())
        assert len(mlp_calls) == blocks * (2 if checkpointing else 1)  # each block replayed in the backward
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_gradients(False), adapter_gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in plain.values())

    model = adapted(family, seed=4).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**data).pred_masks
    assert torch.isfinite(out).all()
    out.float().mean().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_training_steps_move_only_the_adapters(family):
    model, data = adapted(family).train(), inputs(family)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(**data).pred_masks.sigmoid().mean().backward()
        optimizer.step()
    after = get_peft_model_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reload_in_a_fresh_process_is_exact(family, tmp_path):
    base, data = base_model(family), inputs(family)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(copy.deepcopy(base), MedSAConfig()).eval()
    randomize_adapters(model, seed=7)
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all(".medsa_" in key and ".default." not in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    model.requires_grad_(False)  # a loaded adapter is frozen; compare like with like
    expected = masks(model, **data)
    reloaded = masks_in_fresh_process(
        type(base).__name__, tmp_path / "base", tmp_path / "adapter", data, tmp_path
    )
    assert torch.equal(reloaded, expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("direction", ["image->video", "video->image"])
def test_adapter_moves_between_the_image_and_the_video_model(family, direction, tmp_path):
    """Same checkpoint, same adapter keys: an adapter trained on one twin loads onto the other."""
    image = base_model(family)
    video = base_model(family, video=True, seed=1)
    missing, _ = video.load_state_dict(image.state_dict(), strict=False)  # the video twin of the same weights
    assert not any(key.startswith(("vision_encoder.", "mask_decoder.")) for key in missing)
    source, target = (image, video) if direction == "image->video" else (video, image)
    trained = get_peft_model(source, MedSAConfig()).eval()
    randomize_adapters(trained, seed=2)
    trained.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(target, tmp_path).eval()
    source_state, target_state = get_peft_model_state_dict(trained), get_peft_model_state_dict(loaded)
    assert source_state.keys() == target_state.keys()
    assert all(torch.equal(source_state[k], target_state[k]) for k in source_state)
    pixel_values = inputs(family)["pixel_values"]
    with torch.no_grad():
        features = [
            m.base_model.model.vision_encoder(pixel_values).fpn_hidden_states for m in (trained, loaded)
        ]
    assert all(torch.equal(a, b) for a, b in zip(*features, strict=True))


def test_sam2_adapter_onto_sam_model_is_refused(sam_model, tmp_path):
    trained = get_peft_model(base_model("sam2"), MedSAConfig())
    trained.save_pretrained(tmp_path)
    with pytest.raises(
        MedSAValueError, match=r"trained on a SAM 2 model .*but the base model is a SAM model"
    ):
        PeftModel.from_pretrained(sam_model, tmp_path)
