"""MedSAConfig: presets, validation, and the round trip through adapter_config.json."""

import json

import pytest
from peft import PeftConfig

import peft_medsa
from peft_medsa import MedSAConfig


def test_default_config_is_the_paper_preset():
    assert MedSAConfig().to_dict() == MedSAConfig.from_preset("paper").to_dict()


@pytest.mark.parametrize(
    ("preset", "decoder_adapters", "hyper_prompt", "modules_to_save", "activation"),
    [
        ("paper", True, True, None, "relu"),
        ("official-code", False, False, ["mask_decoder"], "gelu"),
        ("encoder-only", False, False, None, "relu"),
    ],
)
def test_presets(preset, decoder_adapters, hyper_prompt, modules_to_save, activation):
    config = MedSAConfig.from_preset(preset)
    assert config.preset == preset
    assert (config.decoder_adapters, config.hyper_prompt) == (decoder_adapters, hyper_prompt)
    assert config.modules_to_save == modules_to_save
    assert config.activation == activation
    assert config.adapter_ratio == 0.25 and config.mlp_scale == 0.5 and config.init_weights == "identity"


def test_preset_overrides():
    config = MedSAConfig.from_preset("encoder-only", adapter_ratio=1 / 16, depth_attention=True)
    assert config.adapter_ratio == 1 / 16 and config.depth_attention and not config.decoder_adapters


def test_unknown_preset():
    with pytest.raises(
        ValueError, match=r"Unknown Med-SA preset 'papr'.*'encoder-only', 'official-code', 'paper'"
    ):
        MedSAConfig.from_preset("papr")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hyper_prompt": True, "decoder_adapters": False}, "hyper_prompt=True needs decoder_adapters=True"),
        ({"modules_to_save": ["mask_decoder"]}, "also trained in full"),
        ({"activation": "tanh"}, r"activation must be one of \('gelu', 'relu'\), got 'tanh'"),
        ({"init_weights": "zeros"}, "init_weights must be one of"),
        ({"hyper_prompt_mode": "concat"}, "hyper_prompt_mode must be one of"),
        ({"adapter_ratio": 0}, r"adapter_ratio must be in \(0, 4\]"),
        ({"layers_to_transform": [-1]}, "block indices >= 0"),
    ],
)
def test_contradictory_or_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MedSAConfig(**kwargs)


def test_targets_follow_the_decoder_flag():
    assert "mask_decoder" in MedSAConfig().target_modules
    assert "mask_decoder" not in MedSAConfig.from_preset("encoder-only").target_modules


def test_config_round_trip(tmp_path):
    config = MedSAConfig.from_preset("official-code", adapter_ratio=0.125, layers_to_transform=[0])
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == peft_medsa.MEDSA_PEFT_TYPE and "target_modules" not in saved
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MedSAConfig)
    assert loaded.to_dict() == config.to_dict()
