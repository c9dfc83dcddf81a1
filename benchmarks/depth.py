"""Cost of SD-Trans, Med-SA's depth branch: a volume of D slices vs the same D slices as a batch of 2-D images.

Both run `get_image_embeddings` of one Med-SA `paper` model with `depth_attention=True`: 5-D input (1, 3, D, H, W)
takes the depth branch in every encoder block, 4-D input (D, 3, H, W) skips it. The ratio is the depth branch's
cost; the mask decoder, which runs per slice either way, is left out so that it does not dilute the ratio.

Run: `python benchmarks/depth.py` (CPU profile); `--device cuda --image-size 1024 --dtype bf16` on a GPU.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch
from common import MEDSA_DEPTH, Profile, add_profile_arguments, markdown, median_times, report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_profile_arguments(parser, repeats=2)
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 4, 8, 16], help="slices per volume (D)")
    args = parser.parse_args(argv)
    profile = Profile.from_args(args)
    profile.setup()
    base = profile.base_model()
    embedding_std = profile.check_scale(base)
    model = MEDSA_DEPTH(base).eval()
    rows = []
    for index, depth in enumerate(args.depths):
        volume = profile.inputs(batch=1, depth=depth)["pixel_values"]
        slices = volume[0].transpose(0, 1).contiguous()

        def embed(pixel_values: torch.Tensor):
            def run() -> torch.Tensor:
                with torch.no_grad(), profile.autocast():
                    return model.get_image_embeddings(pixel_values)

            return run

        # One warm-up for the model; the medians absorb what a new D costs on its first call.
        warm = profile if index == 0 else replace(profile, warmup=0)
        times = median_times({"volume": embed(volume), "slices": embed(slices)}, warm)
        rows.append({"depth": depth, "volume_s": times["volume"], "slices_s": times["slices"],
                     "ratio": times["volume"] / times["slices"]})  # fmt: skip
    table = markdown(
        ["D", "volume (1, 3, D, H, W) s", "slices (D, 3, H, W) s", "depth branch ratio"],
        [[r["depth"], f"{r['volume_s']:.3f}", f"{r['slices_s']:.3f}", f"{r['ratio']:.2f}x"] for r in rows],
    )
    record = {
        "embedding_std": embedding_std,
        "results": rows,
        "ratios": {f"D={r['depth']}": r["ratio"] for r in rows},
        "targets": {"D=16": "<= 1.25"},
    }
    return report("depth", profile, record, table)


if __name__ == "__main__":
    main()
