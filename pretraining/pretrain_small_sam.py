"""Pretrain a small promptable SAM on synthetic shapes: the offline base checkpoint that Med-SA demos adapt.

    python pretraining/pretrain_small_sam.py --seed 0 --steps 2400 --threads 1 \
        --output models/sam-small-synthetic

No SAM weights can be downloaded here, and adapting a random SAM is meaningless (it collapses to empty masks).
This trains all weights of a 0.77M-parameter `SamModel` (128 px, patch 16, four 96-wide blocks)
from scratch on procedurally generated images (`synthetic_shapes.py`), with SAM's recipe in small: box and
click prompts, three masks per prompt, the best of the three trained with Dice + BCE, and the IoU head
regressed onto the real IoU of that mask. It writes `save_pretrained` safetensors and a model card that says
how the checkpoint was made and what it is not.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from synthetic_shapes import SyntheticShapes
from transformers import SamConfig, SamModel

from peft_medsa.training import MedSALoss, select_masks

IMAGE_SIZE, PATCH_SIZE = 128, 16
MASK_SIZE = 4 * IMAGE_SIZE // PATCH_SIZE  # the mask decoder's output resolution


def small_sam_config(hidden_size: int = 96, layers: int = 4, neck: int = 64) -> SamConfig:
    """A CPU-sized SAM (windowed and global blocks as in SAM), width and depth adjustable, SAM's init (0.02)."""
    vision = {
        "hidden_size": hidden_size, "num_hidden_layers": layers, "num_attention_heads": 4, "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE, "output_channels": neck, "window_size": 4,
        "global_attn_indexes": list(range(layers // 2 - 1, layers, layers // 2)), "num_pos_feats": neck // 2,
        "mlp_dim": 4 * hidden_size,
    }  # fmt: skip
    return SamConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": neck, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        mask_decoder_config={
            "hidden_size": neck,
            "mlp_dim": 4 * neck,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": neck,
        },
    )


def build_model(config: SamConfig) -> SamModel:
    """A random SamModel whose prompt/image positional encoding has SAM's scale.

    transformers draws the random Fourier matrix with std hidden_size // 2 (32 here): dozens of periods across
    the image, so nearby pixels get unrelated codes. SAM's own code draws it with std 1.
    """
    model = SamModel(config)
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    return model


def training_batch(data: SyntheticShapes, step: int, batch_size: int, prompts_per_image: int) -> dict:
    """Box prompts at two steps out of three (the demo and most medical benchmarks use boxes), else clicks."""
    return data.batch(batch_size, prompts_per_image, prompt="points" if step % 3 == 2 else "box")


@torch.no_grad()
def synthetic_dice(model: SamModel, batches: list[dict]) -> float:
    """Mean Dice over prompts of the mask SAM would return (highest predicted IoU), at decoder resolution."""
    model.eval()
    scores = []
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        outputs = model(**inputs, multimask_output=True)
        predicted = select_masks((outputs.iou_scores, outputs.pred_masks)) > 0
        target = batch["labels"] > 0.5
        intersection = (predicted & target).sum((-2, -1))
        total = predicted.sum((-2, -1)) + target.sum((-2, -1))
        scores.append((2 * intersection / total.clamp(min=1)).flatten())
    model.train()
    return torch.cat(scores).mean().item()


def held_out_batches(seed: int, count: int = 8, batch_size: int = 32) -> list[dict]:
    """Fixed evaluation batches from a generator seeded apart from training: exact boxes, one per image."""
    data = SyntheticShapes(IMAGE_SIZE, MASK_SIZE, seed=1_000_003 + seed)
    return [data.batch(batch_size, 1, prompt="box", jitter=False) for _ in range(count)]


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def pretrain(args: argparse.Namespace) -> tuple[SamModel, dict]:
    torch.manual_seed(args.seed)
    model = build_model(small_sam_config(args.hidden_size, args.layers))
    data = SyntheticShapes(IMAGE_SIZE, MASK_SIZE, seed=args.seed, box_jitter=args.box_jitter)
    held_out = held_out_batches(args.seed)
    loss_fn = MedSALoss(dice_weight=1.0, bce_weight=1.0, iou_weight=1.0)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.98),
    )
    started, running = time.time(), 0.0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.learning_rate, args.warmup_steps)
        batch = training_batch(data, step, args.batch_size, args.prompts_per_image)
        labels = batch.pop("labels")
        outputs = model(**batch, multimask_output=True)
        loss = loss_fn(outputs.pred_masks, labels, outputs.iou_scores)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        running += loss.item()
        if (step + 1) % args.log_every == 0:
            line = f"step {step + 1}/{args.steps}  loss {running / args.log_every:.4f}"
            line += f"  {time.time() - started:.0f}s"
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                line += f"  held-out Dice (box) {synthetic_dice(model, held_out):.4f}"
            print(line, flush=True)
            running = 0.0
    summary = {
        "held_out_dice": round(synthetic_dice(model, held_out), 4),
        "wall_time_s": round(time.time() - started),
    }
    return model, summary


