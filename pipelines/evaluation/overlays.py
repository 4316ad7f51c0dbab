"""The paper's Figure-1 view of one evaluated query, as a PNG.

Panels, left to right: the GT mask, the predicted mask with the SasP points, and the [SEG]
similarity heatmap with the same points. The drawing itself is ``read_model.overlay`` (the
predict CLI draws the same figure); this module only adds the GT panel and the encoding.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from read_model.overlay import render_overlay, tint

GT_COLOUR = (0, 200, 255)


def evaluation_figure(
    image: np.ndarray,
    pred_mask: np.ndarray | None,
    points: np.ndarray,
    labels: np.ndarray,
    similarity: np.ndarray | None = None,
    gt_mask: np.ndarray | None = None,
) -> np.ndarray:
    """GT panel (when given) beside read_model's prediction + heatmap panels, as uint8 RGB."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    mask = None if pred_mask is None else np.asarray(pred_mask).astype(bool)
    panels = [render_overlay(image, mask, points, labels, similarity)]
    if gt_mask is not None:
        panels.insert(0, tint(image, np.asarray(gt_mask) == 1, GT_COLOUR))
    return np.concatenate(panels, axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG encoding of an RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
