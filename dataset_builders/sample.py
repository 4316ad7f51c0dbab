"""The canonical sample every reader yields, whatever the upstream format was.

One image with its original bytes and a list of targets; each target is a lossless mask plus the
queries that refer to it. Keeping the upstream ids in `source` lets every prediction be traced
back to the record it came from. Two optional parts serve the sources that are not referring
segmentation: `absent_classes` (semantic segmentation: the classes the image does not contain,
the pool upstream draws false premises from, stored as names only, never as masks) and
`dialogue` (VQA: a multi-turn conversation with no mask).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

MASK_BACKGROUND = 0
MASK_OBJECT = 1
MASK_IGNORE = 255  # ReasonSeg "ignore" polygons: excluded from evaluation

_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Query:
    """One expression or question about a target; `exists=False` marks a false premise."""

    text: str
    is_sentence: bool
    exists: bool = True
    gt_sent: str = ""
    answer: str = ""
    query_id: str = ""
    # A part class (PACO-LVIS, PASCAL-Part): `text` names the object and `part` the part; the
    # wording ("dog head" / "the head of the dog") is drawn per training example, as upstream.
    part: str = ""


@dataclass
class Target:
    """A uint8 [H, W] mask with values {0, 1, 255} and the queries that name it."""

    mask: np.ndarray
    queries: list[Query] = field(default_factory=list)
    target_id: str = ""


@dataclass(frozen=True)
class ClassName:
    """A semantic-segmentation class: a name, or an object and one of its parts."""

    name: str
    part: str = ""


@dataclass
class Sample:
    """One image and all its targets; `key` is unique and dot-free (a WebDataset key)."""

    key: str
    dataset: str
    split: str
    image_bytes: bytes
    width: int
    height: int
    targets: list[Target]
    source: dict[str, str] = field(default_factory=dict)
    # Semantic segmentation: classes of the dataset this image does not contain (false premises).
    absent_classes: list[ClassName] = field(default_factory=list)
    # VQA: (human, assistant) turns; the first question carries the image placeholder.
    dialogue: list[tuple[str, str]] = field(default_factory=list)
    # Unusual things upstream accepts and this record keeps (not stored in shards).
    warnings: list[WarningEntry] = field(default_factory=list)

    @property
    def num_queries(self) -> int:
        """Questions the record holds: target queries plus VQA dialogue turns."""
        return sum(len(t.queries) for t in self.targets) + len(self.dialogue)


@dataclass(frozen=True)
class QuarantineEntry:
    """A record that was rejected, with where it came from and why (never silently dropped)."""

    source: str
    record_id: str
    reason: str


@dataclass(frozen=True)
class WarningEntry:
    """A record kept as upstream keeps it, with something unusual about it (never silent)."""

    source: str
    record_id: str
    reason: str


def key_part(raw: str) -> str:
    """A key fragment of `[A-Za-z0-9_-]` only.

    WebDataset splits member names at the first dot, so dots (and path separators) cannot appear.
    "+" is spelled "plus" so "refcoco+" stays distinct from "refcoco"; any other rewrite gets a
    short hash of the raw text appended so two different raw ids never share a key.
    """
    spelled = raw.replace("+", "plus")
    cleaned = _KEY_SAFE.sub("-", spelled)
    if cleaned == spelled and cleaned:
        return cleaned
    digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def make_key(dataset: str, split: str, record_id: str) -> str:
    """`<dataset>_<split>_<record id>` with each part made key-safe."""
    return "_".join(key_part(part) for part in (dataset, split, record_id))
