"""`torch.compile` of Med-SA models: one graph, no graph break in peft_medsa, compiled == eager, and the Trainer's
`--torch_compile`.

Graph breaks that torch 2.13 + transformers 5.24 leave on these paths inside transformers: none (SamModel,
Sam2Model and Sam3TrackerModel; 2-D images, 5-D volumes, image embeddings, training with gradient checkpointing).
`TRANSFORMERS_BREAKS` lists the allowed ones; a transformers upgrade that adds one must name it there.

Tracing and equality use the `eager` / `aot_eager` backends (same graphs, same backward, no code generation):
inductor compiles the tiny model in 1.5-3 min on 2 cores, so it is smoke-tested on one SD-Trans block.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from conftest import (
    point_prompts,
    randomize_adapters,
    tiny_sam2_config,
    tiny_sam3_tracker_config,
    tiny_sam_config,
)
from peft import get_peft_model
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from transformers import Sam2Model, Sam3TrackerModel, SamModel

import peft_medsa
from peft_medsa import MedSAConfig
from peft_medsa.training.arguments import parse_arguments
from peft_medsa.training.run import train

PACKAGE = str(Path(peft_medsa.__file__).parent)
# (file name, function) of the allowed graph breaks inside transformers, each with its reason. None today.
TRANSFORMERS_BREAKS: dict[tuple[str, str], str] = {}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each case traces from scratch (dynamo caches graphs per code object and recompiles on new shapes)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def medsa_sam(preset: str = "paper", training: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(SamModel(tiny_sam_config()), MedSAConfig.from_preset(preset, **overrides))
    randomize_adapters(model)
    return model.train(training)


def medsa_family(model_class: type, config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(model_class(config), MedSAConfig())
    randomize_adapters(model)
    return model.train()


def images(batch: int, size: int = 64, **prompts) -> dict:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {"pixel_values": pixels, **(prompts or point_prompts(batch, size=size)), "multimask_output": False}


def volumes(batch: int, depth: int) -> dict:
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(batch, 3, depth, 64, 64, generator=generator)
    return {"pixel_values": pixels, **point_prompts(batch * depth), "multimask_output": False}


def with_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    model.gradient_checkpointing_enable()
    return model


def embeddings_call(model: torch.nn.Module) -> tuple:
    with torch.no_grad():
        embeddings = model.get_image_embeddings(volumes(1, 2)["pixel_values"])
    return model, {"image_embeddings": embeddings, **point_prompts(2), "multimask_output": False}


CASES = {
    "paper, 2-D clicks": lambda: (medsa_sam(), images(2)),
    "official-code, boxes": lambda: (
        medsa_sam("official-code"),
        images(2, input_boxes=torch.tensor([[[4.0, 4, 40, 40]], [[8, 8, 50, 60]]])),
    ),
    "encoder-only": lambda: (medsa_sam("encoder-only"), images(1)),
    "HyP-Adpt 'add', mask prompt": lambda: (
        medsa_sam(hyper_prompt_mode="add"),
        images(1, **point_prompts(1), input_masks=torch.randn(1, 1, 32, 32)),
    ),
    "SD-Trans, 5-D volume": lambda: (medsa_sam(depth_attention=True), volumes(2, 3)),
    "SD-Trans model, 2-D images": lambda: (medsa_sam(depth_attention=True), images(2)),
    "image embeddings reused": lambda: embeddings_call(medsa_sam(depth_attention=True)),
    "training, 5-D, checkpointing": lambda: (
        with_checkpointing(medsa_sam(training=True, depth_attention=True)),
        volumes(1, 2),
    ),
    "bf16 base, 5-D": lambda: (
        get_peft_model(SamModel(tiny_sam_config()).to(torch.bfloat16), MedSAConfig(depth_attention=True)),
        volumes(1, 2),
    ),
    "Sam2Model, training": lambda: (medsa_family(Sam2Model, tiny_sam2_config()), images(1)),
    "Sam3TrackerModel, training": lambda: (
        medsa_family(Sam3TrackerModel, tiny_sam3_tracker_config()),
        images(1, size=56),
    ),
}


def break_sites(explanation) -> list[tuple[str, str, str]]:
    """(file, function, reason) of the innermost user frame of each graph break."""
    return [
        (reason.user_stack[-1].filename, reason.user_stack[-1].name, reason.reason.splitlines()[0])
        for reason in explanation.break_reasons
    ]


@pytest.mark.parametrize("case", CASES)
def test_one_graph_without_a_break_in_peft_medsa(case):
    model, inputs = CASES[case]()
    explanation = torch._dynamo.explain(model)(**inputs)
    sites = break_sites(explanation)
    assert [site for site in sites if site[0].startswith(PACKAGE)] == []
    assert {(Path(file).name, function) for file, function, _ in sites} <= set(TRANSFORMERS_BREAKS), sites
    assert explanation.graph_count == 1 + len(sites)


def test_input_checks_still_run_in_eager_mode():
    """The NaN checks skipped while tracing (a value check would break the graph) still guard eager calls."""
    inputs = images(1)
    inputs["pixel_values"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pixel_values hold 1 NaN or infinite value\(s\)"):
        medsa_sam()(**inputs)


def step(model: torch.nn.Module, parameters: dict, inputs: dict) -> tuple:
    """Masks and gradients of one forward/backward of `model` (a compiled wrapper or the model itself)."""
    for parameter in parameters.values():
        parameter.grad = None
    masks = model(**inputs).pred_masks
    masks.square().mean().backward()
    return masks.detach(), {name: parameter.grad for name, parameter in parameters.items()}


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Equal up to 1e-4 of the tensor's largest value: compiled graphs reorder float sums (the tiny SAM 2's masks
    reach ~300, so an element-wise relative tolerance fails on entries near zero)."""
    tolerance = 1e-4 * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance, msg=name or None)


