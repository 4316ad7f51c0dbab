"""gIoU / cIoU (`READ:utils.py`, `READ:train_read.py`) and See accuracy (`READ:test_read.py`) as
mergeable accumulators (docs/fidelity.md).

Counting follows upstream's ``intersectionAndUnionGPU`` for class 1: pixels whose GT is the
ignore value leave every count; a GT value other than 0, 1 and the ignore value (COCO's
overlapping polygon parts can sum to 2) is not foreground, yet a predicted pixel there still
counts in the prediction's area, as upstream's histogram does.

Meters are built to be split across many workers: intersection/union totals are Python ints and
the IoU sum is an exact float sum (Shewchuk partials), so merging partial meters in any order
gives bit for bit the result of one meter that saw every query. ``to_dict``/``from_dict`` give
plain JSON-safe dicts for shipping them between processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

IOU_EPS = 1e-5  # upstream: I / (U + 1e-5) per query
CIOU_EPS = 1e-10  # upstream: ΣI / (ΣU + 1e-10)


def intersection_union(pred: Tensor, gt: Tensor, ignore_value: int = 255) -> tuple[Tensor, Tensor]:
    """Class-1 intersection and union per mask: pred (bool or 0/1) and gt [n, H, W] (or [H, W])."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and GT {tuple(gt.shape)} differ")
    if pred.dim() == 2:
        pred, gt = pred[None], gt[None]
    if pred.dim() != 3:
        raise ValueError(f"masks must be [n, H, W] or [H, W], got {tuple(pred.shape)}")
    foreground = pred if pred.dtype == torch.bool else pred != 0
    target = gt == 1
    kept = gt != ignore_value
    intersection = (foreground & target).flatten(1).sum(1)
    pred_area = (foreground & kept).flatten(1).sum(1)
    union = pred_area + target.flatten(1).sum(1) - intersection
    return intersection, union


def query_iou(intersection: int, union: int) -> float:
    """Upstream's per-query IoU: I / (U + 1e-5), plus 1 when U == 0 (empty GT, empty prediction)."""
    return intersection / (union + IOU_EPS) + (1.0 if union == 0 else 0.0)


class ExactSum:
    """A float sum kept exactly as non-overlapping partials, so addition order never matters."""

    def __init__(self, partials: Iterable[float] = ()) -> None:
        self.partials: list[float] = []
        for value in partials:
            self.add(value)

    def add(self, value: float) -> None:
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"cannot accumulate a non-finite value {x}")
        kept = []
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                kept.append(low)
            x = high
        kept.append(x)
        self.partials = kept

    def merge(self, other: ExactSum) -> None:
        for value in other.partials:
            self.add(value)

    def value(self) -> float:
        return math.fsum(self.partials)


def _ints(values: Tensor | Sequence[int] | Sequence[bool]) -> list[int]:
    if isinstance(values, Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def _require(data: dict[str, Any], kind: str, keys: Sequence[str]) -> None:
    if data.get("kind") != kind:
        raise ValueError(f"expected a serialised {kind!r} meter, got kind {data.get('kind')!r}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"serialised {kind!r} meter lacks {missing}")


@dataclass
class SegmentationMeter:
    """gIoU = mean per-query IoU; cIoU = ΣI / (ΣU + 1e-10); class 1, upstream's rules."""

    iou_sum: ExactSum = field(default_factory=ExactSum)
    intersection: int = 0
    union: int = 0
    count: int = 0

    def update(self, intersection: Tensor | Sequence[int], union: Tensor | Sequence[int]) -> None:
        inters, unions = _ints(intersection), _ints(union)
        if len(inters) != len(unions):
            raise ValueError(f"{len(inters)} intersections but {len(unions)} unions")
        for inter, uni in zip(inters, unions, strict=True):
            if inter < 0 or uni < inter:
                raise ValueError(f"invalid counts: intersection {inter}, union {uni}")
            self.iou_sum.add(query_iou(inter, uni))
            self.intersection += inter
            self.union += uni
            self.count += 1

    def update_masks(self, pred: Tensor, gt: Tensor, ignore_value: int = 255) -> None:
        self.update(*intersection_union(pred, gt, ignore_value))

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        self.iou_sum.merge(other.iou_sum)
        self.intersection += other.intersection
        self.union += other.union
        self.count += other.count
        return self

    def result(self) -> dict[str, float | int]:
        """{"giou", "ciou", "count"}; an empty meter reports 0.0 (as upstream's meters do)."""
        giou = self.iou_sum.value() / self.count if self.count else 0.0
        return {
            "giou": giou,
            "ciou": self.intersection / (self.union + CIOU_EPS),
            "count": self.count,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "segmentation",
            "iou_partials": list(self.iou_sum.partials),
            "intersection": self.intersection,
            "union": self.union,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationMeter:
        _require(data, "segmentation", ("iou_partials", "intersection", "union", "count"))
        return cls(
            ExactSum(data["iou_partials"]),
            int(data["intersection"]),
            int(data["union"]),
            int(data["count"]),
        )


@dataclass
class SeeMeter:
    """See accuracy: the share of queries whose predicted existence equals the GT existence."""

    correct: int = 0
    count: int = 0

    def update(
        self, pred_exists: Tensor | Sequence[bool], gt_exists: Tensor | Sequence[bool]
    ) -> None:
        preds, gts = _ints(pred_exists), _ints(gt_exists)
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions but {len(gts)} GT flags")
        self.correct += sum(int(bool(p) == bool(g)) for p, g in zip(preds, gts, strict=True))
        self.count += len(preds)

    def merge(self, other: SeeMeter) -> SeeMeter:
        self.correct += other.correct
        self.count += other.count
        return self

    def result(self) -> dict[str, float | int]:
        return {
            "see_accuracy": self.correct / self.count if self.count else 0.0,
            "count": self.count,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "see", "correct": self.correct, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeeMeter:
        _require(data, "see", ("correct", "count"))
        return cls(int(data["correct"]), int(data["count"]))


@dataclass
class GroupedSegmentationMeter:
    """One SegmentationMeter per group key (e.g. "short" / "long" query), plus their union."""

    meters: dict[str, SegmentationMeter] = field(default_factory=dict)

    def update(
        self,
        intersection: Tensor | Sequence[int],
        union: Tensor | Sequence[int],
        groups: Sequence[str],
    ) -> None:
        inters, unions = _ints(intersection), _ints(union)
        if not len(inters) == len(unions) == len(groups):
            raise ValueError(
                f"{len(inters)} intersections, {len(unions)} unions, {len(groups)} group keys"
            )
        for inter, uni, group in zip(inters, unions, groups, strict=True):
            self.meters.setdefault(str(group), SegmentationMeter()).update([inter], [uni])

    def merge(self, other: GroupedSegmentationMeter) -> GroupedSegmentationMeter:
        for group, meter in other.meters.items():
            self.meters.setdefault(group, SegmentationMeter()).merge(meter)
        return self

    def overall(self) -> SegmentationMeter:
        total = SegmentationMeter()
        for group in sorted(self.meters):
            total.merge(self.meters[group])
        return total

    def result(self) -> dict[str, dict[str, float | int]]:
        return {group: self.meters[group].result() for group in sorted(self.meters)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "grouped_segmentation",
            "groups": {group: meter.to_dict() for group, meter in self.meters.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupedSegmentationMeter:
        _require(data, "grouped_segmentation", ("groups",))
        return cls({str(k): SegmentationMeter.from_dict(v) for k, v in data["groups"].items()})
