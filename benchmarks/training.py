"""Training step time of each compared method: eager, with gradient checkpointing, with a bf16 base, compiled.

One step = forward with one click per image, BCE on the mask logits, backward, AdamW step. All variants are built
in this process and timed interleaved (median of 3 after a warm-up), so that a shared machine's load hits them
alike. The first call of each variant is timed apart: for a `torch.compile`d model (inductor) it is the compile
time plus one step. `--profile` prints `torch.profiler`'s top ops of one step of each compiled variant and of its
eager twin: where the time goes. Peak memory is `memory.py`'s.

Run: `python benchmarks/training.py --compile "Med-SA paper"` (CPU profile: ViT-B, 256 px, batch 2);
`--model sam2` for SAM 2.1 Hiera-T; `--device cuda --image-size 1024 --dtype bf16` for the GPU profile; `--tiny`
for a smoke test.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    METHODS,
    Profile,
    Variant,
    add_compile_arguments,
    add_method_arguments,
    add_profile_arguments,
    first_call_seconds,
    markdown,
    median_times,
    profiler_table,
    report,
)

# Also timed with gradient checkpointing by default: the methods of the targets (checkpointing changes
# nothing for decoder-only fine-tuning, where no gradient flows through the image encoder).
CHECKPOINTED = ["Med-SA paper", "LoRA r=4 + decoder", "full fine-tuning"]


def training_step(profile: Profile, variant: Variant) -> tuple[Callable[[], None], int]:
    """One optimisation step of `variant` on the profile's model, as a function; and the trainable parameter count."""
    model = variant.build(profile.base_model()).train()
    run = variant.runner(model, profile.compile_backend)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    inputs = profile.inputs()
    labels = inputs.pop("labels")
    inputs = {name: x.to(variant.input_dtype) if x.is_floating_point() else x for name, x in inputs.items()}

    def step() -> None:
        with profile.autocast():
            logits = run(**inputs, multimask_output=False).pred_masks
        F.binary_cross_entropy_with_logits(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in parameters)


def variants(args: argparse.Namespace) -> list[Variant]:
    """Every method eager; then with checkpointing, with a bf16 base and compiled, where asked."""
    chosen = [Variant(m) for m in args.methods]
    chosen += [Variant(m, checkpointing=True) for m in args.methods if m in args.checkpointing]
    chosen += [Variant(m, bf16_base=True) for m in args.methods if m in args.bf16_base]
    chosen += [Variant(m, compiled=True) for m in args.methods if m in args.compile]
    return chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_profile_arguments(parser, repeats=3, models=("sam", "sam2"))
    add_method_arguments(parser, "timed", list(METHODS), CHECKPOINTED, [])
    add_compile_arguments(parser, list(METHODS))
    args = parser.parse_args(argv)
    profile = Profile.from_args(args)
    profile.setup()
    embedding_std = profile.check_scale(profile.base_model())
    steps, trainable = {}, {}
    for variant in variants(args):
        steps[variant], trainable[variant] = training_step(profile, variant)
    first = {variant: first_call_seconds(step, profile) for variant, step in steps.items()}
    medians = median_times(steps, profile)
    rows = [
        {"variant": variant.label, "method": variant.method, "gradient_checkpointing": variant.checkpointing,
         "bf16_base": variant.bf16_base, "compiled": variant.compiled, "trainable": trainable[variant],
         "step_s": medians[variant], "first_step_s": first[variant]}
        for variant in steps
    ]  # fmt: skip
    record = {"embedding_std": embedding_std, "results": rows, "ratios": ratios(rows), "targets": TARGETS}
    table = markdown(
        ["variant", "trainable", "step (s)", "vs eager", "first step (s)"],
        [[r["variant"], f"{r['trainable']:,}", f"{r['step_s']:.3f}", _vs_eager(r, rows), f"{r['first_step_s']:.1f}"]
         for r in rows],
    )  # fmt: skip
    result = report("training", profile, record, table)
    if args.profile:
        for variant in [v for v in steps if v.compiled]:
            for twin in (Variant(variant.method), variant):
                print(f"\n## torch.profiler, one step of {twin.label}\n")
                print(profiler_table(steps[twin], profile))
    return result


def _eager(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the same method, eager, without options."""
    return next((r for r in rows if r["variant"] == row["method"]), None)


def _vs_eager(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    eager = _eager(row, rows)
    return f"{row['step_s'] / eager['step_s']:.2f}x" if eager else ""


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The issue's targets, from figures of this run: Med-SA vs LoRA, and every compiled method vs eager."""
    step = {r["variant"]: r["step_s"] for r in rows}
    result = {}
    if "Med-SA paper" in step and "LoRA r=4 + decoder" in step:
        result["paper_step_vs_lora"] = step["Med-SA paper"] / step["LoRA r=4 + decoder"]
    for row in rows:
        if row["compiled"] and (eager := _eager(row, rows)):
            result[f"{row['method']} compiled vs eager"] = row["step_s"] / eager["step_s"]
            result[f"{row['method']} compile time s"] = row["first_step_s"] - row["step_s"]
    return result


TARGETS = {"paper_step_vs_lora": "<= 1.25", "Med-SA paper compiled vs eager": "<= 0.8"}


if __name__ == "__main__":
    main()
