"""The web page's pictures: the mask and SasP points over the image, and the heatmap view.

Both come from `read_model.overlay.render_overlay` (the figure `read-predict` writes) on a copy
scaled so its longer side is at most `max_side`: a phone photo's overlay then costs tens of KB
of PNG instead of megabytes, and the points keep their positions (scaled with the image).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipelines.serving.results import HEATMAP_LEVELS, SegmentResult
from read_model.overlay import render_overlay


def png_data_url(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _resized(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """`array` (uint8 or bool, [H, W] or [H, W, 3]) at `size` = (H', W')."""
    if array.shape[:2] == size:
        return array
    is_bool = array.dtype == bool
    picture = Image.fromarray(array.astype(np.uint8) * 255 if is_bool else array)
    out = np.asarray(picture.resize((size[1], size[0]), resample=resample))
    return out > 127 if is_bool else out


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_pictures(image: np.ndarray, result: SegmentResult,
                     max_side: int) -> dict[str, str | None]:
    """{"overlay": mask + points, "heatmap": similarity map + points or None} as PNG data URLs."""
    height, width = image.shape[:2]
    size = display_size(height, width, max_side)
    scale = np.array([size[1] / width, size[0] / height], dtype=np.float32)
    small = _resized(image, size, Image.Resampling.BILINEAR)
    mask = _resized(result.union_mask(), size, Image.Resampling.NEAREST)
    points = np.asarray(result.points, dtype=np.float32).reshape(-1, 2) * scale
    labels = np.asarray(result.point_labels, dtype=np.int64).reshape(-1)
    heatmap = None
    if result.heatmap is not None:
        heatmap = _resized(result.heatmap, size, Image.Resampling.BILINEAR)
        heatmap = heatmap.astype(np.float32) / HEATMAP_LEVELS
    figure = render_overlay(small, mask, points, labels, heatmap)
    panels = {"overlay": png_data_url(figure[:, : size[1]]), "heatmap": None}
    if heatmap is not None:
        panels["heatmap"] = png_data_url(np.ascontiguousarray(figure[:, size[1]:]))
    return panels
