"""Evaluation in one place: a model, a task split and a prompt protocol -> an `EvaluationReport`.

Predictions are scored in the label's own grid. Each selected mask (mask-decoder resolution 4E x 4E) is
mapped back as `SamProcessor.post_process_masks` does (upscaled to the padded input, unpadded, resized to the
original image size) and compared with the original-resolution target that evaluation examples carry
(`original_target`), with the original spacing: HD95 and NSD are in mm where the spacing is known and in
pixels, under pixel names (`hd95_px`, `nsd_px`), where it is not. Volume slices are stacked per case and scored
in 3-D. Scoring at the decoder's resolution with the source spacing instead would shrink every distance by
the resize factor (on demo-3d a 3-pixel shift reads 6.0 mm instead of 10.97 mm).

`evaluate()` runs a model over a task split (used by `medsa eval`, the demo and the replication benchmark);
`make_compute_metrics` is the same scoring as the Trainer's `compute_metrics` (used during and at the end of
`train()`); both end in an `EvaluationReport`, what metrics.json and the model card are written from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, SamImageProcessorPil

from ..data import SamDataCollator, load_task, resolve_task
from ..errors import MedSAValueError
from ..families import family_of
from ..mask_selection import predict_masks, select_masks
from ..pretrained import default_device
from ..writing import atomic_write
from .losses import resize_mask_logits
from .metrics import METRIC_NAMES, MetricAggregator, metric_key

# What scoring needs from each evaluation example (the collator keeps all of it out of the model's batch).
METADATA_KEYS = (
    "case_id",
    "slice_index",
    "class_id",
    "spacing",
    "original_target",
    "original_size",
    "reshaped_input_size",
)
_POST_PROCESSOR = SamImageProcessorPil()  # only its post_process_masks is used


@dataclass
class EvaluationReport:
    """The result of one evaluation: metrics with their unit, per-case rows, and the optional box baseline.

    `metrics` holds `dice`, `iou`, `hd95_<unit>`, `nsd_<unit>` (means over classes), the same per class
    (`dice/<class>`), and `hd95_undefined`; `distance_unit` is `mm` or `px` and `nsd_tolerance` is in it.
    """

    task: str
    split: str
    prompt: str
    prompt_seed: int
    examples: int
    metrics: dict[str, float]
    distance_unit: str
    nsd_tolerance: float
    per_case: list[dict[str, Any]] = field(default_factory=list)
    box_baseline: dict[str, float] | None = None

    @classmethod
    def from_aggregator(
        cls,
        aggregator: MetricAggregator,
        *,
        task: str,
        split: str,
        prompt: str,
        prompt_seed: int,
        examples: int,
    ) -> EvaluationReport:
        return cls(
            task=task,
            split=split,
            prompt=prompt,
            prompt_seed=prompt_seed,
            examples=examples,
            metrics=aggregator.compute(),
            distance_unit=aggregator.unit(),
            nsd_tolerance=aggregator.tolerance_mm,
            per_case=[{k: v for k, v in row.items() if k != "unit"} for row in aggregator.per_case()],
        )

    @property
    def units(self) -> str:
        """One sentence for people: what the distances are measured in."""
        if self.distance_unit == "mm":
            return f"HD95 in mm, NSD at a tolerance of {self.nsd_tolerance:g} mm (the images' voxel spacing)."
        return (
            f"HD95 in pixels, NSD at a tolerance of {self.nsd_tolerance:g} px: the images carry no spacing, so "
            "distances are pixels of the original image, not millimetres."
        )

    def quality(self) -> dict[str, float]:
        """The headline metrics (means over classes), without the per-class ones."""
        names = [metric_key(m, self.distance_unit) for m in METRIC_NAMES] + ["hd95_undefined"]
        return {name: self.metrics[name] for name in names}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "units": self.units}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_plain)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically (a failed write leaves the previous file or nothing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temporary: temporary.write_text(self.to_json()))
        return path


def evaluation_set(
    task: Any,
    sam_config: Any,
    split: str,
    prompt: str,
    *,
    prompt_seed: int = 0,
    depth: int | None = None,
    data_dir: str | None = None,
    max_samples: int | None = None,
    streaming: bool = True,
) -> list[dict[str, Any]]:
    """The evaluation examples of a task split, with their original-resolution targets, in a fixed order
    (the Trainer's metrics match predictions to examples by position). Prompts are seeded, never noised."""
    examples = load_task(
        task,
        split=split,
        streaming=streaming,
        prompt=prompt,
        seed=prompt_seed,
        sam_config=sam_config,
        depth=depth,
        data_dir=data_dir,
        keep_original_target=True,
    )
    if max_samples is not None:
        examples = examples.take(max_samples)
    return list(examples)


def evaluate(
    model: torch.nn.Module,
    task: Any,
    split: str = "test",
    prompt: str = "box",
    *,
    prompt_seed: int = 0,
    depth: int | None = None,
    data_dir: str | None = None,
    max_samples: int | None = None,
    examples: list[dict[str, Any]] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    box_baseline: bool = False,
    tolerance: float = 1.0,
) -> EvaluationReport:
    """Score `model` (a SamModel or a Med-SA PeftModel) on a task split with seeded simulated prompts.

    `examples` (from `evaluation_set`) skips loading them again. `box_baseline=True` also scores the prompt box
    itself used as the mask (box prompts only): what a box gives with no model at all. `tolerance` is the NSD
    tolerance, in mm (pixels where the spacing is unknown). The model runs on `device` (default: CUDA when
    present, else the CPU) in eval mode.
    """
    spec = resolve_task(task)
    check_takes_volumes(model, depth is not None)
    if examples is None:
        examples = evaluation_set(
            spec,
            model.config,
            split,
            prompt,
            prompt_seed=prompt_seed,
            depth=depth,
            data_dir=data_dir,
            max_samples=max_samples,
        )
    if not examples:
        raise MedSAValueError(f"Task {spec.name!r}: split {split!r} has no examples to evaluate.")
    if box_baseline and "input_boxes" not in examples[0]:
        raise MedSAValueError(
            f"The box baseline needs box prompts (e.g. prompt 'box' or 'bbox-0.75'), got prompt {prompt!r}."
        )
    device = torch.device(device or default_device())
    model = model.to(device).eval()
    aggregator = MetricAggregator(spec.labels, tolerance_mm=tolerance)
    score = metrics_for(examples, aggregator)
    boxes = MetricAggregator(spec.labels, tolerance_mm=tolerance)
    score_boxes = metrics_for(examples, boxes)
    collate = SamDataCollator()
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        labels = batch.pop("labels")
        with torch.no_grad():
            outputs = predict_masks(model, {k: v.to(device) for k, v in batch.items()})
        last = start + batch_size >= len(examples)
        score(
            EvalPrediction((outputs.iou_scores.cpu(), outputs.pred_masks.cpu()), labels), compute_result=last
        )
        if box_baseline:
            boxes_as_masks = box_logits(batch["input_boxes"], _input_size(examples))
            score_boxes(EvalPrediction(boxes_as_masks, labels), compute_result=last)
    report = EvaluationReport.from_aggregator(
        aggregator,
        task=spec.name,
        split=split,
        prompt=prompt,
        prompt_seed=prompt_seed,
        examples=len(examples),
    )
    if box_baseline:
        report.box_baseline = EvaluationReport.from_aggregator(
            boxes, task=spec.name, split=split, prompt=prompt, prompt_seed=prompt_seed, examples=len(examples)
        ).quality()
    return report


def check_takes_volumes(model: torch.nn.Module, volumes: bool) -> None:
    """`--depth` (3-D chunks through SD-Trans) asks for SAM; other families take volumes slice by slice."""
    family = family_of(model)
    if volumes and not family.takes_volumes:
        raise MedSAValueError(
            f"--depth (chunks of slices through SD-Trans, the depth branch) is SAM-only; this is a {family.name} "
            "model, which trains and is evaluated on volumes slice by slice (omit --depth) and segments a volume "
            "by propagating prompts through its memory (`medsa predict VOLUME --slices K`)."
        )


def box_logits(input_boxes: torch.Tensor, input_size: int) -> torch.Tensor:
    """The prompt boxes (B, P, 4) or, for volumes, (B, D, P, 4) as hard mask logits in the model's input
    frame, (B, P, S, S) or (B*D, P, S, S): what scoring the box itself as the mask needs."""
    boxes = input_boxes.reshape(-1, *input_boxes.shape[-2:])  # (B or B*D, P, 4), input-frame pixels
    centres = torch.arange(input_size) + 0.5
    rows, columns = centres[:, None], centres[None, :]
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))  # each (B*D, P, 1, 1)
    inside = (columns >= x1) & (columns <= x2 + 1) & (rows >= y1) & (rows <= y2 + 1)  # inclusive corners
    return inside.float() * 40 - 20


