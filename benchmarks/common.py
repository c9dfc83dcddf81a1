"""What the benchmark scripts share: the profiles (SAM config, device, dtype), the compared methods, timing, memory.

Every script takes the same profile options (`add_profile_arguments`): the CPU default is SAM ViT-B at 256 px,
batch 2, float32; `--device cuda --image-size 1024 --dtype bf16` is the GPU profile; `--model sam2` swaps in
SAM 2.1 Hiera-T; `--tiny` is a tiny random SAM for smoke tests. Models are random but of normal scale
(`reinitialize`): transformers' SAM init is degenerate (`initializer_range` 1e-10, image embeddings ~1e-21), and
`check_scale` refuses to time a model whose embeddings are that small. Times are medians of interleaved repeats
after warm-up, so slow drifts of a shared machine hit every compared variant alike; ratios are always taken
between figures of the same run.
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
from transformers import Sam2Config, Sam2Model, SamConfig, SamModel

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
# Hiera image encoders of the released SAM 2.1 checkpoints (facebook/sam2.1-hiera-{tiny,small,base-plus,large}, as
# in their sam2.1_hiera_*.yaml): embedding width, heads, blocks per stage, global-attention blocks, window sizes
# and background size of the windowed position embedding. Widths and heads double at each of the 4 stages.
# `Sam2Config()` is Hiera-T (31,440,721 parameters).
HIERA = {
    "Hiera-T": (96, 1, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7], [7, 7]),
    "Hiera-S": (96, 1, [1, 2, 11, 2], [7, 10, 13], [8, 4, 14, 7], [7, 7]),
    "Hiera-B+": (112, 2, [2, 3, 16, 3], [12, 16, 20], [8, 4, 14, 7], [14, 14]),
    "Hiera-L": (144, 2, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8], [7, 7]),
}
# A SAM 2 small enough for smoke tests: 4 Hiera stages of 1, 2, 2, 1 blocks (widths 16 to 128), 64 px.
TINY_HIERA = (16, 1, [1, 2, 2, 1], [4], [4, 4, 4, 2], [4, 4])
TINY_SAM2 = {
    "prompt_encoder_config": {"hidden_size": 128},
    "mask_decoder_config": {"hidden_size": 128, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
}  # fmt: skip
# SAMed's recipe (Zhang & Liu 2023): LoRA of rank 4 on the image encoder's attention, mask decoder trained in full;
# the attention's `qkv` projection of every block, per model family (`config.model_type`).
LORA_TARGETS = {
    "sam": r".*vision_encoder\.layers\.\d+\.attn\.qkv",
    "sam2": r".*vision_encoder\.backbone\.blocks\.\d+\.attn\.qkv",
}


def sam_config(size: str = "ViT-B", image_size: int = 1024, tiny: bool = False) -> SamConfig:
    """SAM of the given encoder size at `image_size` px (vision and prompt encoder kept consistent)."""
    base = copy.deepcopy(TINY_SAM) if tiny else {"vision_config": dict(VISION_CONFIGS[size])}
    base.setdefault("prompt_encoder_config", {})
    base["vision_config"]["image_size"] = base["prompt_encoder_config"]["image_size"] = image_size
    return SamConfig(**base)


def sam2_config(size: str = "Hiera-T", image_size: int = 1024, tiny: bool = False) -> Sam2Config:
    """SAM 2 with the Hiera encoder `size` at `image_size` px (backbone, feature sizes and prompt encoder agree)."""
    width, heads, blocks, global_blocks, windows, background = TINY_HIERA if tiny else HIERA[size]
    widths = [width * 2**stage for stage in range(4)]
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": width,
        "embed_dim_per_stage": widths,
        "num_attention_heads_per_stage": [heads * 2**stage for stage in range(4)],
        "blocks_per_stage": blocks,
        "global_attention_blocks": global_blocks,
        "window_size_per_stage": windows,
        "window_positional_embedding_background_size": background,
        "image_size": [image_size, image_size],
    }
    # The FPN's three levels are at strides 4, 8 and 16.
    vision = {"backbone_config": backbone, "backbone_channel_list": widths[::-1],
              "backbone_feature_sizes": [[image_size // stride] * 2 for stride in (4, 8, 16)]}  # fmt: skip
    if tiny:
        vision["fpn_hidden_size"] = 128
    small = copy.deepcopy(TINY_SAM2) if tiny else {"prompt_encoder_config": {}}
    small["prompt_encoder_config"]["image_size"] = image_size
    return Sam2Config(vision_config=vision, **small)


def reinitialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a random SAM (or SAM 2) normal-scale weights, in place: PyTorch's default init of every layer.

    transformers initialises a random `SamModel` with `initializer_range` 1e-10, whose image embeddings are ~1e-21:
    such a model costs the same FLOPs but not the same time, and makes every comparison of outputs vacuous. Every module with `reset_parameters` (Linear, Conv, LayerNorm, Embedding: N(0, 1) tokens as in
    SAM's own code) gets it; the random Fourier matrices of the prompt and image positional encodings get N(0, 1),
    as in SAM's `PositionEmbeddingRandom`; the remaining free parameters (SAM's absolute and relative position
    embeddings, Hiera's position embeddings, SAM 2's no-memory embedding), which transformers sets to 0, get
    N(0, 0.02).
    """
    torch.manual_seed(seed)
    covered: set[str] = set()
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                covered |= {
                    f"{prefix}.{name}".lstrip(".") for name, _ in module.named_parameters(recurse=False)
                }
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("positional_embedding"):
                tensor.normal_(0, 1)
            elif name not in covered and isinstance(tensor, nn.Parameter):
                tensor.normal_(0, 0.02)
    return model


