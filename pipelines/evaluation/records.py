"""One scored query: the unit that model actors emit and the driver aggregates.

Actors reduce every prediction to counts (intersection, union, existence flags) against the GT
used for scoring, so the driver only sums numbers in a fixed order: N actors give exactly the
single-actor scores, and nothing is padded or repeated (upstream's DistributedSampler bias).
Bulky, ragged fields (mask RLE, points, labels) travel as one JSON string so Ray Data's Arrow
blocks never have to infer a schema for them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MISSING = -1  # intersection/union of an optional analysis that was not run


@dataclass
class QueryResult:
    """The scored outcome of one query (one row of the predictions JSONL)."""

    uid: str  # "<sample key>/<target index>/<query index>": unique, the aggregation order
    dataset: str
    split: str
    query_id: str
    query_text: str
    is_sentence: bool
    gt_exists: bool
    gt_sent: str = ""
    text: str = ""  # generated (or teacher-forced) answer text
    pred_exists: bool = False  # a [SEG] was produced and its mask is non-empty
    intersection: int = 0  # class-1 pixels, GT 255 ignored; all-zero GT for a false premise
    union: int = 0
    siou_intersection: int = MISSING  # binarised similarity map vs GT (analysis mode `siou`)
    siou_union: int = MISSING
    # SAM prompted with the SasP points alone: READ's fine-tuned decoder (`points_only_tuned`)
    # or the off-the-shelf base SAM, multimask, best score (`points_only_base_sam`, upstream's).
    points_only_tuned_intersection: int = MISSING
    points_only_tuned_union: int = MISSING
    points_only_base_sam_intersection: int = MISSING
    points_only_base_sam_union: int = MISSING
    payload: dict[str, Any] = field(default_factory=dict)  # rle, points, labels, ...
    error: str = ""  # non-empty: the sample could not be scored (reported, never scored)

    def to_row(self) -> dict[str, Any]:
        """Flat row with the payload as a JSON string (Arrow-friendly)."""
        row = asdict(self)
        row["payload"] = json.dumps(self.payload, separators=(",", ":"))
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueryResult:
        """Inverse of :meth:`to_row`; accepts numpy scalars as Ray Data hands them back."""
        payload = row.get("payload") or "{}"
        if isinstance(payload, bytes | bytearray):
            payload = payload.decode()
        return cls(
            uid=str(row["uid"]),
            dataset=str(row["dataset"]),
            split=str(row["split"]),
            query_id=str(row["query_id"]),
            query_text=str(row["query_text"]),
            is_sentence=bool(row["is_sentence"]),
            gt_exists=bool(row["gt_exists"]),
            gt_sent=str(row.get("gt_sent", "")),
            text=str(row.get("text", "")),
            pred_exists=bool(row.get("pred_exists", False)),
            intersection=int(row.get("intersection", 0)),
            union=int(row.get("union", 0)),
            siou_intersection=int(row.get("siou_intersection", MISSING)),
            siou_union=int(row.get("siou_union", MISSING)),
            points_only_tuned_intersection=int(
                row.get("points_only_tuned_intersection", MISSING)),
            points_only_tuned_union=int(row.get("points_only_tuned_union", MISSING)),
            points_only_base_sam_intersection=int(
                row.get("points_only_base_sam_intersection", MISSING)),
            points_only_base_sam_union=int(row.get("points_only_base_sam_union", MISSING)),
            payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
            error=str(row.get("error", "") or ""),
        )
