"""Architecture settings recovered from a released checkpoint's config.json and weight shapes.

The LLaMA shapes come from the flat config.json (read as plain JSON: its ``model_type: llava``
is the old LLaVA code's and clashes with transformers' own). SAM's shapes are read off its
weights, since released configs do not describe SAM; the only thing weights cannot tell is the
decoder's head count, which is a converter flag (8 in every official SAM).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import Tensor

from read_model.config import LlavaConfig, SamConfig, SamEncoderConfig
from read_model.conversion.tensors import ConversionError

TensorGetter = Callable[[str], Tensor]


def llava_config_from_source(
    source: dict[str, Any], vision: dict[str, Any], *, torch_dtype: str
) -> LlavaConfig:
    """Text shapes from the flat LLaMA config, vision shapes from the CLIP vision config."""
    try:
        hidden = int(source["hidden_size"])
        heads = int(source["num_attention_heads"])
        config = LlavaConfig(
            path="",
            text_hidden_size=hidden,
            text_layers=int(source["num_hidden_layers"]),
            text_heads=heads,
            text_kv_heads=int(source.get("num_key_value_heads", heads)),
            text_intermediate=int(source["intermediate_size"]),
            vocab_size=int(source["vocab_size"]),
            vision_hidden_size=int(vision["hidden_size"]),
            vision_layers=int(vision["num_hidden_layers"]),
            vision_heads=int(vision["num_attention_heads"]),
            vision_intermediate=int(vision["intermediate_size"]),
            vision_image_size=int(vision["image_size"]),
            vision_patch_size=int(vision["patch_size"]),
            vision_feature_layer=int(source.get("mm_vision_select_layer", -2)),
            max_position_embeddings=int(source.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(source.get("rms_norm_eps", 1e-5)),
            torch_dtype=torch_dtype,
            query_position="preceding",
        )
    except KeyError as error:
        raise ConversionError(f"config.json lacks {error.args[0]!r}") from error
    feature = source.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise ConversionError(f"mm_vision_select_feature {feature!r}: only 'patch' is supported")
    projector = source.get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_type {projector!r}: only 'mlp2x_gelu' is supported")
    return config


def sam_config_from_weights(keys: list[str], get: TensorGetter, *, decoder_heads: int) -> SamConfig:
    """SAM's architecture from its weights (`keys` without the ``sam.`` prefix)."""
    required = ("image_encoder.pos_embed", "image_encoder.patch_embed.proj.weight")
    missing = [k for k in required if k not in keys]
    if missing:
        raise ConversionError(f"SAM weights lack {missing}: no SAM in the checkpoint?")
    grid = get("image_encoder.pos_embed").shape[1]
    embed_dim, _, patch, _ = get("image_encoder.patch_embed.proj.weight").shape
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    rel = [get(f"image_encoder.blocks.{b}.attn.rel_pos_h").shape for b in blocks]
    global_blocks = tuple(b for b, shape in zip(blocks, rel, strict=True) if shape[0] == 2 * grid - 1)
    windowed = {(shape[0] + 1) // 2 for shape in rel if shape[0] != 2 * grid - 1}
    if len(windowed) > 1:
        raise ConversionError(f"SAM blocks use several window sizes {sorted(windowed)}")
    window = windowed.pop() if windowed else 14
    head_dim = rel[0][1] if rel else embed_dim
    encoder = SamEncoderConfig(
        embed_dim=int(embed_dim),
        depth=len(blocks),
        num_heads=int(embed_dim // head_dim),
        global_attn_indexes=global_blocks,
        patch_size=int(patch),
        window_size=int(window),
    )
    decoder_layers = {int(m.group(1)) for k in keys if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
    return SamConfig(
        checkpoint="",
        encoder=encoder,
        image_size=int(grid * patch),
        prompt_embed_dim=int(get("image_encoder.neck.0.weight").shape[0]),
        decoder_depth=len(decoder_layers),
        decoder_mlp_dim=int(get("mask_decoder.transformer.layers.0.mlp.lin1.weight").shape[0]),
        decoder_heads=decoder_heads,
        iou_head_hidden_dim=int(get("mask_decoder.iou_prediction_head.layers.0.weight").shape[0]),
    )