def check_scale(model: nn.Module, pixel_values: torch.Tensor, minimum_std: float = 1e-3) -> float:
    """The standard deviation of `model`'s image embeddings on `pixel_values`; raises if they are degenerate.

    A benchmark must never silently time a model whose embeddings are ~0 (see `reinitialize`).
    """
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values)
    if isinstance(embeddings, list | tuple):
        embeddings = embeddings[-1]  # SAM 2: one feature map per FPN level; the last one feeds the decoder
    std = embeddings.float().std().item()
    if not std > minimum_std:
        raise RuntimeError(
            f"image embeddings of the benchmarked model have std {std:.3g} <= {minimum_std}: its weights are "
            "degenerate; build it with `Profile.base_model()` (normal-scale init)"
        )
    return std


# The compared methods --------------------------------------------------------------------------------------------


def _medsa(preset: str, **overrides: Any) -> Callable[[SamModel], nn.Module]:
    return lambda model: get_peft_model(model, MedSAConfig.from_preset(preset, **overrides))


def _lora(model: SamModel) -> nn.Module:
    target = LORA_TARGETS[model.config.model_type]
    config = LoraConfig(r=4, lora_alpha=4, target_modules=target, modules_to_save=["mask_decoder"])
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


@dataclass(frozen=True)
class Variant:
    """A compared method and how it runs: gradient checkpointing, a bf16 frozen base, `torch.compile`."""

    method: str
    checkpointing: bool = False
    bf16_base: bool = False
    compiled: bool = False

    @property
    def label(self) -> str:
        options = {
            "checkpointing": self.checkpointing,
            "bf16 base": self.bf16_base,
            "compiled": self.compiled,
        }
        return ", ".join([self.method, *(option for option, on in options.items() if on)])

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the images and points the base takes."""
        return torch.bfloat16 if self.bf16_base else torch.float32

    def build(self, model: nn.Module) -> nn.Module:
        """The method applied to `model` (in place) with the variant's options; compile what it returns to run it.

        A bf16 base is cast before adapting, as peft_medsa expects: the adapters are then created in float32.
        """
        if self.bf16_base:
            model = model.to(torch.bfloat16)
        if self.checkpointing:
            # transformers leaves the flag False on SAM 2 although its blocks checkpoint (peft_medsa sets it too).
            model.supports_gradient_checkpointing = True
        model = build(self.method, model)
        if self.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def runner(self, model: nn.Module, backend: str = "inductor") -> Callable[..., Any]:
        """What a step calls: `model`, or `torch.compile(model)` (the parameters are the model's)."""
        return torch.compile(model, backend=backend) if self.compiled else model


# Profile, inputs -------------------------------------------------------------------------------------------------


@dataclass
class Profile:
    """Where and how a benchmark runs; parsed from the command line by `add_profile_arguments`."""

    device: str = "cpu"
    dtype: str = "fp32"
    model: str = "sam"
    image_size: int = 256
    batch: int = 2
    warmup: int = 1
    repeats: int = 5
    threads: int = 2
    tiny: bool = False
    compile_backend: str = "inductor"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Profile:
        values = {name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)}
        if args.tiny:
            values.update(
                image_size=64, warmup=1, repeats=2, threads=1
            )  # one thread: robust on a busy CI machine
        return cls(**values)

    def config(self) -> SamConfig | Sam2Config:
        if self.model == "sam2":
            return sam2_config(image_size=self.image_size, tiny=self.tiny)
        return sam_config(image_size=self.image_size, tiny=self.tiny)

    def setup(self) -> None:
        """Threads and seed; call at the start of every process that measures."""
        torch.set_num_threads(self.threads)
        torch.manual_seed(0)

    def base_model(self) -> SamModel | Sam2Model:
        """SAM (or SAM 2) with the same random, normal-scale weights in every process of a run."""
        model_class = Sam2Model if self.model == "sam2" else SamModel
        return reinitialize(model_class(self.config())).to(self.device).eval()

    def check_scale(self, model: nn.Module) -> float:
        """`check_scale` on one image of the profile: call once per run on the model every variant is built from."""
        return check_scale(model, self.inputs(batch=1)["pixel_values"])

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
        prompt_encoder = self.config().prompt_encoder_config  # the low-resolution masks are 4x its embedding
        mask_size = 4 * size // prompt_encoder.patch_size
        tensors = {
            "pixel_values": torch.randn(shape, generator=generator),
            "input_points": torch.rand(slices, 1, 1, 2, generator=generator) * size,
            "input_labels": torch.ones(slices, 1, 1, dtype=torch.long),
            "labels": (torch.rand(slices, 1, 1, mask_size, mask_size, generator=generator) > 0.5).float(),
        }
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}

    def describe(self) -> dict[str, Any]:
        """The profile and the machine, for the JSON record."""
        side = self.image_size // self.config().prompt_encoder_config.patch_size
        name = {"sam": "ViT-B", "sam2": "SAM 2.1 Hiera-T"}[self.model]
        record = asdict(self) | {
            "sam": f"tiny {self.model}" if self.tiny else name,
            "tokens": f"{side}x{side}" if self.model == "sam" else f"{4 * side}x{4 * side} (Hiera stage 1)",
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
        }
        if self.device == "cuda":
            record["gpu"] = torch.cuda.get_device_name()
        return record


