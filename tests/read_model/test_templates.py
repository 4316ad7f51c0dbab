"""Structural rules of the templates, the conversation format and the turn builders."""

from __future__ import annotations

import string

import numpy as np
import pytest

from read_model import templates as T
from read_model.conversation import (
    LLAVA_V1,
    LLAVA_V1_SYSTEM,
    render_prompt,
    render_training,
    wrap_image_token,
)
from read_model.turns import TurnQuery, build_eval_turns, build_training_turns


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("family", sorted(T.QUESTION_FAMILIES))
def test_questions_start_with_image_and_use_one_placeholder(family: str) -> None:
    for template in T.QUESTION_FAMILIES[family]:
        assert template.startswith("<image>\n"), template
        assert template.count("<image>") == 1, template
        assert "[SEG]" not in template
        expected = {"sent"} if "long" in family else {"class_name"}
        assert _fields(template) == expected, template


def test_long_questions_put_the_query_first() -> None:
    assert all(t.startswith("<image>\n{sent} ") for t in T.LONG_QUESTION_TEMPLATES)


@pytest.mark.parametrize("family", sorted(T.SEG_ANSWER_FAMILIES))
def test_seg_answers_have_exactly_one_seg(family: str) -> None:
    for template in T.SEG_ANSWER_FAMILIES[family]:
        assert template.count("[SEG]") == 1, template
        assert "<image>" not in template
        assert _fields(template) <= {"class_name"}, template


def test_short_answers_often_name_the_class() -> None:
    named = sum("{class_name}" in t for t in T.SHORT_ANSWER_TEMPLATES)
    assert 0 < named < len(T.SHORT_ANSWER_TEMPLATES)


def test_no_seg_answers() -> None:
    for template in T.NEG_ANSWER_TEMPLATES:
        assert "[SEG]" not in template and _fields(template) <= {"class_name"}
    for template in T.CORRECT_ANSWER_TEMPLATES:
        assert "[SEG]" not in template and _fields(template) == {"class_name", "gt_name"}


@pytest.mark.parametrize(
    "family",
    [
        T.SHORT_QUESTION_TEMPLATES,
        T.LONG_QUESTION_TEMPLATES,
        T.SHORT_ANSWER_TEMPLATES,
        T.LONG_ANSWER_TEMPLATES,
        T.NEG_ANSWER_TEMPLATES,
        T.CORRECT_ANSWER_TEMPLATES,
    ],
)
def test_family_sizes_and_uniqueness(family: tuple[str, ...]) -> None:
    assert 10 <= len(family) <= 20
    assert len(set(family)) == len(family)


def test_lisa_fixed_templates_verbatim() -> None:
    assert T.FIXED_SHORT_QUESTION == (
        "<image>\nWhat is {class_name} in this image? Please output segmentation mask."
    )
    assert T.FIXED_LONG_QUESTION == "<image>\n{sent} Please output segmentation mask."
    assert T.FIXED_ANSWER == "Sure, the segmentation result is [SEG]."


