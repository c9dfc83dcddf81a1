"""Trainable and stored parameters of each Med-SA preset on SAM ViT-B/L/H configs (random init on the meta device).

Run: `python benchmarks/parameter_counts.py` (a few seconds; nothing is downloaded). Prints a JSON record and the
markdown table that the README shows.
"""

from __future__ import annotations

import json

import torch
from peft import get_peft_model
from transformers import SamConfig, SamModel

from peft_medsa import MedSAConfig

# The vision encoders of the three released SAM checkpoints (facebook/sam-vit-{base,large,huge}).
VISION_CONFIGS = {
    "ViT-B": {},
    "ViT-L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "ViT-H": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}
VARIANTS = {
    "paper": dict(preset="paper"),
    "paper + SD-Trans": dict(preset="paper", depth_attention=True),
    "official-code": dict(preset="official-code"),
    "encoder-only": dict(preset="encoder-only"),
    "encoder-only, ratio 1/16": dict(preset="encoder-only", adapter_ratio=1 / 16),
}


def count(vision_config: dict, preset: str, **overrides) -> tuple[int, int]:
    """(trainable parameters, parameters of SAM alone) for one preset; built on the meta device, so no memory."""
    with torch.device("meta"):
        model = get_peft_model(SamModel(SamConfig(vision_config=vision_config)), MedSAConfig.from_preset(preset, **overrides))
    trainable, total = model.get_nb_trainable_parameters()
    return trainable, total - sum(p.numel() for n, p in model.named_parameters() if ".medsa_" in n)


def main() -> None:
    records = []
    for size, vision_config in VISION_CONFIGS.items():
        for variant, options in VARIANTS.items():
            trainable, sam = count(vision_config, **options)
            records.append({"sam": size, "variant": variant, "trainable": trainable, "sam_parameters": sam})
    print(json.dumps(records, indent=1))
    print("\n| SAM | parameters | " + " | ".join(VARIANTS) + " |")
    print("|---|---:|" + "---:|" * len(VARIANTS))
    for size in VISION_CONFIGS:
        rows = [r for r in records if r["sam"] == size]
        cells = [f"{r['trainable']:,} ({100 * r['trainable'] / r['sam_parameters']:.1f} %)" for r in rows]
        print(f"| {size} | {rows[0]['sam_parameters']:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
