"""Med-SA on a whole (tiny, random) SamModel through peft: identity at start, volumes, prompts, peft behaviour."""

import copy

import pytest
import torch
from conftest import point_prompts, randomize_adapters, tiny_sam_config
from peft import get_peft_model
from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

from peft_medsa import PRESETS, MedSAConfig
from peft_medsa.layer import MedSADecoderLayer, MedSAVisionLayer


def adapted(sam_model, preset="paper", seed=None, **overrides):
    """A PeftModel over a copy of `sam_model`; with `seed`, adapters get random non-zero weights."""
    model = get_peft_model(copy.deepcopy(sam_model), MedSAConfig.from_preset(preset, **overrides)).eval()
    if seed is not None:
        randomize_adapters(model, seed)
    return model


def masks(model, pixel_values, **prompts):
    with torch.no_grad():
        return model(pixel_values=pixel_values, **prompts).pred_masks


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_identity_at_start(sam_model, preset):
    model = adapted(sam_model, preset, depth_attention=True)
    images, prompts = torch.randn(2, 3, 64, 64), point_prompts(2)
    # Up to rounding: the adapted blocks compute SAM's relative-position attention in a folded, fused form.
    torch.testing.assert_close(
        masks(model, images, **prompts), masks(sam_model, images, **prompts), atol=1e-5, rtol=0
    )
    volume, slice_prompts = torch.randn(1, 3, 3, 64, 64), point_prompts(3)
    slices = volume[0].transpose(0, 1)  # (D, C, H, W)
    torch.testing.assert_close(
        masks(model, volume, **slice_prompts), masks(sam_model, slices, **slice_prompts), atol=1e-5, rtol=0
    )


def test_linear_default_init_is_not_the_identity(sam_model):
    model = adapted(sam_model, init_weights="linear-default")
    images, prompts = torch.randn(1, 3, 64, 64), point_prompts(1)
    assert not torch.allclose(masks(model, images, **prompts), masks(sam_model, images, **prompts), atol=1e-4)


def test_volume_slices_mix_within_their_volume_only(sam_model):
    model = adapted(sam_model, seed=0, depth_attention=True)
    volumes, prompts = torch.randn(2, 3, 4, 64, 64), point_prompts(8)  # 2 volumes x 4 slices, volume-major
    reference = masks(model, volumes, **prompts)
    assert reference.shape == (8, 1, 3, 32, 32)
    changed = volumes.clone()
    changed[0, :, 2] = torch.randn(3, 64, 64)  # slice 2 of volume 0
    result = masks(model, changed, **prompts)
    for other_slice in (0, 1, 3):
        assert not torch.allclose(result[other_slice], reference[other_slice], atol=1e-3)
    assert torch.equal(result[4:], reference[4:]), "volume 1 is bit-identical"


def test_volume_prompts_may_keep_their_volume_axis(sam_model):
    """(B, D, ...) prompts, as a data loader that splits batches needs them, equal (B*D, ...) volume-major ones."""
    model = adapted(sam_model, seed=0, depth_attention=True)
    volumes, prompts = torch.randn(2, 3, 3, 64, 64), point_prompts(6)
    per_volume = {name: value.reshape(2, 3, *value.shape[1:]) for name, value in prompts.items()}
    assert torch.equal(masks(model, volumes, **per_volume), masks(model, volumes, **prompts))


def test_one_slice_volume_equals_the_image(sam_model):
    model = adapted(sam_model, seed=0, depth_attention=True)
    images, prompts = torch.randn(2, 3, 64, 64), point_prompts(2)
    assert torch.equal(masks(model, images.unsqueeze(2), **prompts), masks(model, images, **prompts))