@pytest.mark.parametrize(
    "make_model, calls",
    [
        # 5-D then 4-D: the slice count a volume sets must not leak into the next call's graph.
        (
            lambda: with_checkpointing(medsa_sam(training=True, depth_attention=True)),
            [volumes(1, 2), images(2)],
        ),
        (lambda: medsa_family(Sam2Model, tiny_sam2_config()), [images(2)]),
    ],
    ids=["SAM, SD-Trans, checkpointing", "SAM 2"],
)
def test_compiled_training_step_equals_eager(make_model, calls):
    model = make_model()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    compiled = torch.compile(model, backend="aot_eager")
    for inputs in calls:
        eager_masks, eager_grads = step(model, trainable, inputs)
        masks, grads = step(compiled, trainable, inputs)
        assert eager_masks.abs().max() > 0.1  # masks of order 1: the comparison means something
        assert_close_at_scale(masks, eager_masks)
        used = [name for name, grad in eager_grads.items() if grad is not None and grad.abs().max() > 0]
        assert len(used) > len(eager_grads) // 2  # 2-D input leaves the Depth adapters without a gradient
        for name in eager_grads:
            if eager_grads[name] is None:
                assert grads[name] is None, name
            else:
                assert_close_at_scale(grads[name], eager_grads[name], name)


def test_inductor_compiles_an_sd_trans_block():
    """Inductor's generated code for the block Med-SA rewrites most (Space, MLP and Depth adapters, depth
    attention over 2 slices) matches eager."""
    model = medsa_sam(depth_attention=True)
    block = model.base_model.model.vision_encoder.layers[0]  # windowed
    hidden = torch.randn(4, 8, 8, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = block(hidden, num_slices=2)
        compiled = torch.compile(block)(hidden, num_slices=2)
    assert expected.abs().max() > 1
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)


def test_trainer_torch_compile_trains_the_adapter_eager_training_gives(sam_checkpoint, tmp_path):
    """`medsa train --torch_compile` (the Trainer compiles the PeftModel): one graph, no break, the same adapter."""

    def run(output, *extra):
        arguments = [
            "--model_name_or_path",
            str(sam_checkpoint),
            "--task",
            "demo-2d",
            "--output_dir",
            str(output),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--optim",
            "sgd",
            "--learning_rate",
            "0.1",
            "--train_box_noise",
            "0",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--do_eval",
            "false",
            "--report_to",
            "none",
            "--use_cpu",
            "--disable_tqdm",
            "true",
            "--seed",
            "5",
            *extra,
        ]  # fmt: skip  SGD: Adam's first steps are +-lr wherever a gradient is not exactly 0, whatever its size
        train(*parse_arguments(arguments))
        return load_file(output / "adapter_model.safetensors")

    eager = run(tmp_path / "eager")
    counters.clear()
    compiled = run(tmp_path / "compiled", "--torch_compile_backend", "aot_eager")
    assert counters["stats"]["unique_graphs"] == 1
    assert dict(counters["graph_break"]) == {}
    assert eager.keys() == compiled.keys()
    assert any(tensor.abs().max() > 0 for key, tensor in eager.items() if "_up." in key)  # it trained
    for key in eager:
        assert_close_at_scale(compiled[key], eager[key], key)
