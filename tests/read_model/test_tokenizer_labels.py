"""The tiny tokenizer, special-token lookup, and CE label masking on a hand-checked sequence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from read_model.config import TokenizerConfig
from read_model.conversation import Dialogue, render_prompt, wrap_image_token
from read_model.labels import (
    IGNORE_INDEX,
    encode_conversation,
    encode_dialogue,
    encode_prompt,
    split_at_tokens,
)
from read_model.tokenizer import build_tiny_tokenizer, load_tokenizer, special_token_ids


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


def test_tiny_tokenizer_special_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tok)
    assert (ids.unk, ids.bos, ids.eos, ids.pad) == (0, 1, 2, 0)  # LLaMA layout, pad = unk
    assert len({ids.seg, ids.image, ids.im_start, ids.im_end}) == 4
    for token, token_id in [
        ("[SEG]", ids.seg),
        ("<image>", ids.image),
        ("<im_start>", ids.im_start),
        ("<im_end>", ids.im_end),
    ]:
        assert tok.tokenize(f"a {token} b").count(token) == 1
        assert token_id not in (ids.unk, ids.bos, ids.eos)
    assert 500 <= len(tok) <= 1000
    assert tok("red circle").input_ids[0] == ids.bos


def test_tiny_tokenizer_is_deterministic(tok: PreTrainedTokenizerFast) -> None:
    assert build_tiny_tokenizer().get_vocab() == tok.get_vocab()


def test_tiny_tokenizer_covers_the_scene_words(tok: PreTrainedTokenizerFast) -> None:
    for word in ["red", "green", "blue", "circle", "square", "triangle", "left", "bottom"]:
        assert tok.tokenize(f" {word}") == [f"▁{word}"]
    assert tok.decode(tok(" Sure, it is [SEG].", add_special_tokens=False).input_ids) == (
        "Sure, it is [SEG]."
    )


def test_seg_id_needs_convert_tokens_to_ids(tok: PreTrainedTokenizerFast) -> None:
    """Encoding "is [SEG]" yields a bare space piece before [SEG] (LISA issue #55)."""
    pieces = tok.tokenize("is [SEG]")
    assert pieces[-2:] == ["▁", "[SEG]"]
    assert tok.convert_tokens_to_ids("[SEG]") == special_token_ids(tok).seg


def test_save_and_load_round_trip(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(TokenizerConfig(path=str(tmp_path)))
    assert special_token_ids(loaded) == special_token_ids(tok)
    text = "<im_start><image><im_end>\nWhere is the blue star? ASSISTANT: It is [SEG].</s>"
    assert loaded(text).input_ids == tok(text).input_ids
    assert len(loaded) == len(tok)


def test_load_tokenizer_adds_missing_tokens(tmp_path: Path) -> None:
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.train_from_iterator(
        ["the red circle", "a blue star"],
        trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]),
    )
    bare = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    bare.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\[SEG\]"):
        special_token_ids(bare)
    loaded = load_tokenizer(TokenizerConfig(path=str(tmp_path), model_max_length=77))
    ids = special_token_ids(loaded)
    assert ids.pad == ids.unk == 0
    assert ids.seg >= len(core.get_vocab())
    assert loaded.model_max_length == 77
    pieces = loaded.tokenize("x [SEG]<im_start><image><im_end>")
    assert pieces[-4:] == ["[SEG]", "<im_start>", "<image>", "<im_end>"]


def test_load_tokenizer_needs_a_source() -> None:
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(TokenizerConfig(), llava_path="")
    assert special_token_ids(load_tokenizer(TokenizerConfig(build_tiny=True))).seg > 2