def test_embedding_reuse_gives_the_full_forward(sam_model):
    model = adapted(sam_model, seed=1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(images)
        for seed in range(3):
            prompts = point_prompts(2, seed=seed)
            reused = model(image_embeddings=embeddings, **prompts).pred_masks
            torch.testing.assert_close(
                reused, model(pixel_values=images, **prompts).pred_masks, atol=1e-5, rtol=0
            )


def test_volume_embeddings_are_per_slice(sam_model):
    model = adapted(sam_model, seed=2, depth_attention=True)
    volumes, prompts = torch.randn(2, 3, 3, 64, 64), point_prompts(6)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(volumes)
        assert embeddings.shape == (6, 32, 8, 8)
        reused = model(image_embeddings=embeddings, **prompts).pred_masks
    torch.testing.assert_close(reused, masks(model, volumes, **prompts), atol=1e-5, rtol=0)


def test_hyper_prompt_conditions_the_decoder(sam_model):
    """The same image with other prompts: HyP-Adpt's weights differ per sample of the batch."""
    model = adapted(sam_model, seed=3)
    block = model.base_model.model.mask_decoder.transformer.layers[0]
    assert isinstance(block, MedSADecoderLayer) and block.num_output_tokens == 5
    seen = []
    block.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["query_point_embedding"]), with_kwargs=True
    )
    masks(model, torch.randn(2, 3, 64, 64), **point_prompts(2))
    weights = block.prompt_weights("default", seen[0][:, :, 5:])
    assert not torch.allclose(weights[0], weights[1])


def test_only_adapters_are_trainable(sam_model):
    model = adapted(sam_model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".medsa_" in name for name in trainable)
    trainable_count, total = model.get_nb_trainable_parameters()
    assert trainable_count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in sam_model.parameters()) + trainable_count


def test_official_code_trains_the_decoder(sam_model):
    model = adapted(sam_model, "official-code")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    decoder = sum(p.numel() for p in sam_model.mask_decoder.parameters())
    encoder_adapters = sum(p.numel() for n, p in model.named_parameters() if ".medsa_" in n)
    assert model.get_nb_trainable_parameters()[0] == decoder + encoder_adapters
    assert not any("medsa_" in n and "mask_decoder" in n for n in trainable)


def test_vit_b_parameter_counts():
    with torch.device("meta"):
        encoder_only = get_peft_model(SamModel(SamConfig()), MedSAConfig.from_preset("encoder-only"))
        with_depth = get_peft_model(
            SamModel(SamConfig()), MedSAConfig.from_preset("encoder-only", depth_attention=True)
        )
    assert encoder_only.get_nb_trainable_parameters() == (7_100_928, 93_735_728 + 7_100_928)
    assert with_depth.get_nb_trainable_parameters()[0] - 7_100_928 == 3_550_464


def test_layers_to_transform(sam_model):
    model = adapted(sam_model, "encoder-only", layers_to_transform=[1])
    layers = model.base_model.model.vision_encoder.layers
    assert not isinstance(layers[0], MedSAVisionLayer) and isinstance(layers[1], MedSAVisionLayer)
    with pytest.raises(ValueError, match=r"names blocks \[5\], but this image encoder has 2 blocks"):
        adapted(sam_model, layers_to_transform=[5])


def test_named_adapters(sam_model):
    model = adapted(sam_model, seed=0)
    model.add_adapter("second", MedSAConfig.from_preset("encoder-only"))
    randomize_adapters(model, seed=5)
    images, prompts = torch.randn(1, 3, 64, 64), point_prompts(1)
    first = masks(model, images, **prompts)
    model.set_adapter("second")
    second = masks(model, images, **prompts)
    assert not torch.allclose(first, second, atol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".second." in n for n in trainable)
    with model.disable_adapter():
        torch.testing.assert_close(
            masks(model, images, **prompts), masks(sam_model, images, **prompts), atol=1e-6, rtol=0
        )
    model.set_adapter("default")
    assert torch.equal(masks(model, images, **prompts), first)
    model.delete_adapter("second")
    assert not any(".second." in n for n, _ in model.named_parameters())
    assert torch.equal(masks(model, images, **prompts), first)


def test_unload_returns_the_original_model(sam_model):
    model = adapted(sam_model, seed=0, depth_attention=True)
    images, prompts = torch.randn(2, 3, 64, 64), point_prompts(2)
    unloaded = model.unload()
    assert type(unloaded) is SamModel
    assert not any("medsa" in n for n, _ in unloaded.named_parameters())
    assert not unloaded._forward_pre_hooks and not unloaded.vision_encoder._forward_pre_hooks
    assert torch.equal(masks(unloaded, images, **prompts), masks(sam_model, images, **prompts))


def test_merge_and_unload_is_refused(sam_model):
    with pytest.raises(ValueError, match=r"cannot be merged.*non-linear.*unload\(\)"):
        adapted(sam_model).merge_and_unload()


