"""Typed configuration for the READ model.

Every number the paper or the upstream code hard-codes lives here as a named field whose default
is the upstream value, so a variant (e.g. READ-13B's 60 points / t_pos 0.6) is a config change,
never a code edit. YAML presets in ``configs/`` are loaded with :func:`from_dict`, which refuses
unknown keys by name so a typo fails at start-up rather than after an hour of training.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

PromptMode = Literal["seg_only", "points_discrete", "points_dtoc"]
ThresholdMode = Literal["fixed", "meanstd"]
QueryPosition = Literal["preceding", "seg"]
AddedTokenSpacing = Literal["upstream", "tokenizer"]


@dataclass
class TokenizerConfig:
    """Where the tokenizer comes from and the special tokens READ relies on."""

    path: str = ""  # a saved tokenizer directory; empty = the LLaVA path
    build_tiny: bool = False  # build the offline tiny tokenizer with the `tokenizers` library
    seg_token: str = "[SEG]"
    image_token: str = "<image>"
    pad_to_unk: bool = True  # upstream pads with unk (id 0) so training masks match
    model_max_length: int = 2048
    # Upstream wraps every <image> as <im_start><image><im_end> (mm_use_im_start_end: true).
    use_im_start_end: bool = True
    im_start_token: str = "<im_start>"
    im_end_token: str = "<im_end>"
    tiny_vocab_size: int = 800  # BPE vocabulary of the offline tiny tokenizer (incl. specials)
    # "upstream": text is cut at [SEG] / <im_start> / <im_end>, the whitespace touching them is
    # dropped and every piece is encoded on its own, as the slow tokenizer of transformers 4.31
    # did for upstream (docs/fidelity.md, "Tokens"); "tokenizer": the loaded tokenizer decides.
    added_token_spacing: AddedTokenSpacing = "upstream"


@dataclass
class LlavaSettings:
    """LLaVA-1.5 through transformers (llava-hf layout) or a from-scratch tiny architecture."""

    path: str = ""  # llava-hf checkpoint directory; empty = build from the fields below
    # Shapes used when `path` is empty (the tiny preset and the random real-shape tests).
    text_hidden_size: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_kv_heads: int = 32
    text_intermediate: int = 11008
    vocab_size: int = 32000
    vision_hidden_size: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    vision_image_size: int = 336
    vision_patch_size: int = 14
    vision_feature_layer: int = -2  # LLaVA-1.5: penultimate CLIP layer
    projector_hidden_act: str = "gelu"
    max_position_embeddings: int = 4096
    # Preprocessing (READ center-crops, unlike llava-hf's pad-to-square).
    clip_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    clip_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    query_position: QueryPosition = "preceding"  # upstream: state of the token before [SEG]
    torch_dtype: str = "float32"  # "bfloat16" for 7B/13B on GPU
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    rms_norm_eps: float = 1e-5  # Vicuna-1.5 / llava-1.5 text config value
    image_token_id: int = -1  # -1 = the tokenizer's `<image>` id (a loaded llava-hf config wins)
    # Rows of tokens READ adds to a loaded checkpoint's vocabulary ([SEG], <im_start>, <im_end>
    # on a llava-hf checkpoint), in embed_tokens and lm_head: "normal" draws them from
    # N(0, new_token_init_std) as upstream's transformers-4.31 resize_token_embeddings did
    # (LLaMA initializer_range 0.02); "keep" leaves what the checkpoint has there (llava-hf's
    # padding rows). Rows the checkpoint's tokenizer already had are never touched.
    new_token_init: Literal["normal", "keep"] = "normal"
    new_token_init_std: float = 0.02


@dataclass
class SamSettings:
    """SAM from the segment-anything package."""

    checkpoint: str = ""  # e.g. sam_vit_h_4b8939.pth (loaded with weights_only=True)
    variant: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    image_size: int = 1024  # ResizeLongestSide target and the padded frame
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # Tiny encoder shapes (variant == "tiny" only).
    tiny_embed_dim: int = 64
    tiny_depth: int = 2
    tiny_heads: int = 2
    tiny_patch_size: int = 16
    tiny_window_size: int = 4
    tiny_global_attn_indexes: tuple[int, ...] = (1,)  # blocks with global attention (tiny)
    prompt_embed_dim: int = 256
    # Mask decoder shapes (official SAM: two-way transformer depth 2, mlp 2048, 8 heads, IoU head
    # 3 x 256); the tiny preset shrinks them.
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_threshold: float = 0.0  # logits > 0 is a foreground pixel


@dataclass
class SasPConfig:
    """Similarity-as-Points and DtoC (`READ:model/READ.py`; docs/fidelity.md)."""

    num_points: int = 30
    down_sample: int = 2  # coarse grid = grid // down_sample (READ-13B test: 1)
    threshold_mode: ThresholdMode = "fixed"
    t_pos: float = 0.8  # fixed mode (the code)
    t_neg: float = 0.2
    std_factor: float = 0.5  # meanstd mode (the paper): mu +- k * sigma
    clip_image_size: int = 336  # the CLIP crop the similarity grid covers
    normalise_eps: float = 1e-12  # min-max guard; upstream has none (constant maps gave NaN)
    dtoc_window_radius: int = 6  # exp(-r^2) < 1e-15 beyond this, so the window is exact
    dtoc_eps: float = 0.0  # added to the DtoC normaliser (upstream: none)
    # SIoU (paper analysis; upstream has no code for it): a full-resolution similarity-map pixel
    # is foreground when its value (min-max normalised over the grid) is >= this threshold.
    siou_threshold: float = 0.5


@dataclass
class LossConfig:
    """CE + BCE + Dice with upstream's per-mask normalisation (`READ:model/READ.py`)."""

    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    dice_scale: float = 1000.0
    dice_eps: float = 1e-6
    mask_count_eps: float = 1e-8


