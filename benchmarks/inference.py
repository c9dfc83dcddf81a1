"""Inference cost of the adapters: adapted vs base SAM latency, and many prompts on one image with embedding reuse.

Latency: one forward (a batch of images, one click each) of SAM and of each adapted model built on the same
weights; LoRA stays unmerged, as it is during training and when several adapters share a base (decoder-only and
full fine-tuning have SAM's own architecture, hence its cost). Prompts, on the Med-SA `paper` model: 16 clicks on
one image answered (a) with `get_image_embeddings` once and 16 decoder calls, (b) the same with the 16 clicks as
one point batch, (c) by 16 full forwards, timed as 16 x the median of one full forward. `--compile` adds
`torch.compile`d twins of the models named (inductor), timed in the same interleaved rounds; their first call
(compile time plus one forward) is timed apart, and `--profile` prints where the time of each goes.

Run: `python benchmarks/inference.py --compile "SAM (base)" "Med-SA paper"` (CPU profile); `--device cuda
--image-size 1024 --dtype bf16` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from common import (
    Profile,
    add_compile_arguments,
    add_profile_arguments,
    build,
    first_call_seconds,
    markdown,
    median_times,
    profiler_table,
    report,
)

BASE = "SAM (base)"
ADAPTED = ["Med-SA paper", "Med-SA official-code", "Med-SA encoder-only", "LoRA r=4 + decoder"]
PROMPTS = 16
COMPILED = " (compiled)"


def forwards(profile: Profile, base: torch.nn.Module, compiled: list[str]) -> dict[str, Callable[[], Any]]:
    """One forward of SAM, of each adapted model on the same weights, and of the compiled twins of `compiled`."""
    inputs = profile.inputs()
    inputs.pop("labels")
    models = {BASE: base} | {name: build(name, copy.deepcopy(base)).eval() for name in ADAPTED}
    backend = profile.compile_backend
    models |= {name + COMPILED: torch.compile(models[name], backend=backend) for name in compiled}
    return {name: _forward(profile, model, **inputs) for name, model in models.items()}


def prompts(profile: Profile, model: torch.nn.Module) -> dict[str, float]:
    """Seconds to answer `PROMPTS` clicks on one image, with and without reusing the image embedding."""
    inputs = profile.inputs(batch=1)
    image = inputs["pixel_values"]
    clicks = torch.rand(PROMPTS, 1, 1, 1, 2, generator=torch.Generator().manual_seed(1)).to(image.device)
    clicks = clicks * profile.image_size
    labels = torch.ones(1, 1, 1, dtype=torch.long, device=image.device)

    def reused() -> None:
        embeddings = model.get_image_embeddings(image)
        for click in clicks:
            model(image_embeddings=embeddings, input_points=click, input_labels=labels)

    def point_batch() -> None:
        embeddings = model.get_image_embeddings(image)
        model(image_embeddings=embeddings, input_points=clicks.reshape(1, PROMPTS, 1, 2),
              input_labels=labels.expand(1, PROMPTS, 1))  # fmt: skip

    times = median_times(
        {
            "reused": _no_grad(profile, reused),
            "point_batch": _no_grad(profile, point_batch),
            "full": _forward(profile, model, pixel_values=image, input_points=clicks[0], input_labels=labels),
        },
        profile,
    )
    return {
        f"{PROMPTS} prompts, embedding reused": times["reused"],
        f"{PROMPTS} prompts as one point batch": times["point_batch"],
        f"{PROMPTS} full forwards": PROMPTS * times["full"],
    }


def _no_grad(profile: Profile, function: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad(), profile.autocast():
            return function()

    return run


def _forward(profile: Profile, model: torch.nn.Module, **inputs: torch.Tensor) -> Callable[[], Any]:
    return _no_grad(profile, lambda: model(**inputs))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_profile_arguments(parser, repeats=3)
    add_compile_arguments(parser, [BASE, *ADAPTED])
    args = parser.parse_args(argv)
    profile = Profile.from_args(args)
    profile.setup()
    base = profile.base_model()
    embedding_std = profile.check_scale(base)
    runs = forwards(profile, base, args.compile)
    first = {name: first_call_seconds(run, profile) for name, run in runs.items() if name.endswith(COMPILED)}
    times = median_times(runs, profile)
    prompt_times = prompts(profile, build("Med-SA paper", copy.deepcopy(base)).eval())
    reuse = f"{PROMPTS} prompts, embedding reused"
    record = {
        "embedding_std": embedding_std,
        "latency_s": times,
        "first_call_s": first,
        "prompts_s": prompt_times,
        "ratios": {
            **{f"{name} vs base": times[name] / times[BASE] for name in ADAPTED},
            **{f"{name} vs eager": times[name] / times[name.removesuffix(COMPILED)] for name in first},
            **{f"{name} compile time s": first[name] - times[name] for name in first},
            "full forwards vs embedding reuse": prompt_times[f"{PROMPTS} full forwards"]
            / prompt_times[reuse],
        },
        "targets": {
            "Med-SA paper vs base": "<= 1.10",
            "Med-SA paper (compiled) vs eager": "<= 0.7",
            "full forwards vs embedding reuse": ">= 10",
        },
    }
    rows = [[name, f"{seconds:.3f}", f"{seconds / times[BASE]:.2f}x"] for name, seconds in times.items()]
    rows += [
        [f"{name}: first call (compile + 1 forward)", f"{seconds:.1f}", ""] for name, seconds in first.items()
    ]
    rows += [
        [name, f"{time:.3f}", f"{time / prompt_times[reuse]:.1f}x"] for name, time in prompt_times.items()
    ]
    table = markdown(
        [f"forward (batch {profile.batch}; prompts: 1 image)", "seconds", "vs base / vs reuse"], rows
    )
    result = report("inference", profile, record, table)
    if args.profile:
        for name in first:
            for twin in (name.removesuffix(COMPILED), name):
                print(f"\n## torch.profiler, one forward of {twin}\n")
                print(profiler_table(runs[twin], profile))
    return result


if __name__ == "__main__":
    main()
