"""The paper's <SEG> analyses: SIoU and "points only", the latter in two named forms.

SIoU (how well the [SEG] similarity map alone covers the object): upstream has no code for it and
never says how the map is binarised, so the rule is ours and a config field: a pixel of the
full-resolution similarity map (upstream's step-2 map: the grid min-max normalised to [0, 1],
resized, zero where CLIP's center crop cut the image) is foreground when its value is >=
``SasPConfig.siou_threshold`` (default 0.5). Counting and aggregation are exactly the gIoU/cIoU
ones (ignore pixels excluded, empty-GT rules), through the same meter.

Points only (SAM prompted with the SasP points and no [SEG] embedding), two forms:

* ``points_only_tuned``: READ's own, fine-tuned mask decoder, one mask
  (`ReadModel.score_teacher_forced(use_seg_embedding=False)`); the project's form;
* ``points_only_base_sam``: upstream's only code for it (a debug branch of
  `READ:model/READ.py` `generate_pred_masks`): an off-the-shelf `SamPredictor` on the *base* SAM
  weights, prompted with the same points and labels in original-image pixels,
  ``multimask_output=True``, keeping the mask with the highest predicted IoU
  (`BaseSamPointsOnly`). Upstream's debug call handed the predictor cv2's BGR array as RGB;
  this one passes RGB (docs/fidelity.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


class BaseSamPointsOnly:
    """Upstream's points-only analysis: base SAM, multimask output, the best-scoring mask."""

    def __init__(self, sam: torch.nn.Module) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam.eval())

    @classmethod
    def from_checkpoint(cls, settings, checkpoint: str | Path, device: str | torch.device = "cpu"):
        """Base SAM of `settings`' architecture with the weights at `checkpoint` (not READ's)."""
        import dataclasses

        from read_model.sam import build_sam

        if not checkpoint:
            raise ValueError(
                "points_only_base_sam needs the off-the-shelf SAM weights (e.g. "
                "sam_vit_h_4b8939.pth): set eval.base_sam_checkpoint or model.sam.checkpoint"
            )
        sam = build_sam(dataclasses.replace(settings, checkpoint=str(checkpoint)))
        return cls(sam.to(device=device, dtype=torch.float32))

    @torch.no_grad()
    def masks(self, image: np.ndarray, points: Tensor, labels: Tensor) -> Tensor:
        """[n, H, W] bool: one mask per row of `points` [n, K, 2] (x, y original px) and
        `labels` [n, K] in {1, 0, -1}, for one uint8 RGB image [H, W, 3]."""
        height, width = image.shape[:2]
        if points.shape[0] == 0:
            return torch.zeros((0, height, width), dtype=torch.bool)
        predictor = self.predictor
        predictor.set_image(image, image_format="RGB")
        device = predictor.device
        coords = predictor.transform.apply_coords_torch(
            points.detach().to(device=device, dtype=torch.float32), (height, width)
        )
        masks, scores, _ = predictor.predict_torch(
            coords, labels.to(device=device, dtype=torch.int), multimask_output=True
        )
        best = scores.argmax(dim=1)
        picked = masks[torch.arange(masks.shape[0], device=device), best]
        predictor.reset_image()
        return picked.cpu()
