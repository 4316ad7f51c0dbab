"""The llava_v1 conversation format READ trains with (`READ:model/llava/conversation.py`).

A single-turn conversation renders as ``"{system} USER: {question} ASSISTANT: {answer}</s>"``; the
generation prompt stops at ``"ASSISTANT:"`` so the model writes the answer itself. Training text
is the generation prompt plus ``" {answer}</s>"``, which keeps the label boundary exact and makes
the training tokens the ones the model is asked to generate. A multi-turn `Dialogue` (VQA)
continues with ``"USER: {question} ASSISTANT: {answer}</s>"`` per further turn, with no space
after ``</s>``, as upstream's ``SeparatorStyle.TWO`` ``get_prompt`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from read_model.templates import IMAGE_PLACEHOLDER

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# Upstream's evaluation scripts fell back to this one (a train/test mismatch, docs/fidelity.md);
# kept so that behaviour can be reproduced on purpose.
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """A two-separator chat format: turns joined by `sep`, assistant turns closed by `sep2`."""

    system: str
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"
    sep: str = " "
    sep2: str = "</s>"


LLAVA_V1 = ConversationTemplate(system=LLAVA_V1_SYSTEM)
VICUNA_V1 = ConversationTemplate(system=VICUNA_V1_SYSTEM)


@dataclass(frozen=True)
class Dialogue:
    """A multi-turn conversation, one training row: (question, answer) turns in order.

    Exactly one question carries the image placeholder (upstream puts it first in its message);
    every assistant turn counts in the loss (`read_model.labels.encode_dialogue`).
    """

    turns: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("a dialogue needs at least one (question, answer) turn")
        object.__setattr__(self, "turns", tuple((str(q), str(a)) for q, a in self.turns))

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(answer for _, answer in self.turns)


def wrap_image_token(
    text: str,
    use_im_start_end: bool,
    image_token: str = IMAGE_PLACEHOLDER,
    im_start_token: str = "<im_start>",
    im_end_token: str = "<im_end>",
) -> str:
    """Surround every image placeholder with the start/end markers when the model was trained so."""
    if not use_im_start_end:
        return text
    return text.replace(image_token, f"{im_start_token}{image_token}{im_end_token}")


def render_prompt(question: str, template: ConversationTemplate = LLAVA_V1) -> str:
    """The generation prompt: system, user turn, and the bare assistant role (no trailing space)."""
    return (
        f"{template.system}{template.sep}{template.user_role}: {question}{template.sep}"
        f"{template.assistant_role}:"
    )


def answer_suffix(answer: str, template: ConversationTemplate = LLAVA_V1) -> str:
    """What follows the prompt in training: a space, the answer and the closing separator."""
    return f" {answer}{template.sep2}"


def render_training(question: str, answer: str, template: ConversationTemplate = LLAVA_V1) -> str:
    """The full training text of one single-turn conversation."""
    return render_prompt(question, template) + answer_suffix(answer, template)


def user_turn(question: str, template: ConversationTemplate = LLAVA_V1) -> str:
    """A further turn's prompt text after the previous ``</s>``: ends with the bare role."""
    return f"{template.user_role}: {question}{template.sep}{template.assistant_role}:"


def render_dialogue(dialogue: Dialogue, template: ConversationTemplate = LLAVA_V1) -> str:
    """The full training text of a dialogue (equal to `render_training` for one turn)."""
    (question, answer), *rest = dialogue.turns
    text = render_training(question, answer, template)
    for question, answer in rest:
        text += user_turn(question, template) + answer_suffix(answer, template)
    return text