def test_llava_v1_rendering() -> None:
    question = wrap_image_token("<image>\nWhere is the cat?", use_im_start_end=True)
    assert question == "<im_start><image><im_end>\nWhere is the cat?"
    assert wrap_image_token("<image>\nx", use_im_start_end=False) == "<image>\nx"
    assert LLAVA_V1_SYSTEM == (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    assert render_training(question, "It is [SEG].") == (
        f"{LLAVA_V1_SYSTEM} USER: <im_start><image><im_end>\nWhere is the cat? "
        "ASSISTANT: It is [SEG].</s>"
    )
    prompt = render_prompt(question)
    assert prompt.endswith(" ASSISTANT:") and not prompt.endswith(" ")
    assert render_training(question, "a").startswith(prompt)
    assert LLAVA_V1.sep == " " and LLAVA_V1.sep2 == "</s>"


REFER = [
    TurnQuery("The Red Circle", is_sentence=False),
    TurnQuery("Blue Square", is_sentence=False, exists=False, gt_sent="Green Square",
              kind="correct_refer"),
    TurnQuery("Purple Star", is_sentence=False, exists=False),
    TurnQuery("small triangle", is_sentence=False),
]


def test_refer_turns_follow_existence_rules() -> None:
    rng = np.random.default_rng(0)
    turns = build_training_turns(REFER, rng, num_per_sample=10)
    assert sorted(t.query_index for t in turns) == [0, 1, 2, 3]
    by_index = {t.query_index: t for t in turns}
    for index, turn in by_index.items():
        name = REFER[index].text.lower()
        assert turn.question.startswith("<image>\n") and name in turn.question
        assert REFER[index].text not in turn.question or REFER[index].text == name
    assert by_index[0].has_mask and by_index[0].answer.count("[SEG]") == 1
    assert by_index[3].has_mask and by_index[3].answer.count("[SEG]") == 1
    correction = by_index[1]
    assert not correction.has_mask and "[SEG]" not in correction.answer
    assert correction.answer in {
        t.format(class_name="blue square", gt_name="green square")
        for t in T.CORRECT_ANSWER_TEMPLATES
    }
    negative = by_index[2]
    assert not negative.has_mask
    assert negative.answer in {t.format(class_name="purple star") for t in T.NEG_ANSWER_TEMPLATES}


def test_training_turns_are_deterministic_and_sampled_without_replacement() -> None:
    first = build_training_turns(REFER, np.random.default_rng(7), num_per_sample=3)
    second = build_training_turns(REFER, np.random.default_rng(7), num_per_sample=3)
    assert first == second
    assert len(first) == 3 and len({t.query_index for t in first}) == 3
    variety = {
        t.question
        for seed in range(20)
        for t in build_training_turns(REFER, np.random.default_rng(seed), 3)
    }
    assert len(variety) > 5


REASON = [
    TurnQuery("What object has the colour of the sky?", is_sentence=True, kind="reason"),
    TurnQuery("Red Circle", is_sentence=False, kind="reason"),
    TurnQuery(
        "Where is the Zebra?",
        is_sentence=True,
        exists=False,
        answer="There is no zebra in this image.",
        kind="reason",
    ),
]


def test_reason_true_premise_turns() -> None:
    turns = build_training_turns(REASON, np.random.default_rng(0), 3, true_premise_prob=1.0)
    assert sorted(t.query_index for t in turns) == [0, 1]
    for turn in turns:
        assert turn.has_mask and turn.answer in T.LONG_ANSWER_TEMPLATES
    long_turn = next(t for t in turns if t.query_index == 0)
    assert long_turn.question.startswith("<image>\nWhat object has the colour of the sky? ")
    short_turn = next(t for t in turns if t.query_index == 1)
    assert "red circle" in short_turn.question


def test_reason_false_premise_uses_the_literal_answer() -> None:
    turns = build_training_turns(REASON, np.random.default_rng(0), 3, true_premise_prob=0.0)
    assert [t.query_index for t in turns] == [2]
    assert turns[0].answer == "There is no zebra in this image."
    assert not turns[0].has_mask
    assert turns[0].question.startswith("<image>\nWhere is the Zebra? ")


def test_reason_mode_mixes_about_as_configured() -> None:
    fp = sum(
        build_training_turns(REASON, np.random.default_rng(s), 3)[0].query_index == 2
        for s in range(400)
    )
    assert 30 <= fp <= 95  # 15 % of 400 = 60


def test_reason_falls_back_when_a_mode_has_no_queries() -> None:
    only_true = REASON[:2]
    turns = build_training_turns(only_true, np.random.default_rng(1), 3, true_premise_prob=0.0)
    assert sorted(t.query_index for t in turns) == [0, 1]


def test_eval_turns_use_fixed_lisa_templates() -> None:
    queries = [REASON[0], TurnQuery("The Red Circle", is_sentence=False, exists=False)]
    turns = build_eval_turns(queries)
    assert turns[0].question == (
        "<image>\nWhat object has the colour of the sky? Please output segmentation mask."
    )
    assert turns[1].question == (
        "<image>\nWhat is the red circle in this image? Please output segmentation mask."
    )
    assert all(t.answer == "Sure, the segmentation result is [SEG]." and t.has_mask for t in turns)
    assert [t.query_index for t in turns] == [0, 1]


def test_bad_sample_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_per_sample"):
        build_training_turns(REFER, np.random.default_rng(0), 0)
