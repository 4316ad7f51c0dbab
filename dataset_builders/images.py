"""Images as upstream reads them: `cv2.imread` (BGR -> RGB), which applies the EXIF orientation.

PIL leaves a JPEG as stored unless told otherwise, so a phone photo tagged "rotate 90" would
come out sideways, with width and height swapped against the masks upstream drew on the
upright image. Everything here decodes with the orientation applied (tests/dataset_builders/test_records.py
compares against `cv2.imread` on a rotated JPEG).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these turn the image by 90 degrees


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1: as stored)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except (TypeError, ValueError):
        return 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied."""
    width, height = image.size
    if exif_orientation(image) in TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def decode_rgb(data: bytes) -> np.ndarray:
    """uint8 RGB [H, W, 3], EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
