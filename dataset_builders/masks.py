"""Mask rasterisation for the two upstream annotation styles.

ReasonSeg (labelme polygons) is rasterised exactly as upstream does, because its ground truth *is*
that rasterisation (truncated points, area-sorted painting, 255 for "ignore"). COCO segmentations
go through pycocotools, but multi-part masks are OR-ed: upstream sums the parts, which yields
values of 2 wherever parts overlap and silently corrupts BCE targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from dataset_builders.sample import MASK_IGNORE, MASK_OBJECT

DEPRECATED_LABEL = "flag"  # labelme shapes with exactly this (lower-cased) label are dropped
IGNORE_LABEL_MARK = "ignore"  # a label containing this paints MASK_IGNORE
NO_TARGET_ANN_ID = -1  # gRefCOCO-style ann_id lists use -1 for "no object"


def upstream_polygon(points: Sequence[Sequence[float]]) -> np.ndarray:
    """``np.array([points], dtype=np.int32)``: upstream's very cast (truncation toward zero),
    which raises where upstream's loader raises (`READ:dataloaders/data_processing.py`)."""
    return np.array([points], dtype=np.int32)


def _paint(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
    cv2.polylines(canvas, polygon, True, value, 1)
    cv2.fillPoly(canvas, polygon, value)


def paint_order(areas: Sequence[int]) -> np.ndarray:
    """Upstream's painting order: ``np.argsort(areas)[::-1]`` on its uint64 pixel counts, so
    equal areas come in whatever order numpy's default sort leaves them (reversed)."""
    return np.argsort(np.asarray(areas, dtype=np.uint64))[::-1]


def rasterize_labelme(shapes: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """ReasonSeg mask (uint8 [H, W] in {0, 1, 255}) from labelme shapes, upstream-exact.

    Shapes labelled "flag" are dropped; the rest are painted largest area first (area measured by
    rasterising each polygon alone), so smaller polygons overwrite larger ones. Any polygon cv2
    draws is drawn, 2-point lines and points past the image edge included.
    """
    kept = [s for s in shapes if str(s["label"]).lower() != DEPRECATED_LABEL]
    polygons = [upstream_polygon(s["points"]) for s in kept]
    values = [
        MASK_IGNORE if IGNORE_LABEL_MARK in str(s["label"]).lower() else MASK_OBJECT for s in kept
    ]
    scratch = np.zeros((height, width), dtype=np.uint8)
    areas = []
    for polygon in polygons:
        scratch.fill(0)
        _paint(scratch, polygon, 1)
        areas.append(int(np.count_nonzero(scratch)))
    mask = np.zeros((height, width), dtype=np.uint8)
    for i in paint_order(areas):
        _paint(mask, polygons[i], values[i])
    return mask


def is_polygon_segmentation(segmentation: Any) -> bool:
    """COCO polygons are a list of flat coordinate lists; anything else is RLE."""
    return (
        isinstance(segmentation, list) and bool(segmentation) and isinstance(segmentation[0], list)
    )


def _as_rles(segmentation: Any, height: int, width: int) -> list[dict]:
    if is_polygon_segmentation(segmentation):
        return coco_mask.frPyObjects(segmentation, height, width)
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    rles = []
    for part in parts:
        counts = part["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            rles.append(coco_mask.frPyObjects(part, height, width))
        else:
            size = [int(v) for v in part["size"]]
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
            rles.append({"size": size, "counts": raw})
    return rles


def decode_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] in {0, 1}: the union of every part of a COCO segmentation (empty -> zeros)."""
    if not segmentation:
        return np.zeros((height, width), dtype=np.uint8)
    decoded = coco_mask.decode(_as_rles(segmentation, height, width))
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    return np.any(decoded, axis=2).astype(np.uint8)


def union_of_annotations(
    ann_ids: int | Sequence[int],
    segmentations: Mapping[int, Any],
    height: int,
    width: int,
) -> np.ndarray:
    """Mask of one ref: its ann_id, or the OR of an ann_id list where -1 means "no object"."""
    ids = [ann_ids] if isinstance(ann_ids, int) else list(ann_ids)
    mask = np.zeros((height, width), dtype=np.uint8)
    for ann_id in ids:
        if ann_id == NO_TARGET_ANN_ID:
            continue
        np.maximum(mask, decode_coco_segmentation(segmentations[ann_id], height, width), out=mask)
    return mask
