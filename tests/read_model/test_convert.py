"""Released-checkpoint conversion on a tiny READ written out in the upstream LLaVA-original layout.

The "released" checkpoint is made here: a tiny READ built with the project's code (with trained-
looking LoRA), its weights renamed to upstream's keys (`READ:merge_lora_weights_and_save_hf_model.py`
output), its vocabulary laid
out as base + [SEG] + <im_start> + <im_end>, and a slow LLaMA tokenizer (a sentencepiece model
trained here on an embedded corpus) saved as LLaMA repos ship it. The converter must give back a
model with the same logits and masks, the same [SEG] lookup, and a working generation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import runpy
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from read_model.batch import ReadExample, collate_train
from read_model.checkpoint import export_merged, load_model_dir, merged_llava_state
from read_model.config import TokenizerConfig
from read_model.conversion.tensors import ConversionError
from read_model.convert import ConvertOptions, convert_released
from read_model.llava import base_llava
from read_model.model import ReadModel, build_model
from read_model.presets import load_model_config
from read_model.tokenizer import _corpus

torch.set_num_threads(1)
BASE_VOCAB = 300  # sentencepiece pieces; READ's tokens follow at 300, 301, 302
READ_TOKENS = {"[SEG]": BASE_VOCAB, "<im_start>": BASE_VOCAB + 1, "<im_end>": BASE_VOCAB + 2}
SOURCE_ROWS = BASE_VOCAB + 3
NUM_POINTS = 12  # the tiny preset's 7x7 coarse grid
TINY_SAM_DECODER_HEADS = 2


# ---------------------------------------------------------------- the synthetic release
def _token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


def write_llama_tokenizer(directory: Path) -> None:
    """A slow LLaMA tokenizer: tokenizer.model + added tokens, as LLaVA/READ repos ship it."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=BASE_VOCAB,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        num_threads=1, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "added_tokens.json").write_text(json.dumps(READ_TOKENS))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": _token("<s>"), "eos_token": _token("</s>"), "unk_token": _token("<unk>"),
        "pad_token": None, "legacy": True, "model_max_length": 512, "padding_side": "right",
        "clean_up_tokenization_spaces": False, "sp_model_kwargs": {},
    }))


def upstream_config(model: ReadModel) -> dict:
    """The flat LLaMA + LLaVA/READ config.json of a released checkpoint (`READ:model/READ.py`)."""
    text = base_llava(model.llava).config.text_config
    return {
        "architectures": ["READForCausalLM"], "model_type": "llava", "hidden_act": "silu",
        "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_attention_heads": text.num_attention_heads, "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "max_position_embeddings": text.max_position_embeddings, "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": 10000.0, "vocab_size": SOURCE_ROWS, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "use_cache": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": model.config.llava.vision_hidden_size, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": True,
        "mm_use_im_patch_token": False, "train_mask_decoder": True,
        "out_dim": model.config.projection_dim,
    }


