"""Queries to (question, answer) turns, the way upstream samples them.

Training draws templates at random from a caller-owned ``numpy.random.Generator`` so a data
worker's seed fully determines its conversations (`READ:dataloaders/reason_seg_dataset.py`,
`READ:dataloaders/refer_seg_dataset.py`, `READ:dataloaders/sem_seg_dataset.py`: which template
families, modes and answers; the RNG is the project's own, docs/fidelity.md). A false premise is
answered without ``[SEG]``: with its literal answer (ReasonSeg FP-QA), a correction naming
``gt_sent`` (FP-RefCOCO, kind "correct_refer"), or a denial (R-RefCOCO and every other REFER
set). Semantic segmentation draws one premise mode per image (true 0.85, denial 0.07,
correction 0.08) and asks about several classes present or absent. Evaluation turns use LISA's
fixed templates and a teacher-forced answer, as upstream's ReasonSeg validation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from read_model import templates as T

QueryKind = Literal["reason", "refer", "correct_refer"]

# Upstream's ReasonSeg loader picks the true-premise mode with this probability per image.
DEFAULT_TRUE_PREMISE_PROB = 0.85


@dataclass(frozen=True)
class SemSegModes:
    """Premise modes of a semantic-segmentation image (`READ:dataloaders/sem_seg_dataset.py`
    ``SemSegDataset.weights``): ask about present classes, deny absent ones, or correct an absent
    one by naming a present one."""

    true_premise: float = 0.85
    denial: float = 0.07
    correction: float = 0.08

    def probabilities(self) -> np.ndarray:
        weights = np.array([self.true_premise, self.denial, self.correction], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"sem-seg mode weights must be >= 0 with a positive sum: {weights}")
        return weights / weights.sum()


DEFAULT_SEM_SEG_MODES = SemSegModes()


@dataclass(frozen=True)
class SemClass:
    """A semantic-segmentation class as a question names it: a name, or an object's part."""

    name: str
    part: str = ""


@dataclass(frozen=True)
class TurnQuery:
    """The model-side view of one query; `dataset_builders` converts its own records into this."""

    text: str
    is_sentence: bool
    exists: bool = True
    gt_sent: str = ""  # FP-RefCOCO: the corrected expression naming a present object
    answer: str = ""  # ReasonSeg false-premise QA: the literal answer text
    kind: QueryKind = "refer"


class Turn(NamedTuple):
    """One single-turn conversation and where it came from."""

    question: str
    answer: str
    has_mask: bool  # the answer holds one [SEG] whose target is the source query's mask
    query_index: int


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _question(query: TurnQuery, rng: np.random.Generator, lower_short: bool) -> str:
    if query.is_sentence:
        return _pick(rng, T.LONG_QUESTION_TEMPLATES).format(sent=query.text)
    name = query.text.lower() if lower_short else query.text
    return _pick(rng, T.SHORT_QUESTION_TEMPLATES).format(class_name=name)


def _reason_turn(query: TurnQuery, index: int, rng: np.random.Generator) -> Turn:
    if query.exists:
        question = _question(query, rng, lower_short=True)
        return Turn(question, _pick(rng, T.LONG_ANSWER_TEMPLATES), True, index)
    # Upstream keeps the false-premise query's case in the short template.
    question = _question(query, rng, lower_short=False)
    answer = query.answer or _pick(rng, T.NEG_ANSWER_TEMPLATES).format(
        class_name=query.text.lower()
    )
    return Turn(question, answer, False, index)


def _refer_turn(query: TurnQuery, index: int, rng: np.random.Generator) -> Turn:
    """Upstream's `create_conversations`: the question names the sentence lower-cased, the
    answer names it stripped too; a false premise gets a correction naming ``gt_sent`` in
    FP-RefCOCO (a denial when it has none: upstream would name nothing) and a denial elsewhere."""
    question = _pick(rng, T.SHORT_QUESTION_TEMPLATES).format(class_name=query.text.lower())
    name = query.text.strip().lower()
    if query.exists:
        return Turn(
            question, _pick(rng, T.SHORT_ANSWER_TEMPLATES).format(class_name=name), True, index
        )
    gt_name = query.gt_sent.strip().lower()
    if query.kind == "correct_refer" and gt_name:
        answer = _pick(rng, T.CORRECT_ANSWER_TEMPLATES).format(class_name=name, gt_name=gt_name)
        return Turn(question, answer, False, index)
    return Turn(question, _pick(rng, T.NEG_ANSWER_TEMPLATES).format(class_name=name), False, index)


