"""The typed config refuses bad keys early and keeps every upstream constant as a default."""

import pytest

from pipelines.config import JobConfig, load_job_config
from read_model.config import (
    ConfigError,
    ReadConfig,
    apply_overrides,
    flatten,
    from_dict,
    to_dict,
)


def test_upstream_defaults_are_named_fields():
    cfg = ReadConfig()
    assert (cfg.sasp.num_points, cfg.sasp.t_pos, cfg.sasp.t_neg, cfg.sasp.down_sample) == (
        30,
        0.8,
        0.2,
        2,
    )
    assert (cfg.loss.ce_weight, cfg.loss.bce_weight, cfg.loss.dice_weight) == (1.0, 2.0, 0.5)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.05)
    assert cfg.sasp.std_factor == 0.5 and cfg.sasp.threshold_mode == "fixed"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"sasp\.num_pointz"):
        from_dict(ReadConfig, {"sasp": {"num_pointz": 3}})


def test_wrong_literal_and_type_are_refused():
    with pytest.raises(ConfigError, match="prompt_mode"):
        from_dict(ReadConfig, {"prompt_mode": "points"})
    with pytest.raises(ConfigError, match=r"sasp\.num_points must be int"):
        from_dict(ReadConfig, {"sasp": {"num_points": "30"}})


def test_round_trip_and_overrides():
    cfg = from_dict(ReadConfig, {"sasp": {"num_points": 60, "t_pos": 0.6}})
    again = from_dict(ReadConfig, to_dict(cfg))
    assert again == cfg
    raw = apply_overrides(to_dict(cfg), ["sasp.down_sample=1", "prompt_mode=seg_only"])
    cfg2 = from_dict(ReadConfig, raw)
    assert cfg2.sasp.down_sample == 1 and cfg2.prompt_mode == "seg_only"
    assert flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}


def test_job_config_checks_rates_and_missing_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  train: [a/train, b/train]\n  sample_rates: [1]\n")
    with pytest.raises(ConfigError, match="sample_rates"):
        load_job_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job_config(tmp_path / "missing.yaml")
    assert isinstance(load_job_config(None, ["train.lr=0.001"]), JobConfig)
    assert load_job_config(None, ["train.lr=0.001"]).train.lr == 0.001


def test_sam_encoder_is_one_typed_field_with_named_presets():
    from read_model.config import SAM_ENCODERS, SamEncoderConfig

    assert SAM_ENCODERS["vit_h"] == SamEncoderConfig(1280, 32, 16, (7, 15, 23, 31))  # build_sam.py
    assert ReadConfig().sam.encoder.preset_name == "vit_h"
    named = from_dict(ReadConfig, {"sam": {"encoder": "vit_b"}})
    assert named.sam.encoder == SAM_ENCODERS["vit_b"]
    spelled = from_dict(ReadConfig, {"sam": {"encoder": to_dict(SAM_ENCODERS["tiny"])}})
    assert spelled.sam.encoder == SAM_ENCODERS["tiny"] and spelled.sam.encoder.preset_name == "tiny"
    with pytest.raises(ConfigError, match=r"sam\.encoder must be one of"):
        from_dict(ReadConfig, {"sam": {"encoder": "vit_x"}})
    with pytest.raises(ConfigError, match=r"sam\.encoder\.global_attn_indexes\[0\] must be int"):
        from_dict(ReadConfig, {"sam": {"encoder": {"global_attn_indexes": ["one"]}}})


def test_removed_keys_say_what_replaced_them():
    with pytest.raises(ConfigError, match=r"model\.sasp\.clip_image_size was removed.*vision_image_size"):
        load_job_config(None, ["model.sasp.clip_image_size=336"])
    with pytest.raises(ConfigError, match=r"model\.sam\.variant was removed.*model\.sam\.encoder"):
        load_job_config(None, ["model.sam.variant=vit_h"])


def _legacy(model: dict) -> dict:
    """`model` as checkpoints before sam.encoder wrote it (variant + tiny_*, clip_image_size)."""
    old = {**model, "sam": dict(model["sam"]), "sasp": dict(model["sasp"])}
    encoder = old["sam"].pop("encoder")
    old["sam"].update(variant="tiny", tiny_embed_dim=encoder["embed_dim"],
                      tiny_depth=encoder["depth"], tiny_heads=encoder["num_heads"],
                      tiny_patch_size=encoder["patch_size"],
                      tiny_window_size=encoder["window_size"],
                      tiny_global_attn_indexes=encoder["global_attn_indexes"])
    old["sasp"]["clip_image_size"] = model["llava"]["vision_image_size"]
    return old


def test_checkpoints_written_before_sam_encoder_still_load(tmp_path):
    import json

    import torch

    from read_model.checkpoint import CONFIG_FILE, load_model_dir, save_trainable
    from read_model.config import upgrade_legacy_model_dict
    from read_model.model import build_model
    from read_model.presets import load_model_config

    tiny = load_model_config("tiny")
    assert from_dict(ReadConfig, upgrade_legacy_model_dict(_legacy(to_dict(tiny)))) == tiny
    official = {**to_dict(ReadConfig()), "sam": {"variant": "vit_l"}}
    assert from_dict(ReadConfig, upgrade_legacy_model_dict(official)).sam.encoder.depth == 24

    model, tokenizer = build_model(tiny)
    save_trainable(model, tokenizer, tiny, tmp_path)
    stored = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_legacy(stored)))
    loaded, _, config = load_model_dir(tmp_path)
    assert config == tiny and loaded.sasp.clip_image_size == 112
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_model_validation_uses_the_loaded_vision_tower():
    tiny = from_dict(ReadConfig, {"llava": {"path": "/models/llava", "vision_image_size": 336,
                                            "vision_patch_size": 14},
                                  "sasp": {"down_sample": 5}})
    tiny.validate()  # with a path, the grid is the loaded tower's: unknown here
    with pytest.raises(ConfigError, match=r"model\.sasp\.down_sample=5 must divide the 24x24"):
        tiny.validate(vision_image_size=336, vision_patch_size=14)
    with pytest.raises(ConfigError, match=r"model\.llava\.vision_image_size=336 must equal"):
        tiny.validate(vision_image_size=224, vision_patch_size=14)
