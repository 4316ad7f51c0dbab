"""Token ids and cross-entropy labels for one conversation, as upstream builds them.

The prompt is split on the image placeholder and each piece is tokenised on its own, with one
BOS at the front, as upstream's `tokenizer_image_token` does (`READ:model/llava/mm_utils.py`);
the placeholder becomes `num_image_tokens` copies of the image token id, which is the layout
transformers' LLaVA expects.

Spacing around READ's added tokens follows `TokenizerConfig.added_token_spacing`. "upstream"
reproduces the slow LLaMA tokenizer of transformers 4.31 that trained and evaluated every
released checkpoint: the text is cut at ``[SEG]``, ``<im_start>`` and ``<im_end>``, whitespace
touching them is dropped, and each remaining piece is encoded on its own (so it gets
sentencepiece's leading "▁"). "USER: <im_start>" is then ":", "<im_start>"; "<im_end>\\nWhere"
is "<im_end>", "▁Where"; "is [SEG]." is "▁is", "[SEG]", "▁.". The answer is encoded in context
(prompt + " " + answer) and labelled from the end of the prompt, which equals upstream's
``len(instruction + " ASSISTANT: ") - 2`` rule (`READ:dataloaders/utils.py`); the prompt must be
a prefix of the training row, so generation is asked for exactly the tokens training taught.
"tokenizer" leaves spacing to the loaded tokenizer and encodes the answer on its own.
Golden ids from that stack: tests/read_model/test_token_parity.py (docs/fidelity.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from read_model.config import TokenizerConfig
from read_model.conversation import (
    LLAVA_V1,
    ConversationTemplate,
    Dialogue,
    render_prompt,
    user_turn,
    wrap_image_token,
)
from read_model.tokenizer import SpecialTokenIds

IGNORE_INDEX = -100


@dataclass
class EncodedRow:
    """One conversation row: ids and labels of equal length; `truncated` if the answer was cut."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def stripped_tokens(cfg: TokenizerConfig) -> tuple[str, ...]:
    """The added tokens whose surrounding whitespace upstream's tokenizer dropped."""
    markers = [cfg.seg_token]
    if cfg.use_im_start_end:
        markers += [cfg.im_start_token, cfg.im_end_token]
    return tuple(markers)


def split_at_tokens(text: str, tokens: tuple[str, ...]) -> list[str]:
    """`text` cut at every token occurrence, whitespace touching a token removed, empties dropped."""
    if not tokens:
        return [text] if text else []
    pattern = "(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")"
    parts = re.split(pattern, text)  # odd positions hold the tokens themselves
    for index in range(1, len(parts), 2):
        parts[index - 1] = parts[index - 1].rstrip()
        parts[index + 1] = parts[index + 1].lstrip()
    return [part for part in parts if part]


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, cfg: TokenizerConfig) -> list[int]:
    """Ids of a text without BOS/EOS, with the configured spacing around added tokens."""
    if not text:
        return []
    if cfg.added_token_spacing == "tokenizer":
        return _encode(tokenizer, text)
    markers = stripped_tokens(cfg)
    ids: list[int] = []
    for piece in split_at_tokens(text, markers):
        if piece in markers:
            ids.append(int(tokenizer.convert_tokens_to_ids(piece)))
        else:
            ids.extend(_encode(tokenizer, piece))
    return ids


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_question(question: str, num_image_tokens: int, cfg: TokenizerConfig) -> None:
    if question.count(cfg.image_token) != 1:
        raise ValueError(
            f"a question must hold exactly one {cfg.image_token!r}, got "
            f"{question.count(cfg.image_token)} in {question[:80]!r}"
        )
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")


def _image_text_ids(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
) -> list[int]:
    """BOS + the chunks around the one image placeholder, each encoded on its own."""
    before, after = text.split(cfg.image_token)
    return (
        [ids.bos]
        + text_ids(tokenizer, before, cfg)
        + [ids.image] * num_image_tokens
        + text_ids(tokenizer, after, cfg)
    )


