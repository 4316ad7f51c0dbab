"""SIoU: how well the [SEG] similarity map alone covers the object (the paper's analysis, §10).

Upstream has no code for it and never says how the map is binarised, so the rule is ours and a
config field: a pixel of the full-resolution similarity map (upstream's step-2 map: the grid
min-max normalised to [0, 1], resized, zero where CLIP's center crop cut the image) is foreground
when its value is >= ``SasPConfig.siou_threshold`` (default 0.5). Counting and aggregation are
exactly the gIoU/cIoU ones (ignore pixels excluded, empty-GT rules), through the same meter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from read_model.config import SasPConfig
from read_model.metrics import SegmentationMeter, intersection_union
from read_model.sasp import similarity_map_full_resolution


def binarise_similarity_maps(maps: Sequence[Tensor], threshold: float) -> list[Tensor]:
    """[H, W] bool per map: value >= threshold."""
    return [full >= threshold for full in maps]


def siou_intersection_union(
    similarity: Tensor,
    image_sizes: Tensor | Sequence[Sequence[int]],
    gt_masks: Sequence[Tensor],
    config: SasPConfig | None = None,
    ignore_value: int = 255,
    *,
    clip_image_size: int,
) -> tuple[Tensor, Tensor]:
    """Class-1 (intersection [B], union [B]) between each row's binarised map and its GT [H, W].

    `clip_image_size` is the side of CLIP's center crop the grid covers (`ReadModel.sasp`'s).
    """
    config = config or SasPConfig()
    if len(gt_masks) != similarity.shape[0]:
        raise ValueError(f"{similarity.shape[0]} similarity rows but {len(gt_masks)} GT masks")
    maps = similarity_map_full_resolution(
        similarity, image_sizes, config, clip_image_size=clip_image_size
    )
    binary = binarise_similarity_maps(maps, config.siou_threshold)
    inters, unions = [], []
    for row, (pred, gt) in enumerate(zip(binary, gt_masks, strict=True)):
        if tuple(gt.shape) != tuple(pred.shape):
            raise ValueError(f"row {row}: GT {tuple(gt.shape)} but image size {tuple(pred.shape)}")
        inter, union = intersection_union(pred, gt.to(pred.device), ignore_value)
        inters.append(inter)
        unions.append(union)
    return torch.cat(inters), torch.cat(unions)


class SIoUMeter(SegmentationMeter):
    """A SegmentationMeter fed with similarity maps: ``result()["giou"/"ciou"]`` are SIoUs."""

    def update_similarity(
        self,
        similarity: Tensor,
        image_sizes: Tensor | Sequence[Sequence[int]],
        gt_masks: Sequence[Tensor],
        config: SasPConfig | None = None,
        *,
        clip_image_size: int,
    ) -> None:
        self.update(
            *siou_intersection_union(
                similarity, image_sizes, gt_masks, config, clip_image_size=clip_image_size
            )
        )
