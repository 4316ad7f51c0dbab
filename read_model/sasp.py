"""SasP (Similarity as Points): similarity scores -> SAM point prompts.

Upstream: `READ:model/READ.py` `similarity_as_points` / `similarity_map_to_points`; every kept
and changed behaviour with its test: docs/fidelity.md.

Parameter-free and batched: rows may come from images of different sizes. Upstream's geometry is
reproduced number for number, truncations included:

* the g×g similarity grid covers CLIP's center crop of side S (``clip_image_size``, the vision
  tower's image size, given by the model); the area the
  crop cut off is restored by symmetric padding ``(int(side·r) - S) // 2`` with ``r = S /
  min(H, W)`` (value 0 for the full-resolution map, -1 for the coarse grid). For odd margins this
  is one pixel / cell short of the ideal, as upstream (e.g. 427×640 gives a 12×16 coarse grid);
  a negative padding crops, as upstream's ``F.pad`` does;
* cells are ordered positives (v >= t_pos, descending), negatives (0 <= v <= t_neg, ascending),
  then neutrals (raster order); points are ``int(min((col + 0.5)·W/w, W - 1))`` etc., in
  float32 as upstream's tensor arithmetic (one pixel lower than exact arithmetic on boundaries).

Deliberate differences, all invisible on ordinary maps:

* min-max normalisation divides by ``max(max - min, normalise_eps)``, so a constant map gives
  zeros instead of NaN;
* ties between equal values are broken by raster order (upstream's argsort leaves them unordered);
* ``meanstd`` thresholds use mean and (unbiased) std over the cells inside the crop only; a cell
  that meets both thresholds (possible when the std is 0) counts as positive;
* when a row has fewer valid cells than ``num_points`` (tiny grids), the remaining slots repeat a
  cell and carry label -1 (SAM's "not a point"), so every row has exactly ``num_points`` entries;
* DtoC (read_model.dtoc) works on a window around each point instead of the full image; it
  equals the full computation to float rounding.

Everything after the similarity scores runs on their device, without host syncs; the image sizes
are host data (pass a list, or a CPU tensor). Half-precision inputs are computed in float32, as
upstream casts the maps to float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from read_model.config import SasPConfig
from read_model.dtoc import dtoc_coordinates

OUTSIDE_CROP = -1.0  # coarse-grid value of a cell CLIP's center crop cut off (upstream's pad)
OUTSIDE_ROW = -2.0  # coarse-grid value beyond a row's own grid in the batch-padded grid


@dataclass(frozen=True)
class GridGeometry:
    """Where a side×side grid sits in the padded grid that spans the whole image."""

    cells: int  # side of the grid before padding (d, or S for the crop frame)
    pad_h: int  # rows added above and below (negative: removed), upstream's truncated rule
    pad_w: int
    rows: int  # cells + 2·pad_h
    cols: int
    scale_h: float  # original pixels per padded-grid row: H / rows
    scale_w: float


def padded_grid_geometry(height: int, width: int, side: int) -> GridGeometry:
    """Upstream's padding of a side×side center-crop grid back to the image's aspect ratio."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got (H, W) = ({height}, {width})")
    ratio = side / min(height, width)
    least = -((side - 1) // 2)  # keep at least one row/column when truncation would remove all
    pad_h = max((int(height * ratio) - side) // 2, least)
    pad_w = max((int(width * ratio) - side) // 2, least)
    rows, cols = side + 2 * pad_h, side + 2 * pad_w
    return GridGeometry(side, pad_h, pad_w, rows, cols, height / rows, width / cols)


def coarse_grid_geometry(height: int, width: int, grid: int, down_sample: int) -> GridGeometry:
    """Geometry of the point-selection grid: d = grid // down_sample cells, padded with -1."""
    cells = grid // down_sample
    if cells < 1:
        raise ValueError(f"down_sample {down_sample} leaves no cell of a {grid}x{grid} grid")
    return padded_grid_geometry(height, width, cells)


def crop_frame_geometry(height: int, width: int, crop: int) -> GridGeometry:
    """Geometry of the zero-padded S-frame that upstream resizes to (H, W) for DtoC."""
    return padded_grid_geometry(height, width, crop)


@dataclass
class SasPOutput:
    """SasP results for B rows; K = num_points."""

    points: Tensor  # [B, K, 2] (x, y) original pixels of the selected cells (integer-valued)
    labels: Tensor  # [B, K] long: 1 positive, 0 negative, -1 neutral / filler
    coords: Tensor  # [B, K, 2] DtoC (x, y), differentiable w.r.t. the similarity scores
    coarse_grid: Tensor  # [B, h_max, w_max]: -1 outside the crop, -2 beyond the row's grid
    similarity_map: Tensor  # [B, g, g] min-max normalised similarity
    grid_shapes: Tensor  # [B, 2] long (h, w) of each row's own coarse grid (top-left aligned)


def image_size_list(image_sizes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(H, W) per row as host ints (a device tensor here costs one sync; pass host data)."""
    raw = image_sizes.tolist() if isinstance(image_sizes, Tensor) else list(image_sizes)
    sizes = []
    for index, size in enumerate(raw):
        if len(size) != 2:
            raise ValueError(f"image size {index} must be (H, W), got {size!r}")
        height, width = int(size[0]), int(size[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"image size {index} must be positive, got {size!r}")
        sizes.append((height, width))
    return sizes


def working_dtype(similarity: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (as upstream casts)."""
    return torch.float64 if similarity.dtype == torch.float64 else torch.float32


def min_max(values: Tensor, eps: float) -> Tensor:
    """Per-row (dim 0) min-max normalisation over the remaining dims, guarded by ``eps``."""
    flat = values.flatten(1)
    low = flat.min(1).values.view(-1, *([1] * (values.dim() - 1)))
    high = flat.max(1).values.view(-1, *([1] * (values.dim() - 1)))
    return (values - low) / (high - low).clamp_min(eps)


def grid_side(similarity: Tensor) -> int:
    """g for a [B, g·g] similarity tensor; a clear error for anything else."""
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [B, N], got shape {tuple(similarity.shape)}")
    tokens = similarity.shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens or tokens == 0:
        raise ValueError(f"similarity has {tokens} image tokens, not a square grid")
    return side


def normalised_similarity_map(similarity: Tensor, eps: float) -> Tensor:
    """[B, g, g] min-max normalised map (upstream step 2.1-2.2)."""
    side = grid_side(similarity)
    work = similarity.to(working_dtype(similarity))
    return min_max(work, eps).view(-1, side, side)


def crop_frame(similarity_map: Tensor, crop: int) -> Tensor:
    """[B, S, S]: the normalised map resized to the CLIP crop (upstream step 2.3)."""
    return F.interpolate(
        similarity_map[:, None], size=(crop, crop), mode="bilinear", align_corners=False
    )[:, 0]


def similarity_map_full_resolution(
    similarity: Tensor,
    image_sizes: Tensor | Sequence[Sequence[int]],
    config: SasPConfig | None = None,
    *,
    clip_image_size: int,
) -> list[Tensor]:
    """Upstream's step-2 map per row: [H, W] in [0, 1], zero where CLIP's crop cut the image.

    For figures and SIoU; DtoC never materialises it. One full-size map per row, so rows are
    processed one at a time.
    """
    config = config or SasPConfig()
    sizes = image_size_list(image_sizes)
    if len(sizes) != similarity.shape[0]:
        raise ValueError(f"{similarity.shape[0]} similarity rows but {len(sizes)} image sizes")
    frame = crop_frame(
        normalised_similarity_map(similarity, config.normalise_eps), clip_image_size
    )
    maps = []
    for row, (height, width) in enumerate(sizes):
        geometry = crop_frame_geometry(height, width, clip_image_size)
        padded = F.pad(frame[row], (geometry.pad_w,) * 2 + (geometry.pad_h,) * 2)
        maps.append(
            F.interpolate(
                padded[None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
        )
    return maps


class SasP(nn.Module):
    """Parameter-free: similarity scores [B, g·g] + image sizes -> points, labels, DtoC coords."""

    def __init__(self, config: SasPConfig | None = None, *, clip_image_size: int) -> None:
        """`clip_image_size`: side S of CLIP's center crop, i.e. the vision tower's image size."""
        super().__init__()
        self.config = config or SasPConfig()
        self.clip_image_size = clip_image_size
        if self.config.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.config.num_points}")
        if self.config.down_sample < 1:
            raise ValueError(f"down_sample must be >= 1, got {self.config.down_sample}")
        if self.config.threshold_mode not in ("fixed", "meanstd"):
            raise ValueError(f"unknown threshold_mode {self.config.threshold_mode!r}")

    def full_resolution_maps(
        self, similarity: Tensor, image_sizes: Tensor | Sequence[Sequence[int]]
    ) -> list[Tensor]:
        """`similarity_map_full_resolution` with this module's config and CLIP crop."""
        return similarity_map_full_resolution(
            similarity, image_sizes, self.config, clip_image_size=self.clip_image_size
        )

    def forward(
        self,
        similarity: Tensor,
        image_sizes: Tensor | Sequence[Sequence[int]],
        *,
        with_dtoc: bool = True,
    ) -> SasPOutput:
        """Points, labels and DtoC coordinates for each row.

        Args:
            similarity: [B, g·g] scores between each [SEG] query and its image tokens (raster
                order), e.g. ``einsum("bnd,bd->bn", image_hidden, query_hidden)``.
            image_sizes: original (H, W) per row, as host data.
            with_dtoc: False skips DtoC; ``coords`` is then a copy of ``points`` (no gradient),
                the paper's "discrete points" ablation.
        """
        cfg = self.config
        sizes = image_size_list(image_sizes)
        if len(sizes) != similarity.shape[0]:
            raise ValueError(f"{similarity.shape[0]} similarity rows but {len(sizes)} image sizes")
        side = grid_side(similarity)
        device = similarity.device
        similarity_map = normalised_similarity_map(similarity, cfg.normalise_eps)
        dtype = similarity_map.dtype

        coarse_geometry = [coarse_grid_geometry(h, w, side, cfg.down_sample) for h, w in sizes]
        grid, grid_shapes = self._padded_coarse_grid(similarity, coarse_geometry)
        cols_max = grid.shape[2]
        values = grid.flatten(1)
        valid = values >= 0
        order, labels = self._select(values, valid)

        row_index = torch.div(order, cols_max, rounding_mode="floor")
        col_index = order - row_index * cols_max
        points = self._cell_centres(row_index, col_index, coarse_geometry, sizes, device)
        points = points.to(dtype)

        if with_dtoc:
            frame = crop_frame(similarity_map, self.clip_image_size)
            frames = [crop_frame_geometry(h, w, self.clip_image_size) for h, w in sizes]
            coords = dtoc_coordinates(
                frame,
                torch.tensor([[g.pad_h, g.pad_w] for g in frames], device=device),
                torch.tensor([[g.rows, g.cols] for g in frames], device=device),
                torch.tensor(sizes, device=device),
                points,
                radius=cfg.dtoc_window_radius,
                eps=cfg.dtoc_eps,
            )
        else:
            coords = points.clone()
        return SasPOutput(points, labels, coords, grid, similarity_map, grid_shapes)

    def _padded_coarse_grid(
        self, similarity: Tensor, geometry: list[GridGeometry]
    ) -> tuple[Tensor, Tensor]:
        """[B, h_max, w_max] coarse grids, top-left aligned so raster order is kept (step 3)."""
        cfg = self.config
        side = grid_side(similarity)
        device = similarity.device
        cells = geometry[0].cells
        raw = similarity.to(working_dtype(similarity)).view(-1, 1, side, side)
        coarse = F.interpolate(raw, size=(cells, cells), mode="bilinear", align_corners=False)
        coarse = min_max(coarse[:, 0], cfg.normalise_eps)

        shapes = torch.tensor([[g.rows, g.cols] for g in geometry], device=device)
        pads = torch.tensor([[g.pad_h, g.pad_w] for g in geometry], device=device)
        rows_max = max(g.rows for g in geometry)
        cols_max = max(g.cols for g in geometry)
        ii = torch.arange(rows_max, device=device).view(1, -1, 1)
        jj = torch.arange(cols_max, device=device).view(1, 1, -1)
        src_i = ii - pads[:, 0].view(-1, 1, 1)
        src_j = jj - pads[:, 1].view(-1, 1, 1)
        in_crop = (src_i >= 0) & (src_i < cells) & (src_j >= 0) & (src_j < cells)
        in_row = (ii < shapes[:, 0].view(-1, 1, 1)) & (jj < shapes[:, 1].view(-1, 1, 1))
        flat = (src_i.clamp(0, cells - 1) * cells + src_j.clamp(0, cells - 1)).flatten(1)
        picked = coarse.flatten(1).gather(1, flat).view(-1, rows_max, cols_max)
        outside = torch.where(in_row, OUTSIDE_CROP, OUTSIDE_ROW).to(picked.dtype)
        in_crop = in_crop & in_row
        return torch.where(in_crop, picked, outside), shapes

    def _thresholds(self, values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(t_pos, t_neg) per row [B, 1]: fixed (the code) or mean ± k·std (the paper)."""
        cfg = self.config
        if cfg.threshold_mode == "fixed":
            ones = values.new_ones(values.shape[0], 1)
            return ones * cfg.t_pos, ones * cfg.t_neg
        weight = valid.to(values.dtype)
        count = weight.sum(1, keepdim=True)
        mean = (values * weight).sum(1, keepdim=True) / count.clamp_min(1)
        variance = ((values - mean) ** 2 * weight).sum(1, keepdim=True) / (count - 1).clamp_min(1)
        spread = cfg.std_factor * variance.sqrt()
        return mean + spread, mean - spread

    def _select(self, values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell indices [B, K] in upstream order (pos desc, neg asc, neutral raster) + labels."""
        t_pos, t_neg = self._thresholds(values, valid)
        positive = valid & (values >= t_pos)
        negative = valid & (values <= t_neg) & ~positive
        category = torch.full_like(values, 3, dtype=torch.long)
        category = category.masked_fill(valid, 2).masked_fill(negative, 1).masked_fill(positive, 0)
        within = torch.where(positive, -values, torch.where(negative, values, 0.0))
        by_value = torch.argsort(within, dim=1, stable=True)  # raster order breaks ties
        by_category = torch.argsort(category.gather(1, by_value), dim=1, stable=True)
        order = by_value.gather(1, by_category)
        chosen = category.gather(1, order)

        wanted = self.config.num_points
        if order.shape[1] >= wanted:
            order, chosen = order[:, :wanted], chosen[:, :wanted]
        else:  # fewer cells than points: pad with "not a point" fillers
            filler = wanted - order.shape[1]
            order = torch.cat((order, order[:, :1].expand(-1, filler)), 1)
            chosen = torch.cat((chosen, chosen.new_full((chosen.shape[0], filler), 3)), 1)
        labels = torch.where(chosen == 0, 1, torch.where(chosen == 1, 0, -1))
        return order, labels

    @staticmethod
    def _cell_centres(
        row_index: Tensor,
        col_index: Tensor,
        geometry: list[GridGeometry],
        sizes: list[tuple[int, int]],
        device: torch.device,
    ) -> Tensor:
        """Upstream's truncated cell centres in original pixels, in float32 as upstream computes
        ``(idx % w + 0.5) * scale_w`` on a tensor: the double scale is rounded to float32 first,
        so a centre that is exact in real arithmetic can land just below an integer and truncate
        one pixel lower (1168x728, padded row 13: 875, not 876; tests/read_model/test_sasp.py)."""
        scale = torch.tensor(
            [[g.scale_w, g.scale_h] for g in geometry], device=device, dtype=torch.float32
        )
        limit = torch.tensor([[w - 1, h - 1] for h, w in sizes], device=device, dtype=torch.float32)
        cell = torch.stack((col_index, row_index), -1).to(torch.float32)
        centre = (cell + 0.5) * scale[:, None, :]
        return torch.minimum(centre, limit[:, None, :]).floor()
