"""Rows of READ's tokens on a llava-hf checkpoint start as upstream's resize left them.

Upstream adds [SEG], <im_start>, <im_end> to LLaVA-1.5's 32000-token vocabulary and
`resize_token_embeddings` (transformers 4.31) draws the new embedding and LM-head rows from
N(0, initializer_range = 0.02). A llava-hf checkpoint instead pads its matrices to a multiple of
64 with rows near the mean embedding, and READ's tokens land on those. Here a small llava-hf
style checkpoint (padding rows planted at 5.0) is loaded and the READ rows are checked.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from read_model.config import TokenizerConfig
from read_model.llava import base_llava, build_llava
from read_model.model import build_model
from read_model.presets import load_model_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "token_parity"
PADDED_ROWS = 1024  # 1000 pieces + <image> + <pad>, padded to a multiple of 64
PLANTED = 5.0


@pytest.fixture(scope="module")
def llava_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("llava_hf_ckpt")
    base = root / "tok"
    base.mkdir()
    shutil.copy(FIXTURES / "tokenizer.model", base / "tokenizer.model")
    shutil.copy(FIXTURES / "release_tokenizer" / "special_tokens_map.json", base)
    settings = json.loads((FIXTURES / "release_tokenizer" / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**settings, "legacy": False}))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens(["<image>", "<pad>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    llava = build_llava(load_model_config("tiny").llava, vocab_size=PADDED_ROWS,
                        image_token_id=image_id, pad_token_id=0)
    with torch.no_grad():
        for matrix in (llava.get_input_embeddings().weight, llava.get_output_embeddings().weight):
            matrix[len(tokenizer):] = PLANTED  # llava-hf's padding rows
    checkpoint = root / "llava-hf"
    llava.save_pretrained(str(checkpoint))
    tokenizer.save_pretrained(str(checkpoint))
    return checkpoint


def _config(path: Path, seed: int = 0, **llava_changes):
    tiny = load_model_config("tiny")
    return dataclasses.replace(
        tiny, seed=seed,
        tokenizer=TokenizerConfig(model_max_length=512),
        llava=dataclasses.replace(tiny.llava, path=str(path), **llava_changes))


def _rows(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    llava = base_llava(model.llava)
    return (llava.get_input_embeddings().weight[ids].detach(),
            llava.get_output_embeddings().weight[ids].detach())


def test_read_tokens_on_llava_hf_start_from_upstreams_normal(llava_hf_dir: Path) -> None:
    model, _ = build_model(_config(llava_hf_dir))
    ids = model.token_ids
    new = [ids.seg, ids.im_start, ids.im_end]
    assert min(new) >= 1002 and max(new) < PADDED_ROWS  # on llava-hf's padding rows, no resize
    for rows in _rows(model, new):
        assert not torch.any(rows == PLANTED)
        assert abs(float(rows.mean())) < 0.01
        assert 0.015 < float(rows.std()) < 0.025  # N(0, 0.02), 3 x 64 draws
    untouched = [ids.image, 0, 1, 500, 1010]  # the checkpoint's own rows, padding included
    saved = build_model(_config(llava_hf_dir, new_token_init="keep"))[0]
    for got, kept in zip(_rows(model, untouched), _rows(saved, untouched), strict=True):
        assert torch.equal(got, kept)
    assert torch.all(_rows(saved, new)[0] == PLANTED)  # "keep" leaves llava-hf's rows
    assert torch.all(_rows(saved, [1010])[1] == PLANTED)

    again = build_model(_config(llava_hf_dir))[0]
    other = build_model(_config(llava_hf_dir, seed=1))[0]
    assert torch.equal(_rows(again, new)[0], _rows(model, new)[0])  # seeded: reproducible
    assert not torch.equal(_rows(other, new)[0], _rows(model, new)[0])
