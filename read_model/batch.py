"""Batches for the model: training rows with labels and masks, and left-padded generation prompts.

Each image is preprocessed once and its conversations become rows that point back at it through
`row_image`, so k conversations about one image cost one CLIP and one SAM encoding (upstream's
`offset` list, made explicit). Ground-truth masks are listed per image in row order, then in
[SEG] order within a row: the same order in which the model meets [SEG] tokens in `input_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from read_model.config import LlavaConfig, ReadConfig
from read_model.conversation import Dialogue
from read_model.labels import IGNORE_INDEX, encode_dialogue, encode_prompt
from read_model.preprocess import check_rgb_image, image_batch, sam_resized_size
from read_model.tokenizer import special_token_ids

IGNORE_VALUE = 255  # ground-truth pixels excluded from evaluation (ReasonSeg "ignore" polygons)


def num_image_tokens_for(llava: LlavaConfig) -> int:
    """Image tokens per row: one per CLIP patch (the CLS token is dropped)."""
    return (llava.vision_image_size // llava.vision_patch_size) ** 2


Conversation = tuple[str, str] | Dialogue  # one row: a (question, answer) turn or a dialogue


def conversation_turns(conversation: Conversation) -> tuple[tuple[str, str], ...]:
    """The (question, answer) turns of one row."""
    return conversation.turns if isinstance(conversation, Dialogue) else (conversation,)


@dataclass
class ReadExample:
    """One image and its conversations (model side, no files), one training row each."""

    image: np.ndarray  # uint8 RGB [H, W, 3]
    # (question with "<image>\n" prefix, answer), or a multi-turn `Dialogue` (VQA)
    conversations: list[Conversation]
    # Per conversation: [H, W] (one [SEG]) or [k, H, W] (k [SEG], in answer order) with 1
    # object, 0 background, 255 ignore; None when no answer has a [SEG].
    masks: list[np.ndarray | None]


def _move(obj: object, device: torch.device | str) -> object:
    """A copy whose tensors are on `device` (dtypes kept: images stay uint8 until the model
    resizes and normalises them there)."""
    changes = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value.to(device=device)
        elif isinstance(value, list) and value and isinstance(value[0], Tensor):
            changes[f.name] = [v.to(device) for v in value]
    return replace(obj, **changes)  # type: ignore[type-var]


@dataclass(kw_only=True)
class ReadBatch:
    """Tensors for a training / teacher-forced step."""

    # the decoded images; the model resizes and normalises them on its device
    images: Tensor  # [B_img, 3, H_max, W_max] uint8, each at the top left, zero-padded
    resized_sizes: list[tuple[int, int]]  # (h', w') inside the SAM frame, per image
    original_sizes: list[tuple[int, int]]  # (H, W) per image
    input_ids: Tensor  # [R, T] long, right padded with the pad id
    attention_mask: Tensor  # [R, T] long, 1 on real tokens
    labels: Tensor  # [R, T] long, -100 outside assistant answers
    row_image: Tensor  # [R] long, the image each row belongs to
    gt_masks: list[Tensor]  # per image [n_i, H, W] uint8 {0, 1}; ignore pixels count as 0
    ignore_masks: list[Tensor]  # per image [n_i, H, W] bool, True where the GT is 255

    def to(self, device: torch.device | str) -> ReadBatch:
        """Move to `device`; the encoders' dtype is applied after preprocessing, in the model."""
        return _move(self, device)  # type: ignore[return-value]


@dataclass(kw_only=True)
class PromptBatch:
    """Tensors for batched generation: left-padded prompts ending with "ASSISTANT:"."""

    images: Tensor  # uint8, as in `ReadBatch`
    resized_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    input_ids: Tensor  # [R, T] long, left padded
    attention_mask: Tensor  # [R, T] long, 0 on the left padding
    row_image: Tensor  # [R] long

    def to(self, device: torch.device | str) -> PromptBatch:
        return _move(self, device)  # type: ignore[return-value]


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row_t = torch.as_tensor(list(row), dtype=torch.long)
        if left:
            out[i, width - len(row) :] = row_t
        else:
            out[i, : len(row)] = row_t
    return out


def _attention(lengths: Sequence[int], width: int, left: bool) -> Tensor:
    """Built from lengths, not from `ids != pad`: pad is unk, which can occur in real text."""
    positions = torch.arange(width)[None, :]
    lengths_t = torch.as_tensor(list(lengths))[:, None]
    real = positions >= width - lengths_t if left else positions < lengths_t
    return real.long()


