"""What makes a `ReadConfig` usable: every rule whose violation would only fail later.

`ReadConfig.validate()` runs these (and `JobConfig.validate()` runs them for the `model:`
section), so a bad value is refused at start-up with its key named, not deep inside a forward
pass on a worker. Rules about the vision tower's shape use the loaded tower's values when the
model passes them (`llava.path` set), else the `llava.*` fields.
"""

from __future__ import annotations

import re

from read_model.config import Problems, ReadConfig

FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
SAM_CROSS_ATTENTION_DOWNSAMPLE = 2  # TwoWayTransformer's attention_downsample_rate default


def model_problems(
    config: ReadConfig,
    problems: Problems,
    *,
    vision_image_size: int | None = None,
    vision_patch_size: int | None = None,
) -> None:
    """Add every invalid value of `config` (keys under ``model.``) to `problems`."""
    require = problems.require
    llava, sam, sasp = config.llava, config.sam, config.sasp
    require(
        config.projection_dim == sam.prompt_embed_dim,
        "model.projection_dim",
        config.projection_dim,
        f"must equal model.sam.prompt_embed_dim ({sam.prompt_embed_dim}): the [SEG] embedding "
        "is a SAM prompt token",
    )
    require(config.num_classes_per_sample >= 1, "model.num_classes_per_sample",
            config.num_classes_per_sample, "must be >= 1")
    _llava(config, problems)
    _sam(config, problems)

    if vision_image_size is not None:
        require(
            llava.vision_image_size == vision_image_size,
            "model.llava.vision_image_size",
            llava.vision_image_size,
            f"must equal the vision tower's image size ({vision_image_size}): images are "
            "center-cropped to it",
        )
    if vision_image_size is None and not llava.path:
        vision_image_size, vision_patch_size = llava.vision_image_size, llava.vision_patch_size
    require(sasp.num_points >= 1, "model.sasp.num_points", sasp.num_points, "must be >= 1")
    require(sasp.down_sample >= 1, "model.sasp.down_sample", sasp.down_sample, "must be >= 1")
    if vision_image_size and vision_patch_size and sasp.down_sample >= 1:
        grid = vision_image_size // vision_patch_size
        require(
            grid % sasp.down_sample == 0,
            "model.sasp.down_sample",
            sasp.down_sample,
            f"must divide the {grid}x{grid} CLIP grid (vision image size {vision_image_size} / "
            f"patch {vision_patch_size})",
        )
    if sasp.threshold_mode == "fixed":
        require(0.0 <= sasp.t_neg < sasp.t_pos <= 1.0, "model.sasp.t_neg", sasp.t_neg,
                f"and model.sasp.t_pos={sasp.t_pos!r} must satisfy 0 <= t_neg < t_pos <= 1 "
                "(the similarity grid is min-max normalised to [0, 1])")
    require(sasp.std_factor >= 0, "model.sasp.std_factor", sasp.std_factor, "must be >= 0")
    require(sasp.normalise_eps >= 0, "model.sasp.normalise_eps", sasp.normalise_eps, "must be >= 0")
    require(sasp.dtoc_window_radius >= 1, "model.sasp.dtoc_window_radius",
            sasp.dtoc_window_radius, "must be >= 1")
    require(sasp.dtoc_eps >= 0, "model.sasp.dtoc_eps", sasp.dtoc_eps, "must be >= 0")
    require(0.0 <= sasp.siou_threshold <= 1.0, "model.sasp.siou_threshold", sasp.siou_threshold,
            "must be in [0, 1]")

    loss = config.loss
    for name in ("ce_weight", "bce_weight", "dice_weight", "dice_eps", "mask_count_eps"):
        value = getattr(loss, name)
        require(value >= 0, f"model.loss.{name}", value, "must be >= 0")
    require(loss.dice_scale > 0, "model.loss.dice_scale", loss.dice_scale, "must be > 0")

    lora = config.lora
    if lora.enabled:
        require(lora.r >= 1, "model.lora.r", lora.r, "must be >= 1 when model.lora.enabled")
        require(lora.alpha > 0, "model.lora.alpha", lora.alpha, "must be > 0")
        require(0.0 <= lora.dropout < 1.0, "model.lora.dropout", lora.dropout, "must be in [0, 1)")
        require(_compiles(lora.target_modules), "model.lora.target_modules",
                lora.target_modules, "is not a valid regular expression")

    tokenizer = config.tokenizer
    require(tokenizer.model_max_length >= 1, "model.tokenizer.model_max_length",
            tokenizer.model_max_length, "must be >= 1")
    if vision_image_size and vision_patch_size:
        tokens = (vision_image_size // vision_patch_size) ** 2
        require(
            tokenizer.model_max_length > tokens,
            "model.tokenizer.model_max_length",
            tokenizer.model_max_length,
            f"must exceed the {tokens} image tokens of a prompt, or every answer is cut",
        )
    if tokenizer.build_tiny:
        require(tokenizer.tiny_vocab_size >= 1, "model.tokenizer.tiny_vocab_size",
                tokenizer.tiny_vocab_size, "must be >= 1")


def _llava(config: ReadConfig, problems: Problems) -> None:
    """Shapes are checked only when built from fields; a loaded checkpoint has its own."""
    require, llava = problems.require, config.llava
    require(llava.torch_dtype in FLOAT_DTYPES, "model.llava.torch_dtype", llava.torch_dtype,
            f"must be one of {list(FLOAT_DTYPES)}")
    require(llava.image_token_id >= -1, "model.llava.image_token_id", llava.image_token_id,
            "must be >= 0, or -1 for the tokenizer's <image> id")
    if llava.path:
        return
    positive = ("text_hidden_size", "text_layers", "text_heads", "text_kv_heads",
                "text_intermediate", "vision_hidden_size", "vision_layers", "vision_heads",
                "vision_intermediate", "vision_image_size", "vision_patch_size",
                "max_position_embeddings")
    for name in positive:
        value = getattr(llava, name)
        require(value >= 1, f"model.llava.{name}", value, "must be >= 1")
    if any(getattr(llava, name) < 1 for name in positive):
        return
    require(llava.vocab_size >= 0, "model.llava.vocab_size", llava.vocab_size,
            "must be >= 0 (0 = the tokenizer's size)")
    require(llava.vision_image_size % llava.vision_patch_size == 0, "model.llava.vision_image_size",
            llava.vision_image_size, f"must be a multiple of model.llava.vision_patch_size "
            f"({llava.vision_patch_size})")
    for hidden, heads in (("text_hidden_size", "text_heads"),
                          ("vision_hidden_size", "vision_heads")):
        require(getattr(llava, hidden) % getattr(llava, heads) == 0, f"model.llava.{hidden}",
                getattr(llava, hidden), f"must be a multiple of model.llava.{heads} "
                f"({getattr(llava, heads)})")
    require(llava.text_heads % llava.text_kv_heads == 0, "model.llava.text_heads",
            llava.text_heads, f"must be a multiple of model.llava.text_kv_heads "
            f"({llava.text_kv_heads})")
    layers = llava.vision_layers
    require(-(layers + 1) <= llava.vision_feature_layer <= layers,
            "model.llava.vision_feature_layer", llava.vision_feature_layer,
            f"must index one of the {layers + 1} CLIP hidden states (model.llava.vision_layers "
            f"{layers})")


def _sam(config: ReadConfig, problems: Problems) -> None:
    require, sam = problems.require, config.sam
    encoder = sam.encoder
    for name in ("embed_dim", "depth", "num_heads", "patch_size", "window_size"):
        value = getattr(encoder, name)
        require(value >= 1, f"model.sam.encoder.{name}", value, "must be >= 1")
    for name in ("image_size", "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim",
                 "decoder_heads", "iou_head_hidden_dim"):
        value = getattr(sam, name)
        require(value >= 1, f"model.sam.{name}", value, "must be >= 1")
    if encoder.patch_size >= 1:
        require(sam.image_size % encoder.patch_size == 0, "model.sam.image_size", sam.image_size,
                f"must be a multiple of model.sam.encoder.patch_size ({encoder.patch_size})")
    if encoder.num_heads >= 1:
        require(encoder.embed_dim % encoder.num_heads == 0, "model.sam.encoder.embed_dim",
                encoder.embed_dim, f"must be a multiple of model.sam.encoder.num_heads "
                f"({encoder.num_heads})")
    require(all(0 <= i < encoder.depth for i in encoder.global_attn_indexes),
            "model.sam.encoder.global_attn_indexes", list(encoder.global_attn_indexes),
            f"must name blocks 0 .. {encoder.depth - 1} of the encoder "
            f"(model.sam.encoder.depth={encoder.depth})")
    if sam.decoder_heads >= 1:  # SAM's cross-attention works at half the prompt width
        require((sam.prompt_embed_dim // SAM_CROSS_ATTENTION_DOWNSAMPLE) % sam.decoder_heads == 0,
                "model.sam.prompt_embed_dim", sam.prompt_embed_dim,
                f"must be {SAM_CROSS_ATTENTION_DOWNSAMPLE} x a multiple of "
                f"model.sam.decoder_heads ({sam.decoder_heads})")


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True
