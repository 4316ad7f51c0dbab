"""Canonical `Sample` -> model-side `ReadExample`, for training and for evaluation.

Training draws up to `num_classes_per_sample` queries per image with templates chosen by a
generator seeded from (seed, epoch, sample key), so a resumed or re-run job sees exactly the same
conversations for the same sample and epoch, whichever worker reads it. Each source forms its
conversations as upstream does (`dataset_builders.sources`): ReasonSeg and the REFER family
through `read_model.turns.build_training_turns` (FP-RefCOCO false premises corrected, R-RefCOCO
ones denied), semantic segmentation through `build_sem_seg_turns` (classes present, or absent
ones denied or corrected), VQA as its one multi-turn dialog.

Evaluation follows upstream's protocol per dataset (docs/fidelity.md, "Evaluation protocol"):
ReasonSeg scores the first query of an image with LISA's fixed templates
(`READ:dataloaders/test_dataset.py` `TestReasoningDataset`: ``sents[0]``), or every query under
the separately named "all_queries" protocol; REFER-format datasets score every sentence with the
prompt drawn for it (`pipelines.evaluation.prompt_plan`), or LISA's fixed question when no
drawn prompt is given. A teacher-forced turn with a `[SEG]` gets its target's mask, or an
all-zero mask for a false premise (the upstream evaluation convention).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from dataset_builders.images import decode_rgb
from dataset_builders.sample import Query, Sample
from dataset_builders.sources import source_of
from read_model import templates as T
from read_model.batch import ReadExample
from read_model.conversation import Dialogue
from read_model.turns import (
    DEFAULT_SEM_SEG_MODES,
    DEFAULT_TRUE_PREMISE_PROB,
    SemClass,
    SemSegModes,
    Turn,
    TurnQuery,
    build_eval_turns,
    build_sem_seg_turns,
    build_training_turns,
)

REASON_DATASETS = frozenset({"reason_seg"})  # long-sentence reasoning queries with FP-QA modes
ReasonSegQueries = Literal["first", "all"]
ALL_QUERIES_PROTOCOL = "all_queries"  # the split suffix that names ReasonSeg's every-query scores
DrawnPrompts = Mapping[str, tuple[str, str] | list[str]]  # query uid -> (question, answer)


def query_uid(key: str, target_index: int, query_index: int) -> str:
    """The id a scored query is known by everywhere (results, prompt plans, predictions)."""
    return f"{key}/{target_index}/{query_index}"


def evaluation_queries(
    sample: Sample, reason_seg_queries: ReasonSegQueries = "first"
) -> list[tuple[int, int]]:
    """(target index, query index) of every query the evaluation scores, in sample order.

    ReasonSeg's "first" protocol keeps the first true-premise text (upstream's ``sents[0]``);
    its false-premise QA and the other texts are scored only under "all".
    """
    positions = [(t, q) for t, target in enumerate(sample.targets)
                 for q in range(len(target.queries))]
    if sample.dataset not in REASON_DATASETS or reason_seg_queries == "all":
        return positions
    if reason_seg_queries != "first":
        raise ValueError(f"reason_seg_queries must be 'first' or 'all', got {reason_seg_queries!r}")
    first = [(t, q) for t, q in positions if sample.targets[t].queries[q].exists]
    return first[:1]


def evaluation_split(sample: Sample, reason_seg_queries: ReasonSegQueries = "first") -> str:
    """The split name scores are reported under: ReasonSeg's all-queries protocol is named."""
    if sample.dataset in REASON_DATASETS and reason_seg_queries == "all":
        return f"{sample.split}/{ALL_QUERIES_PROTOCOL}"
    return sample.split


def decode_image(sample: Sample) -> np.ndarray:
    """The sample's image as uint8 RGB [H, W, 3], EXIF orientation applied as `cv2.imread` does;
    a size mismatch with the record is an error."""
    array = decode_rgb(sample.image_bytes)
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


