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


# ---------------------------------------------------------------- upstream's documented recipes
# name -> (upstream group rates in READ:train_read.sh order, lora r, lr, num_points, down_sample,
# dice weight, starts from released heads). Values as READ:README.md / train_read.sh state them.
RECIPES = {
    "read-7b-from-sesame": ([10, 1, 1, 1, 1, 10], 8, 1e-4, 30, 2, 0.5, True),
    "read-7b-scratch": ([10, 1, 1, 1, 1, 10], 64, 1e-4, 30, 2, 4.0, False),
    "read-13b-stage1": ([10, 10, 2, 3, 1, 1], 64, 3e-4, 10, 1, 0.5, False),
    "read-13b-stage2": ([3, 10, 2, 3, 1, 10], 64, 1e-4, 30, 1, 0.5, True),
    "read-7b-fprefcoco": ([12, 2, 2, 1], 8, 3e-4, 30, 2, 0.5, True),
}
GROUPS = {  # upstream's dataset groups and the sub-datasets each draws from uniformly
    "sem_seg": {"ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"},
    "refer_seg": {"refclef", "refcoco", "refcoco+", "refcocog"},
    "correct_refer_seg": {"fprefcoco", "fprefcoco+", "fprefcocog"},
    "vqa": {"llava_instruct_150k"},
    "neg_refer_seg": {"R-refcoco", "R-refcoco+", "R-refcocog"},
    "reason_seg": {"reason_seg"},
}
REASON_ORDER = ["sem_seg", "refer_seg", "correct_refer_seg", "vqa", "neg_refer_seg", "reason_seg"]
REFER_ORDER = ["refer_seg", "correct_refer_seg", "vqa", "neg_refer_seg"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_presets_carry_upstreams_numbers(name: str) -> None:
    from pipelines.config import load_job_config

    rates, r, lr, points, down_sample, dice, released = RECIPES[name]
    path = preset_path(name)
    header = [line for line in path.read_text(encoding="utf-8").splitlines()
              if line.startswith("#")]
    assert header[0].startswith("# Launch:") and f"configs/{name}.yaml" in header[0]
    text = "\n".join(header)
    assert "Source: READ:" in text and "Assumed" in text  # where from, and what is assumed
    job = load_job_config(path)
    model = job.model
    assert (model.lora.r, model.lora.alpha, job.train.lr) == (r, 16, lr)
    assert (model.sasp.num_points, model.sasp.down_sample, model.loss.dice_weight) == (
        points, down_sample, dice)
    assert bool(model.init_heads) == released and model.sam.checkpoint
    assert (job.train.batch_size, job.train.grad_accumulation_steps) == (2, 10)
    assert model.num_classes_per_sample == 3 and model.tokenizer.model_max_length == 2048
    # Per-member rates reproduce upstream's group shares exactly.
    order = REASON_ORDER if len(rates) == 6 else REFER_ORDER
    share: dict[str, float] = dict.fromkeys(order, 0.0)
    members = [entry.split("/")[0] for entry in job.data.train]
    for member, rate in zip(members, job.data.sample_rates, strict=True):
        (group,) = [g for g in order if member in GROUPS[g]]
        share[group] += rate
    assert set(members) == set().union(*(GROUPS[g] for g in order))
    total = sum(job.data.sample_rates)
    for group, rate in zip(order, rates, strict=True):
        assert share[group] / total == pytest.approx(rate / sum(rates), abs=1e-12), group
