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
import memory
import parameter_counts
import torch
import training
from common import METHODS, Profile, check_scale, sam_config
from transformers import SamModel

PAPER, LORA, FULL = "Med-SA paper", "LoRA r=4 + decoder", "full fine-tuning"
# torch.compile's quickest backend: the wiring of the compiled variants without inductor's minutes of C++ builds.
COMPILE = ["--compile-backend", "aot_eager"]


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


@pytest.mark.parametrize("model", ["sam", "sam2"])
def test_reinitialized_models_have_normal_scale_embeddings(model):
    profile = Profile(tiny=True, image_size=64, model=model)
    base = profile.base_model()
    assert profile.check_scale(base) > 0.1
    for name, tensor in [*base.named_parameters(), *base.named_buffers()]:
        if name.endswith("positional_embedding"):  # random Fourier features, N(0, 1) as in SAM's own code
            assert 0.5 < tensor.std() < 1.5, name
        elif name.endswith(
            ("pos_embed", "rel_pos_h", "no_memory_embedding")
        ):  # transformers leaves them at 0
            assert 0.01 < tensor.std() < 0.03, name
    # Same weights in every process of a run: the figures of fresh processes compare like for like.
    torch.testing.assert_close(profile.base_model().state_dict(), base.state_dict(), rtol=0, atol=0)


def test_degenerate_models_are_refused():
    torch.manual_seed(0)
    degenerate = SamModel(sam_config(image_size=64, tiny=True))  # transformers' init: initializer_range 1e-10
    with pytest.raises(
        RuntimeError, match=r"image embeddings of the benchmarked model have std .* <= 0\.001"
    ):
        check_scale(degenerate, torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_training(capsys):
    record = training.main(["--tiny", "--bf16-base", PAPER, "--compile", PAPER, "--profile", *COMPILE])
    rows = [r["variant"] for r in record["results"]]
    assert rows == [*METHODS, *(f"{m}, checkpointing" for m in training.CHECKPOINTED), f"{PAPER}, bf16 base",
                    f"{PAPER}, compiled"]  # fmt: skip
    for row in record["results"]:
        assert positive(row["step_s"]) and positive(row["first_step_s"]) and row["trainable"] > 0
    assert record["profile"]["sam"] == "tiny sam" and record["embedding_std"] > 1e-3
    assert positive(record["ratios"]["paper_step_vs_lora"])
    assert positive(record["ratios"][f"{PAPER} compiled vs eager"])
    assert set(record["targets"]) <= set(record["ratios"])
    printed = capsys.readouterr().out
    assert printed.count("## torch.profiler, one step of") == 2 and "Self CPU time total" in printed


def test_training_sam2():
    record = training.main(["--tiny", "--model", "sam2", "--methods", PAPER, LORA, "--bf16-base", PAPER])
    rows = [r["variant"] for r in record["results"]]
    assert rows == [PAPER, LORA, f"{PAPER}, checkpointing", f"{LORA}, checkpointing", f"{PAPER}, bf16 base"]
    assert all(positive(r["step_s"]) for r in record["results"])
    assert record["profile"]["sam"] == "tiny sam2" and record["embedding_std"] > 1e-3
    # Checkpointing and the bf16 base change how the adapters train, not which.
    trainable = {r["variant"]: r["trainable"] for r in record["results"]}
    assert trainable[PAPER] == trainable[f"{PAPER}, checkpointing"] == trainable[f"{PAPER}, bf16 base"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sam", "sam2"])
def test_memory(model):
    options = (
        ["--checkpointing", PAPER, "--bf16-base", PAPER]
        if model == "sam"
        else ["--checkpointing", "--bf16-base"]
    )
    record = memory.main(["--tiny", "--model", model, "--methods", FULL, PAPER, *options])
    rows = {r["variant"]: r for r in record["results"]}
    expected = [FULL, PAPER] + ([f"{PAPER}, checkpointing", f"{PAPER}, bf16 base", f"{PAPER}, checkpointing, bf16 base"]
                                if model == "sam" else [])  # fmt: skip
    assert list(rows) == expected
    for row in rows.values():
        # A tiny SAM may fit in memory freed by the warm-up step: its training memory can be 0 on CPU.
        assert 0 <= row["training_mb"] <= row["peak_mb"] and row["trainable"] > 0
        assert set(row) >= {
            "method",
            "gradient_checkpointing",
            "bf16_base",
            "start_mb",
            "vs_full_fine_tuning",
        }
        assert "target" not in row  # the targets are for 256 and 1024 px, not the tiny 64 px
    assert record["profile"]["batch"] == 1 and record["embedding_std"] > 1e-3
    assert record["targets"] == {"1024 px": 0.25, "256 px": 0.35}


def test_inference():
    record = inference.main(["--tiny", "--compile", PAPER, *COMPILE])
    assert set(record["latency_s"]) == {"SAM (base)", *inference.ADAPTED, f"{PAPER} (compiled)"}
    assert list(record["first_call_s"]) == [f"{PAPER} (compiled)"] and record["embedding_std"] > 1e-3
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
    assert record["profile"]["sam"] == "tiny sam" and record["embedding_std"] > 1e-3


def test_app_latency():
    record = app_latency.main(["--tiny"])
    assert set(record["seconds"]) == {
        "decode, base SAM",
        "decode, Med-SA paper",
        "page click, both models + overlays",
    }
    assert all(positive(seconds) for seconds in record["seconds"].values())
