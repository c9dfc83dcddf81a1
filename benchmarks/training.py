"""Training step time and peak memory of each compared method, with and without gradient checkpointing.

One step = forward with one click per image, BCE on the mask logits, backward, AdamW step. Step times: all
variants built in this process and timed interleaved (median of 3 after a warm-up), so that a shared machine's
load hits them alike. Memory: each (method, checkpointing) pair runs two steps in a fresh process, so that its peak
is its own: peak RSS on CPU (the kernel's high-water mark), `torch.cuda.max_memory_allocated` on GPU. On CPU the
figure compared is the peak minus the RSS of the process just before the model is built, after a step of the same
method on a tiny SAM (the interpreter, torch's libraries and the code pages a step touches): the analogue of the
GPU figure, which counts tensors only. The absolute peak RSS is in the record too.

Run: `python benchmarks/training.py` (CPU profile: ViT-B, 256 px, batch 2; a few minutes on 2 cores);
`--device cuda --image-size 1024 --dtype bf16` for the GPU profile; `--tiny` for a smoke test.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    METHODS,
    Profile,
    add_profile_arguments,
    build,
    markdown,
    median_times,
    memory_mb,
    report,
    reset_peak_memory,
    run_isolated,
)

# Also measured with gradient checkpointing by default: the targets (checkpointing changes nothing for
# decoder-only fine-tuning, where no gradient flows through the image encoder).
CHECKPOINTED = ["Med-SA paper", "LoRA r=4 + decoder", "full fine-tuning"]


def measure_memory(profile: Profile, method: str, checkpointing: bool) -> dict[str, Any]:
    """Peak memory of two steps of one method (the second holds AdamW's state); run in a fresh process.

    A step of the same method on a tiny SAM runs first, so that the code it touches (torch's kernels, pages of the
    shared libraries) is resident before the baseline is read: the CPU figure then counts data, not code.
    """
    profile.setup()
    training_step(replace(profile, tiny=True, image_size=64), method, checkpointing)[0]()
    gc.collect()
    reset_peak_memory(profile.device)
    start_mb = memory_mb(profile.device, peak=False)
    step, trainable = training_step(profile, method, checkpointing)
    step()
    step()
    peak_mb = memory_mb(profile.device, peak=True)
    return {
        "method": method,
        "gradient_checkpointing": checkpointing,
        "trainable": trainable,
        "peak_mb": peak_mb,
        "start_mb": start_mb,
        "training_mb": peak_mb - start_mb,
    }


def training_step(profile: Profile, method: str, checkpointing: bool) -> tuple[Callable[[], None], int]:
    """One optimisation step of `method` on the profile's SAM, as a function; and the trainable parameter count."""
    model = build(method, profile.base_model()).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    inputs = profile.inputs()
    labels = inputs.pop("labels")

    def step() -> None:
        with profile.autocast():
            logits = model(**inputs, multimask_output=False).pred_masks
        F.binary_cross_entropy_with_logits(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in parameters)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The issue's targets, from figures of this run."""

    def figure(method: str, checkpointing: bool, key: str) -> float | None:
        row = next(
            (r for r in rows if r["method"] == method and r["gradient_checkpointing"] == checkpointing), None
        )
        return row[key] if row else None

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return numerator / denominator if numerator is not None and denominator else None

    paper, lora, full = "Med-SA paper", "LoRA r=4 + decoder", "full fine-tuning"
    return {
        "paper_step_vs_lora": ratio(figure(paper, False, "step_s"), figure(lora, False, "step_s")),
        "paper_memory_vs_full": ratio(
            figure(paper, False, "training_mb"), figure(full, False, "training_mb")
        ),
        "paper_checkpointed_memory_vs_full": ratio(
            figure(paper, True, "training_mb"), figure(full, False, "training_mb")
        ),
        "paper_checkpointed_memory_vs_full_checkpointed": ratio(
            figure(paper, True, "training_mb"), figure(full, True, "training_mb")
        ),
        "paper_peak_rss_vs_full": ratio(figure(paper, False, "peak_mb"), figure(full, False, "peak_mb")),
    }


TARGETS = {
    "paper_step_vs_lora": "<= 1.25",
    "paper_memory_vs_full": "<= 0.6",
    "paper_checkpointed_memory_vs_full": "<= 0.35",
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_profile_arguments(parser, repeats=3)
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD"
    )
    parser.add_argument("--checkpointing", nargs="*", default=CHECKPOINTED, choices=list(METHODS), metavar="METHOD",
                        help="methods also measured with gradient checkpointing")  # fmt: skip
    args = parser.parse_args(argv)
    profile = Profile.from_args(args)
    variants = [(m, c) for m in args.methods for c in (False, True) if not c or m in args.checkpointing]
    rows = [
        run_isolated(measure_memory, profile, method, checkpointing) for method, checkpointing in variants
    ]
    # Step times: every variant in this process, interleaved, so that the load of a shared machine hits all alike.
    profile.setup()
    steps = {variant: training_step(profile, *variant)[0] for variant in variants}
    for row, step_s in zip(rows, median_times(steps, profile).values(), strict=False):
        row["step_s"] = step_s
    memory = "peak GPU memory (MiB)" if profile.device == "cuda" else "peak RSS - process start (MiB)"
    table = markdown(
        ["method", "checkpointing", "trainable", "step (s)", memory],
        [
            [r["method"], "yes" if r["gradient_checkpointing"] else "no", f"{r['trainable']:,}", f"{r['step_s']:.3f}",
             f"{r['training_mb']:,.0f}"]
            for r in rows
        ],
    )  # fmt: skip
    return report("training", profile, {"results": rows, "ratios": ratios(rows), "targets": TARGETS}, table)


if __name__ == "__main__":
    main()
