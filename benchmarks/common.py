"""What the benchmark scripts share: the profiles (SAM config, device, dtype), the compared methods, timing, memory.

Every script takes the same profile options (`add_profile_arguments`): the CPU default is SAM ViT-B at 256 px,
batch 2, float32; `--device cuda --image-size 1024 --dtype bf16` is the GPU profile; `--tiny` is a tiny random SAM
for smoke tests. Times are medians of interleaved repeats after warm-up, so slow drifts of a shared machine hit
every compared variant alike; ratios are always taken between figures of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from torch import nn
from transformers import SamConfig, SamModel

from peft_medsa import MedSAConfig

# The vision encoders of the three released SAM checkpoints (facebook/sam-vit-{base,large,huge}).
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B": {},
    "ViT-L": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "global_attn_indexes": [5, 11, 17, 23],
    },
    "ViT-H": {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "global_attn_indexes": [7, 15, 23, 31],
    },
}
# A SAM small enough for smoke tests: a windowed and a global block, 64 px, 8x8 tokens.
TINY_SAM = {
    "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "output_channels": 32,
                       "window_size": 4, "global_attn_indexes": [1], "num_pos_feats": 16, "mlp_dim": 128},
    "prompt_encoder_config": {"hidden_size": 32, "patch_size": 8},
    "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
}  # fmt: skip
# SAMed's recipe (Zhang & Liu 2023): LoRA of rank 4 on the image encoder's attention, mask decoder trained in full.
LORA_TARGET = r".*vision_encoder\.layers\.\d+\.attn\.qkv"


def sam_config(size: str = "ViT-B", image_size: int = 1024, tiny: bool = False) -> SamConfig:
    """SAM of the given encoder size at `image_size` px (vision and prompt encoder kept consistent)."""
    base = copy.deepcopy(TINY_SAM) if tiny else {"vision_config": dict(VISION_CONFIGS[size])}
    base.setdefault("prompt_encoder_config", {})
    base["vision_config"]["image_size"] = base["prompt_encoder_config"]["image_size"] = image_size
    return SamConfig(**base)


# The compared methods --------------------------------------------------------------------------------------------


def _medsa(preset: str, **overrides: Any) -> Callable[[SamModel], nn.Module]:
    return lambda model: get_peft_model(model, MedSAConfig.from_preset(preset, **overrides))


def _lora(model: SamModel) -> nn.Module:
    config = LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGET, modules_to_save=["mask_decoder"])
    return get_peft_model(model, config)


def _decoder_only(model: SamModel) -> nn.Module:
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    return model


def _full(model: SamModel) -> nn.Module:
    return model.requires_grad_(True)


# name -> (build: adapts a SamModel in place, stored: the tensors a user saves to keep the result).
METHODS: dict[str, tuple[Callable[[SamModel], nn.Module], Callable[[nn.Module], dict[str, torch.Tensor]]]] = {
    "Med-SA paper": (_medsa("paper"), get_peft_model_state_dict),
    "Med-SA official-code": (_medsa("official-code"), get_peft_model_state_dict),
    "Med-SA encoder-only": (_medsa("encoder-only"), get_peft_model_state_dict),
    "LoRA r=4 + decoder": (_lora, get_peft_model_state_dict),
    "decoder only": (_decoder_only, lambda model: model.mask_decoder.state_dict()),
    "full fine-tuning": (_full, lambda model: model.state_dict()),
}
# Med-SA with SD-Trans, for volumes.
MEDSA_DEPTH = _medsa("paper", depth_attention=True)


def build(name: str, model: SamModel) -> nn.Module:
    """The method `name` applied to `model` (changed in place: pass a copy to keep the original)."""
    return METHODS[name][0](model)


def parameter_counts(name: str, model: nn.Module) -> dict[str, int]:
    """Trainable parameters of an adapted model and the tensor elements stored to keep what was trained."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = sum(t.numel() for t in METHODS[name][1](model).values())
    return {"trainable": trainable, "stored": stored}


# Profile, inputs -------------------------------------------------------------------------------------------------