# Hand-checked with upstream's spacing rule (transformers 4.31's slow tokenizer, golden-tested in
# test_token_parity.py): whitespace touching [SEG] / <im_start> / <im_end> is dropped, so "USER: "
# ends at "▁USER:", the "\n" after <im_end> vanishes and "Where" starts a piece ("▁" + "W" "here"
# in this vocabulary), "is [SEG]." is "▁is" "[SEG]" "▁." (a piece after an added token gets "▁").
SYSTEM_TOKENS = [
    "▁A", "▁chat", "▁between", "▁a", "▁curious", "▁human", "▁and", "▁an", "▁artificial",
    "▁intelligence", "▁assistant.", "▁The", "▁assistant", "▁gives", "▁helpful,", "▁detailed,",
    "▁and", "▁polite", "▁answers", "▁to", "▁the", "▁human's", "▁questions.",
]  # fmt: skip
PROMPT_TOKENS = [
    "<s>", *SYSTEM_TOKENS, "▁USER:", "<im_start>", "<image>", "<image>", "<image>",
    "<im_end>", "▁", "W", "here", "▁is", "▁the", "▁red", "▁star", "?", "▁ASSISTANT:",
]  # fmt: skip
ANSWER_TOKENS = ["▁It", "▁is", "[SEG]", "▁.", "</s>"]


def test_hand_checked_sequence_and_labels(tok: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tok)
    row = encode_conversation(
        "<image>\nWhere is the red star?", "It is [SEG].", tok, ids, 3, TokenizerConfig()
    )
    assert tok.convert_ids_to_tokens(row.input_ids) == PROMPT_TOKENS + ANSWER_TOKENS
    assert row.labels[: len(PROMPT_TOKENS)] == [IGNORE_INDEX] * len(PROMPT_TOKENS)
    assert row.labels[len(PROMPT_TOKENS) :] == row.input_ids[len(PROMPT_TOKENS) :]
    assert ids.seg in row.labels and row.labels[-1] == ids.eos
    assert row.input_ids.count(ids.image) == 3 and row.input_ids.count(ids.bos) == 1
    assert not row.truncated


def test_chunked_prompt_equals_whole_string_tokenisation(tok: PreTrainedTokenizerFast) -> None:
    """With the tokenizer's own spacing, splitting on <image> changes nothing for this tokenizer:
    same ids as the expanded text."""
    cfg = TokenizerConfig(added_token_spacing="tokenizer")
    question = "<image>\nWhich shape is the largest? Please output segmentation mask."
    expanded = render_prompt(wrap_image_token(question, True)).replace("<image>", "<image>" * 5)
    chunked = encode_prompt(question, tok, special_token_ids(tok), 5, cfg)
    assert chunked == tok(expanded).input_ids


def test_without_start_end_markers(tok: PreTrainedTokenizerFast) -> None:
    cfg = TokenizerConfig(use_im_start_end=False)
    ids = special_token_ids(tok, cfg)
    assert ids.im_start is None
    row = encode_conversation("<image>\nred?", "[SEG].", tok, ids, 2, cfg)
    tokens = tok.convert_ids_to_tokens(row.input_ids)
    assert "<im_start>" not in tokens and tokens.count("<image>") == 2


def test_truncation_counts_image_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tok)
    full = encode_conversation("<image>\nred?", "It is [SEG].", tok, ids, 50, TokenizerConfig())
    prompt_len = full.labels.count(IGNORE_INDEX)
    cfg = TokenizerConfig(model_max_length=prompt_len + 2)
    cut = encode_conversation("<image>\nred?", "It is [SEG].", tok, ids, 50, cfg)
    assert cut.truncated and len(cut.input_ids) == prompt_len + 2
    assert cut.input_ids == full.input_ids[: prompt_len + 2]
    assert ids.seg not in cut.input_ids
    with pytest.raises(ValueError, match="model_max_length"):
        encode_conversation(
            "<image>\nred?", "x", tok, ids, 50, replace(cfg, model_max_length=prompt_len)
        )


