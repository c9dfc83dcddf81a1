"""Quick start: wrap SAM with Med-SA, segment an image and a volume, take a few training steps, save and reload.

Offline (default) it uses a small random SamConfig; `--model facebook/sam-vit-base` uses the real checkpoint.
    python examples/quickstart.py [--model facebook/sam-vit-base] [--output runs/quickstart] [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from small_sam import small_sam
from transformers import SamModel

import peft_medsa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a SAM checkpoint on the Hub or on disk (default: small random SAM)")
    parser.add_argument("--output", type=Path, default=Path("runs/quickstart"), help="where the adapter is saved")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter already saved in --output")
    args = parser.parse_args()
    if (args.output / "adapter_model.safetensors").exists() and not args.overwrite:
        parser.error(f"{args.output} already holds an adapter; pass --overwrite to replace it, or another --output.")
    torch.manual_seed(0)

    if args.model:
        base = SamModel.from_pretrained(args.model)
    else:  # keep a copy of the random base: the adapter is only meaningful on top of the base it was trained on
        base = small_sam()
        base.save_pretrained(args.output / "base")
    size = base.config.vision_config.image_size
    model = get_peft_model(base, peft_medsa.MedSAConfig.from_preset("paper", depth_attention=True))
    model.print_trainable_parameters()

    # A 2-D image with one positive click (x, y), and a volume of 4 slices with one box per slice (SD-Trans).
    image = torch.randn(1, 3, size, size)
    click = {"input_points": torch.tensor([[[[size / 2, size / 3]]]]), "input_labels": torch.tensor([[[1]]])}
    volume = torch.randn(1, 3, 4, size, size)
    boxes = torch.tensor([[[size / 4, size / 4, 3 * size / 4, 3 * size / 4]]]).repeat(4, 1, 1)
    with torch.no_grad():
        print("image masks:", tuple(model(pixel_values=image, **click).pred_masks.shape), "(batch, prompts, masks, h, w)")
        print("volume masks:", tuple(model(pixel_values=volume, input_boxes=boxes).pred_masks.shape), "(slices, ...)")

    # Ten steps towards a square target: only the adapters move.
    mask_size = 4 * size // base.config.vision_config.patch_size
    target = torch.zeros(1, 1, mask_size, mask_size)
    target[..., mask_size // 4 : 3 * mask_size // 4, mask_size // 4 : 3 * mask_size // 4] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(10):
        logits = model(pixel_values=image, **click, multimask_output=False).pred_masks[:, :, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")

    # Save the adapter only, reload it onto a fresh copy of the same base, and check the masks agree.
    model.eval()
    model.save_pretrained(args.output)
    weights = args.output / "adapter_model.safetensors"
    print(f"adapter saved to {weights} ({weights.stat().st_size / 1e6:.2f} MB)")
    reloaded = PeftModel.from_pretrained(SamModel.from_pretrained(args.model or args.output / "base"), args.output)
    model.requires_grad_(False)  # compare frozen with frozen: torch's CPU kernels may differ in the last bit
    with torch.no_grad():
        before = model(pixel_values=image, **click).pred_masks
        after = reloaded.eval()(pixel_values=image, **click).pred_masks
    print(f"reloaded adapter: max |mask logit difference| = {(before - after).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
