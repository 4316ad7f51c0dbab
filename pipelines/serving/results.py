"""What the model replica returns for one query, and the JSON the API answers with.

The core fields are the registered pyfunc model's output row
(`pipelines.mlflow_model.schema.output_row`: answer, see, masks as COCO RLE, points,
point_labels), so a client reads `read-serve` and `mlflow models serve` answers the same way;
the API adds the model identity, the prompt mode used and the batch the request shared. Masks
leave the replica as RLE: a few bytes per mask instead of a full-resolution array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEATMAP_LEVELS = 255  # the similarity map travels as uint8


@dataclass
class SegmentResult:
    """One answer: text, See, one RLE mask per generated [SEG], SasP points, model identity."""

    answer: str
    see: bool  # a [SEG] was generated and its mask is non-empty
    masks: list[dict[str, Any]]  # COCO RLE, one per [SEG]
    points: list[list[list[float]]]  # [n_seg][K][x, y] in original pixels
    point_labels: list[list[int]]  # [n_seg][K] 1 positive, 0 negative, -1 neutral
    image_size: tuple[int, int]  # (H, W)
    prompt_mode: str
    model: dict[str, str]  # name, version, source
    batch_size: int  # how many requests shared the batched predict call
    heatmap: np.ndarray | None = field(default=None, repr=False)  # uint8 [H, W] first [SEG]

    def union_mask(self) -> np.ndarray:
        """All [SEG] masks OR-ed, bool [H, W] (what the overlay tints)."""
        from pipelines.evaluation.predictions_io import decode_rle

        union = np.zeros(self.image_size, dtype=bool)
        for rle in self.masks:
            union |= decode_rle(rle)
        return union

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "see": self.see,
            "num_seg": len(self.masks),
            "masks": self.masks,
            "points": self.points,
            "point_labels": self.point_labels,
            "image_size": list(self.image_size),
            "prompt_mode": self.prompt_mode,
            "model": self.model,
            "batch_size": self.batch_size,
        }


def result_from_prediction(model: Any, prediction: Any, image_size: tuple[int, int], *,
                           prompt_mode: str, served: dict[str, str], batch_size: int,
                           with_heatmap: bool) -> SegmentResult:
    """`read_model.model.Prediction` -> `SegmentResult` (CPU, JSON-friendly)."""
    from pipelines.mlflow_model.schema import output_row
    from pipelines.predict import full_resolution_heatmap

    row = output_row(prediction)
    heatmap = None
    if with_heatmap:
        full = full_resolution_heatmap(model, prediction, image_size)
        if full is not None:
            heatmap = np.clip(full * HEATMAP_LEVELS, 0, HEATMAP_LEVELS).round().astype(np.uint8)
    return SegmentResult(
        **row,
        image_size=(int(image_size[0]), int(image_size[1])),
        prompt_mode=prompt_mode,
        model=dict(served),
        batch_size=batch_size,
        heatmap=heatmap,
    )
