"""Figures of a prediction: mask tint, SasP points coloured by label, similarity heatmap.

Positive points are green, negative red, neutral grey (labels 1 / 0 / -1, as SAM reads them);
the heatmap panel blends a jet-coloured similarity map over the image the way upstream's
LLaVA-side visualisation does (0.3 image + 0.7 map). Pure numpy, so evaluation code can call it
on any worker.
"""

from __future__ import annotations

import numpy as np

POSITIVE_COLOUR = (40, 200, 40)
NEGATIVE_COLOUR = (230, 30, 30)
NEUTRAL_COLOUR = (160, 160, 160)
OUTLINE_COLOUR = (0, 0, 0)
MASK_COLOUR = (30, 144, 255)
MASK_ALPHA = 0.5
HEATMAP_IMAGE_WEIGHT = 0.3  # upstream: 0.3 * image + 0.7 * colour map
POINT_RADIUS_FRACTION = 0.012  # of the shorter image side
MIN_POINT_RADIUS = 2


def jet(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 in the classic jet colour map."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    channels = np.array([0.75, 0.5, 0.25], np.float32)  # red, green, blue peak positions
    rgb = np.clip(1.5 - np.abs(4.0 * (v - channels)), 0.0, 1.0)
    return (rgb * 255).round().astype(np.uint8)


def tint(image: np.ndarray, mask: np.ndarray | None, colour=MASK_COLOUR, alpha=MASK_ALPHA) -> np.ndarray:
    """`image` with `alpha` of `colour` blended where `mask` is true."""
    out = image.astype(np.float32)
    if mask is not None and mask.any():
        selected = mask.astype(bool)
        out[selected] = (1 - alpha) * out[selected] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def _disc_offsets(radius: int) -> np.ndarray:
    span = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    inside = dy**2 + dx**2 <= radius**2
    return np.stack([dx[inside], dy[inside]], axis=1)  # [M, 2] (x, y)


def _stamp(image: np.ndarray, points: np.ndarray, colours: np.ndarray, radius: int) -> None:
    """Paint a disc of `radius` in `colours[k]` at every `points[k]` (vectorised over points)."""
    if len(points) == 0:
        return
    height, width = image.shape[:2]
    offsets = _disc_offsets(radius)
    centres = np.floor(points).astype(np.int64)
    pixels = centres[:, None, :] + offsets[None]  # [K, M, 2]
    pixel_colours = np.broadcast_to(colours[:, None, :], (*pixels.shape[:2], 3))
    pixels, pixel_colours = pixels.reshape(-1, 2), pixel_colours.reshape(-1, 3)
    keep = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    image[pixels[keep, 1], pixels[keep, 0]] = pixel_colours[keep]


def draw_points(image: np.ndarray, points: np.ndarray, labels: np.ndarray, radius: int | None = None) -> np.ndarray:
    """Points (x, y) in pixels drawn as outlined discs; positives are drawn last (on top)."""
    out = image.copy()
    points = np.asarray(points, np.float32).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if radius is None:
        radius = max(MIN_POINT_RADIUS, round(POINT_RADIUS_FRACTION * min(image.shape[:2])))
    order = np.argsort(np.select([labels == 1, labels == 0], [2, 1], 0), kind="stable")
    points, labels = points[order], labels[order]
    palette = np.select(
        [labels[:, None] == 1, labels[:, None] == 0],
        [np.array(POSITIVE_COLOUR), np.array(NEGATIVE_COLOUR)],
        np.array(NEUTRAL_COLOUR),
    ).astype(np.uint8)
    outline = np.broadcast_to(np.array(OUTLINE_COLOUR, np.uint8), palette.shape)
    _stamp(out, points, np.ascontiguousarray(outline), radius + 1)
    _stamp(out, points, palette, radius)
    return out


def heatmap_panel(image: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """The similarity map (same H x W as the image, values in [0, 1]) over the image."""
    blend = HEATMAP_IMAGE_WEIGHT * image.astype(np.float32) + (1 - HEATMAP_IMAGE_WEIGHT) * jet(
        similarity
    ).astype(np.float32)
    return blend.round().clip(0, 255).astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    points: np.ndarray,
    labels: np.ndarray,
    similarity: np.ndarray | None = None,
) -> np.ndarray:
    """[H, W, 3] image -> [H, W, 3] (mask + points), or [H, 2W, 3] with the heatmap panel."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    left = draw_points(tint(image, mask), points, labels)
    if similarity is None:
        return left
    if similarity.shape != image.shape[:2]:
        raise ValueError(f"similarity map {similarity.shape} does not match the image {image.shape[:2]}")
    right = draw_points(heatmap_panel(image, similarity), points, labels)
    return np.concatenate([left, right], axis=1)
