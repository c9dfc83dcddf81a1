"""peft-medsa: the Medical SAM Adapter (Med-SA) as a Hugging Face PEFT method.

Importing this package registers the method with peft, so that `get_peft_model(sam, MedSAConfig())`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained`, transformers' `SamModel.from_pretrained(adapter)` and
`load_adapter` work with it. The public names load on first use, so that importing the package (and the
`medsa` command line) stays fast; the registration happens as soon as peft is loaded (`registration.py`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import MedSAError, MedSAFileError, MedSAFileNotFoundError, MedSAValueError
from .registration import register_when_ready

if TYPE_CHECKING:
    from .config import MEDSA_PEFT_TYPE, PRESETS, MedSAConfig, MedSAPeftType
    from .model import MedSAModel

__version__ = "0.1.0"

_LAZY = {
    "MEDSA_PEFT_TYPE": "config",
    "PRESETS": "config",
    "MedSAConfig": "config",
    "MedSAPeftType": "config",
    "MedSAModel": "model",
}
__all__ = [
    "MEDSA_PEFT_TYPE",
    "PRESETS",
    "MedSAConfig",
    "MedSAError",
    "MedSAFileError",
    "MedSAFileNotFoundError",
    "MedSAModel",
    "MedSAPeftType",
    "MedSAValueError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_when_ready()
