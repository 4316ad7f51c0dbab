"""The paper's Figure-1 view of one query: mask + SasP points, and the [SEG] similarity heatmap.

Panels, left to right: the GT mask (if given), the predicted mask with the SasP points (green =
positive, red = negative, yellow = neutral), the similarity map as a JET heatmap over the image.
Drawing is vectorised (points are stamped as disks by array indexing, no per-point loop).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

LABEL_COLOURS = {1: (0, 200, 0), 0: (255, 220, 0), -1: (230, 0, 0)}  # RGB
MASK_COLOUR = np.array([255, 0, 0], dtype=np.float32)
MASK_ALPHA = 0.5
HEATMAP_ALPHA = 0.6
GT_COLOUR = np.array([0, 120, 255], dtype=np.float32)


def _tint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - MASK_ALPHA) * out[m] + MASK_ALPHA * colour
    return out.clip(0, 255).astype(np.uint8)


def stamp_points(image: np.ndarray, points: np.ndarray, labels: np.ndarray, radius: int) -> np.ndarray:
    """Draw filled disks at (x, y) `points`, coloured by `labels`, without a loop over points."""
    out = image.copy()
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if points.shape[0] == 0:
        return out
    h, w = out.shape[:2]
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    inside = dx**2 + dy**2 <= radius**2
    offs = np.stack([dx[inside], dy[inside]], axis=-1)  # [M, 2]
    centres = np.rint(points).astype(np.int64)  # [K, 2]
    xy = centres[:, None, :] + offs[None, :, :]  # [K, M, 2]
    valid = (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)
    palette = np.array([LABEL_COLOURS[k] for k in (1, 0, -1)], dtype=np.uint8)
    index = np.select([labels == 1, labels == 0], [0, 1], default=2)  # [K]
    colours = np.broadcast_to(palette[index][:, None, :], (*xy.shape[:2], 3))
    out[xy[..., 1][valid], xy[..., 0][valid]] = colours[valid]
    return out


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """JET colour map of `heatmap` (any size, resized to the image) blended over the image."""
    h, w = image.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / max(hi - lo, 1e-12)
    coloured = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blend = (1 - HEATMAP_ALPHA) * image.astype(np.float32) + HEATMAP_ALPHA * coloured
    return blend.clip(0, 255).astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    pred_mask: np.ndarray | None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
    gt_mask: np.ndarray | None = None,
) -> np.ndarray:
    """The panels side by side as one uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB [H, W, 3] image, got {image.shape}")
    image = image.astype(np.uint8)
    radius = max(2, round(min(image.shape[:2]) / 80))
    panels = []
    if gt_mask is not None:
        panels.append(_tint(image, gt_mask == 1, GT_COLOUR))
    pred = image if pred_mask is None else _tint(image, pred_mask, MASK_COLOUR)
    if points is not None and labels is not None:
        pred = stamp_points(pred, points, labels, radius)
    panels.append(pred)
    if heatmap is not None:
        panels.append(heatmap_overlay(image, heatmap))
    return np.concatenate(panels, axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG encoding of an RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
