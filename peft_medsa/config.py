"""`MedSAConfig`: what a Med-SA adapter adds to a SamModel, and the named presets of the paper and its code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from peft.config import PeftConfig

from .adapter_files import check_adapter_file


class MedSAPeftType(str, Enum):
    """The method's name in peft's registries.

    A `str` Enum like `peft.PeftType` (which an out-of-tree method cannot extend): peft keys its mappings by the
    string value, transformers' PEFT integration reads `peft_type.value`, and the member saves as `"MEDSA"`.
    """

    MEDSA = "MEDSA"


MEDSA_PEFT_TYPE = MedSAPeftType.MEDSA

ACTIVATIONS = ("gelu", "relu")
INIT_WEIGHTS = ("identity", "linear-default")
HYPER_PROMPT_MODES = ("generate", "add")

# Each preset is a set of overrides of the dataclass defaults (design note, section 5).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper: encoder adapters (+ SD-Trans for volumes) and decoder adapters with HyP-Adpt; all of SAM frozen.
    "paper": {},
    # What the authors' public code trains: encoder adapters (GELU) and the whole mask decoder.
    "official-code": {
        "activation": "gelu",
        "decoder_adapters": False,
        "hyper_prompt": False,
        "modules_to_save": ["mask_decoder"],
    },
    # Encoder adapters only; the mask decoder stays frozen.
    "encoder-only": {"decoder_adapters": False, "hyper_prompt": False},
}


@dataclass
class MedSAConfig(PeftConfig):
    """Configuration of a Med-SA adapter (Wu et al., "Medical SAM Adapter", arXiv 2304.12620).

    `MedSAConfig()` is the `paper` preset; `MedSAConfig.from_preset(name, **overrides)` gives the others.
    Every SAM weight stays frozen; only the adapters (and `modules_to_save`) train.
    """

    preset: str | None = field(
        default="paper",
        metadata={
            "help": "Name of the preset these values came from (informational; see `MedSAConfig.from_preset`)."
        },
    )
    adapter_ratio: float = field(
        default=0.25,
        metadata={
            "help": "Bottleneck width as a fraction of the block width (0.25: ViT-B 768 -> 192 -> 768)."
        },
    )
    activation: Literal["gelu", "relu"] = field(
        default="relu",
        metadata={"help": "Bottleneck activation: the paper says ReLU, the authors' code uses GELU."},
    )
    mlp_scale: float = field(
        default=0.5,
        metadata={"help": "Scale s of the encoder's MLP adapter: y = h + MLP(LN(h)) + s * Adapter(LN(h))."},
    )
    depth_attention: bool = field(
        default=False,
        metadata={
            "help": "SD-Trans, for volumes: with 5-D input (B, C, D, H, W) each encoder block also attends over the "
            "D slices at every token position, followed by a Depth adapter (ViT-B: +3,550,464 parameters). "
            "Skipped for 4-D input; off by default because 2-D tasks never use it."
        },
    )
    decoder_adapters: bool = field(
        default=True,
        metadata={
            "help": "Adapters in the mask decoder's two-way blocks (parallel to the MLP, after cross-attention)."
        },
    )
    hyper_prompt: bool = field(
        default=True,
        metadata={
            "help": "HyP-Adpt: an adapter after the decoder's token self-attention whose (r x r) weight is generated "
            "per sample from the prompt embedding. Needs `decoder_adapters=True`."
        },
    )
    hyper_prompt_mode: Literal["generate", "add"] = field(
        default="generate",
        metadata={
            "help": "'generate': HyP-Adpt, the prompt generates the adapter's (r x r) weight. 'add': the ablation "
            "the paper compares with, plain prompt fusion (the projected prompt is added to the reduced features)."
        },
    )
    init_weights: Literal["identity", "linear-default"] = field(
        default="identity",
        metadata={
            "help": "'identity': up-projections start at zero, so the adapted model equals SAM at step 0. "
            "'linear-default': PyTorch's default Linear init everywhere, as in the authors' code (not the identity)."
        },
    )
    layers_to_transform: list[int] | None = field(
        default=None,
        metadata={
            "help": "Indices of the image-encoder blocks to adapt (default: all, windowed and global)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Base modules trained in full and saved with the adapter, e.g. ['mask_decoder']."},
    )
    target_modules: list[str] | str | None = field(
        default=None,
        init=False,
        metadata={"help": "Derived from the fields above (regex of the adapted blocks); not set by hand."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MEDSA_PEFT_TYPE
        if not 0 < self.adapter_ratio <= 4:
            raise ValueError(f"adapter_ratio must be in (0, 4], got {self.adapter_ratio}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if self.hyper_prompt_mode not in HYPER_PROMPT_MODES:
            raise ValueError(
                f"hyper_prompt_mode must be one of {HYPER_PROMPT_MODES}, got {self.hyper_prompt_mode!r}."
            )
        if self.init_weights not in INIT_WEIGHTS:
            raise ValueError(f"init_weights must be one of {INIT_WEIGHTS}, got {self.init_weights!r}.")
        if self.hyper_prompt and not self.decoder_adapters:
            raise ValueError(
                "hyper_prompt=True needs decoder_adapters=True: HyP-Adpt is one of the decoder adapters. "
                "Set decoder_adapters=True, or hyper_prompt=False."
            )
        if self.decoder_adapters and any(
            m.split(".")[-1] == "mask_decoder" for m in self.modules_to_save or []
        ):
            raise ValueError(
                "decoder_adapters=True together with modules_to_save=['mask_decoder'] would adapt a decoder that is "
                "also trained in full. Use the 'official-code' preset (decoder_adapters=False) to train the decoder."
            )
        if self.layers_to_transform is not None and any(i < 0 for i in self.layers_to_transform):
            raise ValueError(
                f"layers_to_transform must hold block indices >= 0, got {self.layers_to_transform}."
            )
        self.target_modules = self._target_regex()

    def _target_regex(self) -> str:
        """The blocks this adapter wraps: every image-encoder block, and the decoder's two-way blocks if enabled."""
        targets = [r"vision_encoder\.layers\.\d+"]
        if self.decoder_adapters:
            targets.append(r"mask_decoder\.transformer\.layers\.\d+")
        return rf"(.*\.)?({'|'.join(targets)})"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MedSAConfig:
        """Build the named preset ('paper', 'official-code', 'encoder-only'), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown Med-SA preset {name!r}. Choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> MedSAConfig:
        """Load the config and check the adapter file next to it (peft calls this before loading the weights)."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        hub_kwargs, _, _ = cls._split_kwargs(kwargs)
        check_adapter_file(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return config

    def to_dict(self) -> dict[str, Any]:
        # The derived regex is not an input of `__init__`; saving it would break `from_pretrained`.
        data = super().to_dict()
        data.pop("target_modules", None)
        return data
