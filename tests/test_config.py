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
        ({"adapter_ratio": 0}, r"adapter_ratio must be in \(0, 1.0\]"),
        ({"adapter_ratio": 4}, r"adapter_ratio must be in \(0, 1.0\].*got 4"),
        ({"adapter_ratio": -0.5}, r"adapter_ratio must be in \(0, 1.0\]"),
        ({"adapter_ratio": "0.25"}, r"`adapter_ratio` must be a finite number, got '0.25' \(a str\)"),
        ({"adapter_ratio": float("nan")}, r"`adapter_ratio` must be a finite number, got nan \(not finite\)"),
        ({"adapter_ratio": float("inf")}, r"`adapter_ratio` must be a finite number, got inf \(not finite\)"),
        ({"adapter_ratio": True}, r"`adapter_ratio` must be a finite number, got True \(a bool\)"),
        ({"mlp_scale": float("nan")}, r"`mlp_scale` must be a finite number, got nan"),
        ({"mlp_scale": "0.5"}, r"`mlp_scale` must be a finite number, got '0.5'"),
        ({"layers_to_transform": [-1]}, "block indices >= 0"),
        ({"layers_to_transform": 2}, r"`layers_to_transform` must be a list of integers or None, got 2"),
        ({"layers_to_transform": [0.5]}, r"got \[0.5\] \(item 0 is 0.5: a float\)"),
        ({"layers_to_transform": ["0"]}, r"item 0 is '0': a str"),
        (
            {"layers_to_transform": "0,1"},
            r"`layers_to_transform` must be a list of integers or None, got '0,1'",
        ),
        ({"modules_to_save": "mask_decoder"}, r"`modules_to_save` must be a list of strings or None"),
        ({"depth_attention": "false"}, r"`depth_attention` must be true or false, got 'false' \(a str\)"),
        ({"decoder_adapters": 1}, r"`decoder_adapters` must be true or false, got 1 \(a int\)"),
        ({"hyper_prompt": "yes"}, r"`hyper_prompt` must be true or false, got 'yes'"),
        ({"activation": None}, r"activation must be one of \('gelu', 'relu'\), got None"),
        ({"preset": "papr"}, r"Unknown Med-SA preset 'papr'"),
        ({"preset": 3}, r"`preset` must be a string or None, got 3"),
    ],
)
def test_contradictory_or_invalid_values(kwargs, message):
    with pytest.raises(peft_medsa.MedSAValueError, match=message):
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
