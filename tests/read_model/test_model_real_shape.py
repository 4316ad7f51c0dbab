"""READ-7B shapes (one layer each, random weights) run forward and predict on the CPU.

D 4096, 32k+ vocabulary, intermediate 11008, CLIP-L/14 at 336 (576 image tokens, a 24×24 grid),
SAM ViT-H width 1280 at the 1024 frame with the official prompt encoder and mask decoder.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
import torch

from read_model.batch import ReadExample, collate_train
from read_model.config import (
    SAM_ENCODERS,
    LlavaConfig,
    ReadConfig,
    SamConfig,
    SamEncoderConfig,
    SasPConfig,
    TrainableConfig,
)
from read_model.model import build_model
from read_model.presets import load_model_config

torch.set_num_threads(1)


def _real_shape_config() -> ReadConfig:
    seven_b = load_model_config("read-7b")
    llava = dataclasses.replace(
        seven_b.llava,
        path="",
        text_layers=1,
        vision_layers=1,
        vocab_size=32004,  # LLaMA's 32000 + <image>, [SEG], <im_start>, <im_end>
        torch_dtype="float32",
        gradient_checkpointing=False,
    )
    sam = SamConfig(
        # ViT-H widths, one block
        encoder=SamEncoderConfig(
            embed_dim=1280,
            depth=1,
            num_heads=16,
            global_attn_indexes=(),
            patch_size=16,
            window_size=14,
        ),
        image_size=1024,
        prompt_embed_dim=256,
    )
    tokenizer = dataclasses.replace(seven_b.tokenizer, build_tiny=True, path="")
    return dataclasses.replace(
        seven_b, llava=llava, sam=sam, tokenizer=tokenizer, trainable=TrainableConfig()
    )


def test_real_shape_config_matches_upstream_dimensions() -> None:
    config = _real_shape_config()
    assert config.llava.text_hidden_size == 4096 and config.llava.text_intermediate == 11008
    assert config.llava.vision_image_size // config.llava.vision_patch_size == 24
    assert config.sasp == SasPConfig() and config.projection_dim == 256
    assert LlavaConfig().text_hidden_size == config.llava.text_hidden_size


def test_real_shape_forward_and_predict() -> None:
    model, tokenizer = build_model(_real_shape_config())
    try:
        model.eval()
        parts = model.parts
        assert parts.hidden_size == 4096 and model.num_image_tokens == 576
        assert parts.embed_tokens.weight.shape == (32004, 4096)
        assert parts.language_model.layers[0].mlp.gate_proj.out_features == 11008
        assert model.sam.image_encoder.img_size == 1024

        rng = np.random.default_rng(0)
        height, width = 300, 400
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[50:200, 100:300] = 1
        example = ReadExample(image, [("<image>\nWhere is the box?", "It is [SEG].")], [mask])
        batch = collate_train([example], tokenizer, model.config, model.num_image_tokens)
        assert int((batch.input_ids == model.token_ids.image).sum()) == 576
        with torch.no_grad():
            out = model(batch)
            features, sam_embeddings = model.encode_images(batch.images, batch.original_sizes)
        assert features.shape == (1, 576, 4096) and sam_embeddings.shape == (1, 256, 64, 64)
        for key in ("ce", "bce", "dice", "total"):
            assert torch.isfinite(getattr(out.losses, key)), key
        assert out.mask_logits[0].shape == (1, height, width)
        del out, features, sam_embeddings

        predictions = model.predict([image], ["Where is the box?"], max_new_tokens=2)
        (prediction,) = predictions
        assert len(prediction.token_ids) <= 2
        n_seg = prediction.token_ids.count(model.token_ids.seg)
        assert prediction.masks.shape == (n_seg, height, width)
        assert prediction.similarity_map.shape == (n_seg, 24, 24)
        assert prediction.points.shape == (n_seg, 30, 2)
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("mode", ["points_dtoc"])
def test_real_shape_seg_points_and_sparse_prompt_length(mode: str) -> None:
    """30 SasP points + SAM's padding point + the [SEG] embedding = 32 sparse tokens."""
    from read_model.sam import build_sam

    sam = build_sam(SamConfig(encoder=SAM_ENCODERS["vit_b"], image_size=1024)).eval()
    assert sam.image_encoder.neck[0].out_channels == 256
    points = torch.rand(2, 30, 2) * 1000
    labels = torch.randint(-1, 2, (2, 30))
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    assert sparse.shape[1] + 1 == 32
    del sam
    gc.collect()
