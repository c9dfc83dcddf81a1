"""Saving and loading adapters: adapter-only safetensors, exact reload in a fresh process, clear refusals."""

import copy

import pytest
import torch
from conftest import masks_in_fresh_process, point_prompts, randomize_adapters, tiny_sam_config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import SamModel

from peft_medsa import MedSAConfig


@pytest.fixture
def trained(sam_model):
    """A 'paper' adapter with non-zero weights over a copy of the tiny SamModel."""
    model = get_peft_model(copy.deepcopy(sam_model), MedSAConfig(depth_attention=True)).eval()
    randomize_adapters(model, seed=7)
    return model


def test_adapter_file_holds_only_adapter_tensors(trained, tmp_path):
    trained.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all(".medsa_" in key and ".default." not in key for key in saved)
    expected = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    assert sum(t.numel() for t in saved.values()) == expected


def test_official_code_saves_the_decoder(sam_model, tmp_path):
    model = get_peft_model(copy.deepcopy(sam_model), MedSAConfig.from_preset("official-code"))
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    decoder_keys = {k for k in saved if ".mask_decoder." in k}
    assert len(decoder_keys) == len(sam_model.mask_decoder.state_dict())
    assert all(".medsa_" in k for k in saved.keys() - decoder_keys)


def test_reload_in_a_fresh_process_is_exact(trained, sam_model, tmp_path):
    sam_model.save_pretrained(tmp_path / "base")
    trained.save_pretrained(tmp_path / "adapter")
    inputs = {"pixel_values": torch.randn(1, 3, 2, 64, 64), **point_prompts(2)}
    # A loaded adapter is frozen (inference mode); torch's CPU kernels may differ in the last bit between frozen and
    # trainable weights (~1e-6), so compare like with like.
    trained.requires_grad_(False)
    with torch.no_grad():
        expected = trained(**inputs).pred_masks
    masks = masks_in_fresh_process("SamModel", tmp_path / "base", tmp_path / "adapter", inputs, tmp_path)
    assert torch.equal(masks, expected)


def test_load_adapter_under_another_name(trained, sam_model, tmp_path):
    trained.save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(copy.deepcopy(sam_model), tmp_path)
    model.load_adapter(tmp_path, adapter_name="copy")
    model.set_adapter("copy")
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64), **point_prompts(1)}
    with torch.no_grad():
        assert torch.equal(model(**inputs).pred_masks, trained(**inputs).pred_masks)


def test_adapter_for_another_base_size_is_refused(trained, tmp_path):
    trained.save_pretrained(tmp_path)
    wider = SamModel(tiny_sam_config(hidden_size=96, mlp_dim=192))
    with pytest.raises(
        ValueError,
        match=r"(?s)another size.*24 tensors differ.*medsa_depth_down.default.weight: \(16, 64\) in the adapter, \(24, 96\) in the model",
    ):
        PeftModel.from_pretrained(wider, tmp_path)


def test_truncated_adapter_file_is_refused(trained, sam_model, tmp_path):
    trained.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is truncated or corrupted"):
        PeftModel.from_pretrained(copy.deepcopy(sam_model), tmp_path)


def test_pickled_adapter_is_refused(trained, sam_model, tmp_path):
    trained.save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save({}, tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"pickled adapter.*safetensors only"):
        PeftModel.from_pretrained(copy.deepcopy(sam_model), tmp_path)
