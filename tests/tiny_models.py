"""Tiny READ models with planted weights, shared by the tests that need a predictable answer."""

from __future__ import annotations

from typing import Any

import torch

from read_model.model import ReadModel, build_model
from read_model.presets import load_model_config


def seg_answering_model() -> tuple[ReadModel, Any]:
    """A tiny model whose weights make greedy decoding answer "[SEG]" (random otherwise).

    Channel 0 of the residual stream carries a constant from the embedding (no attention or MLP
    writes to it), so after the final norm it is positive at every position, and the LM head reads
    only that channel into the [SEG] logit: [SEG] wins, everything else scores 0.
    """
    model, tokenizer = build_model(load_model_config("tiny"))
    parts = model.parts
    with torch.no_grad():
        parts.embed_tokens.weight[:, 0] = 50.0
        for layer in parts.language_model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        parts.lm_head.weight.zero_()
        parts.lm_head.weight[model.token_ids.seg, 0] = 1.0
    return model, tokenizer
