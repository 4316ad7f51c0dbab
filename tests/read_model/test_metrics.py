"""gIoU / cIoU / See on hand-made masks, incl. ignore pixels and empty GT; exact merging."""

from __future__ import annotations

import json
import random

import pytest
import torch

from read_model.metrics import (
    GroupedSegmentationMeter,
    SeeMeter,
    SegmentationMeter,
    intersection_union,
    query_iou,
)


def test_intersection_union_excludes_ignore_pixels() -> None:
    pred = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    gt = torch.tensor([[1, 0, 255], [0, 255, 1]], dtype=torch.uint8)
    inter, union = intersection_union(pred, gt)
    # I = {(0,0)}; pred area without ignore = {(0,0),(0,1)}; GT area = {(0,0),(1,2)}.
    assert inter.tolist() == [1] and union.tolist() == [3]


def test_value_two_is_not_foreground_but_prediction_counts() -> None:
    inter, union = intersection_union(torch.tensor([[[1, 0]]]), torch.tensor([[[2, 0]]]))
    assert inter.tolist() == [0] and union.tolist() == [1]


def test_empty_gt_rules() -> None:
    empty_gt = torch.zeros(2, 3, 3, dtype=torch.uint8)
    preds = torch.zeros(2, 3, 3, dtype=torch.bool)
    preds[1, 0, 0] = True
    inter, union = intersection_union(preds, empty_gt)
    assert query_iou(int(inter[0]), int(union[0])) == 1.0  # empty GT, empty prediction
    assert query_iou(int(inter[1]), int(union[1])) == 0.0  # empty GT, one predicted pixel


def test_meter_giou_ciou_on_hand_made_queries() -> None:
    meter = SegmentationMeter()
    meter.update([1, 0, 0], [3, 0, 2])
    result = meter.result()
    assert result["count"] == 3
    assert result["giou"] == pytest.approx((1 / (3 + 1e-5) + 1.0 + 0.0) / 3, rel=1e-12)
    assert result["ciou"] == pytest.approx(1 / (5 + 1e-10), rel=1e-12)
    masks_meter = SegmentationMeter()
    masks_meter.update_masks(
        torch.tensor([[1, 1, 0], [0, 1, 0]]), torch.tensor([[1, 0, 255], [0, 255, 1]])
    )
    assert masks_meter.result()["giou"] == pytest.approx(1 / (3 + 1e-5))
    assert SegmentationMeter().result() == {"giou": 0.0, "ciou": 0.0, "count": 0}


def test_merged_partial_meters_equal_one_meter_exactly() -> None:
    rng = random.Random(0)
    unions = [rng.randint(0, 10**7) for _ in range(3000)]
    inters = [rng.randint(0, u) for u in unions]
    single = SegmentationMeter()
    single.update(inters, unions)
    parts = []
    for start in range(0, 3000, 700):
        part = SegmentationMeter()
        part.update(inters[start : start + 700], unions[start : start + 700])
        parts.append(json.loads(json.dumps(part.to_dict())))  # shipped between processes
    merged = SegmentationMeter()
    for data in reversed(parts):
        merged.merge(SegmentationMeter.from_dict(data))
    assert merged.result() == single.result()  # bit for bit, not approximately
    plain = sum(query_iou(i, u) for i, u in zip(inters, unions, strict=True)) / 3000
    assert merged.result()["giou"] == pytest.approx(plain, rel=1e-12)


def test_see_meter() -> None:
    meter = SeeMeter()
    meter.update([True, False, True, False], torch.tensor([True, False, False, True]))
    other = SeeMeter.from_dict(json.loads(json.dumps(SeeMeter(3, 4).to_dict())))
    assert meter.result() == {"see_accuracy": 0.5, "count": 4}
    assert meter.merge(other).result() == {"see_accuracy": 5 / 8, "count": 8}


def test_grouped_meter_splits_by_query_kind() -> None:
    grouped = GroupedSegmentationMeter()
    grouped.update(torch.tensor([1, 0, 4]), torch.tensor([3, 0, 4]), ["long", "short", "long"])
    result = grouped.result()
    assert result["short"] == {"giou": 1.0, "ciou": 0.0, "count": 1}
    assert result["long"]["count"] == 2
    assert result["long"]["ciou"] == pytest.approx(5 / 7)
    restored = GroupedSegmentationMeter.from_dict(json.loads(json.dumps(grouped.to_dict())))
    assert restored.merge(grouped).overall().result()["count"] == 6
    single = SegmentationMeter()
    single.update([1, 0, 4], [3, 0, 4])
    assert grouped.overall().result() == single.result()


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="differ"):
        intersection_union(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="invalid counts"):
        SegmentationMeter().update([3], [2])
    with pytest.raises(ValueError, match="kind"):
        SegmentationMeter.from_dict({"kind": "see", "correct": 1, "count": 1})