QUERY_KIND = {"reason_seg": "reason", "correct_refer_seg": "correct_refer"}  # else "refer"


def flat_queries(sample: Sample) -> tuple[list[TurnQuery], list[int]]:
    """Every query of the sample as a `TurnQuery`, with the index of the target it refers to."""
    kind = QUERY_KIND.get(source_of(sample.dataset), "refer")
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
    sem_seg_modes: SemSegModes = DEFAULT_SEM_SEG_MODES,
) -> ReadExample | None:
    """Draw the training conversations of one image; None when it has no usable query."""
    source = source_of(sample.dataset)
    if source == "vqa":
        return _dialogue_example(sample)
    rng = sample_rng(seed, epoch, sample.key)
    if source == "sem_seg":
        return _sem_seg_example(sample, rng, num_per_sample, sem_seg_modes)
    queries, owners = flat_queries(sample)
    if not queries:
        return None
    turns = build_training_turns(queries, rng, num_per_sample, true_premise_prob)
    if not turns:
        return None
    return _example(sample, turns, queries, owners)


def _dialogue_example(sample: Sample) -> ReadExample | None:
    """VQA: the whole dialog is one row with no mask (upstream: ``exists=[False]``)."""
    if not sample.dialogue:
        return None
    return ReadExample(image=decode_image(sample),
                       conversations=[Dialogue(tuple(sample.dialogue))], masks=[None])


def _sem_seg_example(sample: Sample, rng: np.random.Generator, num_per_sample: int,
                     modes: SemSegModes) -> ReadExample | None:
    """Semantic segmentation: every target is one class present (or one annotated instance)."""
    owners = [t for t, target in enumerate(sample.targets) if target.queries]
    present = [SemClass(sample.targets[t].queries[0].text, sample.targets[t].queries[0].part)
               for t in owners]
    absent = [SemClass(c.name, c.part) for c in sample.absent_classes]
    turns = build_sem_seg_turns(present, absent, rng, num_per_sample, modes)
    if not turns:
        return None
    masks = [sample.targets[owners[turn.query_index]].mask if turn.has_mask else None
             for turn in turns]
    return ReadExample(image=decode_image(sample),
                       conversations=[(turn.question, turn.answer) for turn in turns],
                       masks=masks)


def evaluation_example(
    sample: Sample,
    *,
    reason_seg_queries: ReasonSegQueries = "first",
    prompts: DrawnPrompts | None = None,
) -> ReadExample | None:
    """The scored queries of one image as teacher-forced turns; None when it has none.

    A REFER-format query uses its drawn prompt from `prompts` (uid -> (question, answer)) when
    given; a drawn answer without exactly one [SEG] (a false premise's correction or denial) is
    replaced by LISA's fixed answer, since teacher forcing scores a mask for every query.
    """
    selected = evaluation_queries(sample, reason_seg_queries)
    if not selected:
        return None
    queries, owners = flat_queries(sample)
    flat = {pos: i for i, pos in enumerate(
        (t, q) for t, target in enumerate(sample.targets) for q in range(len(target.queries)))}
    chosen = [queries[flat[pos]] for pos in selected]
    turns = build_eval_turns(chosen)
    if prompts is not None and sample.dataset not in REASON_DATASETS:
        turns = [_drawn_turn(turn, prompts, query_uid(sample.key, *pos))
                 for turn, pos in zip(turns, selected, strict=True)]
    chosen_owners = [owners[flat[pos]] for pos in selected]
    return _example(sample, turns, chosen, chosen_owners)


def _drawn_turn(turn: Turn, prompts: DrawnPrompts, uid: str) -> Turn:
    if uid not in prompts:
        raise KeyError(f"no drawn prompt for query {uid}: the prompt plan does not cover it")
    question, answer = prompts[uid]
    if answer.count(T.SEG_PLACEHOLDER) != 1:
        answer = T.FIXED_ANSWER
    return turn._replace(question=question, answer=answer)


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