def test_gradient_checkpointing_gives_the_same_gradients(sam_model, monkeypatch):
    """The backward replay of each encoder block runs the depth branch again, with the same number of slices."""
    volumes, prompts = torch.randn(1, 3, 2, 64, 64), point_prompts(2)
    depth_calls = []
    depth_attention = MedSAVisionLayer.depth_attention

    def counted(self, qkv, num_slices):
        depth_calls.append(num_slices)
        return depth_attention(self, qkv, num_slices)

    monkeypatch.setattr(MedSAVisionLayer, "depth_attention", counted)

    def adapter_gradients(checkpointing):
        model = adapted(sam_model, seed=4, depth_attention=True).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        depth_calls.clear()
        model(pixel_values=volumes, **prompts).pred_masks.square().mean().backward()
        assert depth_calls == [2] * (
            4 if checkpointing else 2
        )  # 2 blocks, replayed once each when checkpointing
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_gradients(False), adapter_gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for n, g in plain.items() if "depth" in n)


def test_bf16_autocast(sam_model):
    model = adapted(sam_model, seed=0, depth_attention=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=torch.randn(1, 3, 2, 64, 64), **point_prompts(2)).pred_masks
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bf16_base_keeps_float32_adapters(sam_model):
    model = get_peft_model(copy.deepcopy(sam_model).to(torch.bfloat16), MedSAConfig())
    adapter_dtypes = {p.dtype for n, p in model.named_parameters() if ".medsa_" in n}
    assert adapter_dtypes == {torch.float32}
    out = masks(model, torch.randn(1, 3, 64, 64, dtype=torch.bfloat16), **point_prompts(1))
    assert out.dtype == torch.bfloat16


def test_sam_hq_is_supported():
    config = tiny_sam_config()
    hq_config = SamHQConfig(
        vision_config=config.vision_config.to_dict(),
        prompt_encoder_config=config.prompt_encoder_config.to_dict(),
        mask_decoder_config={**config.mask_decoder_config.to_dict(), "vit_dim": 64},
    )
    torch.manual_seed(0)
    base = SamHQModel(hq_config).eval()
    model = get_peft_model(copy.deepcopy(base), MedSAConfig(depth_attention=True)).eval()
    images, prompts = torch.randn(1, 3, 64, 64), point_prompts(1)
    torch.testing.assert_close(
        masks(model, images, **prompts), masks(base, images, **prompts), atol=1e-6, rtol=0
    )
    assert model.base_model.model.mask_decoder.transformer.layers[0].num_output_tokens == 6  # + the HQ token
    randomize_adapters(model)
    assert masks(model, torch.randn(1, 3, 2, 64, 64), **point_prompts(2)).shape[0] == 2


# Bad input ---------------------------------------------------------------------------------------------------


def test_non_sam_model_is_refused():
    with pytest.raises(TypeError, match=r"Med-SA adapts Segment Anything models.*got Sequential"):
        get_peft_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), MedSAConfig())


@pytest.mark.parametrize(
    ("pixel_values", "prompts", "message"),
    [
        (torch.randn(3, 64, 64), point_prompts(1), r"pixel_values must be 4-D images .* or 5-D volumes"),
        (torch.randn(1, 3, 32, 32), point_prompts(1), r"do not fit this SAM: it takes 3 channels at 64x64"),
        (
            torch.randn(2, 3, 4, 64, 64),
            point_prompts(2),
            r"input_points has batch 2, but a batch of 2 volume\(s\) x 4 slices needs 8.*\(B, D, \.\.\.\)",
        ),
        (
            torch.randn(2, 3, 64, 64),
            point_prompts(3),
            r"input_points has batch 3, but a batch of 2 image\(s\) needs 2",
        ),
        (
            torch.randn(1, 3, 64, 64),
            {"input_points": torch.rand(1, 2, 2)},
            r"input_points must be a 4-D tensor \(batch, point_batch",
        ),
        (torch.randn(1, 3, 64, 64), {"input_boxes": torch.rand(1, 4)}, r"input_boxes must be a 3-D tensor"),
    ],
)
def test_bad_inputs_are_named(sam_model, pixel_values, prompts, message):
    with pytest.raises(ValueError, match=message):
        adapted(sam_model)(pixel_values=pixel_values, **prompts)
