"""Training turns of the mix's other sources, against upstream's rules.

`READ:dataloaders/sem_seg_dataset.py`: one premise mode per image (0.85 / 0.07 / 0.08), up to
`num_classes_per_sample` present classes, as many absent ones for false premises, denials and
corrections without ``[SEG]``, part names worded "obj part" or "the part of the obj" 50/50.
`READ:dataloaders/refer_seg_dataset.py`: FP-RefCOCO false premises are corrected with
``gt_sent``, every other REFER set denies them; the answer names the stripped sentence.
"""

from __future__ import annotations

import numpy as np
import pytest

from read_model import templates as T
from read_model.turns import (
    SemClass,
    SemSegModes,
    TurnQuery,
    build_sem_seg_turns,
    build_training_turns,
    class_phrase,
)

PRESENT = [SemClass("wall"), SemClass("sky"), SemClass("dog", "head"), SemClass("car")]
ABSENT = [SemClass("boat"), SemClass("cat", "ear"), SemClass("tree"), SemClass("lamp")]


def _filled(templates: tuple[str, ...], **names: str) -> set[str]:
    return {t.format(**names) for t in templates}


def test_true_premise_asks_about_present_classes_with_seg() -> None:
    turns = build_sem_seg_turns(PRESENT, ABSENT, np.random.default_rng(0), 3,
                                SemSegModes(1.0, 0.0, 0.0))
    assert len(turns) == 3 and len({t.query_index for t in turns}) == 3
    for turn in turns:
        assert turn.has_mask and turn.answer.count("[SEG]") == 1
        present = PRESENT[turn.query_index]
        names = ({present.name} if not present.part else
                 {f"{present.name} {present.part}", f"the {present.part} of the {present.name}"})
        assert any(turn.question in _filled(T.SHORT_QUESTION_TEMPLATES, class_name=n)
                   for n in names)


def test_denial_and_correction_name_absent_classes_without_seg() -> None:
    denial = build_sem_seg_turns(PRESENT, ABSENT, np.random.default_rng(1), 3,
                                 SemSegModes(0.0, 1.0, 0.0))
    correction = build_sem_seg_turns(PRESENT, ABSENT, np.random.default_rng(1), 3,
                                     SemSegModes(0.0, 0.0, 1.0))
    absent_names = {"boat", "tree", "lamp", "cat ear", "the ear of the cat"}
    present_names = {"wall", "sky", "car", "dog head", "the head of the dog"}
    for turn in denial:
        assert not turn.has_mask and "[SEG]" not in turn.answer
        assert any(turn.answer in _filled(T.NEG_ANSWER_TEMPLATES, class_name=n)
                   for n in absent_names)
    for turn in correction:
        assert not turn.has_mask and "[SEG]" not in turn.answer
        assert any(turn.answer in _filled(T.CORRECT_ANSWER_TEMPLATES, class_name=a, gt_name=p)
                   for a in absent_names for p in present_names)
    assert len(denial) == len(correction) == 3


def test_modes_mix_about_as_upstream() -> None:
    counts = {"true": 0, "denial": 0, "correction": 0}
    for seed in range(1000):
        turn = build_sem_seg_turns(PRESENT, ABSENT, np.random.default_rng(seed), 1)[0]
        if turn.has_mask:
            counts["true"] += 1
        elif turn.answer in {a for n in ("boat", "tree", "lamp", "cat ear", "the ear of the cat")
                             for a in _filled(T.NEG_ANSWER_TEMPLATES, class_name=n)}:
            counts["denial"] += 1
        else:
            counts["correction"] += 1
    assert 810 <= counts["true"] <= 890  # 850 expected
    assert 45 <= counts["denial"] <= 95  # 70
    assert 55 <= counts["correction"] <= 105  # 80


def test_no_absent_class_falls_back_to_the_true_premise() -> None:
    turns = build_sem_seg_turns(PRESENT[:2], [], np.random.default_rng(0), 3,
                                SemSegModes(0.0, 1.0, 0.0))
    assert [t.has_mask for t in turns] == [True, True]
    few = build_sem_seg_turns(PRESENT, ABSENT[:1], np.random.default_rng(0), 3,
                              SemSegModes(0.0, 0.0, 1.0))
    assert len(few) == 1  # as many false premises as absent classes (upstream: IndexError)


def test_part_wording_is_drawn_half_and_half() -> None:
    words = [class_phrase(SemClass("dog", "head"), np.random.default_rng(s)) for s in range(400)]
    assert set(words) == {"dog head", "the head of the dog"}
    assert 160 <= words.count("dog head") <= 240
    assert class_phrase(SemClass("sky"), np.random.default_rng(0)) == "sky"


def test_correction_only_for_fp_refcoco_and_answers_strip_the_sentence() -> None:
    fp = TurnQuery(" Blue Dog ", is_sentence=False, exists=False, gt_sent=" Man In Red ",
                   kind="correct_refer")
    negative = TurnQuery(" Blue Dog ", is_sentence=False, exists=False, gt_sent="man in red")
    corrected = build_training_turns([fp], np.random.default_rng(0), 1)[0]
    denied = build_training_turns([negative], np.random.default_rng(0), 1)[0]
    assert corrected.answer in _filled(T.CORRECT_ANSWER_TEMPLATES, class_name="blue dog",
                                       gt_name="man in red")
    assert denied.answer in _filled(T.NEG_ANSWER_TEMPLATES, class_name="blue dog")
    assert corrected.question in _filled(T.SHORT_QUESTION_TEMPLATES, class_name=" blue dog ")
    no_gt = TurnQuery("blue dog", is_sentence=False, exists=False, kind="correct_refer")
    fallback = build_training_turns([no_gt], np.random.default_rng(0), 1)[0]
    assert fallback.answer in _filled(T.NEG_ANSWER_TEMPLATES, class_name="blue dog")


def test_bad_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_per_sample"):
        build_sem_seg_turns(PRESENT, ABSENT, np.random.default_rng(0), 0)
