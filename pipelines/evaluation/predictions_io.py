"""Per-query predictions as JSONL, masks as COCO RLE (pycocotools), so any tool can re-score them."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.evaluation.records import QueryResult


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO RLE of a binary [H, W] mask, with `counts` as a str so it is JSON-serialisable."""
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8) > 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, object]) -> np.ndarray:
    """Inverse of :func:`encode_rle`: a bool [H, W] mask."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def to_jsonl(results: Iterable[QueryResult]) -> str:
    """One JSON object per line, sorted by uid (stable files for diffs and re-scoring)."""
    lines = []
    for r in sorted(results, key=lambda r: r.uid):
        row = r.to_row()
        row["payload"] = r.payload
        lines.append(json.dumps(row, separators=(",", ":"), sort_keys=True))
    return "\n".join(lines) + ("\n" if lines else "")


def from_jsonl(text: str) -> list[QueryResult]:
    """Parse a predictions JSONL back into results; a bad line names its number."""
    results = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["payload"] = json.dumps(row.get("payload", {}))
            results.append(QueryResult.from_row(row))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"predictions line {number} is not a valid record: {exc}") from exc
    return results
