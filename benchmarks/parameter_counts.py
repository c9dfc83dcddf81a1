"""Trainable and stored parameters of each Med-SA preset and of the compared methods on SAM ViT-B/L/H configs.

Models are built on the meta device (random init, no memory, nothing downloaded). "Stored" is what a user keeps
to reproduce the result: the PEFT adapter file (adapters and `modules_to_save`), the mask decoder for decoder-only
fine-tuning, the whole model for full fine-tuning.

Run: `python benchmarks/parameter_counts.py` (a few seconds). Prints a JSON record, the markdown table of Med-SA
variants that the README shows, and the table of compared methods.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from common import METHODS, VISION_CONFIGS, build, markdown, parameter_counts, sam_config
from peft import get_peft_model
from transformers import SamModel

from peft_medsa import MedSAConfig

VARIANTS = {
    "paper": {"preset": "paper"},
    "paper + SD-Trans": {"preset": "paper", "depth_attention": True},
    "official-code": {"preset": "official-code"},
    "encoder-only": {"preset": "encoder-only"},
    "encoder-only, ratio 1/16": {"preset": "encoder-only", "adapter_ratio": 1 / 16},
}


def count(size: str, preset: str, **overrides: Any) -> tuple[int, int]:
    """(trainable parameters, parameters of SAM alone) for one Med-SA preset."""
    with torch.device("meta"):
        model = SamModel(sam_config(size))
        sam = sum(p.numel() for p in model.parameters())
        model = get_peft_model(model, MedSAConfig.from_preset(preset, **overrides))
    return model.get_nb_trainable_parameters()[0], sam


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
    record = {"medsa_variants": variants, "methods": methods}
    print(json.dumps(record, indent=1))

    def cell(count: int, sam: int) -> str:
        return f"{count:,} ({100 * count / sam:.1f} %)"

    rows = []
    for size in VISION_CONFIGS:
        sizes = [r for r in variants if r["sam"] == size]
        cells = [cell(r["trainable"], r["sam_parameters"]) for r in sizes]
        rows.append([size, f"{sizes[0]['sam_parameters']:,}", *cells])
    print("\n" + markdown(["SAM", "parameters", *VARIANTS], rows))
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