def _wrapped(question: str, cfg: TokenizerConfig) -> str:
    return wrap_image_token(
        question, cfg.use_im_start_end, cfg.image_token, cfg.im_start_token, cfg.im_end_token
    )


def encode_prompt(
    question: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
    template: ConversationTemplate = LLAVA_V1,
) -> list[int]:
    """BOS + the generation prompt, with the one image placeholder expanded to image token ids."""
    _check_question(question, num_image_tokens, cfg)
    text = render_prompt(_wrapped(question, cfg), template)
    return _image_text_ids(text, tokenizer, ids, num_image_tokens, cfg)


def encode_answer(
    answer: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    cfg: TokenizerConfig | None = None,
) -> list[int]:
    """The assistant's tokens after "ASSISTANT:" encoded on their own, then EOS ("</s>").

    Equal to the in-context tokens for sentencepiece vocabularies under "upstream" spacing;
    `encode_conversation` checks that and uses the in-context ones.
    """
    cfg = cfg or TokenizerConfig()
    if cfg.added_token_spacing == "tokenizer":
        return [*_encode(tokenizer, f" {answer}"), ids.eos]
    return [*text_ids(tokenizer, answer, cfg), ids.eos]


def encode_conversation(
    question: str,
    answer: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
    template: ConversationTemplate = LLAVA_V1,
) -> EncodedRow:
    """Ids and labels; only the answer (including [SEG] and EOS) counts in the loss.

    Rows longer than `cfg.model_max_length` (image tokens included) lose the end of the answer;
    a prompt that alone does not fit is an error, since cutting it would cut the image.
    """
    _check_question(question, num_image_tokens, cfg)
    return encode_dialogue(Dialogue(((question, answer),)), tokenizer, ids, num_image_tokens,
                           cfg, template)


def _check_dialogue(dialogue: Dialogue, num_image_tokens: int, cfg: TokenizerConfig) -> None:
    images = [i for i, (q, _) in enumerate(dialogue.turns) if cfg.image_token in q]
    in_answers = [i for i, a in enumerate(dialogue.answers) if cfg.image_token in a]
    if len(images) != 1 or dialogue.turns[images[0]][0].count(cfg.image_token) != 1 or in_answers:
        raise ValueError(
            f"a dialogue must hold exactly one {cfg.image_token!r}, in a question; got questions "
            f"{images} and answers {in_answers} holding it")
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")


def _dialogue_ids(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
    template: ConversationTemplate,
) -> list[int]:
    """BOS + `text` with upstream spacing; ``</s>`` between turns is EOS, with the whitespace
    next to it kept (transformers 4.31 loads it as an AddedToken without lstrip/rstrip, so an
    answer's trailing newline is a token: tests/fixtures/token_parity, "dialog_*")."""
    out = [ids.bos]
    for index, chunk in enumerate(text.split(cfg.image_token)):
        if index:
            out += [ids.image] * num_image_tokens
        for turn, segment in enumerate(chunk.split(template.sep2)):
            if turn:
                out.append(ids.eos)
            out += text_ids(tokenizer, segment, cfg)
    return out


def _image_chunk_ids(
    text: str, tokenizer: PreTrainedTokenizerBase, ids: SpecialTokenIds, num_image_tokens: int,
    cfg: TokenizerConfig,
) -> list[int]:
    """`text` encoded by the tokenizer itself, around at most one image placeholder (no BOS)."""
    out: list[int] = []
    for index, chunk in enumerate(text.split(cfg.image_token)):
        if index:
            out += [ids.image] * num_image_tokens
        out += _encode(tokenizer, chunk) if chunk else []
    return out