def _candidates(
    queries: Sequence[TurnQuery], rng: np.random.Generator, true_premise_prob: float
) -> list[int]:
    """Indices eligible this draw: ReasonSeg picks one premise mode per image, like upstream."""
    refer = [i for i, q in enumerate(queries) if q.kind != "reason"]
    reason_true = [i for i, q in enumerate(queries) if q.kind == "reason" and q.exists]
    reason_false = [i for i, q in enumerate(queries) if q.kind == "reason" and not q.exists]
    if not reason_true and not reason_false:
        return refer
    # Fall back to the other mode when the drawn one has no queries (upstream crashed instead).
    use_true = bool(rng.random() < true_premise_prob)
    if use_true and not reason_true:
        use_true = False
    if not use_true and not reason_false:
        use_true = True
    return refer + (reason_true if use_true else reason_false)


def build_training_turns(
    queries: Sequence[TurnQuery],
    rng: np.random.Generator,
    num_per_sample: int,
    true_premise_prob: float = DEFAULT_TRUE_PREMISE_PROB,
) -> list[Turn]:
    """Sample up to `num_per_sample` queries without replacement and template each one."""
    if num_per_sample < 1:
        raise ValueError(f"num_per_sample must be >= 1, got {num_per_sample}")
    pool = _candidates(queries, rng, true_premise_prob)
    if not pool:
        return []
    count = min(num_per_sample, len(pool))
    chosen = rng.choice(np.asarray(pool), size=count, replace=False)
    turns = []
    for index in chosen.tolist():
        query = queries[index]
        build = _reason_turn if query.kind == "reason" else _refer_turn
        turns.append(build(query, index, rng))
    return turns


def class_phrase(cls: SemClass, rng: np.random.Generator) -> str:
    """A class as a question names it: a part reads "dog head" or "the head of the dog", 50/50
    (`READ:dataloaders/sem_seg_dataset.py` `generate_class_names`)."""
    if not cls.part:
        return cls.name
    if rng.random() < 0.5:
        return f"{cls.name} {cls.part}"
    return f"the {cls.part} of the {cls.name}"


def _sample_indices(rng: np.random.Generator, count: int, k: int) -> list[int]:
    """Up to `k` of range(count) without replacement (all of them, in order, when fewer)."""
    if count <= k:
        return list(range(count))
    return [int(i) for i in rng.choice(count, size=k, replace=False)]


def build_sem_seg_turns(
    present: Sequence[SemClass],
    absent: Sequence[SemClass],
    rng: np.random.Generator,
    num_per_sample: int,
    modes: SemSegModes = DEFAULT_SEM_SEG_MODES,
) -> list[Turn]:
    """One premise mode for the image, then one turn per sampled present class.

    True premise: a short question and a short answer with ``[SEG]`` about each sampled present
    class (`Turn.query_index` is its index in `present`, whose mask it segments). Denial: the
    question names a sampled absent class, the answer denies it. Correction: the same question,
    answered by naming the present class of that turn. A false-premise mode with no absent class
    falls back to the true premise (upstream fails on such an image); with fewer absent than
    present classes it asks about as many as there are (upstream raised IndexError).
    """
    if num_per_sample < 1:
        raise ValueError(f"num_per_sample must be >= 1, got {num_per_sample}")
    if not present:
        return []
    mode = int(rng.choice(3, p=modes.probabilities()))
    positives = _sample_indices(rng, len(present), num_per_sample)
    negatives = _sample_indices(rng, len(absent), num_per_sample)
    if not negatives:
        mode = 0
    pos_names = [class_phrase(present[i], rng).lower() for i in positives]
    neg_names = [class_phrase(absent[i], rng).lower() for i in negatives]
    turns = []
    count = len(positives) if mode == 0 else min(len(positives), len(negatives))
    for j in range(count):
        template = _pick(rng, T.SHORT_QUESTION_TEMPLATES)
        if mode == 0:
            answer = _pick(rng, T.SHORT_ANSWER_TEMPLATES).format(class_name=pos_names[j])
            turns.append(Turn(template.format(class_name=pos_names[j]), answer, True,
                              positives[j]))
        elif mode == 1:
            answer = _pick(rng, T.NEG_ANSWER_TEMPLATES).format(class_name=neg_names[j])
            turns.append(Turn(template.format(class_name=neg_names[j]), answer, False,
                              positives[j]))
        else:
            answer = _pick(rng, T.CORRECT_ANSWER_TEMPLATES).format(
                class_name=neg_names[j], gt_name=pos_names[j])
            turns.append(Turn(template.format(class_name=neg_names[j]), answer, False,
                              positives[j]))
    return turns


def build_eval_turns(queries: Sequence[TurnQuery]) -> list[Turn]:
    """One teacher-forced turn per query with LISA's fixed templates; every turn has a mask (all
    zero for a false premise). RefCOCO-family prompts drawn as upstream draws them come from
    `read_model.template_draws` instead (pipelines.examples.evaluation_example)."""
    turns = []
    for index, query in enumerate(queries):
        if query.is_sentence:
            question = T.FIXED_LONG_QUESTION.format(sent=query.text)
        else:
            question = T.FIXED_SHORT_QUESTION.format(class_name=query.text.lower())
        turns.append(Turn(question, T.FIXED_ANSWER, True, index))
    return turns