def metrics_for(
    examples: Sequence[Mapping[str, Any]], aggregator: MetricAggregator
) -> Callable[..., dict[str, float]]:
    """A Trainer `compute_metrics` that scores the predictions of `examples` (in order) in their original grid."""
    metadata = [{key: example[key] for key in METADATA_KEYS if key in example} for example in examples]
    return make_compute_metrics(aggregator, metadata=metadata, input_size=_input_size(examples))


def _input_size(examples: Sequence[Mapping[str, Any]]) -> int:
    return int(np.asarray(examples[0]["pixel_values"]).shape[-1])


def to_original_grid(
    logits: torch.Tensor, original_size: Sequence[int], reshaped_size: Sequence[int], input_size: int
) -> torch.Tensor:
    """Mask logits (P, h, w) at the decoder's resolution -> boolean masks (P, H, W) on the original image grid,
    with `SamImageProcessor.post_process_masks`: upscale to the padded input (S, S), drop the padding (the
    resized image is `reshaped_size`), resize to `original_size`, threshold at logit 0. SAM 2's stretched input
    has no padding (`reshaped_size` is (S, S)): the same steps then resize the square back to the image."""
    [masks] = _POST_PROCESSOR.post_process_masks(
        [logits[None].float()],
        [tuple(int(v) for v in original_size)],
        [tuple(int(v) for v in reshaped_size)],
        pad_size={"height": input_size, "width": input_size},
    )
    return masks[0]


