"""Per-record checks that turn bad input into a reason string instead of a crash.

Two kinds, so readers keep every record upstream keeps (docs/fidelity.md, "Records"):

* errors (`check_*`, `*_error`): what upstream's loaders would fail on (undecodable image or
  JSON, missing keys, points that `np.array([points], dtype=np.int32)` or cv2 refuse, COCO
  segmentations pycocotools cannot decode). Readers wrap them in a `QuarantineEntry`;
* warnings (`*_warnings`): what upstream accepts and this project keeps as upstream does, but a
  user should know about (2-point polygons drawn as lines, polygons past the image edge, a JSON
  size that differs from the decoded image, an empty true-premise mask). Readers attach them to
  the sample as `WarningEntry`s; `BuildReport` counts them apart from the quarantine.

Images are measured as `cv2.imread` decodes them: with the EXIF orientation applied.
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

from dataset_builders.images import oriented_size
from dataset_builders.sample import MASK_OBJECT, QuarantineEntry, Sample, WarningEntry


@dataclass(frozen=True)
class ValidationConfig:
    """Tolerances of the record checks."""

    # labelme / COCO polygons may sit a hair outside the canvas after annotation tools snap to
    # pixel edges; further out than this (in pixels) earns the record a warning (upstream clips
    # the polygon and keeps the record, and so does this project).
    polygon_tolerance_px: float = 2.0
    min_polygon_points: int = 3  # fewer earns a warning: cv2 draws the shape as a line/point


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
    """((width, height), None) when the bytes decode fully as an image, else (None, reason).

    The size is the EXIF-oriented one, as `cv2.imread` returns the image upstream reads.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated or corrupt data fails here, not at open
            return oriented_size(image), None
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


def polygon_cast_error(points: Any) -> str | None:
    """Why upstream's ``np.array([points], dtype=np.int32)`` + cv2 drawing would fail, or None."""
    try:
        polygon = np.array([points], dtype=np.int32)
    except (TypeError, ValueError, OverflowError) as err:
        return f"polygon points cannot be cast to int32 as upstream casts them: {err}"
    if polygon.ndim != 3 or polygon.shape[1] == 0 or polygon.shape[2] != 2:
        return f"polygon points have shape {polygon.shape[1:]}, expected [N, 2] with N >= 1"
    return None


def polygon_warnings(
    points: Any,
    width: int,
    height: int,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> list[str]:
    """Unusual but drawable polygon points [[x, y], ...] (call after `polygon_cast_error`)."""
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    warnings = []
    if array.shape[0] < settings.min_polygon_points:
        warnings.append(f"polygon has {array.shape[0]} points; drawn as upstream draws it "
                        "(a line or a point)")
    tol = settings.polygon_tolerance_px
    low, high = array.min(axis=0), array.max(axis=0)
    if low[0] < -tol or low[1] < -tol or high[0] > width + tol or high[1] > height + tol:
        warnings.append(
            f"polygon spans x {low[0]:.1f}..{high[0]:.1f}, y {low[1]:.1f}..{high[1]:.1f}, "
            f"outside the {width}x{height} image; clipped as upstream clips it"
        )
    return warnings


def check_coco_segmentation(segmentation: Any, width: int, height: int) -> str | None:
    """Why pycocotools (upstream's decoder) cannot give this image a mask from it, or None."""
    if not segmentation:
        return None  # upstream reads an empty segmentation as an empty mask
    if isinstance(segmentation, list) and isinstance(segmentation[0], list):
        from dataset_builders.masks import decode_coco_segmentation

        try:
            decode_coco_segmentation(segmentation, height, width)
        except Exception as err:  # pycocotools raises bare Exceptions and TypeErrors
            return f"pycocotools cannot decode the polygons: {type(err).__name__}: {err}"
        return None
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    for part in parts:
        if not isinstance(part, dict) or "counts" not in part or "size" not in part:
            return "segmentation is neither polygons nor RLE"
        if [int(v) for v in part["size"]] != [height, width]:
            return f"RLE size {part['size']} differs from the image's [{height}, {width}]"
    return None


def coco_segmentation_warnings(
    segmentation: Any,
    width: int,
    height: int,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> list[str]:
    """Unusual but decodable COCO polygons (few points, odd coordinate counts, past the edge)."""
    if not (isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], list)):
        return []
    warnings = []
    for part in segmentation:
        if len(part) % 2:
            warnings.append(f"polygon has an odd number of coordinates ({len(part)})")
        coords = np.asarray(part[: len(part) // 2 * 2], dtype=np.float64).reshape(-1, 2)
        if len(coords):
            warnings += polygon_warnings(coords, width, height, settings)
    return warnings


def check_text(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"query text is empty or not a string: {text!r}"
    return None


def check_true_premise_mask(mask: np.ndarray) -> str | None:
    """A warning when a query that claims its object exists has no object pixel (upstream
    trains and scores it as it is: an empty target)."""
    if not np.any(mask == MASK_OBJECT):
        return "true-premise target has an empty mask"
    return None


@dataclass
class BuildReport:
    """Counts of what a reader delivered, everything it quarantined and every warning it
    attached to a kept record, with reasons (two separate lists)."""

    num_samples: int = 0
    num_targets: int = 0
    num_queries: int = 0
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    warnings: list[WarningEntry] = field(default_factory=list)

    def add(self, item: Sample | QuarantineEntry) -> None:
        if isinstance(item, QuarantineEntry):
            self.quarantine.append(item)
            return
        self.num_samples += 1
        self.num_targets += len(item.targets)
        self.num_queries += item.num_queries
        self.warnings.extend(item.warnings)

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

    def warning_counts(self) -> dict[str, int]:
        """Warning reasons grouped by their first words (before any ';' or ':')."""
        return dict(Counter(e.reason.split(";")[0].split(":")[0] for e in self.warnings))

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
            "num_warnings": len(self.warnings),
            "warnings": [
                {"source": e.source, "record_id": e.record_id, "reason": e.reason}
                for e in self.warnings
            ],
        }
