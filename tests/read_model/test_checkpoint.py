"""Checkpoint round trips: trainable state, merged export, SAM checkpoints; safetensors + JSON only."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from read_model.batch import ReadExample, collate_train
from read_model.checkpoint import (
    CheckpointError,
    export_merged,
    load_model_dir,
    load_trainable,
    save_trainable,
)
from read_model.config import TrainableConfig
from read_model.model import ReadModel, build_model
from read_model.presets import load_model_config
from read_model.sam import SamCheckpointError, build_sam

torch.set_num_threads(1)


def _examples() -> list[ReadExample]:
    rng = np.random.default_rng(3)
    mask = np.zeros((72, 100), np.uint8)
    mask[10:50, 20:70] = 1
    return [
        ReadExample(
            rng.integers(0, 255, (72, 100, 3), dtype=np.uint8),
            [("<image>\nWhere is the square?", "It is [SEG].")],
            [mask],
        ),
        ReadExample(
            rng.integers(0, 255, (64, 48, 3), dtype=np.uint8),
            [("<image>\nIs there a star?", "No, there is no star.")],
            [None],
        ),
    ]


def _perturb(model: ReadModel, seed: int = 5) -> None:
    """Move the trainable weights away from their seeded initial values (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and (
                "lora_B" in name or "mask_decoder" in name or "projection" in name
            ):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _outputs(model: ReadModel) -> tuple[list[torch.Tensor], list[list[int]]]:
    model.eval()
    examples = _examples()
    batch = collate_train(examples, model.tokenizer, model.config, model.num_image_tokens)
    logits = model.score_teacher_forced(batch).mask_logits
    predictions = model.predict(
        [e.image for e in examples], ["Where?", "Find the star."], max_new_tokens=3
    )
    return logits, [p.token_ids for p in predictions]


def _files(directory: Path) -> set[str]:
    return {p.suffix for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_trained() -> ReadModel:
    model, _ = build_model(load_model_config("tiny"))
    _perturb(model)
    return model


def test_trainable_round_trip_is_bit_identical(tiny_trained: ReadModel, tmp_path: Path) -> None:
    save_trainable(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path)
    assert _files(tmp_path) <= {".json", ".safetensors", ".jinja", ".txt", ".model"}
    loaded, tokenizer, config = load_model_dir(tmp_path)
    assert config == tiny_trained.config
    assert len(tokenizer) == len(tiny_trained.tokenizer)
    for name, tensor in tiny_trained.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    expected_logits, expected_tokens = _outputs(tiny_trained)
    logits, tokens = _outputs(loaded)
    assert tokens == expected_tokens
    for a, b in zip(logits, expected_logits, strict=True):
        assert torch.equal(a, b)


def test_merged_export_round_trip(tiny_trained: ReadModel, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in tiny_trained.state_dict().items()}
    export_merged(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path)
    # The live model keeps its adapters: exporting must not merge in place.
    assert all(torch.equal(v, tiny_trained.state_dict()[k]) for k, v in before.items())
    weights = load_file(str(tmp_path / "llava" / "model.safetensors"))
    assert "lm_head.weight" in weights and not any(
        "lora" in k or "base_layer" in k for k in weights
    )
    assert (tmp_path / "llava" / "config.json").is_file()
    loaded, _, config = load_model_dir(tmp_path)
    assert not config.lora.enabled
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    expected_logits, expected_tokens = _outputs(tiny_trained)
    logits, tokens = _outputs(loaded)
    assert tokens == expected_tokens
    for a, b in zip(logits, expected_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_trainable_only_checkpoint_over_a_loadable_base(
    tiny_trained: ReadModel, tmp_path: Path
) -> None:
    """With the base loadable from paths, only the trainable tensors are stored."""
    export_merged(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path / "base")
    sam_path = tmp_path / "sam_tiny.pth"
    torch.save(tiny_trained.sam.state_dict(), sam_path)
    tiny = load_model_config("tiny")
    config = dataclasses.replace(
        tiny,
        tokenizer=dataclasses.replace(
            tiny.tokenizer, build_tiny=False, path=str(tmp_path / "base" / "llava")
        ),
        llava=dataclasses.replace(tiny.llava, path=str(tmp_path / "base" / "llava")),
        sam=dataclasses.replace(tiny.sam, checkpoint=str(sam_path)),
        trainable=TrainableConfig(),  # upstream's set: LoRA + embed/head + decoder + projection
    )
    model, tokenizer = build_model(config)
    torch.testing.assert_close(
        model.sam.image_encoder.state_dict(), tiny_trained.sam.image_encoder.state_dict()
    )
    _perturb(model, seed=9)
    save_trainable(model, tokenizer, config, tmp_path / "run")
    stored = load_file(str(tmp_path / "run" / "trainable.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(stored) == trainable | {k for k in model.state_dict() if k.startswith("projection.")}
    assert not any("vision_tower" in k or "image_encoder" in k for k in stored)
    loaded, _, _ = load_model_dir(tmp_path / "run")
    expected_logits, expected_tokens = _outputs(model)
    logits, tokens = _outputs(loaded)
    assert tokens == expected_tokens
    for a, b in zip(logits, expected_logits, strict=True):
        assert torch.equal(a, b)


def test_load_trainable_refuses_another_architecture(
    tiny_trained: ReadModel, tmp_path: Path
) -> None:
    save_trainable(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path)
    tiny = load_model_config("tiny")
    other, _ = build_model(
        dataclasses.replace(tiny, llava=dataclasses.replace(tiny.llava, text_intermediate=96))
    )
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_trainable(tmp_path, other)


def test_not_a_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a READ checkpoint"):
        load_model_dir(tmp_path)


def test_sam_checkpoint_with_other_shapes_is_refused(tmp_path: Path) -> None:
    sam_settings = load_model_config("tiny").sam
    path = tmp_path / "sam.pth"
    torch.save(build_sam(dataclasses.replace(sam_settings, decoder_mlp_dim=96)).state_dict(), path)
    with pytest.raises(SamCheckpointError, match="shape mismatch"):
        build_sam(dataclasses.replace(sam_settings, checkpoint=str(path)))


class _Payload:
    """Any pickled object besides plain tensors must be refused by the weights-only loader."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_sam_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"payload": _Payload()}, handle)
    sam_settings = dataclasses.replace(load_model_config("tiny").sam, checkpoint=str(path))
    with pytest.raises(pickle.UnpicklingError):
        build_sam(sam_settings)


def test_load_trainable_refuses_a_checkpoint_lacking_trainable_tensors(
    tiny_trained: ReadModel, tmp_path: Path
) -> None:
    """A checkpoint without some tensors the model trains (saved with other `trainable` / `lora`
    settings) is refused by name instead of leaving them silently at their initial values."""
    from safetensors.torch import save_file

    save_trainable(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path)
    path = tmp_path / "trainable.safetensors"
    complete = load_file(str(path))
    lora = sorted(k for k in complete if "lora_B" in k)
    assert lora
    save_file({k: v for k, v in complete.items() if "lora_B" not in k}, str(path))
    with pytest.raises(CheckpointError, match=r"lacks tensors this model trains: .*lora_B") as info:
        load_trainable(tmp_path, tiny_trained)
    assert all(name in str(info.value) for name in lora)  # every missing tensor is named
    # A frozen tensor of a declared full-state prefix (the tiny SAM has no checkpoint) counts too.
    encoder = next(k for k in complete if k.startswith("sam.image_encoder."))
    save_file({k: v for k, v in complete.items() if k != encoder}, str(path))
    with pytest.raises(CheckpointError, match=re.escape(encoder)):
        load_trainable(tmp_path, tiny_trained)
    save_file(complete, str(path))
    load_trainable(tmp_path, tiny_trained)  # the complete file loads


def test_init_heads_starts_sam_and_projection_from_a_released_model(
    tiny_trained: ReadModel, tmp_path: Path
) -> None:
    """model.init_heads (upstream's use_released_param=True): SAM, its trained decoder included,
    and the [SEG] projection come from read_heads.safetensors; the rest as configured."""
    export_merged(tiny_trained, tiny_trained.tokenizer, tiny_trained.config, tmp_path / "release")
    tiny = load_model_config("tiny")
    config = dataclasses.replace(
        tiny, seed=9, init_heads=str(tmp_path / "release" / "read_heads.safetensors"),
        trainable=dataclasses.replace(tiny.trainable, sam_image_encoder=False))
    fresh, _ = build_model(config)
    for name, tensor in tiny_trained.state_dict().items():
        if name.startswith(("sam.", "projection.")):
            assert torch.equal(fresh.state_dict()[name], tensor), name
    differs = [n for n, t in tiny_trained.state_dict().items() if n.startswith("llava.")
               and not torch.equal(fresh.state_dict()[n], t)]
    assert differs  # the LLaVA part is built from config (seed 9), not taken from the heads
    # SAM is restorable from the heads file, so a trainable checkpoint does not store it whole.
    save_trainable(fresh, fresh.tokenizer, config, tmp_path / "run")
    stored = load_file(str(tmp_path / "run" / "trainable.safetensors"))
    assert not any(k.startswith("sam.image_encoder.") for k in stored)
    reloaded, _, _ = load_model_dir(tmp_path / "run")
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="not found"):
        build_model(dataclasses.replace(config, init_heads=str(tmp_path / "none.safetensors")))
