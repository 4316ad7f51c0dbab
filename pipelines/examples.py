"""Canonical `Sample` -> model-side `ReadExample`, for training and for evaluation.

Training draws up to `num_classes_per_sample` queries per image with templates chosen by a
generator seeded from (seed, epoch, sample key), so a resumed or re-run job sees exactly the same
conversations for the same sample and epoch, whichever worker reads it. Evaluation uses every
query with LISA's fixed templates and a teacher-forced answer. A turn with a `[SEG]` gets its
target's mask, or an all-zero mask for a false premise (the upstream evaluation convention).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from dataset_builders.sample import Query, Sample
from read_model.batch import ReadExample
from read_model.turns import (
    DEFAULT_TRUE_PREMISE_PROB,
    Turn,
    TurnQuery,
    build_eval_turns,
    build_training_turns,
)

REASON_DATASETS = frozenset({"reason_seg"})  # long-sentence reasoning queries with FP-QA modes


def decode_image(sample: Sample) -> np.ndarray:
    """The sample's image as uint8 RGB [H, W, 3], decoded as upstream reads it (OpenCV, then
    BGR -> RGB), in the stored pixel orientation the masks were drawn in (EXIF orientation is
    ignored); an undecodable image or a size mismatch with the record is an error."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(sample.image_bytes, dtype=np.uint8), flags)
    if bgr is None:
        raise ValueError(f"sample {sample.key}: the image bytes do not decode")
    array = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if array.shape[:2] != (sample.height, sample.width):
        raise ValueError(
            f"sample {sample.key}: image is {array.shape[1]}x{array.shape[0]} but the record "
            f"says {sample.width}x{sample.height}"
        )
    return array


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """A generator fixed by (seed, epoch, key); stable across processes (no salted `hash`)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def flat_queries(sample: Sample) -> tuple[list[TurnQuery], list[int]]:
    """Every query of the sample as a `TurnQuery`, with the index of the target it refers to."""
    kind = "reason" if sample.dataset in REASON_DATASETS else "refer"
    queries: list[TurnQuery] = []
    owners: list[int] = []
    for target_index, target in enumerate(sample.targets):
        for query in target.queries:
            queries.append(_turn_query(query, kind))
            owners.append(target_index)
    return queries, owners


def training_example(
    sample: Sample,
    *,
    num_per_sample: int,
    seed: int,
    epoch: int,
    true_premise_prob: float = DEFAULT_TRUE_PREMISE_PROB,
) -> ReadExample | None:
    """Draw the training conversations of one image; None when it has no usable query."""
    queries, owners = flat_queries(sample)
    if not queries:
        return None
    rng = sample_rng(seed, epoch, sample.key)
    turns = build_training_turns(queries, rng, num_per_sample, true_premise_prob)
    if not turns:
        return None
    return _example(sample, turns, queries, owners)


def evaluation_example(sample: Sample, *, fixed_templates: bool = True) -> ReadExample | None:
    """Every query of one image as a teacher-forced turn; None when it has no query."""
    queries, owners = flat_queries(sample)
    if not queries:
        return None
    return _example(sample, build_eval_turns(queries, fixed_templates=fixed_templates), queries, owners)


def _example(
    sample: Sample, turns: list[Turn], queries: list[TurnQuery], owners: list[int]
) -> ReadExample:
    conversations = [(turn.question, turn.answer) for turn in turns]
    masks: list[np.ndarray | None] = []
    for turn in turns:
        if not turn.has_mask:
            masks.append(None)
        elif queries[turn.query_index].exists:
            masks.append(sample.targets[owners[turn.query_index]].mask)
        else:
            masks.append(np.zeros((sample.height, sample.width), dtype=np.uint8))
    return ReadExample(image=decode_image(sample), conversations=conversations, masks=masks)


def _turn_query(query: Query, kind: str) -> TurnQuery:
    return TurnQuery(
        text=query.text,
        is_sentence=query.is_sentence,
        exists=query.exists,
        gt_sent=query.gt_sent,
        answer=query.answer,
        kind=kind,  # type: ignore[arg-type]
    )
