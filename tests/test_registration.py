"""Med-SA as a peft method: every loader of peft and transformers finds it after `import peft_medsa`, in any
import order, and importing the package alone stays light (no torch) for the command line."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import point_prompts, randomize_adapters, tiny_sam_config
from peft import AutoPeftModel, PeftConfig, PeftModel, get_peft_model
from transformers import SamModel

from peft_medsa import MedSAConfig, MedSAPeftType


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base SamModel folder, a trained-looking adapter folder for it, inputs and the adapted outputs."""
    root = tmp_path_factory.mktemp("registration")
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(root / "base")
    model = get_peft_model(SamModel.from_pretrained(root / "base"), MedSAConfig()).eval()
    randomize_adapters(model, seed=3)
    model.save_pretrained(root / "adapter")
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64), **point_prompts(1)}
    with torch.no_grad():
        expected = model(**inputs).pred_masks
    return root, inputs, expected


def _masks(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).pred_masks


def test_peft_type_is_a_str_enum_saved_as_its_name(saved):
    root, _, _ = saved
    config = MedSAConfig()
    assert config.peft_type is MedSAPeftType.MEDSA and config.peft_type.value == "MEDSA"
    assert config.peft_type == "MEDSA"  # peft's mappings are keyed by the string
    assert json.loads((root / "adapter" / "adapter_config.json").read_text())["peft_type"] == "MEDSA"


def test_transformers_load_adapter(saved):
    root, inputs, expected = saved
    sam = SamModel.from_pretrained(root / "base")
    sam.load_adapter(str(root / "adapter"))
    torch.testing.assert_close(_masks(sam, inputs), expected, atol=1e-5, rtol=0)


def test_transformers_from_pretrained_of_an_adapter_folder(saved):
    root, inputs, expected = saved
    sam = SamModel.from_pretrained(root / "adapter")  # finds the base through adapter_config.json
    assert isinstance(sam.peft_config["default"], MedSAConfig)
    torch.testing.assert_close(_masks(sam, inputs), expected, atol=1e-5, rtol=0)


def test_peft_model_and_auto_peft_model(saved):
    root, inputs, expected = saved
    peft_model = PeftModel.from_pretrained(SamModel.from_pretrained(root / "base"), root / "adapter")
    torch.testing.assert_close(_masks(peft_model, inputs), expected, atol=0, rtol=0)
    auto = AutoPeftModel.from_pretrained(root / "adapter")
    assert isinstance(auto.base_model.model, SamModel)
    torch.testing.assert_close(_masks(auto, inputs), expected, atol=0, rtol=0)


def test_an_adapter_folder_written_with_a_plain_string_type_loads(saved, tmp_path):
    """Folders saved before `peft_type` became an enum hold the same JSON string; write one by hand."""
    root, inputs, expected = saved
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    config["peft_type"] = "MEDSA"
    (old / "adapter_config.json").write_text(json.dumps(config))
    (old / "adapter_model.safetensors").write_bytes(
        (root / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    assert PeftConfig.from_pretrained(old).peft_type is MedSAPeftType.MEDSA
    loaded = PeftModel.from_pretrained(SamModel.from_pretrained(root / "base"), old)
    torch.testing.assert_close(_masks(loaded, inputs), expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "code",
    [
        # the package alone: registered once peft loads, whoever imports it
        "import peft_medsa, sys; assert 'torch' not in sys.modules and 'peft' not in sys.modules\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m; print(m['MEDSA'].__name__)",
        "import peft; import peft_medsa; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m\n"
        "print(m['MEDSA'].__name__)",
        "from peft_medsa.config import MedSAConfig; from peft import PeftConfig\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m; print(m['MEDSA'].__name__)",
        "from peft_medsa import MedSAModel; from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING as m\n"
        "print(m['MEDSA'].__name__.replace('Model', 'Config'))",
        # hub first: peft loads (and registers us) while hub is half imported; its card hook must still apply
        "import peft_medsa.hub; from peft import PeftModel; assert PeftModel.push_to_hub._medsa\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m; print(m['MEDSA'].__name__)",
    ],
    ids=["package-first", "peft-first", "config-module-first", "model-first", "hub-module-first"],
)
def test_registration_in_any_import_order(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "MedSAConfig"