def make_compute_metrics(
    aggregator: MetricAggregator | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    input_size: int | None = None,
) -> Callable[..., dict[str, float]]:
    """Build `compute_metrics(eval_pred, compute_result=True)` for a Trainer, with or without `batch_eval_metrics`.

    `eval_pred.predictions` are SamModel's outputs (see `select_masks`), `eval_pred.label_ids` the labels
    `(B, P, H, W)`; prompts whose labels are all -100 (the Trainer's padding of P) are skipped.

    `metadata`, one mapping per evaluation example in dataset order, may hold `case_id`, `slice_index`,
    `spacing` (NaN values mean unknown: pixel units) and `class_id` (one for all prompts) or `class_ids` (one
    per prompt). When it holds `original_target` with `original_size` and `reshaped_input_size` (evaluation
    sets do), the selected masks are mapped back to the original grid (`to_original_grid`, `input_size` = the
    model's input side) and scored against it with the spacing; otherwise the mask logits are resized
    bilinearly to the given labels and `spacing` must be that of the labels. Without metadata every example is
    its own case and all prompts are class 0. Volume examples, labels `(B, D, P, H, W)` with predictions for
    B*D slices (volume-major), add their slices `slice_index + d` of `case_id`, so each case is scored in 3-D.
    The order assumption holds for the Trainer's sequential evaluation on one process. With
    `batch_eval_metrics=True` each batch is added as it comes and only the last call (`compute_result=True`)
    computes. The aggregator keeps the last evaluation's examples until the next one starts, so
    `aggregator.per_case()` can be read after `trainer.evaluate()`.
    """
    aggregator = aggregator if aggregator is not None else MetricAggregator()
    state = {"seen": 0, "done": False}

    def compute_metrics(eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        if state["done"]:
            aggregator.reset()
            state.update(seen=0, done=False)
        logits = select_masks(eval_pred.predictions)  # (B, P, h, w); volumes (B*D, P, h, w) or (B, D*P, h, w)
        labels = torch.as_tensor(eval_pred.label_ids)
        volumes = labels.ndim == 5
        if volumes and logits.shape[0] == labels.shape[0] != labels.shape[0] * labels.shape[1]:
            logits = logits.reshape(-1, labels.shape[2], *logits.shape[-2:])  # (B, D*P, ...) -> (B*D, P, ...)
        slices = labels.flatten(0, 1) if volumes else labels  # (B*D, P, H, W), volume-major
        if slices.ndim != 4 or logits.shape[:2] != slices.shape[:2]:
            raise ValueError(
                f"selected masks have shape {tuple(logits.shape)} and labels have shape {tuple(labels.shape)}: "
                "expected (B, P, h, w) with labels (B, P, H, W), or (B*D, P, h, w) with labels (B, D, P, H, W)"
            )
        depth = labels.shape[1] if volumes else 1
        for n in range(slices.shape[0]):
            i, d = divmod(n, depth)  # example in this batch, slice in its volume
            meta = metadata[state["seen"] + i] if metadata is not None else {}
            spacing = meta.get("spacing")
            if spacing is not None and np.isnan(np.asarray(spacing, dtype=float)).any():
                spacing = None
            slice_index = meta.get("slice_index", 0) + d if volumes else meta.get("slice_index")
            if "original_target" in meta:
                predicted = to_original_grid(
                    logits[n], meta["original_size"], meta["reshaped_input_size"], input_size
                )  # (P, H, W) bool
                target = torch.as_tensor(np.asarray(meta["original_target"]))
                targets = target[d] if volumes else target  # (H, W): one target per example
            else:
                predicted = resize_mask_logits(logits[n], tuple(slices.shape[-2:])) > 0  # (P, H, W)
                targets = None
            for prompt in range(slices.shape[1]):
                if (slices[n, prompt] == -100).all():  # padding added by the Trainer
                    continue
                class_id = meta["class_ids"][prompt] if "class_ids" in meta else meta.get("class_id", 0)
                aggregator.add(
                    predicted[prompt],
                    slices[n, prompt] if targets is None else targets,
                    case_id=meta.get("case_id", state["seen"] + i),
                    class_id=int(class_id),
                    slice_index=None if slice_index is None else int(slice_index),
                    spacing=spacing,
                )
        state["seen"] += labels.shape[0]
        if not compute_result:
            return {}
        state["done"] = True
        return aggregator.compute()

    return compute_metrics


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> torch.Tensor:
    """For `Trainer(preprocess_logits_for_metrics=...)`: keep only the selected mask of each prompt on device,
    so evaluation gathers M times less data."""
    return select_masks(logits)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays in per-case rows."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)
