"""Inference cost of the adapters: adapted vs base SAM latency, and many prompts on one image with embedding reuse.

Latency: one forward (a batch of images, one click each) of SAM and of each adapted model built on the same
weights; LoRA stays unmerged, as it is during training and when several adapters share a base (decoder-only and
full fine-tuning have SAM's own architecture, hence its cost). Prompts, on the Med-SA `paper` model: 16 clicks on
one image answered (a) with `get_image_embeddings` once and 16 decoder calls, (b) the same with the 16 clicks as
one point batch, (c) by 16 full forwards, timed as 16 x the median of one full forward.

Run: `python benchmarks/inference.py` (CPU profile); `--device cuda --image-size 1024 --dtype bf16` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from common import Profile, add_profile_arguments, build, markdown, median_times, report

ADAPTED = ["Med-SA paper", "Med-SA official-code", "Med-SA encoder-only", "LoRA r=4 + decoder"]
PROMPTS = 16


def latency(profile: Profile, base: torch.nn.Module) -> dict[str, float]:
    """Median seconds of one forward of SAM and of each adapted model, interleaved."""
    inputs = profile.inputs()
    inputs.pop("labels")
    models = {"SAM (base)": base} | {name: build(name, copy.deepcopy(base)).eval() for name in ADAPTED}
    return median_times({name: _forward(profile, model, **inputs) for name, model in models.items()}, profile)


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
    profile = Profile.from_args(parser.parse_args(argv))
    profile.setup()
    base = profile.base_model()
    times = latency(profile, base)
    prompt_times = prompts(profile, build("Med-SA paper", copy.deepcopy(base)).eval())
    reuse = f"{PROMPTS} prompts, embedding reused"
    record = {
        "latency_s": times,
        "prompts_s": prompt_times,
        "ratios": {
            **{
                f"{name} vs base": seconds / times["SAM (base)"]
                for name, seconds in times.items()
                if name in ADAPTED
            },
            "full forwards vs embedding reuse": prompt_times[f"{PROMPTS} full forwards"]
            / prompt_times[reuse],
        },
        "targets": {"Med-SA paper vs base": "<= 1.10", "full forwards vs embedding reuse": ">= 10"},
    }
    rows = [
        [name, f"{seconds:.3f}", f"{seconds / times['SAM (base)']:.2f}x"] for name, seconds in times.items()
    ]
    rows += [
        [name, f"{time:.3f}", f"{time / prompt_times[reuse]:.1f}x"] for name, time in prompt_times.items()
    ]
    table = markdown(
        [f"forward (batch {profile.batch}; prompts: 1 image)", "seconds", "vs base / vs reuse"], rows
    )
    return report("inference", profile, record, table)


if __name__ == "__main__":
    main()