@dataclass
class Profile:
    """Where and how a benchmark runs; parsed from the command line by `add_profile_arguments`."""

    device: str = "cpu"
    dtype: str = "fp32"
    image_size: int = 256
    batch: int = 2
    warmup: int = 1
    repeats: int = 5
    threads: int = 2
    tiny: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Profile:
        values = {name: getattr(args, name) for name in cls.__dataclass_fields__}
        if args.tiny:
            values.update(
                image_size=64, warmup=1, repeats=2, threads=1
            )  # one thread: robust on a busy CI machine
        return cls(**values)

    def config(self) -> SamConfig:
        return sam_config(image_size=self.image_size, tiny=self.tiny)

    def setup(self) -> None:
        """Threads and seed; call at the start of every process that measures."""
        torch.set_num_threads(self.threads)
        torch.manual_seed(0)

    def base_model(self) -> SamModel:
        """SAM with the same random weights in every process of a run (weights do not change the cost)."""
        torch.manual_seed(0)
        return SamModel(self.config()).to(self.device).eval()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def inputs(
        self, batch: int | None = None, depth: int | None = None, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Images (or volumes with `depth`), one click per image (per slice), and a target mask per click."""
        batch = self.batch if batch is None else batch
        generator = torch.Generator().manual_seed(seed)
        size, slices = self.image_size, batch * (depth or 1)
        shape = (batch, 3, depth, size, size) if depth else (batch, 3, size, size)
        mask_size = 4 * size // self.config().vision_config.patch_size
        tensors = {
            "pixel_values": torch.randn(shape, generator=generator),
            "input_points": torch.rand(slices, 1, 1, 2, generator=generator) * size,
            "input_labels": torch.ones(slices, 1, 1, dtype=torch.long),
            "labels": (torch.rand(slices, 1, 1, mask_size, mask_size, generator=generator) > 0.5).float(),
        }
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}

    def describe(self) -> dict[str, Any]:
        """The profile and the machine, for the JSON record."""
        vision = self.config().vision_config
        record = asdict(self) | {
            "sam": "tiny" if self.tiny else "ViT-B",
            "tokens": f"{vision.image_size // vision.patch_size}x{vision.image_size // vision.patch_size}",
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
        }
        if self.device == "cuda":
            record["gpu"] = torch.cuda.get_device_name()
        return record


def add_profile_arguments(parser: argparse.ArgumentParser, repeats: int = 5, warmup: int = 1) -> None:
    """The options every benchmark script takes (defaults: the CPU profile)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, fp32 weights"
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="SAM's input size (vision and prompt encoder)"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--warmup", type=int, default=warmup, help="untimed runs of each variant before timing"
    )
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="timed runs of each variant (median reported)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny random SAM at 64 px: a smoke test, not a figure"
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# Timing and memory -----------------------------------------------------------------------------------------------


def median_times(variants: dict[str, Callable[[], Any]], profile: Profile) -> dict[str, float]:
    """Median seconds of each variant; variants alternate within each repeat so noise hits them alike."""
    for run in variants.values():
        for _ in range(profile.warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(profile.repeats):
        for name, run in variants.items():
            profile.synchronize()
            start = time.perf_counter()
            run()
            profile.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or the kernel's high-water mark of this process's RSS."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def memory_mb(device: str, peak: bool) -> float:
    """Peak or current memory in MiB: tensors allocated on the GPU, or the resident set (VmHWM / VmRSS) on CPU."""
    if device == "cuda":
        return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**20
    field = "VmHWM:" if peak else "VmRSS:"
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


_PRELOAD = ["torch", "transformers", "peft", "peft_medsa", "common"]


def run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh process, so that its peak memory is its own.

    Processes fork from a server that has imported torch and transformers but never ran an op: no import cost per
    process, and no OpenMP thread pool inherited across the fork (plain `fork` after an op can hang).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(function, *args).result()


def report(title: str, profile: Profile, record: dict[str, Any], table: str) -> dict[str, Any]:
    """Print the JSON record and the markdown table; return the record."""
    record = {"benchmark": title, "profile": profile.describe(), **record}
    print(json.dumps(record, indent=1))
    print("\n" + table)
    return record


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
