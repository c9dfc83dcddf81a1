"""The adapter layers on their own: SD-Trans locality and equivalences, HyP-Adpt's prompt conditioning."""

import copy

import pytest
import torch
from conftest import randomize_adapters, tiny_sam_config
from transformers import SamModel

from peft_medsa import MedSAConfig
from peft_medsa.layer import MedSADecoderLayer, MedSAVisionLayer, SliceContext


def vision_block(window_size: int, image_size: int = 64, depth_attention: bool = True) -> MedSAVisionLayer:
    """A wrapped encoder block: windowed (window_size > 0) or global (0). 80 px gives 10x10 tokens: padded windows."""
    torch.manual_seed(0)
    config = tiny_sam_config(image_size=image_size, global_attn_indexes=[] if window_size else [0])
    layer = SamModel(config).vision_encoder.layers[0].eval()
    assert layer.window_size == window_size
    return MedSAVisionLayer(layer, "default", MedSAConfig(depth_attention=depth_attention), SliceContext())


def sams_attention(block: MedSAVisionLayer, hidden: torch.Tensor) -> torch.Tensor:
    """The wrapped block's own attention module (transformers' SAM attention) over (b, h, w, C) tokens."""
    base = block.base_layer
    if base.window_size == 0:
        return base.attn(hidden_states=hidden)[0]
    windows, padded = base.window_partition(hidden, base.window_size)
    return base.window_unpartition(
        base.attn(hidden_states=windows)[0], base.window_size, padded, hidden.shape[1:3]
    )


@pytest.mark.parametrize("window_size", [4, 0])
@pytest.mark.parametrize("image_size", [64, 80])
def test_shared_qkv_spatial_attention_equals_sams(window_size, image_size):
    """The volume path computes SAM's spatial attention from the qkv it shares with the depth branch, and hands
    the depth branch that qkv on the whole slice."""
    block = vision_block(window_size, image_size)
    tokens = image_size // 8
    normed = block.base_layer.layer_norm1(torch.randn(6, tokens, tokens, 64))
    spatial, qkv = block._spatial_attention(normed, keep_qkv=True)
    torch.testing.assert_close(spatial, sams_attention(block, normed), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qkv, block.base_layer.attn.qkv(normed), atol=1e-5, rtol=1e-5)
    depth = block.depth_attention(qkv, num_slices=3)
    assert depth.shape == normed.shape


@pytest.mark.parametrize("window_size", [4, 0])
@pytest.mark.parametrize("image_size", [64, 80])
def test_folded_relative_positions_give_sams_attention_and_gradients(window_size, image_size):
    """The adapted blocks fold SAM's relative positions into the dot product (fused attention, O(tokens) memory);
    values and input gradients equal SAM's own attention module's, with non-zero relative positions (SAM's init
    leaves them at zero)."""
    block = vision_block(window_size, image_size)
    with torch.no_grad():
        block.base_layer.attn.rel_pos_h.normal_(std=0.5)
        block.base_layer.attn.rel_pos_w.normal_(std=0.5)
    tokens = image_size // 8
    normed = torch.randn(3, tokens, tokens, 64, requires_grad=True)
    weights = torch.randn(3, tokens, tokens, 64)
    folded = block._spatial_attention(normed)[0]
    (folded_grad,) = torch.autograd.grad((folded * weights).sum(), normed)
    expected = sams_attention(block, normed)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), normed)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_grad, expected_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window_size", [4, 0])
def test_depth_attention_mixes_only_the_same_token_of_one_volume(window_size):
    block = vision_block(window_size)
    qkv = torch.randn(2 * 4, 8, 8, 3 * 64)  # 2 volumes x 4 slices, 8x8 tokens
    reference = block.depth_attention(qkv, num_slices=4)
    changed = qkv.clone()
    changed[1, 2, 5] += 1.0  # volume 0, slice 1, token (2, 5)
    difference = (block.depth_attention(changed, num_slices=4) - reference).abs().amax(dim=-1)  # (8, 8, 8)
    touched = difference > 0
    assert touched[:4, 2, 5].all(), "every slice of volume 0 sees the change at token (2, 5)"
    touched[:4, 2, 5] = False
    assert not touched.any(), "no other token and no slice of volume 1 changes"


