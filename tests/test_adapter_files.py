"""Adapter files and model sources are checked before anything is loaded; every refusal names what is wrong."""

import json
import os

import pytest
import torch
from conftest import tiny_sam_config
from huggingface_hub import constants
from peft import get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import SamModel

from peft_medsa import MedSAConfig, MedSAConnectionError, MedSAFileNotFoundError, MedSAValueError
from peft_medsa.pretrained import load_adapter, load_sam

WEIGHTS = "adapter_model.safetensors"


def sam(blocks=2):
    torch.manual_seed(0)
    return SamModel(tiny_sam_config(num_hidden_layers=blocks, global_attn_indexes=[1])).eval()


def save_adapter(folder, blocks=2, **config):
    model = get_peft_model(sam(blocks), MedSAConfig(**config))
    model.save_pretrained(folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(folder, change):
    weights = load_file(folder / WEIGHTS)
    change(weights)
    save_file(weights, folder / WEIGHTS)


def nan_in_first(weights):
    key = sorted(weights)[0]
    weights[key] = torch.full_like(weights[key], float("nan"))


CASES = {
    "adapter for a base with more blocks": (
        lambda f: save_adapter(f, blocks=3),
        2,
        r"\d+ key\(s\) that are no Med-SA adapter .*vision_encoder.layers.2.medsa_",
    ),
    "adapter for a base with fewer blocks": (
        lambda f: save_adapter(f, blocks=1),
        2,
        r"adapter weight\(s\) missing \(vision_encoder.layers.1.medsa_",
    ),
    "layers_to_transform edited to fewer blocks": (
        lambda f: edit_config(save_adapter(f), layers_to_transform=[0]),
        2,
        r"key\(s\) that are no Med-SA adapter .*vision_encoder.layers.1.medsa_",
    ),
    "layers_to_transform edited to more blocks": (
        lambda f: edit_config(save_adapter(f, layers_to_transform=[0]), layers_to_transform=[0, 1]),
        2,
        r"adapter weight\(s\) missing \(vision_encoder.layers.1.medsa_",
    ),
    "base-model weight in the file": (
        lambda f: edit_weights(
            save_adapter(f),
            lambda w: w.update({"base_model.model.mask_decoder.iou_token.weight": torch.zeros(1, 32)}),
        ),
        2,
        r"1 key\(s\) that are no Med-SA adapter .*weight of this model \(mask_decoder.iou_token.weight\)",
    ),
    "NaN tensor": (
        lambda f: edit_weights(save_adapter(f), nan_in_first),
        2,
        r"NaN or infinite values in 1 tensor\(s\) \(mask_decoder.transformer.layers.0.medsa_",
    ),
    "decoder adapters dropped from the config": (
        lambda f: edit_config(save_adapter(f), decoder_adapters=False, hyper_prompt=False),
        2,
        r"key\(s\) that are no Med-SA adapter .*mask_decoder.transformer.layers.0.medsa_",
    ),
    "string ratio in adapter_config.json": (
        lambda f: edit_config(save_adapter(f), adapter_ratio="0.25"),
        2,
        r"adapter_config.json: MedSAConfig: `adapter_ratio` must be a finite number, got '0.25'",
    ),
    "syntax error in adapter_config.json": (
        lambda f: (save_adapter(f), (f / "adapter_config.json").write_text('{\n "peft_type": "MEDSA",\n}')),
        2,
        r"adapter_config.json, line 3: invalid JSON",
    ),
    "folder without weights": (
        lambda f: (save_adapter(f), (f / WEIGHTS).unlink()),
        2,
        r"has no adapter_model.safetensors",
    ),
    "truncated weights": (
        lambda f: (save_adapter(f), (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:100])),
        2,
        r"is truncated or corrupted",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_adapters_are_refused_before_loading(tmp_path, case):
    prepare, blocks, message = CASES[case]
    folder = tmp_path / "adapter"
    prepare(folder)
    base = sam(blocks)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(MedSAValueError if "weights" not in case else Exception, match=message):
        load_adapter(base, str(folder))
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items() if k in frozen)


def test_a_good_adapter_loads_exactly(tmp_path):
    folder = save_adapter(tmp_path / "adapter", init_weights="linear-default")
    loaded = get_peft_model_state_dict(load_adapter(sam(), str(folder)))
    saved = load_file(folder / WEIGHTS)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("./no/such/folder", MedSAFileNotFoundError, r"Med-SA adapter no/such/folder does not exist"),
        (
            "not a repo id!",
            MedSAFileNotFoundError,
            r"'not a repo id!' is neither an existing local path nor a valid Hub id",
        ),
        ("{dangling}", MedSAFileNotFoundError, r"is a link to .*gone, which does not exist"),
        ("{file}", MedSAFileNotFoundError, r"is a file; give the folder that holds adapter_config.json"),
        ("{empty}", MedSAFileNotFoundError, r"folder .*empty has no adapter_config.json"),
    ],
)
def test_local_adapter_paths_are_never_sent_to_the_hub(tmp_path, monkeypatch, name, error, message):
    monkeypatch.setattr("peft_medsa.pretrained.HfApi", None)  # any Hub call would fail with a TypeError
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    name = {
        "{dangling}": tmp_path / "dangling",
        "{file}": tmp_path / "file",
        "{empty}": tmp_path / "empty",
    }.get(name, name)
    with pytest.raises(error, match=message):
        load_adapter(sam(), str(name))


def test_sam_folder_without_weights_is_named(tmp_path):
    sam().config.save_pretrained(tmp_path)
    with pytest.raises(Exception, match=f"SAM checkpoint {tmp_path}: "):
        load_sam(str(tmp_path))


@pytest.mark.parametrize("what", ["model", "adapter"])
def test_hub_ids_fail_fast_offline_naming_the_id_and_the_way_out(monkeypatch, what):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    load = (
        (lambda: load_sam("someone/sam-nowhere"))
        if what == "model"
        else (lambda: load_adapter(sam(), "someone/adapter-nowhere"))
    )
    with pytest.raises(
        MedSAConnectionError,
        match=r"'someone/[a-z-]+' is a Hub id, and the Hub cannot be reached "
        r"\(HF_HUB_OFFLINE=1 is set.*hf download someone/[a-z-]+ --local-dir DIR",
    ):
        load()


def test_hub_ids_fail_fast_without_network(monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(
        MedSAConnectionError,
        match=r"SAM checkpoint 'facebook/sam-vit-nowhere' is a Hub id, and the Hub "
        r"cannot be reached \(\w+\)",
    ):
        load_sam("facebook/sam-vit-nowhere")
