"""Peak training memory of Med-SA `paper`, LoRA r=4 + decoder and full fine-tuning, with and without gradient
checkpointing, and of `paper` with its frozen base in bf16: the ratios to full fine-tuning and the issue's targets.

Each variant runs two training steps (`training.py`'s step; the second holds AdamW's state) in a fresh process, so
that its peak is its own: `torch.cuda.max_memory_allocated` on GPU; on CPU the peak RSS (the kernel's high-water
mark) minus the RSS of the process just before the model is built, after a step of the same variant on a tiny
model (the interpreter, torch's libraries and the code pages a step touches): the CPU analogue of the GPU figure,
which counts tensors only. The absolute peak RSS is in the record too. Batch 1 by default.

Not measured: checkpointing that skips the recomputation of frozen blocks. Every `paper` block has adapters, so
every block needs its activations for the backward; only blocks before the first adapted one (none here, some with
`layers_to_transform`) could skip it, and autograd already saves nothing for them.

Run: `python benchmarks/memory.py --image-size 1024` (CPU: about 10 GB and 40 minutes on 2 cores at 1024 px);
`--model sam2` for SAM 2.1 Hiera-T; `--device cuda --image-size 1024 --dtype bf16` on a GPU; `--tiny` for a
smoke test.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import replace
from typing import Any

from common import (
    Profile,
    Variant,
    add_method_arguments,
    add_profile_arguments,
    markdown,
    memory_mb,
    report,
    reset_peak_memory,
    run_isolated,
)
from training import training_step

COMPARED = ["Med-SA paper", "LoRA r=4 + decoder", "full fine-tuning"]
FULL = Variant("full fine-tuning")
# Training memory of `paper` with checkpointing / full fine-tuning without, by image size (the targets).
TARGETS = {1024: 0.25, 256: 0.35}


def measure_memory(profile: Profile, variant: Variant) -> dict[str, Any]:
    """Peak memory of two steps of one variant; run in a fresh process.

    A step of the same variant on a tiny model runs first, so that the code it touches (torch's kernels, pages of
    the shared libraries) is resident before the baseline is read: the CPU figure then counts data, not code.
    """
    profile.setup()
    training_step(replace(profile, tiny=True, image_size=64), variant)[0]()
    gc.collect()
    reset_peak_memory(profile.device)
    start_mb = memory_mb(profile.device, peak=False)
    step, trainable = training_step(profile, variant)
    step()
    step()
    peak_mb = memory_mb(profile.device, peak=True)
    return {
        "variant": variant.label,
        "method": variant.method,
        "gradient_checkpointing": variant.checkpointing,
        "bf16_base": variant.bf16_base,
        "trainable": trainable,
        "peak_mb": peak_mb,
        "start_mb": start_mb,
        "training_mb": peak_mb - start_mb,
    }


def variants(args: argparse.Namespace) -> list[Variant]:
    """Each method in turn: without and with checkpointing (where asked), and the same with a bf16 base (where
    asked)."""
    bases = {method: [False, True] if method in args.bf16_base else [False] for method in args.methods}
    checkpointing = {
        method: [False, True] if method in args.checkpointing else [False] for method in args.methods
    }
    return [
        Variant(m, checkpointing=c, bf16_base=b)
        for m in args.methods
        for b in bases[m]
        for c in checkpointing[m]
    ]


def measured(profile: Profile, variant: Variant) -> dict[str, Any]:
    """`measure_memory` in a fresh process; its row also goes to stderr at once (a 1024 px CPU run takes long)."""
    row = run_isolated(measure_memory, profile, variant)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_profile_arguments(parser, batch=1, models=("sam", "sam2"))
    add_method_arguments(
        parser,
        "measured",
        COMPARED,
        COMPARED,
        ["Med-SA paper"],
        "in this order; include full fine-tuning for the ratios",
    )
    args = parser.parse_args(argv)
    profile = Profile.from_args(args)
    profile.setup()
    embedding_std = profile.check_scale(profile.base_model())
    rows = [measured(profile, variant) for variant in variants(args)]
    full = next((r["training_mb"] for r in rows if r["variant"] == FULL.label), None)
    target = TARGETS.get(profile.image_size)
    for row in rows:
        row["vs_full_fine_tuning"] = row["training_mb"] / full if full else None
        if target and row["method"] == "Med-SA paper" and row["gradient_checkpointing"] and full:
            row["target"] = f"<= {target}"
            row["met"] = row["vs_full_fine_tuning"] <= target
    memory = "peak GPU memory (MiB)" if profile.device == "cuda" else "peak RSS - process start (MiB)"
    table = markdown(
        ["variant", "trainable", memory, "vs full fine-tuning", "target"],
        [[r["variant"], f"{r['trainable']:,}", f"{r['training_mb']:,.0f}", _ratio(r), _status(r)] for r in rows],
    )  # fmt: skip
    record = {
        "embedding_std": embedding_std,
        "results": rows,
        "targets": {f"{s} px": t for s, t in TARGETS.items()},
    }
    return report("memory", profile, record, table)


def _ratio(row: dict[str, Any]) -> str:
    return f"{row['vs_full_fine_tuning']:.3f}x" if row["vs_full_fine_tuning"] is not None else ""


def _status(row: dict[str, Any]) -> str:
    return f"{row['target']}: {'met' if row['met'] else 'missed'}" if "target" in row else ""


if __name__ == "__main__":
    main()
