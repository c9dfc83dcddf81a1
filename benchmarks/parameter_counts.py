"""Trainable and stored parameters of each Med-SA preset and of the compared methods on SAM ViT-B/L/H configs, and
of the presets on the SAM 2 family (SAM 2.1 Hiera-T/S/B+/L, the SAM 3 tracker).

Models are built on the meta device (random init, no memory, nothing downloaded). "Stored" is what a user keeps
to reproduce the result: the PEFT adapter file (adapters and `modules_to_save`), the mask decoder for decoder-only
fine-tuning, the whole model for full fine-tuning.

Run: `python benchmarks/parameter_counts.py` (a few seconds). Prints a JSON record, the markdown tables of Med-SA
variants (SAM, then the SAM 2 family) that the README shows, and the table of compared methods.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from common import HIERA, METHODS, VISION_CONFIGS, build, markdown, parameter_counts, sam2_config, sam_config
from peft import get_peft_model
from torch import nn
from transformers import Sam2Model, Sam3TrackerConfig, Sam3TrackerModel, SamModel

from peft_medsa import MedSAConfig

VARIANTS = {
    "paper": {"preset": "paper"},
    "paper + SD-Trans": {"preset": "paper", "depth_attention": True},
    "official-code": {"preset": "official-code"},
    "encoder-only": {"preset": "encoder-only"},
    "encoder-only, ratio 1/16": {"preset": "encoder-only", "adapter_ratio": 1 / 16},
}


# The SAM 2 family has no SD-Trans (volumes go through the video memory), so its variants are the presets alone.
FAMILY_VARIANTS = {name: options for name, options in VARIANTS.items() if "SD-Trans" not in name}

# Model builders of each SAM 2-family size: the image models (their video twins add the memory, not adapters).
FAMILY_MODELS = {
    **{f"SAM 2.1 {size}": (lambda size=size: Sam2Model(sam2_config(size))) for size in HIERA},
    "SAM 3 tracker": lambda: Sam3TrackerModel(Sam3TrackerConfig()),
}


def count(size: str, preset: str, **overrides: Any) -> tuple[int, int]:
    """(trainable parameters, parameters of SAM alone) for one Med-SA preset."""
    return count_on(lambda: SamModel(sam_config(size)), preset, **overrides)


def count_on(build_model: Any, preset: str, **overrides: Any) -> tuple[int, int]:
    """(trainable parameters, parameters of the base model) for one Med-SA preset on the model `build_model()`."""
    with torch.device("meta"):
        model: nn.Module = build_model()
        base = sum(p.numel() for p in model.parameters())
        model = get_peft_model(model, MedSAConfig.from_preset(preset, **overrides))
    return model.get_nb_trainable_parameters()[0], base


def count_method(size: str, method: str) -> dict[str, int]:
    """Trainable and stored parameters of one compared method, and SAM's own parameter count."""
    with torch.device("meta"):
        model = SamModel(sam_config(size))
        sam = sum(p.numel() for p in model.parameters())
        return {"sam_parameters": sam, **parameter_counts(method, build(method, model))}


def main() -> dict[str, Any]:
    variants = []
    for size in VISION_CONFIGS:
        for variant, options in VARIANTS.items():
            trainable, sam = count(size, **options)
            variants.append({"sam": size, "variant": variant, "trainable": trainable, "sam_parameters": sam})
    methods = [
        {"sam": size, "method": method, **count_method(size, method)}
        for size in VISION_CONFIGS
        for method in METHODS
    ]
    family_variants = []
    for model_name, build_model in FAMILY_MODELS.items():
        for variant, options in FAMILY_VARIANTS.items():
            trainable, base = count_on(build_model, **options)
            family_variants.append(
                {"sam": model_name, "variant": variant, "trainable": trainable, "sam_parameters": base}
            )
    record = {"medsa_variants": variants, "methods": methods, "family_variants": family_variants}
    print(json.dumps(record, indent=1))

    def cell(count: int, sam: int) -> str:
        return f"{count:,} ({100 * count / sam:.1f} %)"

    def variants_table(records: list[dict[str, Any]], first_column: str, columns: list[str]) -> str:
        rows = []
        for model in dict.fromkeys(r["sam"] for r in records):
            sizes = [r for r in records if r["sam"] == model]
            cells = [cell(r["trainable"], r["sam_parameters"]) for r in sizes]
            rows.append([model, f"{sizes[0]['sam_parameters']:,}", *cells])
        return markdown([first_column, "parameters", *columns], rows)

    print("\n" + variants_table(variants, "SAM", list(VARIANTS)))
    print("\n" + variants_table(family_variants, "model", list(FAMILY_VARIANTS)))
    rows = [
        [
            r["sam"],
            r["method"],
            cell(r["trainable"], r["sam_parameters"]),
            f"{r['stored']:,}",
            f"{r['stored'] * 4 / 2**20:,.1f}",
        ]
        for r in methods
    ]
    print("\n" + markdown(["SAM", "method", "trainable", "stored", "stored MiB (fp32)"], rows))
    return record


if __name__ == "__main__":
    main()
