"""Reader of LLaVA-Instruct-150k (`llava_dataset/llava_instruct_150k.json`), upstream's VQA source.

The file is a JSON list of ``{"id", "image", "conversations": [{"from": "human"|"gpt",
"value": ...}, ...]}``; images are ``coco/train2017/<image>``. Upstream
(`READ:dataloaders/vqa_dataset.py`) turns an entry into one multi-turn conversation:

1. every message holding ``<image>`` has it removed and put in front: ``"<image>\\n" + rest``
   (both stripped);
2. a first message that is not from the human is dropped;
3. the messages alternate USER / ASSISTANT and the whole dialog is one training row, with no
   mask and no ``[SEG]``; the loss counts every assistant turn (`READ:dataloaders/utils.py`).

The canonical Sample keeps that dialog as (question, answer) pairs in `Sample.dialogue`, no
targets. Upstream fails on an entry whose dialog does not split into USER/ASSISTANT rounds
(`handle_conversation_specifics` asserts two parts per round) or has no single image; such
entries are quarantined with the reason, as are missing or undecodable images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_builders.sample import QuarantineEntry, Sample, WarningEntry, make_key
from dataset_builders.validation import check_image, decode_json_text

DATASET = "llava_instruct_150k"
ANNOTATION_DIR = Path("llava_dataset")
IMAGE_DIR = Path("coco") / "train2017"
IMAGE_TOKEN = "<image>"
HUMAN, ASSISTANT = "human", "gpt"
# Text that would break upstream's rendering or labels: the round separator, the assistant
# separator, and READ's added tokens (a [SEG] would ask for a mask VQA does not have).
RESERVED = ("</s>", " ASSISTANT: ", "[SEG]", "<im_start>", "<im_end>")
SPLIT_FILES = {"train": "llava_instruct_150k.json"}
POSITION_DIGITS = 9  # keys carry the zero-padded file position, so key order is file order


class VqaFormatError(ValueError):
    """The conversation file itself is missing or malformed (the build stops on it)."""


def annotation_file(root: str | Path, split: str) -> Path:
    if split not in SPLIT_FILES:
        raise ValueError(f"{DATASET} has no split {split!r}; known: {sorted(SPLIT_FILES)}")
    return Path(root) / ANNOTATION_DIR / SPLIT_FILES[split]


def input_folders(root: str | Path, split: str) -> list[Path]:
    return [annotation_file(root, split), Path(root) / IMAGE_DIR]


@dataclass
class VqaIndex:
    """The conversation file, loaded once."""

    split: str
    path: Path
    image_folder: Path
    entries: list[Any]


def load_vqa_index(root: str | Path, split: str = "train") -> VqaIndex:
    path = annotation_file(root, split)
    if not path.is_file():
        raise VqaFormatError(f"VQA conversation file not found: {path}")
    text, reason = decode_json_text(path.read_bytes())
    if text is None:
        raise VqaFormatError(f"{path}: {reason}")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise VqaFormatError(f"{path}: json parse error: {error}") from error
    if not isinstance(entries, list):
        raise VqaFormatError(f"{path}: expected a JSON list of conversations")
    return VqaIndex(split, path, Path(root) / IMAGE_DIR, entries)


def iter_vqa(root: str | Path, split: str = "train",
             positions: Sequence[int] | None = None) -> Iterator[Sample | QuarantineEntry]:
    """Samples of the file's entries (or of the given positions), in file order."""
    index = load_vqa_index(root, split)
    for position in (range(len(index.entries)) if positions is None else positions):
        yield read_entry(index, int(position))


def place_image_token(value: str) -> str:
    """Upstream's `preprocess_multimodal` for one message."""
    if IMAGE_TOKEN not in value:
        return value
    rest = value.replace(IMAGE_TOKEN, "").strip()
    return f"{IMAGE_TOKEN}\n{rest}".strip()


class _Rejected(Exception):
    pass


def dialogue_turns(conversations: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """(question, answer) pairs as upstream renders them, and warnings; raises `_Rejected`."""
    if not isinstance(conversations, list) or not conversations:
        raise _Rejected("'conversations' is not a non-empty list")
    messages = []
    for i, message in enumerate(conversations):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise _Rejected(f"message {i} is not an object with a string 'value'")
        role = message.get("from")
        if role not in (HUMAN, ASSISTANT):
            raise _Rejected(f"message {i} is from {role!r}, not {HUMAN!r} or {ASSISTANT!r}")
        for marker in RESERVED:
            if marker in message["value"]:
                raise _Rejected(f"message {i} contains {marker!r}, which upstream's rendering "
                                "or labels cannot hold")
        messages.append((role, place_image_token(message["value"])))
    warnings = []
    if messages[0][0] != HUMAN:
        messages = messages[1:]  # upstream drops a leading assistant message
        warnings.append("the first message is the assistant's; dropped as upstream drops it")
    roles = [role for role, _ in messages]
    expected = [HUMAN, ASSISTANT] * (len(messages) // 2)
    if not messages or len(messages) % 2 or roles != expected:
        raise _Rejected(f"messages are {roles}: upstream needs human/gpt rounds that end with "
                        "the assistant")
    images = [role for role, value in messages if IMAGE_TOKEN in value]
    if images != [HUMAN]:
        raise _Rejected(f"{len(images)} messages hold {IMAGE_TOKEN!r} ({images}); one human "
                        "message must hold the one image")
    turns = [(messages[i][1], messages[i + 1][1]) for i in range(0, len(messages), 2)]
    return turns, warnings


def read_entry(index: VqaIndex, position: int) -> Sample | QuarantineEntry:
    """One entry as a Sample with a dialogue, or the reason it cannot be one."""
    source = str(index.path)
    entry = index.entries[position]
    if not isinstance(entry, dict):
        return QuarantineEntry(source, f"#{position}", "entry is not an object")
    entry_id = str(entry.get("id", ""))
    record = f"#{position} (id {entry_id})"
    image_name = entry.get("image")
    if not isinstance(image_name, str) or not image_name:
        return QuarantineEntry(source, record, "entry has no 'image' file name")
    try:
        turns, warnings = dialogue_turns(entry.get("conversations"))
    except _Rejected as rejected:
        return QuarantineEntry(source, record, f"conversation: {rejected}")
    image_path = index.image_folder / image_name
    if not image_path.is_file():
        return QuarantineEntry(str(image_path), record, f"image missing: {image_path} not found")
    image_bytes = image_path.read_bytes()
    size, reason = check_image(image_bytes)
    if reason:
        return QuarantineEntry(str(image_path), record, reason)
    width, height = size
    return Sample(
        key=make_key(DATASET, index.split, f"{position:0{POSITION_DIGITS}d}-{entry_id}"),
        dataset=DATASET,
        split=index.split,
        image_bytes=image_bytes,
        width=width,
        height=height,
        targets=[],
        source={"image": str(image_path), "annotation": source, "image_id": entry_id,
                "position": str(position)},
        dialogue=turns,
        warnings=[WarningEntry(source, record, w) for w in warnings],
    )
