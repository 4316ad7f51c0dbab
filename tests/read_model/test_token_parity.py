"""Token parity with upstream: the converted-checkpoint tokenizer path against golden ids.

The goldens (tests/fixtures/token_parity/goldens.json) were written by make_goldens.sh with the
stack upstream READ pins (transformers 4.31.0 slow LlamaTokenizer, legacy=True, sentencepiece
0.1.99) on a LLaMA-style sentencepiece model trained for the purpose; `release_tokenizer/` holds
the files that stack saves next to a released checkpoint. Here the project converts those files
the way `python -m read_model.convert` does, reloads the converted tokenizer the way a model
directory is loaded, and must reproduce every id, label and [SEG]/query position, for single
turns and for multi-turn dialogs (every assistant turn labelled, `READ:dataloaders/utils.py`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from read_model.config import TokenizerConfig
from read_model.conversation import Dialogue
from read_model.conversion.tokens import convert_tokenizer
from read_model.labels import (
    IGNORE_INDEX,
    encode_answer,
    encode_conversation,
    encode_dialogue,
    encode_prompt,
)
from read_model.tokenizer import SpecialTokenIds, load_tokenizer, special_token_ids

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "token_parity"
GOLDENS = json.loads((FIXTURES / "goldens.json").read_text(encoding="utf-8"))
NUM_IMAGE_TOKENS = 5  # any count: the goldens hold upstream's single -200 sentinel
CASES = GOLDENS["cases"]


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "no-legacy"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The release tokenizer converted and reloaded as `load_model_dir` reloads it.

    Both values of the converter's `legacy` flag: under "upstream" spacing every piece is
    encoded on its own, so the flag (which only changes text right after an added token) is moot.
    """
    root = tmp_path_factory.mktemp("parity")
    source = root / "release"
    shutil.copytree(FIXTURES / "release_tokenizer", source)
    shutil.copy(FIXTURES / "tokenizer.model", source / "tokenizer.model")
    rows = GOLDENS["tokenizer"]["base_vocab"] + 3
    config = TokenizerConfig(use_im_start_end=True)
    result = convert_tokenizer(source, config, rows, legacy=request.param)
    result.save(root / "converted")
    reloaded = load_tokenizer(TokenizerConfig(path=str(root / "converted")))
    return reloaded, special_token_ids(reloaded, config), config


def _collapse(ids: list[int], labels: list[int] | None, image_id: int):
    """Project ids (image token repeated) -> upstream's layout (one -200 sentinel)."""
    out_ids, out_labels = [], []
    for position, token in enumerate(ids):
        if token == image_id:
            if out_ids and out_ids[-1] == GOLDENS["image_sentinel"]:
                continue
            token = GOLDENS["image_sentinel"]
        out_ids.append(token)
        if labels is not None:
            out_labels.append(labels[position])
    return out_ids, (out_labels if labels is not None else None)


def test_read_token_ids_match(converted) -> None:
    _, ids, _ = converted
    expected = GOLDENS["tokenizer"]
    assert (ids.seg, ids.im_start, ids.im_end) == (
        expected["seg"], expected["im_start"], expected["im_end"])
    assert (ids.bos, ids.eos, ids.unk, ids.pad) == (
        expected["bos"], expected["eos"], expected["unk"], expected["pad"])


