"""What a click costs in `medsa app`: the prompt encoder and mask decoder on a stored image embedding.

The page computes a slice's embedding once per model and keeps it (`MedSAApp.segment`), so a new click runs
only `Segmenter.decode`: the prompt encoder, the mask decoder (with Med-SA's decoder adapters and HyP-Adpt) and
the upscaling of the mask to the input's size. Timed here on SAM ViT-B's prompt encoder and decoder at 1024 px
(a 256 x 64 x 64 embedding) for a 512 x 512 slice: (a) `decode` of the base SAM, (b) of a Med-SA `paper`
adapter, (c) a whole click of the page with both models, i.e. `MedSAApp.click` (both decodes) plus drawing the
two overlays and the summary. The embedding is random: its values do not change the cost, and computing a real
one (the ViT-B encoder at 1024 px) is not part of a click. Besides the wall time, the process CPU time of each
step (all threads) is reported: on a shared machine it says what a click costs when a core is free.

Run: `python benchmarks/app_latency.py` (CPU, 2 threads); `--tiny` is a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import Profile, add_profile_arguments, build, markdown, median_times, report

from peft_medsa.app import POSITIVE, MedSAApp, Session, display_zoom
from peft_medsa.predict import InputImage, Prompt, Segmenter, SliceEmbeddings

SLICE_SIZE = 512  # the input slice, e.g. one CT slice; the mask is upscaled to it


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_arguments(parser, repeats=20, warmup=2)
    parser.set_defaults(image_size=1024, batch=1)
    profile = Profile.from_args(parser.parse_args(argv))
    if profile.device != "cpu":
        parser.error("the app runs its decoder on the CPU here; this benchmark measures that")
    profile.setup()
    base = profile.base_model()
    segmenters = {
        "base": Segmenter(base),
        "Med-SA paper": Segmenter(build("Med-SA paper", copy.deepcopy(base))),
    }
    vision = base.config.vision_config
    tokens = vision.image_size // vision.patch_size
    size = SLICE_SIZE if not profile.tiny else 48
    embedding = SliceEmbeddings(
        torch.randn(1, vision.output_channels, tokens, tokens),
        original_size=(size, size),
        reshaped_size=(vision.image_size, vision.image_size),
        scale=(vision.image_size / size, vision.image_size / size),
    )
    prompt = Prompt([(size * 0.4, size * 0.6)])

    app = MedSAApp(segmenters)
    pixels = np.random.default_rng(0).integers(-1000, 1000, (size, size)).astype(np.int16)
    session = Session(image=InputImage(Path("slice.dcm"), pixels[None], (0.7, 0.7)))
    session.embeddings = {(name, 0): embedding for name in segmenters}
    zoom = display_zoom(size, size)

    def click() -> None:
        app.clear(session)
        app.click(session, size * 0.4 * zoom, size * 0.6 * zoom, POSITIVE)
        app.result_pictures(session, "CT soft tissue (W 400, L 40)", 0.4)
        app.summary(session)

    variants = {
        "decode, base SAM": lambda: segmenters["base"].decode(embedding, [prompt]),
        "decode, Med-SA paper": lambda: segmenters["Med-SA paper"].decode(embedding, [prompt]),
        "page click, both models + overlays": click,
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}

    def with_cpu_time(name: str, run: Callable[[], object]) -> Callable[[], None]:
        def timed() -> None:
            start = time.process_time()
            run()
            cpu[name].append(time.process_time() - start)

        return timed

    with torch.inference_mode():
        times = median_times({name: with_cpu_time(name, run) for name, run in variants.items()}, profile)
    cpu_times = {name: statistics.median(values) for name, values in cpu.items()}
    rows = [[name, f"{times[name] * 1000:.0f}", f"{cpu_times[name] * 1000:.0f}"] for name in variants]
    header = ["click step (1024 px SAM embedding, 512 px slice)", "median ms", "CPU ms (all threads)"]
    record = {"slice_size": size, "seconds": times, "cpu_seconds": cpu_times}
    return report("app_latency", profile, record, markdown(header, rows))


if __name__ == "__main__":
    main()
