"""Training and generation collation with the tiny tokenizer and tiny images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from read_model.batch import (
    PromptBatch,
    ReadBatch,
    ReadExample,
    collate_prompts,
    collate_train,
    num_image_tokens_for,
)
from read_model.config import LlavaConfig, ReadConfig, SamConfig, TokenizerConfig
from read_model.labels import IGNORE_INDEX, encode_conversation, encode_prompt
from read_model.preprocess import sam_resized_size
from read_model.tokenizer import build_tiny_tokenizer, special_token_ids

N_IMG = 4  # (28 // 14) ** 2


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def config() -> ReadConfig:
    return ReadConfig(
        tokenizer=TokenizerConfig(build_tiny=True),
        llava=LlavaConfig(vision_image_size=28, vision_patch_size=14),
        sam=SamConfig(image_size=32),
    )


def _mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(h, w))


def _examples() -> list[ReadExample]:
    rng = np.random.default_rng(0)
    first = ReadExample(
        image=rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        conversations=[
            ("<image>\nWhere is the red circle?", "It is [SEG]."),
            ("<image>\nIs there a blue star?", "Sorry, there is no blue star in this image."),
            ("<image>\nSegment the two squares.", "The left one is [SEG] and the right one [SEG]."),
        ],
        masks=[_mask(20, 30, 1), None, np.stack([_mask(20, 30, 2), _mask(20, 30, 3)])],
    )
    second = ReadExample(
        image=rng.integers(0, 256, (16, 12, 3), dtype=np.uint8),
        conversations=[("<image>\nred?", "[SEG].")],
        masks=[_mask(16, 12, 4).astype(np.float32)],
    )
    return [first, second]


def test_num_image_tokens_for_real_and_tiny_shapes() -> None:
    assert num_image_tokens_for(LlavaConfig()) == 576
    assert num_image_tokens_for(LlavaConfig(vision_image_size=28, vision_patch_size=14)) == N_IMG


def test_collate_train_layout(tok: PreTrainedTokenizerFast, config: ReadConfig) -> None:
    examples = _examples()
    batch = collate_train(examples, tok, config, N_IMG)
    ids = special_token_ids(tok)
    assert isinstance(batch, ReadBatch)
    assert batch.row_image.tolist() == [0, 0, 0, 1]
    assert batch.images.shape == (2, 3, 20, 30) and batch.images.dtype == torch.uint8
    for index, example in enumerate(examples):  # each image at the top left, zeros elsewhere
        height, width = example.image.shape[:2]
        shipped = batch.images[index, :, :height, :width].permute(1, 2, 0).numpy()
        assert np.array_equal(shipped, example.image)
        assert int(batch.images[index].sum()) == int(example.image.astype(np.int64).sum())
    assert batch.resized_sizes == [sam_resized_size(20, 30, 32), sam_resized_size(16, 12, 32)]
    assert batch.original_sizes == [(20, 30), (16, 12)]

    rows = [
        encode_conversation(q, a, tok, ids, N_IMG, config.tokenizer)
        for e in examples
        for q, a in e.conversations
    ]
    lengths = [len(r.input_ids) for r in rows]
    assert batch.input_ids.shape == batch.labels.shape == (4, max(lengths))
    for i, row in enumerate(rows):
        n = lengths[i]
        assert batch.input_ids[i, :n].tolist() == row.input_ids
        assert batch.labels[i, :n].tolist() == row.labels
        assert (batch.input_ids[i, n:] == ids.pad).all()
        assert (batch.labels[i, n:] == IGNORE_INDEX).all()
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch.input_ids[i] == ids.image).sum() == N_IMG
    # Masks pair with [SEG] tokens: image 0 has 1 + 0 + 2, image 1 has 1.
    seg_per_image = [
        int((batch.input_ids[batch.row_image == i] == ids.seg).sum()) for i in range(2)
    ]
    assert seg_per_image == [m.shape[0] for m in batch.gt_masks] == [3, 1]
    assert batch.gt_masks[0].shape == batch.ignore_masks[0].shape == (3, 20, 30)
    assert batch.gt_masks[1].shape == (1, 16, 12) and batch.gt_masks[0].dtype == torch.uint8
    expected = np.stack([_mask(20, 30, s) for s in (1, 2, 3)])  # row order, then [SEG] order
    assert torch.equal(batch.ignore_masks[0], torch.from_numpy(expected == 255))
    assert torch.equal(batch.gt_masks[0], torch.from_numpy((expected == 1).astype(np.uint8)))
    assert torch.equal(
        batch.gt_masks[1][0], torch.from_numpy((_mask(16, 12, 4) == 1).astype(np.uint8))
    )


def test_image_without_seg_gets_empty_masks(
    tok: PreTrainedTokenizerFast, config: ReadConfig
) -> None:
    example = ReadExample(
        image=np.zeros((8, 9, 3), dtype=np.uint8),
        conversations=[("<image>\nblue?", "No, it is not here.")],
        masks=[None],
    )
    batch = collate_train([example], tok, config, N_IMG)
    assert batch.gt_masks[0].shape == (0, 8, 9) and batch.ignore_masks[0].dtype == torch.bool


def test_truncated_seg_loses_its_mask(tok: PreTrainedTokenizerFast, config: ReadConfig) -> None:
    example = _examples()[0]
    ids = special_token_ids(tok)
    question, answer = example.conversations[2]
    full = encode_conversation(question, answer, tok, ids, N_IMG, config.tokenizer)
    last_seg = len(full.input_ids) - 1 - full.input_ids[::-1].index(ids.seg)
    short = replace(config, tokenizer=replace(config.tokenizer, model_max_length=last_seg))
    one = ReadExample(example.image, [example.conversations[2]], [example.masks[2]])
    batch = collate_train([one], tok, short, N_IMG)
    assert int((batch.input_ids == ids.seg).sum()) == 1
    assert batch.gt_masks[0].shape[0] == 1
    assert torch.equal(batch.ignore_masks[0][0], torch.from_numpy(example.masks[2][0] == 255))


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ([None], "has 1 \\[SEG\\] but no mask"),
        ([np.zeros((5, 5), np.uint8)], "expected masks of shape \\[1, 8, 9\\]"),
        ([np.zeros((2, 8, 9), np.uint8)], "expected masks of shape \\[1, 8, 9\\]"),
        ([None, None], "1 conversations but 2 mask entries"),
    ],
)
def test_mask_mismatch_is_a_clear_error(
    tok: PreTrainedTokenizerFast, config: ReadConfig, masks: list, message: str
) -> None:
    example = ReadExample(np.zeros((8, 9, 3), np.uint8), [("<image>\nred?", "[SEG].")], masks)
    with pytest.raises(ValueError, match=f"example 0.*{message}"):
        collate_train([example], tok, config, N_IMG)


def test_mask_for_answer_without_seg_is_an_error(
    tok: PreTrainedTokenizerFast, config: ReadConfig
) -> None:
    example = ReadExample(
        np.zeros((8, 9, 3), np.uint8), [("<image>\nred?", "No.")], [np.zeros((8, 9), np.uint8)]
    )
    with pytest.raises(ValueError, match="no \\[SEG\\] but a mask"):
        collate_train([example], tok, config, N_IMG)


def test_to_moves_and_keeps_dtypes(tok: PreTrainedTokenizerFast, config: ReadConfig) -> None:
    batch = collate_train(_examples(), tok, config, N_IMG).to("cpu")
    assert batch.images.dtype == torch.uint8
    assert batch.input_ids.dtype == torch.long and batch.gt_masks[0].dtype == torch.uint8
    assert batch.ignore_masks[0].dtype == torch.bool


def test_collate_prompts_left_pads(tok: PreTrainedTokenizerFast, config: ReadConfig) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(3)]
    questions = [
        "What is the large red circle on the left in this image?",
        "<image>\nblue?",
        "star",
    ]
    batch = collate_prompts(images, questions, tok, config, N_IMG)
    ids = special_token_ids(tok)
    assert isinstance(batch, PromptBatch)
    assert batch.row_image.tolist() == [0, 1, 2]
    assistant = tok.convert_tokens_to_ids("▁ASSISTANT:")
    assert (batch.input_ids[:, -1] == assistant).all()  # every row ends where generation starts
    width = batch.input_ids.shape[1]
    for i, question in enumerate(questions):
        if "<image>" not in question:
            question = f"<image>\n{question}"
        row = encode_prompt(question, tok, ids, N_IMG, config.tokenizer)
        pad = width - len(row)
        assert batch.input_ids[i, pad:].tolist() == row
        assert batch.attention_mask[i].tolist() == [0] * pad + [1] * len(row)
        assert (batch.input_ids[i, :pad] == ids.pad).all()
    assert batch.attention_mask[0].all()  # the longest row has no padding
    assert batch.images.shape == (3, 3, 10, 14) and len(batch.resized_sizes) == 3


def test_collate_prompts_checks_lengths(tok: PreTrainedTokenizerFast, config: ReadConfig) -> None:
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        collate_prompts([np.zeros((4, 4, 3), np.uint8)] * 2, ["a"], tok, config, N_IMG)
