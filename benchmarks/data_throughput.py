"""Samples/s of the data pipelines with 0, 1 and 2 DataLoader workers, printed as JSON and a markdown table.

2-D: a local folder in the Hub's parquet layout (4 shards of 576x720 JPEG images with PNG masks, made from
pydicom's real MR slice) streamed by `load_task(..., streaming=True)` at 1024 px, i.e. the same code path as a
Hub task minus the network. 3-D: the offline demo's volumes in chunks of D = 8 slices at 1024 px.
Run: `python benchmarks/data_throughput.py [--samples 64]`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from peft_medsa.data import SamDataCollator, load_task, prepare_demo_task
from peft_medsa.data.demo import _dicom_overlay_case


def write_parquet_task(root: Path, rows: int = 64, shards: int = 4) -> dict:
    """A 2-D task in the Hub layout from the real DICOM slice, resized to a typical endoscopy/US size."""
    image, mask = _dicom_overlay_case()
    gray = (image / image.max() * 255).astype(np.uint8)
    picture = PILImage.fromarray(np.stack([gray] * 3, axis=-1)).resize((720, 576), PILImage.BILINEAR)
    label = PILImage.fromarray((mask > 0).astype(np.uint8) * 255).resize((720, 576), PILImage.NEAREST)
    features = Features(image=Image(), mask=Image(), id=Value("string"))
    table = Dataset.from_dict(
        {"image": [picture] * rows, "mask": [label] * rows, "id": [f"case{i}" for i in range(rows)]},
        features=features,
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        shard = table.shard(shards, index, contiguous=True)
        shard.to_parquet(str(root / "data" / f"train-{index:05d}-of-{shards:05d}.parquet"))
    return {"name": "bench-2d", "format": "parquet", "path": str(root), "labels": {1: "lesion"}, "case_id_column": "id",
            "mask_encoding": "binary", "splits": {"train": "train"}}  # fmt: skip


def samples_per_second(dataset, workers: int, limit: int, batch_size: int = 4) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=SamDataCollator()
    )
    start, seen = None, 0
    for batch in loader:
        if start is None:  # the first batch pays worker start-up and file opening
            start = time.perf_counter()
            continue
        seen += batch["labels"].shape[0]
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--samples", type=int, default=64, help="examples timed per setting (after one warm-up batch)"
    )
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        task = write_parquet_task(Path(tmp), rows=args.samples + 16)
        prepare_demo_task()
        for workers in (0, 1, 2):
            two_d = load_task(task, image_size=args.image_size, prompt="bbox-0.5")
            rate, seen = samples_per_second(two_d, workers, args.samples)
            results.append(
                {
                    "pipeline": "2-D parquet stream",
                    "workers": workers,
                    "samples_per_s": rate,
                    "slices_per_s": rate,
                    "samples": seen,
                }
            )
            three_d = load_task("demo-3d", image_size=args.image_size, depth=args.depth, prompt="1-click")
            rate, seen = samples_per_second(three_d, workers, args.samples // 4, batch_size=1)
            results.append(
                {
                    "pipeline": f"3-D chunks (D={args.depth})",
                    "workers": workers,
                    "samples_per_s": rate,
                    "slices_per_s": rate * args.depth,
                    "samples": seen,
                }
            )
    print(
        json.dumps({"image_size": args.image_size, "cpu_count": os.cpu_count(), "results": results}, indent=1)
    )
    print(f"\n| pipeline ({args.image_size} px) | workers | samples/s | slices/s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['pipeline']} | {r['workers']} | {r['samples_per_s']:.1f} | {r['slices_per_s']:.1f} |")


if __name__ == "__main__":
    main()