def _turns_upstream(
    dialogue: Dialogue, tokenizer: PreTrainedTokenizerBase, ids: SpecialTokenIds,
    num_image_tokens: int, cfg: TokenizerConfig, template: ConversationTemplate,
) -> tuple[list[int], list[int], int]:
    """Ids, labels and the first prompt's length, tokenising the growing text as upstream.

    Every prefix must tokenise to a prefix of the next (each answer in context after its
    prompt, each new turn after ``</s>``), so the labels are exactly the answer tokens.
    """
    text = f"{template.system}{template.sep}"
    input_ids: list[int] = []
    labels: list[int] = []
    first_prompt = 0
    for question, answer in dialogue.turns:
        text += user_turn(_wrapped(question, cfg), template)
        prompt_ids = _dialogue_ids(text, tokenizer, ids, num_image_tokens, cfg, template)
        if prompt_ids[: len(input_ids)] != input_ids:
            raise ValueError(f"the tokenizer merges the turn {question[:40]!r} into the previous "
                             "answer; the labels would not be upstream's")
        first_prompt = first_prompt or len(prompt_ids)
        labels += [IGNORE_INDEX] * (len(prompt_ids) - len(input_ids))
        text += f" {answer}"
        full = _dialogue_ids(text, tokenizer, ids, num_image_tokens, cfg, template)
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"the tokenizer merges the answer {answer[:40]!r} into the prompt; training "
                "would teach tokens generation is never asked for (use a sentencepiece "
                "tokenizer or tokenizer.added_token_spacing=tokenizer)"
            )
        answer_ids = [*full[len(prompt_ids) :], ids.eos]
        labels += answer_ids
        input_ids = [*full, ids.eos]
        text += template.sep2
    return input_ids, labels, first_prompt


def _turns_tokenizer(
    dialogue: Dialogue, tokenizer: PreTrainedTokenizerBase, ids: SpecialTokenIds,
    num_image_tokens: int, cfg: TokenizerConfig, template: ConversationTemplate,
) -> tuple[list[int], list[int], int]:
    """Ids, labels and the first prompt's length, each turn and each answer encoded alone."""
    input_ids = [ids.bos]
    labels = [IGNORE_INDEX]
    first_prompt = 0
    for index, (question, answer) in enumerate(dialogue.turns):
        head = f"{template.system}{template.sep}" if index == 0 else ""
        prompt = _image_chunk_ids(head + user_turn(_wrapped(question, cfg), template),
                                  tokenizer, ids, num_image_tokens, cfg)
        input_ids += prompt
        labels += [IGNORE_INDEX] * len(prompt)
        first_prompt = first_prompt or len(input_ids)
        answer_ids = encode_answer(answer, tokenizer, ids, cfg)
        input_ids += answer_ids
        labels += answer_ids
    return input_ids, labels, first_prompt


def encode_dialogue(
    dialogue: Dialogue,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
    template: ConversationTemplate = LLAVA_V1,
) -> EncodedRow:
    """Ids and labels of a (multi-turn) conversation; every answer and its EOS count in the loss.

    Upstream's rule (`READ:dataloaders/utils.py` `handle_conversation_specifics`): split the
    rendered text on ``</s>`` into rounds and mask each round's instruction, so every assistant
    turn is a target. One turn gives exactly `encode_conversation`'s row. A row longer than
    `cfg.model_max_length` loses its end; it is an error when the first prompt or the image does
    not fit.
    """
    _check_dialogue(dialogue, num_image_tokens, cfg)
    encode = _turns_tokenizer if cfg.added_token_spacing == "tokenizer" else _turns_upstream
    input_ids, labels, first_prompt = encode(dialogue, tokenizer, ids, num_image_tokens, cfg,
                                             template)
    limit = cfg.model_max_length
    last_image = max(i for i, t in enumerate(input_ids) if t == ids.image)
    if first_prompt >= limit or last_image >= limit:
        raise ValueError(
            f"prompt of {first_prompt} tokens ({num_image_tokens} image tokens, the image ending "
            f"at {last_image + 1}) leaves no room for an answer within model_max_length={limit}"
        )
    truncated = len(input_ids) > limit
    return EncodedRow(input_ids=input_ids[:limit], labels=labels[:limit], truncated=truncated)
