"""The offline demo: train a Med-SA adapter on real medical images that Python packages ship, and report it.

    python examples/demo.py [--model PATH_OR_HUB_ID] [--output runs/demo] [--max_steps 150] [--overwrite]

It evaluates the base model (zero-shot), the box itself used as the mask (no model at all), then trains a `paper`
adapter with the Trainer and evaluates it on the same seeded prompts; it writes the adapter with its model card,
metrics.json, learning_curve.png and overlay PNGs to --output. Offline the base is the small SAM pretrained here
on synthetic shapes (models/sam-small-synthetic); online, pass --model facebook/sam-vit-base (use a GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from peft import PeftModel
from PIL import Image
from transformers import SamModel

import peft_medsa  # noqa: F401  (registers Med-SA with peft)
from peft_medsa.data import SamDataCollator
from peft_medsa.mask_selection import predict_masks, select_masks
from peft_medsa.predict import Prompt, write_overlay
from peft_medsa.training import evaluate
from peft_medsa.training.arguments import (
    MedSAArguments,
    MedSATrainingArguments,
    ModelArguments,
    TaskArguments,
)
from peft_medsa.training.evaluation import evaluation_set
from peft_medsa.training.run import train

TASK, PROMPT = "demo-2d", "box"
# The small SAM pretrained here on synthetic shapes (models/sam-small-synthetic/README.md): no SAM checkpoint can
# be downloaded offline, and adapting a random SAM says nothing.
SMALL_BASE = Path(__file__).resolve().parents[1] / "models" / "sam-small-synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(SMALL_BASE), help="SAM checkpoint (Hub id or folder)")
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous demo in --output")
    args = parser.parse_args()
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            parser.error(f"{args.output} is not empty; pass --overwrite to replace it, or another --output.")
        shutil.rmtree(args.output)
    started = time.time()
    torch.manual_seed(0)
    model_path = args.model

    task_args = TaskArguments(
        task=TASK, train_prompt=PROMPT, eval_prompt=PROMPT, streaming=False
    )  # small: load it
    training_args = MedSATrainingArguments(
        output_dir=str(args.output / "adapter"),
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=args.learning_rate,
        warmup_steps=20,
        eval_strategy="steps",
        eval_steps=max(args.max_steps // 6, 1),
        save_strategy="steps",
        save_steps=max(args.max_steps // 6, 1),
        save_total_limit=2,
        load_best_model_at_end=True,
        logging_steps=10,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=0,
        disable_tqdm=True,
    )

    base = SamModel.from_pretrained(model_path)
    split = task_args.eval_split
    eval_set = evaluation_set(TASK, base.config, split, PROMPT, streaming=False)
    before = evaluate(base, TASK, split, PROMPT, examples=eval_set, box_baseline=True)
    train(ModelArguments(model_path), task_args, MedSAArguments(preset="paper"), training_args)
    adapted = PeftModel.from_pretrained(SamModel.from_pretrained(model_path), training_args.output_dir)
    after = evaluate(adapted, TASK, split, PROMPT, examples=eval_set)  # the kept (best) checkpoint

    report = {
        "task": TASK,
        "prompt": PROMPT,
        "base_model": model_path,
        "eval_examples": len(eval_set),
        "units": before.units,
        "zero_shot": before.quality(),
        "box_baseline": before.box_baseline,
        "medsa_paper": after.quality(),
        "wall_time_s": round(time.time() - started, 1),
    }
    (args.output / "metrics.json").write_text(json.dumps(report, indent=2))
    plot_learning_curve(args.output / "adapter" / "trainer_state.json", args.output / "learning_curve.png")
    write_overlays(adapted, eval_set, args.output / "overlays")
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("task", "prompt", "base_model")}, indent=2)
    )


def plot_learning_curve(state_file: Path, output: Path) -> None:
    """Training loss and validation Dice against steps, from the Trainer's log history."""
    history = json.loads(state_file.read_text())["log_history"]
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    dice: dict[int, float] = {}  # the evaluations during training (not the final one of the best checkpoint)
    for entry in history:
        if "eval_dice" in entry:
            dice.setdefault(entry["step"], entry["eval_dice"])
    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    loss_axis.plot(*zip(*train, strict=False), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss (Dice + BCE)", color="tab:blue")
    dice_axis = loss_axis.twinx()
    dice_axis.plot(list(dice), list(dice.values()), "o-", color="tab:red", label="validation Dice")
    dice_axis.set_ylabel("validation Dice", color="tab:red")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def write_overlays(model: PeftModel, examples: list[dict], folder: Path, count: int = 4) -> None:
    """Image, target outline (green), box prompt (yellow) and predicted mask (red, tinted) for validation examples."""
    model = model.cpu().eval()
    folder.mkdir(parents=True, exist_ok=True)
    picks = examples[:: max(len(examples) // count, 1)][:count]
    batch = SamDataCollator()(picks)
    labels = batch.pop("labels")
    with torch.no_grad():
        outputs = predict_masks(model, batch)  # the mask-selection rule of training and evaluation
    masks = select_masks((outputs.iou_scores, outputs.pred_masks))[:, 0] > 0  # (B, h, w)
    for i, example in enumerate(picks):
        size = example["pixel_values"].shape[-1]
        name = f"{example['case_id']}_slice{int(example['slice_index'])}_class{int(example['class_id'])}.png"
        write_overlay(
            example["pixel_values"][0].numpy(),  # one channel of the normalised input: a grey image
            _resize(masks[i].numpy(), size),
            Prompt(box=tuple(example["input_boxes"][0].tolist())),
            folder / name,
            target=_resize(labels[i, 0].numpy() > 0, size),
            zoom=2,
        )


def _resize(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask at the decoder's resolution, enlarged (nearest) to the model's input frame."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0


if __name__ == "__main__":
    main()