def add_profile_arguments(
    parser: argparse.ArgumentParser,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 2,
    models: tuple[str, ...] = ("sam",),
) -> None:
    """The options every benchmark script takes (defaults: the CPU profile); `models`: the families it supports."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    if len(models) > 1:
        parser.add_argument("--model", default="sam", choices=models,
                            help="sam: SAM ViT-B; sam2: SAM 2.1 Hiera-T (Sam2Config's defaults)")  # fmt: skip
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, fp32 weights"
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="SAM's input size (vision and prompt encoder)"
    )
    parser.add_argument("--batch", type=int, default=batch)
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


def add_method_arguments(
    parser: argparse.ArgumentParser,
    verb: str,
    methods: list[str],
    checkpointing: list[str],
    bf16_base: list[str],
    methods_help: str | None = None,
) -> None:
    """`--methods`, and which of them also run with gradient checkpointing and with a bf16 base (`verb`: what
    the script does with each, 'timed' or 'measured')."""
    choices = {"nargs": "*", "choices": list(METHODS), "metavar": "METHOD"}
    parser.add_argument("--methods", **choices | {"nargs": "+"}, default=methods, help=methods_help)
    parser.add_argument("--checkpointing", **choices, default=checkpointing,
                        help=f"methods also {verb} with gradient checkpointing")  # fmt: skip
    parser.add_argument("--bf16-base", **choices, default=bf16_base,
                        help=f"methods also {verb} with the frozen base in bf16 (adapters float32)")  # fmt: skip


def add_compile_arguments(parser: argparse.ArgumentParser, choices: list[str]) -> None:
    """`--compile METHOD...` and its backend, `--profile`: for the scripts that time compiled models."""
    parser.add_argument("--compile", nargs="*", default=[], choices=choices, metavar="METHOD",
                        help="methods also timed as torch.compile(model)")  # fmt: skip
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile's backend (aot_eager: a quick smoke test of the wiring)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top ops of each compiled method and of its eager twin")  # fmt: skip


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


def first_call_seconds(run: Callable[[], Any], profile: Profile) -> float:
    """Seconds of the first call of `run`: for a compiled model, tracing and compiling it, then one run."""
    profile.synchronize()
    start = time.perf_counter()
    run()
    profile.synchronize()
    return time.perf_counter() - start


def profiler_table(run: Callable[[], Any], profile: Profile, rows: int = 25) -> str:
    """Where one call of `run` spends its time: `torch.profiler`'s top ops by self CPU (on a GPU, CUDA) time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if profile.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        run()
        profile.synchronize()
    sort = "self_cuda_time_total" if profile.device == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=rows)


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
