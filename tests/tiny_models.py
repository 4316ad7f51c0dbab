"""Tiny READ models with planted weights, shared by the tests that need a predictable answer,
and a helper that registers one the way training registers a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from read_model.model import ReadModel, build_model
from read_model.presets import load_model_config


def seg_answering_model(seed: int = 0) -> tuple[ReadModel, Any]:
    """A tiny model whose weights make greedy decoding answer "[SEG]" (random otherwise).

    Channel 0 of the residual stream carries a constant from the embedding (no attention or MLP
    writes to it), so after the final norm it is positive at every position, and the LM head reads
    only that channel into the [SEG] logit: [SEG] wins, everything else scores 0. `seed` changes
    every other weight (two seeds: two different models with the same behaviour).
    """
    config = dataclasses.replace(load_model_config("tiny"), seed=seed)
    model, tokenizer = build_model(config)
    parts = model.parts
    with torch.no_grad():
        parts.embed_tokens.weight[:, 0] = 50.0
        for layer in parts.language_model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        parts.lm_head.weight.zero_()
        parts.lm_head.weight[model.token_ids.seg, 0] = 1.0
    return model, tokenizer


def register_tiny(folder: Path, name: str, tracking_uri: str, *, seed: int = 0,
                  alias: str = "candidate") -> str:
    """Save a [SEG]-answering tiny model under `folder` and register it; -> the new version."""
    from mlflow.tracking import MlflowClient

    from pipelines.registry import log_and_register
    from read_model.checkpoint import save_trainable

    model, tokenizer = seg_answering_model(seed)
    model_dir = save_trainable(model, tokenizer, model.config, folder / f"model-{seed}")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=(folder / "mlflow-artifacts").as_uri()))
    run_id = client.create_run(experiment_id).info.run_id
    version = log_and_register(model_dir, name, run_id, alias=alias, tracking_uri=tracking_uri)
    client.set_terminated(run_id)
    return version
