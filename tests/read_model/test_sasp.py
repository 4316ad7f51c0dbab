"""SasP: geometry, ordering, thresholds and batching against hand-made maps and an upstream-style
per-row reference (Python loops, as the published code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from read_model.config import SasPConfig
from read_model.sasp import (
    SasP,
    coarse_grid_geometry,
    crop_frame_geometry,
    similarity_map_full_resolution,
)

LLAVA_CROP = 336  # LLaVA-1.5's CLIP crop: a 24x24 grid of 14-px patches

# A 4x4 map already in [0, 1] (min 0, max 1), so normalisation leaves it unchanged.
HAND_MAP = [
    [0.10, 0.95, 0.50, 0.00],
    [0.85, 0.30, 1.00, 0.15],
    [0.60, 0.05, 0.40, 0.90],
    [0.70, 0.20, 0.55, 0.45],
]


def hand_similarity(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(HAND_MAP, dtype=dtype).view(1, 16)


def cell_points(cells: list[int], columns: int, scale: float, offset_cols: int = 0) -> list:
    return [
        [((k % columns) + offset_cols + 0.5) * scale, ((k // columns) + 0.5) * scale] for k in cells
    ]


def test_geometry_matches_upstream_examples() -> None:
    wide = coarse_grid_geometry(480, 640, grid=24, down_sample=2)
    assert (wide.rows, wide.cols, wide.pad_h, wide.pad_w) == (12, 16, 0, 2)
    assert (wide.scale_h, wide.scale_w) == (40.0, 40.0)
    odd = coarse_grid_geometry(427, 640, grid=24, down_sample=2)
    assert (odd.rows, odd.cols) == (12, 16)  # the ideal 12x17 is lost to truncation, as upstream
    tall = coarse_grid_geometry(640, 427, grid=24, down_sample=2)
    assert (tall.rows, tall.cols) == (16, 12)
    frame = crop_frame_geometry(480, 640, crop=336)
    assert (frame.pad_h, frame.pad_w, frame.rows, frame.cols) == (0, 56, 336, 448)
    # 47 * (12 / 47) rounds to 11.999..., so upstream pads by -1: one row cropped on each side.
    cropped = coarse_grid_geometry(47, 100, grid=24, down_sample=2)
    assert (cropped.pad_h, cropped.rows) == (-1, 10)


def test_fixed_thresholds_on_hand_map() -> None:
    sasp = SasP(SasPConfig(num_points=12, down_sample=1), clip_image_size=8)
    out = sasp(hand_similarity(), [(40, 40)])
    expected_cells = [6, 1, 11, 4, 3, 9, 0, 7, 13, 2, 5, 8]  # pos desc, neg asc, neutral raster
    assert out.labels[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, -1, -1, -1]
    expected = [[math.floor(x), math.floor(y)] for x, y in cell_points(expected_cells, 4, 10.0)]
    assert out.points[0].tolist() == expected
    assert out.coarse_grid.shape == (1, 4, 4)
    torch.testing.assert_close(out.similarity_map[0], torch.tensor(HAND_MAP))


def test_meanstd_thresholds_on_hand_map_ignore_padding_cells() -> None:
    # mean 0.48125, std 0.3326 -> t_pos 0.6476, t_neg 0.3149 (computed by hand from HAND_MAP).
    cfg = SasPConfig(num_points=16, down_sample=1, threshold_mode="meanstd")
    expected_cells = [6, 1, 11, 4, 12, 3, 9, 0, 7, 13, 5, 2, 8, 10, 14, 15]
    expected_labels = [1] * 5 + [0] * 6 + [-1] * 5
    square = SasP(cfg, clip_image_size=8)(hand_similarity(), [(40, 40)])
    assert square.labels[0].tolist() == expected_labels
    assert square.points[0].tolist() == cell_points(expected_cells, 4, 10.0)
    # 40x80: two -1 columns each side; the stats (and so the labels) must not change.
    wide = SasP(cfg, clip_image_size=8)(hand_similarity(), [(40, 80)])
    assert wide.coarse_grid[0, :, :2].eq(-1).all() and wide.coarse_grid[0, :, -2:].eq(-1).all()
    assert wide.labels[0].tolist() == expected_labels
    assert wide.points[0].tolist() == cell_points(expected_cells, 4, 10.0, offset_cols=2)


def test_non_square_images_give_upstream_grids() -> None:
    similarity = torch.randn(2, 576)
    out = SasP(clip_image_size=LLAVA_CROP)(similarity, [(480, 640), (427, 640)])
    assert out.grid_shapes.tolist() == [[12, 16], [12, 16]]
    grid = out.coarse_grid[0]
    assert grid[:, :2].eq(-1).all() and grid[:, -2:].eq(-1).all()
    assert grid[:, 2:-2].ge(0).all()
    # Points only inside the crop window, 40x40 px cells centred at 20 + 40k.
    xs, ys = out.points[0, :, 0], out.points[0, :, 1]
    assert xs.ge(80).all() and xs.lt(560).all()
    assert ((xs - 20) % 40).eq(0).all() and ((ys - 20) % 40).eq(0).all()
    assert out.points[1, :, 1].le(426).all()


def test_constant_map_gives_no_nan() -> None:
    for mode in ("fixed", "meanstd"):
        out = SasP(SasPConfig(threshold_mode=mode), clip_image_size=LLAVA_CROP)(torch.full((2, 576), 3.0), [(300, 500)] * 2)
        assert torch.isfinite(out.coords).all() and torch.isfinite(out.similarity_map).all()
        assert torch.isfinite(out.points).all()
        assert out.labels.shape == (2, 30)
    fixed = SasP(clip_image_size=LLAVA_CROP)(torch.full((1, 576), 3.0), [(300, 500)])
    assert fixed.labels.eq(0).all()  # every valid cell is 0 <= 0.2: negative


def test_mixed_size_batch_equals_per_row_calls() -> None:
    torch.manual_seed(0)
    sizes = [(480, 640), (640, 427), (333, 333), (47, 100), (1000, 120)]
    similarity = torch.randn(len(sizes), 576)
    for mode in ("fixed", "meanstd"):
        sasp = SasP(SasPConfig(threshold_mode=mode), clip_image_size=LLAVA_CROP)
        batched = sasp(similarity, sizes)
        for row, size in enumerate(sizes):
            single = sasp(similarity[row : row + 1], [size])
            assert torch.equal(batched.points[row], single.points[0])
            assert torch.equal(batched.labels[row], single.labels[0])
            torch.testing.assert_close(batched.coords[row], single.coords[0])
            h, w = batched.grid_shapes[row].tolist()
            assert torch.equal(batched.coarse_grid[row, :h, :w], single.coarse_grid[0])
            assert batched.coarse_grid[row, h:].eq(-2).all()
            assert batched.coarse_grid[row, :, w:].eq(-2).all()


def upstream_points(similarity: torch.Tensor, size: tuple[int, int], cfg: SasPConfig):
    """Upstream-style single-row selection: padded grid, Python lists, membership tests."""
    height, width = size
    side = math.isqrt(similarity.numel())
    cells = side // cfg.down_sample
    grid = F.interpolate(
        similarity.view(1, 1, side, side).float(),
        size=(cells, cells),
        mode="bilinear",
        align_corners=False,
    )
    grid = (grid - grid.min()) / (grid.max() - grid.min())
    ratio = cells / min(height, width)
    pad_h = (int(height * ratio) - cells) // 2
    pad_w = (int(width * ratio) - cells) // 2
    grid = F.pad(grid, (pad_w, pad_w, pad_h, pad_h), value=-1)[0, 0]
    rows, cols = grid.shape
    flat = grid.flatten()
    positive = [k for k in range(flat.numel()) if flat[k].item() >= cfg.t_pos]
    positive.sort(key=lambda k: -flat[k].item())
    negative = [k for k in range(flat.numel()) if 0 <= flat[k].item() <= cfg.t_neg]
    negative.sort(key=lambda k: flat[k].item())
    neutral = [k for k in range(flat.numel()) if cfg.t_neg < flat[k].item() < cfg.t_pos]
    chosen = (positive + negative + neutral)[: cfg.num_points]
    labels = [1 if k in positive else 0 if k in negative else -1 for k in chosen]
    # Upstream's expression: an int64 index tensor, Python-float scales, float32 bounds.
    bound_w = torch.tensor(width - 1, dtype=torch.float32)
    bound_h = torch.tensor(height - 1, dtype=torch.float32)
    points = []
    for k in chosen:
        idx = torch.tensor(k)
        x = min((idx % cols + 0.5) * (float(width) / cols), bound_w)
        y = min((idx // cols + 0.5) * (float(height) / rows), bound_h)
        points.append([int(x.item()), int(y.item())])
    return points, labels


@pytest.mark.parametrize("down_sample", [1, 2])
def test_selection_matches_upstream_reference(down_sample: int) -> None:
    torch.manual_seed(1)
    cfg = SasPConfig(down_sample=down_sample)
    sizes = [(480, 640), (427, 640), (640, 427), (47, 100), (1536, 2048), (517, 389),
             (1168, 728), (1000, 700), (700, 1000)]
    similarity = torch.randn(len(sizes), 576)
    out = SasP(cfg, clip_image_size=LLAVA_CROP)(similarity, sizes)
    for row, size in enumerate(sizes):
        points, labels = upstream_points(similarity[row], size, cfg)
        assert out.points[row].long().tolist() == points, size
        assert out.labels[row].tolist() == labels, size


def test_cell_centres_are_float32_as_upstream_hand_computed() -> None:
    """H x W = 1168 x 728, down_sample 2: a 12x12 coarse grid padded by 3 rows above and below
    (int(1168 * 12 / 728) = 19, (19 - 12) // 2 = 3), so 18 rows of 1168 / 18 px. Padded row 13
    (coarse row 10) is centred at 13.5 * 64.888... = 876 exactly in real arithmetic; upstream's
    float32 tensor math rounds 1168 / 18 to 64.88888549804688, the product to 875.99993896, and
    int() gives 875. Column 5 of 12 (no column padding): 5.5 * 60.666... = 333.67 -> 333."""
    grid = torch.zeros(24, 24)
    grid[20:22, 10:12] = 1.0  # the 2x2 block that pools into coarse cell (10, 5)
    out = SasP(SasPConfig(down_sample=2), clip_image_size=LLAVA_CROP)(
        grid.view(1, -1), [(1168, 728)], with_dtoc=False
    )
    assert out.labels[0, 0].item() == 1
    assert out.points[0, 0].tolist() == [333.0, 875.0]


def test_fewer_cells_than_points_pads_with_not_a_point() -> None:
    out = SasP(SasPConfig(num_points=30, down_sample=2), clip_image_size=8)(
        torch.randn(2, 16), [(20, 20), (20, 30)]
    )
    assert out.labels.shape == (2, 30) and out.points.shape == (2, 30, 2)
    assert out.labels[0, 4:].eq(-1).all()  # a 2x2 grid has only 4 cells
    assert out.labels[0, :4].ne(-1).sum() >= 2  # min-max: one cell is 1 (pos), one is 0 (neg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype: torch.dtype) -> None:
    out = SasP(clip_image_size=LLAVA_CROP)(torch.randn(2, 576, dtype=dtype), [(100, 200), (300, 150)])
    for tensor in (out.points, out.coords, out.similarity_map, out.coarse_grid):
        assert tensor.dtype == dtype
    assert out.labels.dtype == torch.long


def test_half_precision_is_computed_in_float32() -> None:
    out = SasP(clip_image_size=LLAVA_CROP)(torch.randn(1, 576).to(torch.bfloat16), [(100, 200)])
    assert out.coords.dtype == torch.float32


def test_full_resolution_map_matches_direct_resizes() -> None:
    torch.manual_seed(2)
    similarity = torch.randn(2, 576)
    maps = similarity_map_full_resolution(
        similarity, [(480, 640), (300, 200)], clip_image_size=LLAVA_CROP
    )
    assert [tuple(m.shape) for m in maps] == [(480, 640), (300, 200)]
    norm = (similarity[0] - similarity[0].min()) / (similarity[0].max() - similarity[0].min())
    frame = F.interpolate(norm.view(1, 1, 24, 24), size=(336, 336), mode="bilinear")
    direct = F.interpolate(F.pad(frame, (56, 56, 0, 0)), size=(480, 640), mode="bilinear")[0, 0]
    torch.testing.assert_close(maps[0], direct)
    assert maps[0][:, :70].eq(0).all()  # the left margin CLIP cut off stays 0


def test_bad_inputs_raise_clear_errors() -> None:
    sasp = SasP(clip_image_size=LLAVA_CROP)
    with pytest.raises(ValueError, match="square"):
        sasp(torch.randn(1, 575), [(10, 10)])
    with pytest.raises(ValueError, match="image sizes"):
        sasp(torch.randn(2, 576), [(10, 10)])
    with pytest.raises(ValueError, match="positive"):
        sasp(torch.randn(1, 576), [(0, 10)])
    with pytest.raises(ValueError, match="threshold_mode"):
        SasP(SasPConfig(threshold_mode="other"), clip_image_size=LLAVA_CROP)(torch.randn(1, 576), [(10, 10)])  # type: ignore[arg-type]