def _upstream_llava_name(key: str) -> str | None:
    """llava-hf (transformers 5) key -> LLaVA-original key; None for the vision tower."""
    if key.startswith("model.vision_tower."):
        return None
    for hf, original in (
        ("model.language_model.", "model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ):
        if key.startswith(hf):
            return original + key[len(hf):]
    assert key == "lm_head.weight", key
    return key


def upstream_state(
    model: ReadModel, *, merged: bool = True, with_vision: bool = False, base_layer: bool = False
) -> dict:
    """The model's weights under upstream's names, vocabulary cut back to the READ layout.

    merged=False writes the un-merged peft dump (``base_model.model.`` + lora_A/lora_B) that
    upstream's zero_to_fp32 produces, with peft-0.4 naming (no ``base_layer``) unless
    `base_layer` asks for current peft's ``q_proj.base_layer.weight``.
    """
    llava = base_llava(model.llava)
    assert model.token_ids.image == SOURCE_ROWS  # the project appended <image> after READ's ids
    hf_state = merged_llava_state(llava) if merged else llava.state_dict()
    state = {}
    for key, tensor in hf_state.items():
        if with_vision and key.startswith("model.vision_tower."):
            name = "model.vision_tower.vision_tower.vision_model." + key[len("model.vision_tower."):]
        else:
            keep = ".lora_" in key or base_layer
            name = _upstream_llava_name(key if keep else key.replace(".base_layer.", "."))
            if name is None:
                continue
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = tensor[:SOURCE_ROWS]
        state[name] = tensor.detach().clone()
    state.update({f"model.visual_model.{k}": v.clone() for k, v in model.sam.state_dict().items()})
    for index in (0, 2):
        for param in ("weight", "bias"):
            state[f"model.text_hidden_fcs.0.{index}.{param}"] = getattr(
                model.projection.layers[index], param).detach().clone()
    if not merged:
        state = {f"base_model.model.{k}": v for k, v in state.items()}
    return state


def save_sharded(state: dict, directory: Path, shards: int = 2) -> None:
    names = sorted(state)
    weight_map = {}
    for number in range(shards):
        part = names[number::shards]
        file = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def save_clip(model: ReadModel, directory: Path) -> None:
    """A CLIP vision checkpoint directory (config.json + vision_model.* weights)."""
    directory.mkdir()
    tower = base_llava(model.llava).model.vision_tower
    base_llava(model.llava).config.vision_config.save_pretrained(str(directory))
    save_file({f"vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()},
              str(directory / "model.safetensors"))


@dataclasses.dataclass
class Release:
    source: Path
    peft_weights: Path
    clip: Path
    model: ReadModel
    state: dict


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    root = tmp_path_factory.mktemp("release")
    source = root / "READ-tiny"
    source.mkdir()
    write_llama_tokenizer(source)
    config = load_model_config("tiny")
    config = dataclasses.replace(
        config,
        tokenizer=TokenizerConfig(path=str(source), model_max_length=512),
        llava=dataclasses.replace(config.llava, vocab_size=0),
        sasp=dataclasses.replace(config.sasp, num_points=NUM_POINTS),
    )
    model, _ = build_model(config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained-looking adapters: B starts at zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.eval()
    # llava-v1.5 ships "legacy": false; upstream overrides it with legacy=True when loading, as
    # the reference model above did. The converter must do the same.
    config_path = source / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "legacy": False}))
    state = upstream_state(model)
    save_sharded(state, source)
    (source / "config.json").write_text(json.dumps(upstream_config(model)))
    peft_weights = root / "pytorch_model.bin"
    torch.save(upstream_state(model, merged=False), peft_weights)
    clip = root / "clip-vision"
    save_clip(model, clip)
    return Release(source, peft_weights, clip, model, state)


def _options(release: Release, **changes) -> ConvertOptions:
    base = ConvertOptions(clip=release.clip, sam_decoder_heads=TINY_SAM_DECODER_HEADS)
    base.sasp = dataclasses.replace(base.sasp, num_points=NUM_POINTS)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def converted(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted through the command line, as a user runs it."""
    destination = tmp_path_factory.mktemp("converted") / "read-tiny"
    argv = ["python -m read_model.convert", str(release.source), str(destination),
            "--clip", str(release.clip), "--sam-decoder-heads", str(TINY_SAM_DECODER_HEADS),
            "--num-points", str(NUM_POINTS), "--max-shard-gb", "0.0005"]
    # The `python -m` entry point, run in this interpreter (a fresh one only re-imports torch).
    stdout = io.StringIO()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout), \
            warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        # runpy notes that this test module imported read_model.convert already: expected.
        warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)
        runpy.run_module("read_model.convert", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert "converted" in stdout.getvalue() and "'seg': 300" in stdout.getvalue()
    return destination


# ---------------------------------------------------------------- comparisons
def _examples() -> list[ReadExample]:
    rng = np.random.default_rng(0)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:60, 30:80] = 1
    return [
        ReadExample(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8),
                    [("<image>\nWhere is the red circle?", "Sure, it is [SEG].")], [mask]),
        ReadExample(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                    [("<image>\nWhat colour is the square?", "It is blue.")], [None]),
    ]


def _outputs(model: ReadModel) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    batch = collate_train(_examples(), model.tokenizer, model.config, model.num_image_tokens)
    with torch.no_grad():
        features, _ = model.encode_images(batch.images, batch.original_sizes)
        hidden, _ = model.language_forward(
            batch.input_ids, batch.attention_mask, features[batch.row_image])
        logits = model.lm_logits(hidden)
    return batch.input_ids, logits, model.score_teacher_forced(batch).mask_logits


def _assert_same_outputs(reference: ReadModel, other: ReadModel) -> None:
    ids_ref, logits_ref, masks_ref = _outputs(reference)
    ids, logits, masks = _outputs(other)
    assert torch.equal(ids_ref, ids)  # the converted tokenizer encodes identically
    torch.testing.assert_close(logits[..., :SOURCE_ROWS], logits_ref[..., :SOURCE_ROWS],
                               atol=1e-4, rtol=1e-4)
    assert len(masks) == len(masks_ref) == 2 and masks[0].shape == (1, 90, 120)
    for got, want in zip(masks, masks_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_converted_model_reproduces_logits_and_masks(release: Release, converted: Path) -> None:
    model, tokenizer, config = load_model_dir(converted)
    model.eval()
    assert config.llava.query_position == "preceding" and config.tokenizer.use_im_start_end
    assert config.prompt_mode == "points_dtoc" and config.sasp.num_points == NUM_POINTS
    assert (config.sasp.down_sample, config.sasp.t_pos, config.sasp.t_neg) == (2, 0.8, 0.2)
    # READ's ids are kept; <image> is appended after them.
    ids = model.token_ids
    assert (ids.seg, ids.im_start, ids.im_end, ids.image, ids.pad) == (300, 301, 302, 303, 0)
    assert tokenizer.convert_tokens_to_ids("[SEG]") == 300
    assert base_llava(model.llava).config.image_token_id == 303
    generation = json.loads((converted / "llava" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [303]
    assert len(list((converted / "llava").glob("model-*-of-*.safetensors"))) > 1  # sharded
    _assert_same_outputs(release.model, model)


def _force(model: ReadModel, boosts: dict[int, float]):
    bias = torch.zeros(model.parts.lm_head.out_features)
    for token, value in boosts.items():
        bias[token] = value
    return model.parts.lm_head.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))


def test_forced_seg_prediction_matches_and_image_token_is_never_generated(
    release: Release, converted: Path
) -> None:
    model, _, _ = load_model_dir(converted)
    model.eval()
    image = _examples()[0].image
    predictions = {}
    for name, candidate in (("original", release.model), ("converted", model)):
        ids = candidate.token_ids
        # <image> gets the larger push: it must still never be emitted.
        handle = _force(candidate, {ids.image: 1e6, ids.seg: 1e4})
        try:
            predictions[name] = candidate.predict([image], ["Where is the red circle?"], 1)[0]
        finally:
            handle.remove()
    got, want = predictions["converted"], predictions["original"]
    assert got.token_ids == [300] and got.text == "[SEG]"
    assert got.masks.shape == (1, 90, 120) and got.exists == bool(got.masks.any())
    torch.testing.assert_close(got.mask_logits, want.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.points, want.points, atol=1e-3, rtol=1e-4)
    assert torch.equal(got.labels, want.labels)


def test_unmerged_peft_dump_gives_the_same_merged_weights(
    release: Release, converted: Path, tmp_path: Path
) -> None:
    out = convert_released(release.source, tmp_path / "peft",
                           _options(release, weights=release.peft_weights, lora_r=8))
    provenance = json.loads((out / "conversion.json").read_text())
    assert provenance["lora_merged_weights"] == 4  # q_proj and v_proj of 2 layers
    from_peft, _, _ = load_model_dir(out)
    from_merged, _, _ = load_model_dir(converted)
    merged_state = from_merged.state_dict()
    for key, tensor in from_peft.state_dict().items():
        torch.testing.assert_close(tensor, merged_state[key], atol=1e-6, rtol=1e-5, msg=key)
    modern = tmp_path / "modern.safetensors"  # current peft names: q_proj.base_layer.weight
    save_file({k: v.contiguous() for k, v in
               upstream_state(release.model, merged=False, base_layer=True).items()}, str(modern))
    out = convert_released(release.source, tmp_path / "peft-modern", _options(release, weights=modern))
    from_modern, _, _ = load_model_dir(out)
    for key, tensor in from_modern.state_dict().items():
        torch.testing.assert_close(tensor, merged_state[key], atol=1e-6, rtol=1e-5, msg=key)
    with pytest.raises(ConversionError, match="rank 8"):
        convert_released(release.source, tmp_path / "bad-rank",
                         _options(release, weights=release.peft_weights, lora_r=64))


def test_round_trip_through_merged_export(release: Release, converted: Path, tmp_path: Path) -> None:
    model, tokenizer, config = load_model_dir(converted)
    export_merged(model, tokenizer, config, tmp_path / "export")
    again, _, _ = load_model_dir(tmp_path / "export")
    again.eval()
    back = upstream_state(again)
    assert set(back) == set(release.state)
    for key, tensor in release.state.items():
        torch.testing.assert_close(back[key], tensor, atol=1e-6, rtol=1e-5, msg=key)
    _assert_same_outputs(release.model, again)


def test_vision_tower_in_source_and_sam_from_checkpoint(release: Release, tmp_path: Path) -> None:
    """A release that carries the vision tower but not SAM (SAM from an official-style .pth)."""
    source = tmp_path / "with-vision"
    source.mkdir()
    for name in ("config.json", "tokenizer.model", "added_tokens.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        (source / name).write_bytes((release.source / name).read_bytes())
    state = upstream_state(release.model, with_vision=True)
    sam_state = {k[len("model.visual_model."):]: state.pop(k) for k in list(state)
                 if k.startswith("model.visual_model.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(source / "model.safetensors"))
    sam_path = tmp_path / "sam_tiny.pth"
    torch.save(sam_state, sam_path)
    with pytest.raises(ConversionError, match="--sam-checkpoint"):
        convert_released(source, tmp_path / "no-sam", _options(release))
    out = convert_released(source, tmp_path / "out", _options(release, sam_checkpoint=sam_path))
    model, _, _ = load_model_dir(out)
    _assert_same_outputs(release.model.eval(), model.eval())


def test_bad_sources_fail_with_a_clear_message(release: Release, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="--clip"):
        convert_released(release.source, tmp_path / "a", _options(release, clip=None))
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("config.json", "tokenizer.model", "added_tokens.json", "tokenizer_config.json"):
        (odd / name).write_bytes((release.source / name).read_bytes())
    save_file({**{k: v.contiguous() for k, v in release.state.items()},
               "model.mystery_head.weight": torch.zeros(2)}, str(odd / "model.safetensors"))
    with pytest.raises(ConversionError, match="mystery_head"):
        convert_released(odd, tmp_path / "b", _options(release))
    (odd / "model.safetensors").unlink()
    torch.save({"weights": release.state, "optimizer": object.__new__(ConvertOptions)},
               odd / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights_only"):
        convert_released(odd, tmp_path / "c", _options(release))


@pytest.mark.parametrize("variant", ["vit_b", "vit_h"])
def test_official_sam_shapes_are_recognised_from_weights(variant: str) -> None:
    """Released checkpoints carry SAM ViT-H; its settings are read off the weight shapes."""
    from read_model.config import SAM_ENCODERS, SamConfig
    from read_model.conversion.shapes import sam_config_from_weights
    from read_model.sam import build_sam

    with torch.device("meta"):  # shapes only, no memory
        state = build_sam(SamConfig(encoder=SAM_ENCODERS[variant])).state_dict()
    config = sam_config_from_weights(list(state), state.__getitem__, decoder_heads=8)
    assert config == SamConfig(encoder=SAM_ENCODERS[variant])
    assert config.encoder.preset_name == variant
