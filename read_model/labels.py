"""Token ids and cross-entropy labels for one conversation (upstream-spec §2, §13).

The prompt is split on the image placeholder and each piece is tokenised on its own, with one
BOS at the front, as upstream's `tokenizer_image_token` does; the placeholder becomes
`num_image_tokens` copies of the image token id, which is the layout transformers' LLaVA expects.
The answer is tokenised separately from the prompt, so the boundary between ignored and counted
tokens is exact for any tokenizer and the counted tokens are the ones generation would produce.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from read_model.config import TokenizerConfig
from read_model.conversation import LLAVA_V1, ConversationTemplate, render_prompt, wrap_image_token
from read_model.tokenizer import SpecialTokenIds

IGNORE_INDEX = -100


@dataclass
class EncodedRow:
    """One conversation row: ids and labels of equal length; `truncated` if the answer was cut."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def _text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(
    question: str,
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialTokenIds,
    num_image_tokens: int,
    cfg: TokenizerConfig,
    template: ConversationTemplate = LLAVA_V1,
) -> list[int]:
    """BOS + the generation prompt, with the one image placeholder expanded to image token ids."""
    if question.count(cfg.image_token) != 1:
        raise ValueError(
            f"a question must hold exactly one {cfg.image_token!r}, got "
            f"{question.count(cfg.image_token)} in {question[:80]!r}"
        )
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    text = render_prompt(
        wrap_image_token(
            question, cfg.use_im_start_end, cfg.image_token, cfg.im_start_token, cfg.im_end_token
        ),
        template,
    )
    before, after = text.split(cfg.image_token)
    return (
        [ids.bos]
        + _text_ids(tokenizer, before)
        + [ids.image] * num_image_tokens
        + _text_ids(tokenizer, after)
    )


def encode_answer(
    answer: str, tokenizer: PreTrainedTokenizerBase, ids: SpecialTokenIds
) -> list[int]:
    """The assistant's tokens after "ASSISTANT:": the spaced answer, then EOS (the "</s>" sep2)."""
    return [*_text_ids(tokenizer, f" {answer}"), ids.eos]


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
    prompt_ids = encode_prompt(question, tokenizer, ids, num_image_tokens, cfg, template)
    answer_ids = encode_answer(answer, tokenizer, ids)
    limit = cfg.model_max_length
    if len(prompt_ids) >= limit:
        raise ValueError(
            f"prompt of {len(prompt_ids)} tokens ({num_image_tokens} image tokens) leaves no room "
            f"for an answer within model_max_length={limit}"
        )
    truncated = len(prompt_ids) + len(answer_ids) > limit
    answer_ids = answer_ids[: limit - len(prompt_ids)]
    return EncodedRow(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        truncated=truncated,
    )
