"""Every shipped model preset loads, says how to launch it, and carries the upstream numbers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from read_model.config import SAM_ENCODERS, ConfigError
from read_model.presets import CONFIG_DIR, load_model_config, preset_path

PRESETS = ["tiny", "read-7b", "read-13b"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_first_line_says_how_to_launch(name: str) -> None:
    config = load_model_config(name)
    first_line = preset_path(name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# Launch:") and f"configs/{name}.yaml" in first_line
    assert config.projection_dim == config.sam.prompt_embed_dim
    assert config.lora.r == 8 and config.lora.alpha == 16 and config.lora.dropout == 0.05
    assert config.prompt_mode == "points_dtoc"


def test_real_presets_carry_upstream_shapes_and_paths() -> None:
    seven, thirteen = load_model_config("read-7b"), load_model_config("read-13b")
    assert (seven.llava.text_hidden_size, thirteen.llava.text_hidden_size) == (4096, 5120)
    assert (seven.llava.text_layers, thirteen.llava.text_layers) == (32, 40)
    for config in (seven, thirteen):
        assert config.llava.path and config.sam.checkpoint.endswith("sam_vit_h_4b8939.pth")
        assert config.llava.torch_dtype == "bfloat16" and config.llava.gradient_checkpointing
        assert config.sam.encoder == SAM_ENCODERS["vit_h"] and config.sam.image_size == 1024
        assert (config.sasp.num_points, config.sasp.t_pos, config.sasp.t_neg) == (30, 0.8, 0.2)
        assert config.projection_dim == 256
        assert not config.trainable.language_model and config.trainable.mask_decoder


def test_every_yaml_in_configs_with_a_model_section_loads() -> None:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if "\nmodel:" in "\n" + path.read_text(encoding="utf-8"):
            load_model_config(path)


def test_unknown_preset_and_bad_sections_fail_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known presets"):
        load_model_config("no-such-preset")
    no_model = tmp_path / "x.yaml"
    no_model.write_text("train:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="no `model:` section"):
        load_model_config(no_model)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  sasp:\n    num_pionts: 3\n")
    with pytest.raises(ConfigError, match=r"model\.sasp\.num_pionts"):
        load_model_config(typo)
    mismatch = tmp_path / "mismatch.yaml"
    mismatch.write_text("model:\n  projection_dim: 128\n")
    with pytest.raises(ConfigError, match="prompt_embed_dim"):
        load_model_config(mismatch)


def test_tiny_preset_trains_a_step_quickly() -> None:
    """One forward + backward on 2 images: well under a second of CPU time on one thread."""
    import numpy as np

    from read_model.batch import ReadExample, collate_train
    from read_model.model import build_model

    torch.set_num_threads(1)
    config = load_model_config("tiny")
    model, tokenizer = build_model(config)
    assert model.num_image_tokens == 196  # 112 px / patch 8 = 14 x 14
    rng = np.random.default_rng(0)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 30:90] = 1
    examples = [
        ReadExample(
            rng.integers(0, 255, (96, 128, 3), dtype=np.uint8),
            [("<image>\nWhere?", "Here: [SEG].")],
            [mask],
        ),
        ReadExample(
            rng.integers(0, 255, (96, 128, 3), dtype=np.uint8),
            [("<image>\nAnd here?", "[SEG].")],
            [mask],
        ),
    ]
    batch = collate_train(examples, tokenizer, config, model.num_image_tokens)
    model(batch).losses.total.backward()  # warm-up
    model.zero_grad()
    start = time.process_time()
    model(batch).losses.total.backward()
    assert time.process_time() - start < 1.0