def model_card(args: argparse.Namespace, model: SamModel, summary: dict) -> ModelCard:
    """The card: how the checkpoint was made (command, steps, time, data) and what it must not be used for."""
    parameters = sum(p.numel() for p in model.parameters())
    command = "python " + shlex.join(["pretraining/pretrain_small_sam.py", *sys.argv[1:]])
    return ModelCard(f"""---
library_name: transformers
pipeline_tag: mask-generation
license: apache-2.0
tags:
- sam
- segment-anything
- synthetic-data
- peft-medsa
- offline-demo
---

# sam-small-synthetic

A small promptable `SamModel` ({parameters:,} parameters; {IMAGE_SIZE} px input, patch {PATCH_SIZE},
{MASK_SIZE}x{MASK_SIZE} masks) pretrained **from scratch on procedurally generated shapes**, so that the
peft-medsa demos and tests have a promptable base to adapt where no SAM checkpoint can be downloaded.

## What it is not

- **Not a substitute for SAM** (`facebook/sam-vit-base`) or for any medical SAM: it never saw a natural or a
  medical image, it is tiny and it segments at {MASK_SIZE}x{MASK_SIZE}.
- **Not trained on any medical data**, and not validated for any clinical or research use.
- For offline demos and tests of peft-medsa only. Online, use a real SAM checkpoint.

## How it was made

```bash
{command}
```

- All weights trained (no initial checkpoint), seed {args.seed}, {args.steps} steps of {args.batch_size}
  images x {args.prompts_per_image} prompts, {summary["wall_time_s"]} s wall time on 2 CPU cores (torch
  {torch.__version__}).
- Data: `pretraining/synthetic_shapes.py`, generated on the fly: up to 5 overlapping ellipses, polygons,
  stars and blobs (some as rings) with their own colours and textures (smooth noise, stripes) on a textured
  background with a gradient; grey or colour, sometimes a dark frame; blur, noise, gamma and contrast changes;
  a third of the images padded bottom/right as SAM's processor pads non-square images; ImageNet mean/std.
- Prompts, in SAM's (x, y) convention at the input frame: tight boxes of the visible target (half jittered by
  {args.box_jitter:.0%} of the side) at 2 steps out of 3, otherwise 1-3 positive clicks with 0-2 negatives.
- Loss: multimask output, the best of 3 masks trained with Dice + BCE, plus the IoU head's MSE against the
  chosen mask's IoU (`peft_medsa.training.MedSALoss(iou_weight=1.0)`). AdamW (lr {args.learning_rate},
  weight decay {args.weight_decay}), {args.warmup_steps} warmup steps then cosine, gradient clipping at
  {args.max_grad_norm}.

## Evaluation

Held-out synthetic Dice with exact box prompts (256 images from a generator seeded apart from training; the
mask with the highest predicted IoU, at {MASK_SIZE}x{MASK_SIZE}): **{summary["held_out_dice"]:.3f}**.

## Use

```python
from transformers import SamModel

model = SamModel.from_pretrained("models/sam-small-synthetic")
```

Inputs are SAM's: `pixel_values` (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) of [0, 1] RGB normalised with ImageNet
mean/std (`SamProcessor` with `longest_edge={IMAGE_SIZE}` does it), prompts in input pixels.
""")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--output", type=Path, default=Path("models/sam-small-synthetic"))
    parser.add_argument("--batch_size", type=int, default=32, help="images per step")
    parser.add_argument("--prompts_per_image", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--box_jitter", type=float, default=0.05)
    parser.add_argument("--hidden_size", type=int, default=96, help="vision encoder width")
    parser.add_argument("--layers", type=int, default=4, help="vision encoder blocks")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--eval_every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, summary = pretrain(args)
    model.save_pretrained(args.output)
    model_card(args, model, summary).save(args.output / "README.md")
    print(f"held-out Dice {summary['held_out_dice']:.4f}, {summary['wall_time_s']} s; wrote {args.output}")


if __name__ == "__main__":
    main()