def test_zero_depth_adapter_keeps_slices_independent():
    """At init (zero up-projection) a volume gives exactly what its slices give one by one."""
    block = vision_block(window_size=4)
    hidden = torch.randn(6, 8, 8, 64)
    torch.testing.assert_close(block(hidden, num_slices=3), block.base_layer(hidden), atol=1e-5, rtol=1e-5)
    randomize_adapters(block)
    assert not torch.allclose(block(hidden, num_slices=3), block(hidden, num_slices=1), atol=1e-3)


def test_one_slice_is_the_2d_path():
    block = vision_block(window_size=4)
    randomize_adapters(block)
    hidden = torch.randn(3, 8, 8, 64)
    assert torch.equal(block(hidden, num_slices=1), block(hidden))


def test_without_depth_adapter_volumes_run_slice_wise():
    block = vision_block(window_size=4, depth_attention=False)
    randomize_adapters(block)
    hidden = torch.randn(4, 8, 8, 64)
    assert torch.equal(block(hidden, num_slices=2), block(hidden, num_slices=1))


def decoder_block() -> MedSADecoderLayer:
    torch.manual_seed(0)
    layer = SamModel(tiny_sam_config()).mask_decoder.transformer.layers[1]
    block = MedSADecoderLayer(layer, "default", MedSAConfig(), num_output_tokens=5)
    randomize_adapters(block, std=0.5)
    return block


def test_hyper_prompt_weights_follow_the_prompt():
    block = decoder_block()
    prompts = torch.randn(2, 1, 3, 32)  # 2 samples, 3 prompt tokens each
    weights = block.prompt_weights("default", prompts)
    assert weights.shape == (2, 1, 8, 8)  # r = 0.25 * 32
    assert not torch.allclose(weights[0], weights[1]), "two prompts in one batch get their own weights"
    changed = prompts.clone()
    changed[1] += 1.0
    new_weights = block.prompt_weights("default", changed)
    assert torch.equal(new_weights[0], weights[0]) and not torch.allclose(new_weights[1], weights[1])


def test_hyper_prompt_changes_only_the_prompted_sample():
    """The decoder block's output for a sample depends on its own prompt only."""
    block = decoder_block()
    queries, prompts = torch.randn(2, 1, 8, 32), torch.randn(2, 1, 8, 32)
    keys, key_pe = torch.randn(2, 1, 64, 32), torch.randn(2, 1, 64, 32)
    out = block(queries, keys, prompts, key_pe)[0]
    changed = prompts.clone()
    changed[0, :, 5:] += 1.0  # only the prompt tokens (after 5 output tokens) of sample 0
    new_out = block(queries, keys, changed, key_pe)[0]
    assert not torch.allclose(new_out[0], out[0]) and torch.equal(new_out[1], out[1])
    reference = copy.deepcopy(block)
    reference.medsa_hyper_up["default"].weight.data.zero_()
    reference.medsa_hyper_up["default"].bias.data.zero_()
    # With HyP-Adpt silenced, the prompt reaches the block only through the base attention's positional term.
    assert not torch.allclose(reference(queries, keys, prompts, key_pe)[0], out)


def test_merge_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="non-linear"):
        decoder_block().merge()


def test_plain_prompt_fusion_ablation():
    """'add' mode: the prompt still conditions each sample, through an added projection, with no generated weight."""
    torch.manual_seed(0)
    layer = SamModel(tiny_sam_config()).mask_decoder.transformer.layers[1]
    block = MedSADecoderLayer(layer, "default", MedSAConfig(hyper_prompt_mode="add"), num_output_tokens=5)
    assert "default" not in block.medsa_hypernet_out and block.medsa_hypernet_in["default"].out_features == 8
    randomize_adapters(block, std=0.5)
    queries, prompts = torch.randn(2, 1, 8, 32), torch.randn(2, 1, 8, 32)
    keys, key_pe = torch.randn(2, 1, 64, 32), torch.randn(2, 1, 64, 32)
    out = block.hyper_prompt_adapter("default", queries, prompts[:, :, 5:])
    changed = prompts.clone()
    changed[0, :, 5:] += 1.0
    new_out = block.hyper_prompt_adapter("default", queries, changed[:, :, 5:])
    assert not torch.allclose(new_out[0], out[0]) and torch.equal(new_out[1], out[1])
    assert block(queries, keys, prompts, key_pe)[0].shape == queries.shape
