"""Per-record checks that turn bad input into a reason string instead of a crash.

Each check returns None when the record is fine and a short human-readable reason otherwise;
readers wrap the reason in a `QuarantineEntry`, so a single corrupt file never stops a build and
is never lost silently. `BuildReport` tallies what came out of a reader.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from dataset_builders.sample import MASK_OBJECT, QuarantineEntry, Sample


@dataclass(frozen=True)
class ValidationConfig:
    """Tolerances of the record checks."""

    # labelme / COCO polygons may sit a hair outside the canvas after annotation tools snap to
    # pixel edges; further out than this (in pixels) means the polygon belongs to another image.
    polygon_tolerance_px: float = 2.0
    min_polygon_points: int = 3


DEFAULT_VALIDATION = ValidationConfig()


def decode_json_text(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) decoded as UTF-8, else as cp1252 as upstream falls back; (None, reason)."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), None
    except UnicodeDecodeError as err:
        return None, f"json is neither UTF-8 nor cp1252: {err}"


def parse_json(data: bytes) -> tuple[Any, str | None]:
    """(object, None) or (None, reason) for annotation bytes."""
    text, reason = decode_json_text(data)
    if text is None:
        return None, reason
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"json parse error: {err}"


def check_image(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) when the bytes decode fully as an image, else (None, reason)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated or corrupt data fails here, not at open
            return image.size, None
    except Exception as err:  # PIL raises many types for bad data; all mean "undecodable"
        return None, f"image does not decode: {type(err).__name__}: {err}"


def check_size(actual: tuple[int, int], declared: tuple[int, int]) -> str | None:
    """Both as (width, height); the annotation must describe this very image."""
    if tuple(actual) != tuple(declared):
        return (
            f"image size {actual[0]}x{actual[1]} differs from the annotation's "
            f"{declared[0]}x{declared[1]}"
        )
    return None


def check_polygon(
    points: Any,
    width: int,
    height: int,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> str | None:
    """Points [[x, y], ...]: enough vertices, finite, inside the image up to the tolerance."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        return "polygon points are not numbers"
    if array.ndim != 2 or array.shape[1] != 2:
        return f"polygon points have shape {array.shape}, expected [N, 2]"
    if array.shape[0] < settings.min_polygon_points:
        return f"polygon has {array.shape[0]} points, at least {settings.min_polygon_points} needed"
    if not np.isfinite(array).all():
        return "polygon has non-finite coordinates"
    tol = settings.polygon_tolerance_px
    low = array.min(axis=0)
    high = array.max(axis=0)
    if low[0] < -tol or low[1] < -tol or high[0] > width + tol or high[1] > height + tol:
        return (
            f"polygon spans x {low[0]:.1f}..{high[0]:.1f}, y {low[1]:.1f}..{high[1]:.1f}, "
            f"outside the {width}x{height} image"
        )
    return None


def check_coco_segmentation(
    segmentation: Any,
    width: int,
    height: int,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> str | None:
    """A COCO polygon list (flat x, y lists) or RLE dict(s) that fit this image."""
    if not segmentation:
        return None  # upstream reads an empty segmentation as an empty mask
    if isinstance(segmentation, list) and isinstance(segmentation[0], list):
        for part in segmentation:
            if len(part) % 2:
                return f"polygon has an odd number of coordinates ({len(part)})"
            reason = check_polygon(np.reshape(part, (-1, 2)), width, height, settings)
            if reason:
                return reason
        return None
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    for part in parts:
        if not isinstance(part, dict) or "counts" not in part or "size" not in part:
            return "segmentation is neither polygons nor RLE"
        if [int(v) for v in part["size"]] != [height, width]:
            return f"RLE size {part['size']} differs from the image's [{height}, {width}]"
    return None


def check_text(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"query text is empty or not a string: {text!r}"
    return None


def check_true_premise_mask(mask: np.ndarray) -> str | None:
    """A query that claims its object exists needs at least one object pixel."""
    if not np.any(mask == MASK_OBJECT):
        return "true-premise target has an empty mask"
    return None


@dataclass
class BuildReport:
    """Counts of what a reader delivered and everything it quarantined, with reasons."""

    num_samples: int = 0
    num_targets: int = 0
    num_queries: int = 0
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def add(self, item: Sample | QuarantineEntry) -> None:
        if isinstance(item, QuarantineEntry):
            self.quarantine.append(item)
            return
        self.num_samples += 1
        self.num_targets += len(item.targets)
        self.num_queries += item.num_queries

    def add_all(self, items: Iterable[Sample | QuarantineEntry]) -> list[Sample]:
        """Tally every item and return the samples, in order."""
        samples = []
        for item in items:
            self.add(item)
            if isinstance(item, Sample):
                samples.append(item)
        return samples

    def reason_counts(self) -> dict[str, int]:
        """Quarantine reasons grouped by their first words (before any ':')."""
        return dict(Counter(entry.reason.split(":")[0] for entry in self.quarantine))

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_targets": self.num_targets,
            "num_queries": self.num_queries,
            "num_quarantined": len(self.quarantine),
            "quarantine": [
                {"source": e.source, "record_id": e.record_id, "reason": e.reason}
                for e in self.quarantine
            ],
        }
