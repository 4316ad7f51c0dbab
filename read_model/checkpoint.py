"""Checkpoint I/O in safetensors + JSON only (nothing is pickled, nothing is unpickled).

Two directory kinds, both reloaded by :func:`load_model_dir`:

* trainable (``save_trainable``): the trainable state (LoRA adapters + fully trained modules) of
  a model whose frozen base is re-loadable from `llava.path` / `sam.checkpoint`. When a base is
  not loadable from a path (the tiny preset, random real-shape tests) its full weights are
  stored too, so the directory reloads bit-identically.
* merged (``export_merged``): LoRA folded into the weights; ``llava/`` is a llava-hf
  ``save_pretrained`` directory (config, ``model.safetensors``, tokenizer) and
  ``read_heads.safetensors`` holds SAM and the [SEG] projection.

Each directory has ``read_config.json`` (the resolved `ReadConfig`) and ``checkpoint.json``
(format and kind).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import Tensor

from read_model.config import ReadConfig, from_dict, to_dict, upgrade_legacy_model_dict
from read_model.llava import base_llava
from read_model.model import ReadModel, build_model

FORMAT = "read-checkpoint/1"
CONFIG_FILE = "read_config.json"
META_FILE = "checkpoint.json"
TRAINABLE_FILE = "trainable.safetensors"
HEADS_FILE = "read_heads.safetensors"
TOKENIZER_DIR = "tokenizer"
LLAVA_DIR = "llava"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is incomplete or does not match the model."""


def save_trainable(
    model: ReadModel,
    tokenizer: Any,
    config: ReadConfig,
    directory: str | Path,
    state: dict[str, Tensor] | None = None,
) -> Path:
    """Write the trainable state (plus any base that no path can restore), config and tokenizer.

    `state` replaces `model.state_dict()` when the live model cannot give whole tensors (a
    gathered FSDP state) or the weights are to be stored in another dtype than they train in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full_prefixes = unrestorable_prefixes(config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {
        name: tensor
        for name, tensor in (model.state_dict() if state is None else state).items()
        if name.startswith(full_prefixes) or name in trainable
    }
    save_file(_contiguous(state), str(directory / TRAINABLE_FILE), metadata={"format": FORMAT})
    tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
    _write_json(directory / CONFIG_FILE, to_dict(config))
    _write_json(
        directory / META_FILE,
        {"format": FORMAT, "kind": "trainable", "full_state": list(full_prefixes)},
    )
    return directory


def load_trainable(directory: str | Path, model: ReadModel) -> None:
    """Load `trainable.safetensors` into `model`.

    Every stored key must exist with its shape, and every tensor the model trains (plus the
    full-state prefixes the checkpoint declares) must be stored: a checkpoint saved with other
    `trainable` / `lora` settings would otherwise load half-trained without a word.
    """
    directory = Path(directory)
    path = directory / TRAINABLE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    state = load_file(str(path))
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match the model: unexpected keys {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]} (was it saved with another config?)"
        )
    full_prefixes = tuple(_read_json(directory / META_FILE).get("full_state", ())) if (
        directory / META_FILE).is_file() else ()
    required = {name for name, p in model.named_parameters() if p.requires_grad}
    required |= {k for k in expected if full_prefixes and k.startswith(full_prefixes)}
    missing = sorted(required - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8
                                           else "")
        raise CheckpointError(
            f"{path} lacks tensors this model trains: {shown}; it was saved with other "
            "`trainable` / `lora` settings, and loading it would leave them untrained"
        )
    model.load_state_dict(state, strict=False)


def export_merged(
    model: ReadModel, tokenizer: Any, config: ReadConfig, directory: str | Path
) -> Path:
    """Fold LoRA into the weights (the live model is left untouched) and write a full directory."""
    directory = Path(directory)
    llava_dir = directory / LLAVA_DIR
    llava_dir.mkdir(parents=True, exist_ok=True)
    llava = base_llava(model.llava)
    save_file(
        _contiguous(merged_llava_state(llava)),
        str(llava_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    llava.config.save_pretrained(str(llava_dir))
    tokenizer.save_pretrained(str(llava_dir))
    heads = {f"sam.{k}": v for k, v in model.sam.state_dict().items()}
    heads.update({f"projection.{k}": v for k, v in model.projection.state_dict().items()})
    save_file(_contiguous(heads), str(directory / HEADS_FILE), metadata={"format": FORMAT})
    merged_config = dataclasses.replace(
        config, lora=dataclasses.replace(config.lora, enabled=False)
    )
    _write_json(directory / CONFIG_FILE, to_dict(merged_config))
    _write_json(directory / META_FILE, {"format": FORMAT, "kind": "merged"})
    return directory


def merged_llava_state(llava: torch.nn.Module) -> dict[str, Tensor]:
    """The llava-hf state dict with every LoRA layer's delta added to its base weight."""
    state: dict[str, Tensor] = {}
    lora_layers = {
        name: module for name, module in llava.named_modules() if isinstance(module, LoraLayer)
    }
    for name, tensor in llava.state_dict().items():
        if ".lora_" in name:
            continue
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner is not None:
            name = name.replace(".base_layer.", ".")
            if name.endswith(".weight"):
                layer = lora_layers[owner]
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                tensor = (tensor + delta.to(tensor.dtype)).detach()
        state[name] = tensor
    return state


