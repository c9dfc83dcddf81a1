"""A CPU-scale replication of Med-SA's comparisons on real medical images: which adaptation works, and why.

    python benchmarks/replicate.py [--base models/sam-small-synthetic] [--quick] [--output runs/replication.json]

At equal training budget (steps, batch, learning rate) and seeds it compares, on the offline demo task's
test cases: the zero-shot base; decoder-only fine-tuning; LoRA r=4 on the encoder's qkv plus a trained decoder
(the SAMed recipe); Med-SA `encoder-only`, `official-code` and `paper`; the paper's ablations: HyP-Adpt against
plain prompt fusion (`hyper_prompt_mode="add"`), and SD-Trans against slice-wise 2-D on the volumetric task.
Prompts: 1 click, 3 clicks, BBox 0.75 (train and test alike; test prompts have a fixed seed). It prints a JSON
record of every run and markdown tables of Dice and HD95, mean +- std over seeds, and writes the record to
--output. `--quick` is a smoke run (one seed, one prompt, few steps).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import MEDSA_DEPTH, build
from peft import get_peft_model
from transformers import SamModel

from peft_medsa import MedSAConfig
from peft_medsa.data import resolve_task
from peft_medsa.training import evaluate
from peft_medsa.training.arguments import MedSATrainingArguments, TaskArguments
from peft_medsa.training.evaluation import evaluation_set
from peft_medsa.training.run import make_trainer, training_set

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ("1-click", "3-click", "bbox-0.75")


# Each method turns a fresh copy of the base into the model to train (None: evaluated as it is); the compared
# methods are those of the speed benchmarks (benchmarks/common.py), plus the paper's two ablations.
METHODS: dict[str, Callable[[SamModel], Any]] = {
    "zero-shot": lambda base: None,
    **{name: partial(build, name) for name in ("decoder only", "LoRA r=4 + decoder")},
    **{
        name: partial(build, name) for name in ("Med-SA encoder-only", "Med-SA official-code", "Med-SA paper")
    },
    "Med-SA paper, plain prompt fusion": lambda base: get_peft_model(
        base, MedSAConfig.from_preset("paper", hyper_prompt_mode="add")
    ),
}
VOLUME_METHODS = {
    "Med-SA paper + SD-Trans": MEDSA_DEPTH,
    "Med-SA paper, slice-wise": partial(build, "Med-SA paper"),
}


def run_one(
    base: SamModel,
    build: Callable,
    task: str,
    prompt: str,
    seed: int,
    args: argparse.Namespace,
    depth: int | None,
) -> dict[str, Any]:
    """Train one method for the budget, then score it per case on the test split."""
    torch.manual_seed(seed)
    started = time.time()
    model = build(copy.deepcopy(base))
    spec = resolve_task(task)
    training_args = MedSATrainingArguments(
        output_dir=str(args.scratch),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=8,
        learning_rate=args.learning_rate,
        warmup_steps=args.steps // 10,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        logging_steps=max(args.steps, 1),
    )
    test_set = evaluation_set(
        spec, base.config, "test", prompt, depth=depth, max_samples=args.max_test_samples, streaming=False
    )
    trained = model if model is not None else base
    if model is not None:
        train_args = TaskArguments(
            task=task, train_prompt=prompt, prompt_seed=seed, depth=depth, streaming=False
        )
        train_set = training_set(train_args, base.config, shuffle_seed=seed)
        make_trainer(trained, training_args, test_set, spec.labels, train_set=train_set).train()
    report = evaluate(trained, spec, "test", prompt, examples=test_set, device="cpu")
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad) if model is not None else 0
    return {
        "seed": seed,
        "prompt": prompt,
        "dice": report.metrics["dice"],
        "hd95": report.metrics[f"hd95_{report.distance_unit}"],
        "distance_unit": report.distance_unit,
        "per_case": report.per_case,
        "trainable_parameters": trainable,
        "seconds": round(time.time() - started, 1),
    }


def summarise(records: list[dict[str, Any]], methods: list[str], prompts: list[str]) -> str:
    """Markdown: one row per method, Dice and HD95 (in the unit of the runs) as mean +- std over seeds per
    prompt, trainable parameters."""
    unit = records[0].get("distance_unit", "mm") if records else "mm"
    header = "| method | trainable | " + " | ".join(f"{p}: Dice | {p}: HD95 ({unit})" for p in prompts) + " |"
    lines = [header, "|---|---:|" + "---:|---:|" * len(prompts)]
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        cells = []
        for prompt in prompts:
            dice = [r["dice"] for r in runs if r["prompt"] == prompt]
            hd95 = [r["hd95"] for r in runs if r["prompt"] == prompt and r["hd95"] == r["hd95"]]
            cells += [_mean_std(dice, 3), _mean_std(hd95, 1)]
        lines.append(f"| {method} | {runs[0]['trainable_parameters']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_case(
    records: list[dict[str, Any]], methods: list[str], prompt: str, class_names: dict[int, str]
) -> str:
    """Markdown: Dice per test case and class (mean +- std over seeds) for one prompt."""
    runs = [r for r in records if r["prompt"] == prompt]
    targets = sorted({(c["case_id"], c["class_id"]) for r in runs for c in r["per_case"]})
    names = [f"{case} {class_names.get(class_id, class_id)}" for case, class_id in targets]
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(targets)]
    for method in methods:
        cells = []
        for case, class_id in targets:
            dice = [
                c["dice"]
                for r in runs
                if r["method"] == method
                for c in r["per_case"]
                if (c["case_id"], c["class_id"]) == (case, class_id)
            ]
            cells.append(_mean_std(dice, 3))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(record: dict[str, Any]) -> None:
    """Print the tables of a run record (as written to --output)."""
    runs, steps = record["runs"], record["arguments"]
    seeds = len({r["seed"] for r in runs})
    for task, methods, title in (
        ("demo-2d", list(METHODS), f"2-D: demo-2d test cases ({seeds} seed(s), {steps['steps']} steps)"),
        (
            "demo-3d",
            list(VOLUME_METHODS),
            f"3-D: demo-3d test volumes, chunks of 4 slices ({steps['volume_steps']} steps)",
        ),
    ):
        task_runs = [r for r in runs if r["task"] == task]
        prompts = [p for p in PROMPTS if any(r["prompt"] == p for r in task_runs)]
        print(f"\n## {title}\n\n" + summarise(task_runs, methods, prompts))
        for prompt in prompts:
            print(
                f"\nDice per test case, {prompt}:\n\n"
                + per_case(task_runs, methods, prompt, resolve_task(task).labels)
            )
    print(f"\nwall time: {record['wall_time_s']} s")


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base", default=str(REPO / "models" / "sam-small-synthetic"), help="the SAM to adapt"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, BBox 0.75, few steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--volume-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-test-samples", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path("runs/replication.json"))
    parser.add_argument(
        "--report", type=Path, help="only print the tables of a record written by an earlier run"
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return
    prompts = list(PROMPTS)
    if args.quick:
        args.seeds, prompts, args.steps, args.volume_steps, args.max_test_samples = (
            [0],
            ["bbox-0.75"],
            15,
            6,
            12,
        )
    args.scratch = args.output.parent / "replication-scratch"
    torch.set_num_threads(2)
    base = SamModel.from_pretrained(args.base).eval()
    started = time.time()
    records = []
    for method, adapt in METHODS.items():
        for prompt in prompts:
            for seed in args.seeds:
                records.append(
                    {
                        "task": "demo-2d",
                        "method": method,
                        **run_one(base, adapt, "demo-2d", prompt, seed, args, None),
                    }
                )
                print(json.dumps({k: v for k, v in records[-1].items() if k != "per_case"}), flush=True)
    volume_args = argparse.Namespace(**{**vars(args), "steps": args.volume_steps})
    for method, adapt in VOLUME_METHODS.items():
        for seed in args.seeds:
            records.append(
                {
                    "task": "demo-3d",
                    "method": method,
                    **run_one(base, adapt, "demo-3d", "bbox-0.75", seed, volume_args, depth=4),
                }
            )
            print(json.dumps({k: v for k, v in records[-1].items() if k != "per_case"}), flush=True)
    record = {"base": args.base, "arguments": {k: str(v) for k, v in vars(args).items()}, "runs": records}
    record["wall_time_s"] = round(time.time() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    report(record)


if __name__ == "__main__":
    main()
