"""LLaVA-Instruct-150k reader on a hand-made `llava_dataset/llava_instruct_150k.json`.

Upstream's rules (`READ:dataloaders/vqa_dataset.py`): ``<image>`` moved to the front of its
message, a leading assistant message dropped, the dialog kept whole; entries upstream's
rendering or label masking fails on are quarantined with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_builders.sample import QuarantineEntry, Sample
from dataset_builders.vqa import VqaFormatError, iter_vqa, place_image_token


def _entry(entry_id: str, image: str, *messages: tuple[str, str]) -> dict:
    return {"id": entry_id, "image": image,
            "conversations": [{"from": who, "value": value} for who, value in messages]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "coco/train2017"
    images.mkdir(parents=True)
    Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(images / "a.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    entries = [
        _entry("1", "a.jpg", ("human", "What is this?\n<image>"), ("gpt", "A grey square.\n"),
               ("human", "Is it big?"), ("gpt", "No, it is small.")),
        _entry("2", "a.jpg", ("gpt", "Hi!"), ("human", "<image>\nDescribe it."),
               ("gpt", "Grey.")),
        _entry("3", "missing.jpg", ("human", "<image>\nWhat?"), ("gpt", "Nothing.")),
        _entry("4", "broken.jpg", ("human", "<image>\nWhat?"), ("gpt", "Nothing.")),
        _entry("5", "a.jpg", ("human", "<image>\nWhat?"), ("human", "Hello?")),
        _entry("6", "a.jpg", ("human", "<image>\nWhere?"), ("gpt", "Here: [SEG].")),
        _entry("7", "a.jpg", ("human", "What?"), ("gpt", "No image.")),
        _entry("8", "a.jpg", ("human", "<image>\nWhat?"), ("bot", "Hmm.")),
        _entry("9", "a.jpg", ("human", "<image>\nA?"), ("gpt", "B."), ("human", "<image> C?"),
               ("gpt", "D.")),
        _entry("10", "a.jpg", ("human", "<image>\nQ?"), ("gpt", "end</s>USER: more")),
    ]
    path = tmp_path / "llava_dataset/llava_instruct_150k.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entries))
    return tmp_path


def test_image_token_is_moved_to_the_front_as_upstream() -> None:
    assert place_image_token("What is this?\n<image>") == "<image>\nWhat is this?"
    assert place_image_token("  <image>\n  Describe. ") == "<image>\nDescribe."
    assert place_image_token("No image here. ") == "No image here. "


def test_dialogs_and_quarantine(root: Path) -> None:
    items = list(iter_vqa(root))
    samples = [i for i in items if isinstance(i, Sample)]
    reasons = {q.record_id.split(" ")[0]: q.reason for q in items
               if isinstance(q, QuarantineEntry)}
    assert [s.key for s in samples] == ["llava_instruct_150k_train_000000000-1",
                                        "llava_instruct_150k_train_000000001-2"]
    first, second = samples
    assert first.dialogue == [("<image>\nWhat is this?", "A grey square.\n"),
                              ("Is it big?", "No, it is small.")]
    assert first.targets == [] and (first.width, first.height) == (7, 5)
    assert first.num_queries == 2
    assert second.dialogue == [("<image>\nDescribe it.", "Grey.")]
    assert [w.reason.split(";")[0] for w in second.warnings] == [
        "the first message is the assistant's"]
    assert reasons["#2"].startswith("image missing")
    assert reasons["#3"].startswith("image does not decode")
    assert "human/gpt rounds" in reasons["#4"]
    assert "'[SEG]'" in reasons["#5"]
    assert "0 messages hold '<image>'" in reasons["#6"]
    assert "from 'bot'" in reasons["#7"]
    assert "2 messages hold '<image>'" in reasons["#8"]
    assert "'</s>'" in reasons["#9"]
    assert len(samples) + len(reasons) == 10  # nothing lost in silence


def test_bad_conversation_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(VqaFormatError, match="not found"):
        list(iter_vqa(tmp_path))
    path = tmp_path / "llava_dataset/llava_instruct_150k.json"
    path.parent.mkdir()
    path.write_text('{"not": "a list"}')
    with pytest.raises(VqaFormatError, match="JSON list"):
        list(iter_vqa(tmp_path))