def _project(case: dict, tokenizer, ids: SpecialTokenIds, config: TokenizerConfig):
    if case["kind"] == "training_dialog":
        dialogue = Dialogue(tuple(tuple(turn) for turn in case["turns"]))
        row = encode_dialogue(dialogue, tokenizer, ids, NUM_IMAGE_TOKENS, config)
        return _collapse(row.input_ids, row.labels, ids.image)
    if case["answer"] is None:
        row = encode_prompt(case["question"], tokenizer, ids, NUM_IMAGE_TOKENS, config)
        return _collapse(row, None, ids.image)
    row = encode_conversation(
        case["question"], case["answer"], tokenizer, ids, NUM_IMAGE_TOKENS, config)
    return _collapse(row.input_ids, row.labels, ids.image)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ids_labels_and_positions_match_upstream(case: dict, converted) -> None:
    tokenizer, ids, config = converted
    got_ids, got_labels = _project(case, tokenizer, ids, config)
    pieces = [tokenizer.convert_ids_to_tokens(t) if t >= 0 else "<image>" for t in got_ids]
    assert got_ids == case["input_ids"], f"\nproject:  {pieces}\nupstream: {case['pieces']}"
    assert got_labels == case["labels"]
    seg = [p for p, t in enumerate(got_ids) if t == ids.seg]
    assert seg == case["seg_positions"]
    # The query vector is the state of the token before [SEG] (the same token as upstream's).
    assert [p - 1 for p in seg] == case["query_positions"]
    if got_labels is not None:
        assert got_labels[0] == IGNORE_INDEX and got_labels[-1] == ids.eos


# ---------------------------------------------------------------- llava-hf tokenizers
@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory: pytest.TempPathFactory):
    """A llava-hf style tokenizer on the same vocabulary: tokenizer.json only, `<image>` and
    `<pad>` right after the base vocabulary, READ's tokens appended by `load_tokenizer`."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("llava_hf")
    base = root / "base"
    base.mkdir()
    shutil.copy(FIXTURES / "tokenizer.model", base / "tokenizer.model")
    shutil.copy(FIXTURES / "release_tokenizer" / "special_tokens_map.json", base)
    settings = json.loads((FIXTURES / "release_tokenizer" / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**settings, "legacy": False}))
    plain = AutoTokenizer.from_pretrained(str(base))
    plain.add_tokens(["<image>", "<pad>"], special_tokens=True)
    plain.save_pretrained(str(root / "hf"))
    (root / "hf" / "tokenizer.model").unlink(missing_ok=True)
    config = TokenizerConfig(use_im_start_end=True)
    tokenizer = load_tokenizer(TokenizerConfig(path=str(root / "hf")))
    return tokenizer, special_token_ids(tokenizer, config), config


def test_llava_hf_ids_follow_its_own_vocabulary(llava_hf) -> None:
    _, ids, _ = llava_hf
    base = GOLDENS["tokenizer"]["base_vocab"]
    assert ids.image == base  # llava-hf: <image> then <pad> after the base vocabulary
    assert {ids.seg, ids.im_start, ids.im_end} == {base + 2, base + 3, base + 4}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_llava_hf_gives_upstreams_pieces(case: dict, llava_hf) -> None:
    """Same pieces as upstream; only the ids of READ's added tokens differ (docs/fidelity.md)."""
    tokenizer, ids, config = llava_hf
    got_ids, got_labels = _project(case, tokenizer, ids, config)
    pieces = [tokenizer.convert_ids_to_tokens(t) if t >= 0 else "<image>" for t in got_ids]
    assert pieces == case["pieces"]
    if got_labels is not None:
        counted = [p for p, label in enumerate(got_labels) if label != IGNORE_INDEX]
        assert counted == [p for p, label in enumerate(case["labels"]) if label != IGNORE_INDEX]


@pytest.mark.parametrize("spacing", ["upstream", "tokenizer"])
def test_llava_hf_training_and_inference_agree(spacing: str, llava_hf) -> None:
    """Generation is prompted with exactly a training row's prefix, and the trained answer tokens
    are the answer's own encoding: what the model learns to emit is what inference reads."""
    tokenizer, ids, config = llava_hf
    config = TokenizerConfig(use_im_start_end=True, added_token_spacing=spacing)
    for case in CASES:
        if case["answer"] is None:
            continue
        prompt = encode_prompt(case["question"], tokenizer, ids, NUM_IMAGE_TOKENS, config)
        row = encode_conversation(
            case["question"], case["answer"], tokenizer, ids, NUM_IMAGE_TOKENS, config)
        assert row.input_ids[: len(prompt)] == prompt, case["name"]
        assert row.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        answer = row.input_ids[len(prompt) :]
        assert answer == encode_answer(case["answer"], tokenizer, ids, config), case["name"]
        assert answer.count(ids.seg) == case["answer"].count("[SEG]")