@pytest.mark.parametrize("question", ["no image here", "<image>\n<image>\ntwo images"])
def test_question_needs_exactly_one_image(tok: PreTrainedTokenizerFast, question: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        encode_conversation(question, "x", tok, special_token_ids(tok), 4, TokenizerConfig())


def test_split_at_tokens_drops_whitespace_touching_added_tokens() -> None:
    markers = ("[SEG]", "<im_start>", "<im_end>")
    text = "USER: <im_start>x<im_end>\nWhere is [SEG]. Also [SEG]  ok\n"
    assert split_at_tokens(text, markers) == [
        "USER:", "<im_start>", "x", "<im_end>", "Where is", "[SEG]", ". Also", "[SEG]", "ok\n",
    ]
    assert split_at_tokens("  a b ", markers) == ["  a b "]  # no token: untouched
    assert split_at_tokens("[SEG]", markers) == ["[SEG]"]


# ---------------------------------------------------------------- multi-turn dialogues (VQA)
DIALOGUE = Dialogue((("<image>\nWhat is red?", "The circle."),
                     ("Where is it?", "On the left.\n"),
                     ("And the star?", "It is [SEG].")))


def _labelled_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for position, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, position))
            start = None
    return spans


@pytest.mark.parametrize("spacing", ["upstream", "tokenizer"])
def test_dialogue_labels_every_assistant_turn_and_only_them(
        tok: PreTrainedTokenizerFast, spacing: str) -> None:
    cfg = TokenizerConfig(added_token_spacing=spacing)
    ids = special_token_ids(tok)
    row = encode_dialogue(DIALOGUE, tok, ids, 3, cfg)
    assert len(row.input_ids) == len(row.labels) and not row.truncated
    spans = _labelled_spans(row.labels)
    assert len(spans) == 3  # one per assistant turn
    for (start, end), (_, answer) in zip(spans, DIALOGUE.turns, strict=True):
        assert row.input_ids[end - 1] == ids.eos  # each answer's </s> counts
        assert row.labels[start:end] == row.input_ids[start:end]
        decoded = tok.decode(row.input_ids[start:end - 1])
        assert decoded.replace(" ", "") == answer.replace(" ", "")  # "is[SEG] .": spacing only
    for question, _ in DIALOGUE.turns[1:]:  # later questions are instructions: never labelled
        assert question not in tok.decode([t for t, lab in zip(row.input_ids, row.labels,
                                                               strict=True) if lab != -100])
    assert row.input_ids.count(ids.image) == 3 and row.input_ids.count(ids.bos) == 1


def test_one_turn_dialogue_is_the_single_turn_row(tok: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tok)
    single = encode_conversation("<image>\nWhere is the red star?", "It is [SEG].", tok, ids, 3,
                                 TokenizerConfig())
    dialogue = encode_dialogue(Dialogue((("<image>\nWhere is the red star?", "It is [SEG]."),)),
                               tok, ids, 3, TokenizerConfig())
    assert dialogue == single


def test_dialogue_image_rules_and_truncation(tok: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tok)
    later = Dialogue((("Hello", "Hi."), ("<image>\nWhat is it?", "A star.")))
    row = encode_dialogue(later, tok, ids, 3, TokenizerConfig())
    assert len(_labelled_spans(row.labels)) == 2
    with pytest.raises(ValueError, match="exactly one"):
        encode_dialogue(Dialogue((("a", "b"), ("c", "d"))), tok, ids, 3, TokenizerConfig())
    with pytest.raises(ValueError, match="exactly one"):
        encode_dialogue(Dialogue((("<image>\na", "<image>"),)), tok, ids, 3, TokenizerConfig())
    full = encode_dialogue(DIALOGUE, tok, ids, 3, TokenizerConfig())
    cut = encode_dialogue(DIALOGUE, tok, ids, 3, TokenizerConfig(model_max_length=len(
        full.input_ids) - 4))
    assert cut.truncated and cut.input_ids == full.input_ids[:-4]
    image_end = max(i for i, t in enumerate(row.input_ids) if t == ids.image)
    with pytest.raises(ValueError, match="no room"):  # the image of the second turn would be cut
        encode_dialogue(later, tok, ids, 3, TokenizerConfig(model_max_length=image_end))