def load_model_dir(directory: str | Path) -> tuple[ReadModel, Any, ReadConfig]:
    """Rebuild a model from a trainable or merged checkpoint directory."""
    directory = Path(directory)
    meta = _read_json(directory / META_FILE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: unknown checkpoint format {meta.get('format')!r}")
    stored = upgrade_legacy_model_dict(_read_json(directory / CONFIG_FILE))
    config = from_dict(ReadConfig, stored, "model")
    config.validate()  # a damaged or hand-edited read_config.json fails here, by key
    kind = meta.get("kind")
    if kind == "trainable":
        build_config = _with_tokenizer(config, directory / TOKENIZER_DIR)
        model, tokenizer = build_model(build_config)
        load_trainable(directory, model)
    elif kind == "merged":
        llava_dir = directory / LLAVA_DIR
        build_config = _with_tokenizer(config, llava_dir)
        build_config = dataclasses.replace(
            build_config,
            llava=dataclasses.replace(config.llava, path=str(llava_dir)),
            sam=dataclasses.replace(config.sam, checkpoint=""),
            init_heads="",  # the heads file below holds them
        )
        model, tokenizer = build_model(build_config)
        load_heads(directory / HEADS_FILE, model)
    else:
        raise CheckpointError(f"{directory}: unknown checkpoint kind {kind!r}")
    return model, tokenizer, config


def load_heads(path: str | Path, model: ReadModel) -> None:
    """SAM and [SEG] projection weights from a `read_heads.safetensors`, strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    state = load_file(str(path))
    for prefix, module in (("sam.", model.sam), ("projection.", model.projection)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"{path}: {prefix[:-1]} weights do not match: {error}") from error


def _with_tokenizer(config: ReadConfig, tokenizer_dir: Path) -> ReadConfig:
    """The config that rebuilds with the tokenizer saved next to the weights."""
    tokenizer = dataclasses.replace(config.tokenizer, path=str(tokenizer_dir), build_tiny=False)
    return dataclasses.replace(config, tokenizer=tokenizer)


def unrestorable_prefixes(config: ReadConfig) -> tuple[str, ...]:
    """State-dict prefixes whose frozen weights no path in `config` can restore (stored whole)."""
    prefixes = ["projection."]
    if not config.llava.path:
        prefixes.append("llava.")
    if not config.sam.checkpoint and not config.init_heads:
        prefixes.append("sam.")
    return tuple(prefixes)


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a READ checkpoint directory")
    return json.loads(path.read_text(encoding="utf-8"))