@dataclass
class LoraSettings:
    """LoRA on the language model's attention projections only (CLIP has q_proj/v_proj too)."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = r".*language_model.*\.(q_proj|v_proj)"


@dataclass
class TrainableSettings:
    """Which modules train fully (`READ:model/READ.py` init_READ_model); the rest stays frozen."""

    embed_tokens: bool = True
    lm_head: bool = True
    mask_decoder: bool = True
    seg_projection: bool = True
    # The tiny preset trains from scratch, so it unfreezes everything.
    language_model: bool = False
    vision_tower: bool = False
    projector: bool = False
    sam_image_encoder: bool = False
    sam_prompt_encoder: bool = False


@dataclass
class ReadConfig:
    """Everything needed to build a READ model."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    llava: LlavaSettings = field(default_factory=LlavaSettings)
    sam: SamSettings = field(default_factory=SamSettings)
    sasp: SasPConfig = field(default_factory=SasPConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainable: TrainableSettings = field(default_factory=TrainableSettings)
    prompt_mode: PromptMode = "points_dtoc"
    projection_dim: int = 256  # [SEG] projection D -> D -> 256 (SAM prompt space)
    # read_heads.safetensors of a converted or exported READ model: SAM (with its trained mask
    # decoder) and the [SEG] projection start from it instead of sam.checkpoint + random
    # (upstream's use_released_param=True, e.g. training from SESAME). Empty: not used.
    init_heads: str = ""
    num_classes_per_sample: int = 3  # conversations drawn per training image
    seed: int = 0


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key named."""


def from_dict(cls: type, data: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, refusing unknown keys and wrong types by name."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"unknown config key(s) {[_join(path, k) for k in unknown]} in {where}; "
            f"valid keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(path, name))
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-friendly dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def flatten(config_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the form MLflow params and CLI overrides use."""
    flat: dict[str, Any] = {}
    for key, value in config_dict.items():
        name = _join(prefix, key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def apply_overrides(config_dict: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) onto a nested dict, in order."""
    import yaml

    result = _deep_copy(config_dict)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}")
        return from_dict(hint, value, path)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(args[0], value, path) if value is not None else None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return tuple(value)
    if origin in (list, dict):
        expected = list if origin is list else dict
        if not isinstance(value, expected):
            raise ConfigError(f"{path} must be a {expected.__name__}, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
