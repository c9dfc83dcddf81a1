"""peft-medsa: the Medical SAM Adapter (Med-SA) as a Hugging Face PEFT method.

Importing this package registers the method with peft, so that `get_peft_model(sam, MedSAConfig())`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained`, `add_adapter` and `load_adapter` work with it.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .config import MEDSA_PEFT_TYPE, PRESETS, MedSAConfig
from .errors import (
    MedSAConnectionError,
    MedSAError,
    MedSAFileError,
    MedSAFileNotFoundError,
    MedSAValueError,
)
from .model import MedSAModel

__version__ = "0.1.0"
__all__ = [
    "MEDSA_PEFT_TYPE",
    "PRESETS",
    "MedSAConfig",
    "MedSAConnectionError",
    "MedSAError",
    "MedSAFileError",
    "MedSAFileNotFoundError",
    "MedSAModel",
    "MedSAValueError",
    "__version__",
]


def _register_with_peft() -> None:
    """What `peft.utils.register_peft_method` does, keyed by a plain string (peft's enum has no MEDSA member)."""
    PEFT_TYPE_TO_CONFIG_MAPPING[MEDSA_PEFT_TYPE] = MedSAConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MEDSA_PEFT_TYPE] = MedSAModel
    PEFT_TYPE_TO_PREFIX_MAPPING[MEDSA_PEFT_TYPE] = MedSAModel.prefix


_register_with_peft()