def _masks_for_row(
    mask: np.ndarray | None, expected: int, shape: tuple[int, int], where: str
) -> np.ndarray:
    """The row's masks as [expected, H, W], or a clear error when they do not match its answer."""
    if expected == 0:
        if mask is not None:
            raise ValueError(f"{where}: the answer has no [SEG] but a mask was given")
        return np.zeros((0, *shape), dtype=np.uint8)
    if mask is None:
        raise ValueError(f"{where}: the answer has {expected} [SEG] but no mask was given")
    stack = mask[None] if mask.ndim == 2 else mask
    if stack.ndim != 3 or stack.shape[0] != expected or stack.shape[1:] != shape:
        raise ValueError(
            f"{where}: expected masks of shape [{expected}, {shape[0]}, {shape[1]}] for the "
            f"answer's [SEG] tokens, got {list(mask.shape)}"
        )
    return stack


def collate_train(
    examples: Sequence[ReadExample],
    tokenizer: PreTrainedTokenizerBase,
    config: ReadConfig,
    num_image_tokens: int,
) -> ReadBatch:
    """Encode, right-pad and stack a list of examples into one `ReadBatch`.

    A row whose answer is cut by `model_max_length` keeps the masks of the [SEG] tokens that
    survived, so masks and [SEG] tokens always pair up one to one.
    """
    if not examples:
        raise ValueError("collate_train needs at least one example")
    tok_cfg = config.tokenizer
    ids = special_token_ids(tokenizer, tok_cfg)
    rows_ids: list[list[int]] = []
    rows_labels: list[list[int]] = []
    row_image: list[int] = []
    gt_masks: list[Tensor] = []
    ignore_masks: list[Tensor] = []
    for image_index, example in enumerate(examples):
        check_rgb_image(example.image, image_index)
        if not example.conversations:
            raise ValueError(f"example {image_index}: no conversations")
        if len(example.masks) != len(example.conversations):
            raise ValueError(
                f"example {image_index}: {len(example.conversations)} conversations but "
                f"{len(example.masks)} mask entries"
            )
        shape = tuple(example.image.shape[:2])
        image_masks = []
        for conv_index, (conversation, mask) in enumerate(
            zip(example.conversations, example.masks, strict=True)
        ):
            where = f"example {image_index}, conversation {conv_index}"
            turns = conversation_turns(conversation)
            expected = sum(answer.count(tok_cfg.seg_token) for _, answer in turns)
            stack = _masks_for_row(mask, expected, shape, where)
            row = encode_dialogue(Dialogue(turns), tokenizer, ids, num_image_tokens, tok_cfg)
            kept = sum(1 for t in row.input_ids if t == ids.seg)
            rows_ids.append(row.input_ids)
            rows_labels.append(row.labels)
            row_image.append(image_index)
            image_masks.append(stack[:kept])
        masks = torch.from_numpy(np.concatenate(image_masks, axis=0))
        ignore = masks == IGNORE_VALUE
        gt_masks.append(((masks > 0) & ~ignore).to(torch.uint8))  # float32 on the device
        ignore_masks.append(ignore)
    images = [e.image for e in examples]
    input_ids = _pad(rows_ids, ids.pad, left=False)
    return ReadBatch(
        images=image_batch(images),
        resized_sizes=_resized_sizes(images, config),
        original_sizes=[(int(i.shape[0]), int(i.shape[1])) for i in images],
        input_ids=input_ids,
        attention_mask=_attention([len(r) for r in rows_ids], input_ids.shape[1], left=False),
        labels=_pad(rows_labels, IGNORE_INDEX, left=False),
        row_image=torch.as_tensor(row_image, dtype=torch.long),
        gt_masks=gt_masks,
        ignore_masks=ignore_masks,
    )


def _resized_sizes(images: Sequence[np.ndarray], config: ReadConfig) -> list[tuple[int, int]]:
    return [sam_resized_size(i.shape[0], i.shape[1], config.sam.image_size) for i in images]


def collate_prompts(
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    config: ReadConfig,
    num_image_tokens: int,
) -> PromptBatch:
    """One generation prompt per image, left padded so every row ends at the last column.

    A question without the image placeholder gets "<image>\\n" in front, as upstream's demo does.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    if not images:
        raise ValueError("collate_prompts needs at least one image")
    tok_cfg = config.tokenizer
    ids = special_token_ids(tokenizer, tok_cfg)
    rows = []
    for question in questions:
        if tok_cfg.image_token not in question:
            question = f"{tok_cfg.image_token}\n{question}"
        rows.append(encode_prompt(question, tokenizer, ids, num_image_tokens, tok_cfg))
    input_ids = _pad(rows, ids.pad, left=True)
    return PromptBatch(
        images=image_batch(images),
        resized_sizes=_resized_sizes(images, config),
        original_sizes=[(int(i.shape[0]), int(i.shape[1])) for i in images],
        input_ids=input_ids,
        attention_mask=_attention([len(r) for r in rows], input_ids.shape[1], left=True),
        row_image=torch.arange(len(images), dtype=torch.long),
    )
