"""Medical segmentation metrics (Dice, IoU, HD95, NSD) and their per-class / per-case aggregation.

All metrics are computed on binary masks obtained by thresholding probabilities (or logits with
`from_logits=True`, which applies the sigmoid first); raw logits passed as probabilities are rejected, so the
public Med-SA code's "Dice on raw logits" cannot happen silently.

Definitions (masks `P`, `T`; surfaces `∂P`, `∂T` are the mask voxels with a background face-neighbour, the
image border counting as background; distances are Euclidean in physical units given by `spacing`, in pixels
when `spacing` is None):
- Dice `2|P∩T| / (|P|+|T|)`, IoU `|P∩T| / |P∪T|`.
- HD95: the larger of the two directed 95th percentiles of surface distances (∂P -> ∂T and ∂T -> ∂P), as MONAI.
- NSD at tolerance τ: the fraction of surface voxels of both masks lying within τ of the other surface.
Units: the aggregator and every report name the distance metrics by their unit: `hd95_mm` / `nsd_mm` (NSD
tolerance in mm) when the voxel spacing is known, `hd95_px` / `nsd_px` (tolerance in pixels) when it is not
(PNG/JPEG), so a pixel distance can never be read as millimetres.

Empty masks: both empty gives Dice 1, IoU 1, HD95 0, NSD 1 (a correct "nothing here"). Exactly one empty gives
Dice 0, IoU 0, NSD 0 and HD95 NaN: a distance to an empty set is undefined, and a stand-in such as the image
diagonal depends on image size and would dominate any mean. Means skip these NaNs and `compute()` reports how
many there were under `hd95_undefined`, so a model that misses whole structures cannot look good on HD95.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

ArrayLike = np.ndarray | torch.Tensor
METRIC_NAMES = ("dice", "iou", "hd95", "nsd")
DISTANCE_METRICS = ("hd95", "nsd")


def distance_unit(spacing: Sequence[float] | None) -> str:
    """`mm` for a known voxel spacing (medical formats store it in mm), `px` for none."""
    return "px" if spacing is None else "mm"


def metric_key(metric: str, unit: str) -> str:
    """A metric's report name: distance metrics carry their unit (`hd95_mm`, `nsd_px`), overlaps do not."""
    return f"{metric}_{unit}" if metric in DISTANCE_METRICS else metric


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.dtype != torch.bool else x.detach().cpu().numpy()
    return np.asarray(x)


def binarize(pred: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False) -> np.ndarray:
    """Threshold probabilities in [0, 1] (or logits, with `from_logits=True`) to a boolean mask.

    Values outside [0, 1] without `from_logits` raise: they are almost always logits passed by mistake.
    """
    x = _to_numpy(pred)
    if x.dtype == bool:
        if from_logits:
            raise ValueError("from_logits=True was given with a boolean mask, which cannot be logits")
        return x
    x = x.astype(np.float64)
    if np.isnan(x).any():
        raise ValueError("predictions contain NaN")
    if from_logits:
        x = expit(x)
    elif x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"predictions must be probabilities in [0, 1] or binary masks, got values in [{x.min():g}, {x.max():g}]; "
            "for mask logits pass from_logits=True (the sigmoid is applied before thresholding)"
        )
    return x > threshold


def _binary_target(target: ArrayLike) -> np.ndarray:
    t = _to_numpy(target)
    if t.dtype != bool:
        if not np.isin(t, (0, 1)).all():
            raise ValueError(
                f"references must be binary masks with values in {{0, 1}}, got values {np.unique(t)[:5]}..."
            )
        t = t.astype(bool)
    return t


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 for s in spacing):  # also rejects NaN
        raise ValueError(
            f"spacing must hold {ndim} positive values (one per mask axis; None for pixel units), got {spacing}"
        )
    return spacing


def _prepare(
    pred: ArrayLike, target: ArrayLike, threshold: float, from_logits: bool
) -> tuple[np.ndarray, np.ndarray]:
    p = binarize(pred, threshold=threshold, from_logits=from_logits)
    t = _binary_target(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} and reference has shape {t.shape}: they must match")
    return p, t


