"""A frozen SAM kept in bf16 with float32 Med-SA adapters (`--base_dtype bfloat16`).

The contract: load the base in bf16, `get_peft_model(base, MedSAConfig())`; peft upcasts the new adapters to
float32, each adapter computes in float32 and hands its result back in bf16, and the model takes float32 inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import point_prompts, randomize_adapters, tiny_sam2_config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import Sam2Model, SamModel

from peft_medsa import MedSAConfig, MedSAValueError
from peft_medsa.training.arguments import MedSAArguments, ModelArguments, parse_arguments
from peft_medsa.training.run import build_model, train


@pytest.fixture(scope="module")
def bf16_base(sam_checkpoint):
    return SamModel.from_pretrained(sam_checkpoint, dtype=torch.bfloat16).eval()


def is_adapter(name: str) -> bool:
    return any(part.startswith("medsa_") for part in name.split("."))


def dtypes(model: torch.nn.Module) -> tuple[set, set]:
    """(dtypes of the adapter parameters, dtypes of every other parameter)."""
    adapters = {p.dtype for name, p in model.named_parameters() if is_adapter(name)}
    return adapters, {p.dtype for name, p in model.named_parameters() if not is_adapter(name)}


def inputs(volume: bool) -> dict:
    pixels = torch.randn(
        (1, 3, 2, 64, 64) if volume else (2, 3, 64, 64), generator=torch.Generator().manual_seed(0)
    )
    return {"pixel_values": pixels, **point_prompts(2), "multimask_output": False}


@pytest.mark.parametrize("volume", [False, True], ids=["images", "volume"])
def test_float32_adapters_train_on_a_bf16_base(bf16_base, volume):
    model = get_peft_model(copy.deepcopy(bf16_base), MedSAConfig(depth_attention=True)).train()
    randomize_adapters(model)
    assert dtypes(model) == ({torch.float32}, {torch.bfloat16})
    masks = model(**inputs(volume)).pred_masks  # float32 pixels, as SamProcessor gives them
    assert masks.dtype == torch.bfloat16 and torch.isfinite(masks).all()
    masks.float().square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    # Every adapter but the Depth adapters (volumes only) gets a gradient; SAM's frozen weights none.
    expected = {
        name for name, p in model.named_parameters() if p.requires_grad and (volume or "depth" not in name)
    }
    assert set(grads) == expected
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads.values())
    assert any(grad.abs().max() > 0 for name, grad in grads.items() if "vision_encoder" in name)


def test_identity_adapters_leave_the_bf16_base_unchanged(bf16_base):
    """At init (zero up-projections) the adapted bf16 model gives the bf16 SAM's masks up to bf16 rounding (the
    adapted blocks compute SAM's attention in a folded form), volumes too. The bound is 5 % of the largest mask
    logit; this bf16 SAM and its float32 original differ by more than 100 % of it."""
    model = get_peft_model(copy.deepcopy(bf16_base), MedSAConfig(depth_attention=True)).eval()
    images = inputs(volume=False)
    with torch.no_grad():
        expected = bf16_base(
            **{**images, "pixel_values": images["pixel_values"].bfloat16()}
        ).pred_masks.float()
        volume = {**images, "pixel_values": images["pixel_values"][None].transpose(1, 2)}  # (1, 3, 2, H, W)
        bound = 0.05 * expected.abs().max().item()
        torch.testing.assert_close(model(**images).pred_masks.float(), expected, atol=bound, rtol=0)
        torch.testing.assert_close(model(**volume).pred_masks.float(), expected, atol=bound, rtol=0)


def test_float32_embeddings_and_mask_prompts_reach_a_bf16_base(bf16_base):
    model = get_peft_model(copy.deepcopy(bf16_base), MedSAConfig()).eval()
    prompts = {**point_prompts(1), "input_masks": torch.randn(1, 1, 32, 32), "multimask_output": False}
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.randn(1, 3, 64, 64))
        reused = model(image_embeddings=embeddings, **prompts).pred_masks
        from_float32 = model(image_embeddings=embeddings.float(), **prompts).pred_masks
    assert embeddings.dtype == torch.bfloat16
    assert torch.equal(from_float32, reused)


def test_saved_adapter_is_float32_and_reloads_onto_a_bf16_base(bf16_base, tmp_path):
    model = get_peft_model(copy.deepcopy(bf16_base), MedSAConfig()).eval()
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    loaded = PeftModel.from_pretrained(copy.deepcopy(bf16_base), tmp_path).eval()
    assert dtypes(loaded) == ({torch.float32}, {torch.bfloat16})
    with torch.no_grad():
        assert torch.equal(loaded(**inputs(False)).pred_masks, model(**inputs(False)).pred_masks)


def test_sam2_family_on_a_bf16_base():
    torch.manual_seed(0)
    model = get_peft_model(Sam2Model(tiny_sam2_config()).to(torch.bfloat16), MedSAConfig()).train()
    randomize_adapters(model)
    masks = model(
        pixel_values=torch.randn(1, 3, 64, 64), **point_prompts(1), multimask_output=False
    ).pred_masks
    masks.float().square().mean().backward()
    grads = [p.grad for name, p in model.named_parameters() if is_adapter(name)]
    assert all(
        grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads
    )


def test_medsa_train_with_a_bf16_base(sam_checkpoint, tmp_path):
    arguments = [
        "--model_name_or_path", str(sam_checkpoint), "--base_dtype", "bfloat16", "--task", "demo-2d",
        "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--save_strategy", "no", "--eval_strategy", "no", "--max_eval_samples", "2", "--report_to", "none",
        "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip
    metrics = train(*parse_arguments(arguments))
    assert 0 <= metrics["eval_dice"] <= 1
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    assert any(tensor.abs().max() > 0 for key, tensor in saved.items() if "_up." in key)  # it trained
    assert '"base_dtype": "bfloat16"' in (tmp_path / "README.md").read_text()


def test_a_bf16_base_refuses_modules_trained_in_full(sam_checkpoint):
    with pytest.raises(MedSAValueError) as error:
        build_model(
            ModelArguments(str(sam_checkpoint), base_dtype="bfloat16"),
            MedSAArguments(preset="official-code"),
            volumes=False,
        )
    assert str(error.value) == (
        "--base_dtype bfloat16 keeps SAM's weights in bfloat16, but modules_to_save=['mask_decoder'] (preset "
        "'official-code') trains those modules in full, and an optimizer step on bf16 weights rounds most updates away. "
        "Use --base_dtype float32 (with --bf16 for bf16 compute), or a preset that trains adapters only (paper, "
        "encoder-only)."
    )


def test_base_dtype_choices_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        parse_arguments(["--base_dtype", "float16", "--output_dir", str(tmp_path)])
