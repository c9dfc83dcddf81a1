"""Smoke test of the benchmark scripts: each main entry runs on a tiny SAM and gives a complete, sane record.

No timing is asserted (CI machines are shared); the figures themselves come from `docs/benchmarks.md`'s commands.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import app_latency
import depth
import inference
import parameter_counts
import training
from common import METHODS


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_parameter_counts():
    record = parameter_counts.main()
    assert {r["method"] for r in record["methods"]} == set(METHODS)
    for row in record["methods"]:
        assert 0 < row["trainable"] <= row["sam_parameters"] and row["stored"] >= row["trainable"]
    full = next(r for r in record["methods"] if r["sam"] == "ViT-B" and r["method"] == "full fine-tuning")
    assert full["trainable"] == full["sam_parameters"] == 93_735_728
    family = {(r["sam"], r["variant"]): r for r in record["family_variants"]}
    assert {model for model, _ in family} == set(parameter_counts.FAMILY_MODELS)
    # Hiera-T encoder-only, by hand: Space + MLP adapters (w -> w/4 -> w) in its 1, 2, 7, 2 blocks of width
    # 96, 192, 384, 768.
    by_hand = sum(n * 2 * (2 * w * (w // 4) + w // 4 + w) for n, w in [(1, 96), (2, 192), (7, 384), (2, 768)])
    assert family["SAM 2.1 Hiera-T", "encoder-only"]["trainable"] == by_hand == 2_306_544


@pytest.mark.slow
def test_training():
    record = training.main(["--tiny"])
    rows = {(r["method"], r["gradient_checkpointing"]) for r in record["results"]}
    assert rows == {(m, False) for m in METHODS} | {(m, True) for m in training.CHECKPOINTED}
    for row in record["results"]:
        # A tiny SAM may fit in memory freed by the warm-up step: its training memory can be 0 on CPU.
        assert positive(row["step_s"]) and 0 <= row["training_mb"] <= row["peak_mb"]
    assert positive(record["ratios"]["paper_step_vs_lora"])
    assert set(record["targets"]) <= set(record["ratios"])


def test_inference():
    record = inference.main(["--tiny"])
    assert set(record["latency_s"]) == {"SAM (base)", *inference.ADAPTED}
    assert all(
        positive(seconds) for seconds in [*record["latency_s"].values(), *record["prompts_s"].values()]
    )
    assert all(positive(value) for value in record["ratios"].values())
    assert set(record["targets"]) <= set(record["ratios"])


def test_depth():
    record = depth.main(["--tiny", "--depths", "1", "4"])
    assert [r["depth"] for r in record["results"]] == [1, 4]
    assert all(
        positive(r["volume_s"]) and positive(r["slices_s"]) and positive(r["ratio"])
        for r in record["results"]
    )
    assert record["profile"]["sam"] == "tiny"


def test_app_latency():
    record = app_latency.main(["--tiny"])
    assert set(record["seconds"]) == {
        "decode, base SAM",
        "decode, Med-SA paper",
        "page click, both models + overlays",
    }
    assert all(positive(seconds) for seconds in record["seconds"].values())