def _overlap(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks."""
    inter, total = np.logical_and(p, t).sum(), p.sum() + t.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / (total - inter))


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0
    )
    return mask & ~eroded


def _surface_scores(
    p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...], tolerance: float
) -> tuple[float, float]:
    """HD95 and NSD of two boolean masks (see the module docstring for the empty cases)."""
    has_p, has_t = p.any(), t.any()
    if not (has_p or has_t):
        return 0.0, 1.0
    if not (has_p and has_t):
        return math.nan, 0.0
    # Crop to the union's bounding box: everything outside is background in both masks, so surfaces (the
    # erosion treats the border as background) and Euclidean distances between them are unchanged.
    crop = ndimage.find_objects((p | t).astype(np.uint8))[0]
    sp, st = _surface(p[crop]), _surface(t[crop])
    to_target = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]  # one distance per voxel of ∂P
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]  # one distance per voxel of ∂T
    hd95 = max(np.percentile(to_target, 95), np.percentile(to_pred, 95))
    nsd = ((to_target <= tolerance).sum() + (to_pred <= tolerance).sum()) / (to_target.size + to_pred.size)
    return float(hd95), float(nsd)


def segmentation_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
    threshold: float = 0.5,
    from_logits: bool = False,
) -> dict[str, float]:
    """Dice, IoU, HD95 and NSD of one 2-D image or 3-D volume; `spacing` (one value per axis, e.g. (z, y, x)
    in mm) makes HD95 and the NSD tolerance physical: keys `hd95_mm`, `nsd_mm`, else `hd95_px`, `nsd_px`."""
    p, t = _prepare(pred, target, threshold, from_logits)
    dice, iou = _overlap(p, t)
    hd95, nsd = _surface_scores(p, t, _spacing(spacing, p.ndim), tolerance_mm)
    unit = distance_unit(spacing)
    return {"dice": dice, "iou": iou, f"hd95_{unit}": hd95, f"nsd_{unit}": nsd}


def dice_score(
    pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Dice of the thresholded prediction with the target (1 when both are empty)."""
    return _overlap(*_prepare(pred, target, threshold, from_logits))[0]


def iou_score(
    pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """IoU (Jaccard) of the thresholded prediction with the target (1 when both are empty)."""
    return _overlap(*_prepare(pred, target, threshold, from_logits))[1]


def hausdorff_distance_95(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    spacing: Sequence[float] | None = None,
    threshold: float = 0.5,
    from_logits: bool = False,
) -> float:
    """HD95 in the units of `spacing` (0 when both are empty, NaN when exactly one is)."""
    p, t = _prepare(pred, target, threshold, from_logits)
    return _surface_scores(p, t, _spacing(spacing, p.ndim), 0.0)[0]


def normalized_surface_dice(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    tolerance_mm: float = 1.0,
    spacing: Sequence[float] | None = None,
    threshold: float = 0.5,
    from_logits: bool = False,
) -> float:
    """NSD at `tolerance_mm` (in the units of `spacing`; 1 when both are empty, 0 when exactly one is)."""
    p, t = _prepare(pred, target, threshold, from_logits)
    return _surface_scores(p, t, _spacing(spacing, p.ndim), tolerance_mm)[1]


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values; NaN (without numpy's warning) when there are none."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


class MetricAggregator:
    """Accumulates per-example masks with their metadata; reports per-class means and per-case (volume) metrics.

    An example added without `slice_index` is a case of its own (a 2-D image, or a whole 3-D volume) and is
    scored at once. Examples with a `slice_index` are 2-D slices of the volume `case_id`: they are kept
    (cropped to their foreground) and, at `compute()`, stacked along depth and scored once in 3-D with the
    volume's (z, y, x) spacing, which is what per-case volume metrics mean (averaging slice scores is not).
    Slice indices missing between the first and last given slice count as background in both masks; several
    prompts for the same (case, class, slice) are merged with a logical OR (the class's semantic mask). A case
    of a single slice (e.g. a 2-D image that carries a slice index) is scored in 2-D with the (y, x) spacing.

    Per-class values are means over cases; the headline `dice`, `iou`, `hd95`, `nsd` are means over classes.
    """

    def __init__(
        self,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        *,
        tolerance_mm: float = 1.0,
        threshold: float = 0.5,
    ):
        self.class_names = class_names
        self.tolerance_mm = tolerance_mm
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._records: list[dict[str, Any]] = []
        # (case_id, class_id) -> {"shape", "spacing", "slices": {slice_index: (offset, pred_crop, target_crop) | None}}
        self._volumes: dict[tuple[Any, int], dict[str, Any]] = {}

    def add(
        self,
        pred: ArrayLike,
        target: ArrayLike,
        *,
        case_id: Any = None,
        class_id: int = 0,
        slice_index: int | None = None,
        spacing: Sequence[float] | None = None,
        from_logits: bool = False,
    ) -> None:
        """Add one prediction (probabilities, binary mask, or logits with `from_logits=True`) and its target.

        `spacing` has one value per axis of the added mask, except for slices where it is the volume's (z, y, x).
        """
        p, t = _prepare(pred, target, self.threshold, from_logits)
        if slice_index is None:
            self._records.append(
                self._score(case_id if case_id is not None else len(self._records), class_id, p, t, spacing)
            )
            return
        if case_id is None or p.ndim != 2:
            raise ValueError(
                f"a slice needs a case_id and a 2-D mask, got case_id={case_id!r} and shape {p.shape}"
            )
        spacing = None if spacing is None else _spacing(spacing, 3)
        volume = self._volumes.setdefault(
            (case_id, class_id), {"shape": p.shape, "spacing": spacing, "slices": {}}
        )
        if volume["shape"] != p.shape or volume["spacing"] != spacing:
            raise ValueError(
                f"slices of case {case_id!r} disagree: shape {p.shape} vs {volume['shape']}, "
                f"spacing {spacing} vs {volume['spacing']}"
            )
        previous = volume["slices"].get(slice_index)
        if previous is not None:  # another prompt on the same slice and class: merge
            p, t = p.copy(), t.copy()
            (r, c), pp, tt = previous
            p[r : r + pp.shape[0], c : c + pp.shape[1]] |= pp
            t[r : r + tt.shape[0], c : c + tt.shape[1]] |= tt
        objects = ndimage.find_objects((p | t).astype(np.uint8))
        crop = objects[0] if objects else None
        volume["slices"][slice_index] = (
            None if crop is None else ((crop[0].start, crop[1].start), p[crop], t[crop])
        )

    def _score(self, case_id: Any, class_id: int, p: np.ndarray, t: np.ndarray, spacing) -> dict[str, Any]:
        dice, iou = _overlap(p, t)
        hd95, nsd = _surface_scores(p, t, _spacing(spacing, p.ndim), self.tolerance_mm)
        unit = distance_unit(spacing)
        return {
            "case_id": case_id,
            "class_id": class_id,
            "dice": dice,
            "iou": iou,
            f"hd95_{unit}": hd95,
            f"nsd_{unit}": nsd,
            "unit": unit,
        }

    def _stack(self, slices: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The (z, y, x) volume of stored slices, cropped in-plane to their joint foreground (exact for all metrics)."""
        first = min(slices)
        stored = [(z - first, *s) for z, s in slices.items() if s is not None]
        if not stored:
            return np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool)
        r0 = min(r for _, (r, _), _, _ in stored)
        c0 = min(c for _, (_, c), _, _ in stored)
        r1 = max(r + pc.shape[0] for _, (r, _), pc, _ in stored)
        c1 = max(c + pc.shape[1] for _, (_, c), pc, _ in stored)
        p = np.zeros((max(slices) - first + 1, r1 - r0, c1 - c0), bool)
        t = np.zeros_like(p)
        for z, (r, c), pc, tc in stored:
            p[z, r - r0 : r - r0 + pc.shape[0], c - c0 : c - c0 + pc.shape[1]] = pc
            t[z, r - r0 : r - r0 + tc.shape[0], c - c0 : c - c0 + tc.shape[1]] = tc
        return p, t

    def per_case(self) -> list[dict[str, Any]]:
        """One record per (case, class): `case_id`, `class_id`, `dice`, `iou`, `hd95_<unit>`, `nsd_<unit>` and
        `unit` (`mm` or `px`); volumes in 3-D."""
        volumes = []
        for (case_id, class_id), volume in self._volumes.items():
            p, t = self._stack(volume["slices"])
            spacing = volume["spacing"]
            if len(volume["slices"]) == 1:  # no depth to measure along: a 2-D case
                p, t, spacing = p[0], t[0], None if spacing is None else spacing[1:]
            volumes.append(self._score(case_id, class_id, p, t, spacing))
        return self._records + volumes

    def _class_name(self, class_id: int) -> str:
        try:
            return str(self.class_names[class_id])
        except (TypeError, KeyError, IndexError):
            return str(class_id)

    def unit(self) -> str:
        """The distance unit of everything added so far: `mm` (spacing known) or `px`; mixing them raises."""
        units = {r["unit"] for r in self.per_case()}
        if len(units) != 1:
            raise ValueError(
                "cases with a known spacing (mm) and without one (pixels) cannot be averaged together; "
                f"got units {sorted(units)}: give every case a spacing, or none"
            )
        return units.pop()

    def compute(self) -> dict[str, float]:
        """A flat dict of floats: `dice`, `iou`, `hd95_<unit>`, `nsd_<unit>` (means over classes; unit `mm` or
        `px`), `<metric>/<class name>`, and `hd95_undefined` (cases where exactly one of prediction and target
        was empty)."""
        records = self.per_case()
        if not records:
            raise ValueError("no examples were added to the MetricAggregator")
        names = [metric_key(metric, self.unit()) for metric in METRIC_NAMES]
        result: dict[str, float] = {}
        per_class = {name: [] for name in names}
        for class_id in sorted({r["class_id"] for r in records}):
            class_name = self._class_name(class_id)
            rows = [r for r in records if r["class_id"] == class_id]
            for name in names:
                value = _nanmean([r[name] for r in rows])
                result[f"{name}/{class_name}"] = value
                per_class[name].append(value)
        for name, values in per_class.items():
            result[name] = _nanmean(values)
        result["hd95_undefined"] = float(sum(math.isnan(r[names[2]]) for r in records))
        return result
