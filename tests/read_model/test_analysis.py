"""SIoU on planted similarity maps with hand-computed full-resolution values."""

from __future__ import annotations

import pytest
import torch

from read_model.analysis import SIoUMeter, siou_intersection_union
from read_model.config import SasPConfig
from read_model.metrics import SegmentationMeter
from read_model.sasp import similarity_map_full_resolution

# 2x2 grid, CLIP crop side 2: only the top-right cell is similar.
CONFIG = SasPConfig()
CROP = 2
PLANTED = torch.tensor([0.0, 1.0, 0.0, 0.0])


def test_full_resolution_values_by_hand() -> None:
    # Bilinear 2 -> 4 (align_corners=False) weights the right column by [0, .25, .75, 1] and the
    # top row by [1, .75, .25, 0]; the map is their outer product.
    (full,) = similarity_map_full_resolution(PLANTED[None], [(4, 4)], CONFIG, clip_image_size=CROP)
    columns = torch.tensor([0.0, 0.25, 0.75, 1.0])
    rows = torch.tensor([1.0, 0.75, 0.25, 0.0])
    torch.testing.assert_close(full, rows[:, None] * columns[None, :])
    # 4x8: the crop pads one zero column each side of the 2x2 frame (4 wide), so the peak sits
    # at columns 4-5: values .75 in row 0 and .5625 in row 1.
    (wide,) = similarity_map_full_resolution(PLANTED[None], [(4, 8)], CONFIG, clip_image_size=CROP)
    assert (wide >= 0.5).nonzero().tolist() == [[0, 4], [0, 5], [1, 4], [1, 5]]


def test_siou_counts_and_meter() -> None:
    similarity = torch.stack((PLANTED, PLANTED, torch.full((4,), 2.0)))
    gt_square = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255], [0, 0, 0, 1], [0, 0, 0, 0]])
    gts = [gt_square, torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)]
    inter, union = siou_intersection_union(
        similarity, [(4, 4), (4, 8), (4, 4)], gts, CONFIG, clip_image_size=CROP
    )
    # Row 0: prediction = top-right 2x2; (1,3) is ignored; GT also has (2,3): I 3, U 3+4-3.
    # Row 1: empty GT, 4 predicted pixels. Row 2: a constant map predicts nothing, empty GT.
    assert inter.tolist() == [3, 0, 0] and union.tolist() == [4, 4, 0]
    meter = SIoUMeter()
    meter.update_similarity(similarity, [(4, 4), (4, 8), (4, 4)], gts, CONFIG, clip_image_size=CROP)
    result = meter.result()
    assert result["giou"] == pytest.approx((3 / (4 + 1e-5) + 0.0 + 1.0) / 3)
    assert result["ciou"] == pytest.approx(3 / 8)
    restored = SIoUMeter.from_dict(meter.to_dict())
    assert isinstance(restored, SegmentationMeter) and restored.result() == result


def test_threshold_is_configurable() -> None:
    strict = SasPConfig(siou_threshold=0.9)
    gt = torch.zeros(4, 4, dtype=torch.long)
    gt[0, 3] = 1
    inter, union = siou_intersection_union(PLANTED[None], [(4, 4)], [gt], strict, clip_image_size=CROP)
    assert inter.tolist() == [1] and union.tolist() == [1]  # only the 1.0 corner pixel


def test_gt_size_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="row 0"):
        siou_intersection_union(PLANTED[None], [(4, 4)], [torch.zeros(4, 5)], CONFIG, clip_image_size=CROP)
