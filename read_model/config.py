"""Typed configuration for the READ model.

Every number the paper or the upstream code hard-codes lives here as a named field whose default
is the upstream value, so a variant (e.g. READ-13B's 60 points / t_pos 0.6) is a config change,
never a code edit. YAML presets in ``configs/`` are loaded with :func:`from_dict`, which refuses
unknown keys and wrong types by name, and :meth:`ReadConfig.validate` (rules in
``read_model/config_rules.py``) refuses values that would only fail later, so a typo or a bad
number fails at start-up rather than after an hour of training. Nothing is stored twice: the
CLIP crop is the vision tower's image size, SAM's encoder shape is the one ``sam.encoder`` field.
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
class LlavaConfig:
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


@dataclass(frozen=True)
class SamEncoderConfig:
    """The SAM image-encoder shape (ViT): what distinguishes vit_h / vit_l / vit_b / tiny.

    In YAML either a preset name (``encoder: vit_h``, see :data:`SAM_ENCODERS`) or a mapping of
    these fields. The defaults are ViT-H's.
    """

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks with global attention
    patch_size: int = 16
    window_size: int = 14  # windowed attention in every other block

    @property
    def preset_name(self) -> str | None:
        """"vit_h" etc. when this is a named preset's shape, else None."""
        return next((name for name, shape in SAM_ENCODERS.items() if shape == self), None)


# segment-anything's build_sam.py (vit_h / vit_l / vit_b), and the tiny preset's encoder.
SAM_ENCODERS: dict[str, SamEncoderConfig] = {
    "vit_h": SamEncoderConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamEncoderConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamEncoderConfig(768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamEncoderConfig(64, 2, 2, (1,), patch_size=16, window_size=4),
}


@dataclass
class SamConfig:
    """SAM from the segment-anything package."""

    checkpoint: str = ""  # e.g. sam_vit_h_4b8939.pth (loaded with weights_only=True)
    encoder: SamEncoderConfig = field(default_factory=SamEncoderConfig)  # default: vit_h
    image_size: int = 1024  # ResizeLongestSide target and the padded frame
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
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
    # The CLIP crop the similarity grid covers is not a field here: it is the vision tower's
    # image size (llava.vision_image_size, or the loaded llava-hf config's), given to SasP by
    # the model.
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
class LoraConfig:
    """LoRA on the language model's attention projections only (CLIP has q_proj/v_proj too)."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = r".*language_model.*\.(q_proj|v_proj)"


@dataclass
class TrainableConfig:
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
    llava: LlavaConfig = field(default_factory=LlavaConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    sasp: SasPConfig = field(default_factory=SasPConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    prompt_mode: PromptMode = "points_dtoc"
    projection_dim: int = 256  # [SEG] projection D -> D -> 256 (SAM prompt space)
    # read_heads.safetensors of a converted or exported READ model: SAM (with its trained mask
    # decoder) and the [SEG] projection start from it instead of sam.checkpoint + random
    # (upstream's use_released_param=True, e.g. training from SESAME). Empty: not used.
    init_heads: str = ""
    num_classes_per_sample: int = 3  # conversations drawn per training image
    seed: int = 0

    def validate(
        self, *, vision_image_size: int | None = None, vision_patch_size: int | None = None
    ) -> None:
        """Refuse, in one `ConfigError` naming every bad key, what would only fail later.

        `vision_image_size` / `vision_patch_size` are the loaded vision tower's (the model
        passes them); without them the llava fields are used when `llava.path` is empty.
        """
        from read_model.config_rules import model_problems

        problems = Problems()
        model_problems(
            self, problems, vision_image_size=vision_image_size, vision_patch_size=vision_patch_size
        )
        problems.raise_if_any()


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key named."""


class Problems:
    """Every invalid value of a config, collected so that one error line names them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def require(self, ok: bool, key: str, value: Any, rule: str) -> None:
        """Record `key=value <rule>` unless `ok`."""
        if not ok:
            self.messages.append(f"{key}={value!r} {rule}")

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("; ".join(self.messages))


# Keys that existed once, with what replaces them (older YAMLs get a pointer, not just "unknown").
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("SasPConfig", "clip_image_size"): "was removed: the CLIP crop is model.llava.vision_image_size "
    "(or the llava-hf config's when model.llava.path is set)",
    ("SamConfig", "variant"): "was removed: name the encoder with model.sam.encoder "
    f"({' / '.join(SAM_ENCODERS)} or a mapping of {[f.name for f in dataclasses.fields(SamEncoderConfig)]})",
}
_LEGACY_TINY_FIELDS = {
    "tiny_embed_dim": "embed_dim", "tiny_depth": "depth", "tiny_heads": "num_heads",
    "tiny_patch_size": "patch_size", "tiny_window_size": "window_size",
    "tiny_global_attn_indexes": "global_attn_indexes",
}
for _name in _LEGACY_TINY_FIELDS:
    REMOVED_KEYS[("SamConfig", _name)] = REMOVED_KEYS[("SamConfig", "variant")]
# Types whose YAML value may also be a preset name.
NAMED_PRESETS: dict[type, dict[str, Any]] = {SamEncoderConfig: SAM_ENCODERS}


def from_dict(cls: type, data: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, refusing unknown keys and wrong types by name."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    removed = [k for k in unknown if (cls.__name__, k) in REMOVED_KEYS]
    if removed:
        key = removed[0]
        raise ConfigError(f"{_join(path, key)} {REMOVED_KEYS[(cls.__name__, key)]}")
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


def upgrade_legacy_model_dict(model: dict[str, Any]) -> dict[str, Any]:
    """A `model:` dict written before `sam.encoder` existed, in today's keys (same model).

    Checkpoints saved earlier carry `sasp.clip_image_size` (now derived from the vision tower)
    and `sam.variant` + `sam.tiny_*` (now one `sam.encoder`); they keep loading unchanged.
    """
    upgraded = _deep_copy(model)
    sasp, sam = upgraded.get("sasp"), upgraded.get("sam")
    if isinstance(sasp, dict):
        sasp.pop("clip_image_size", None)
    if isinstance(sam, dict) and ("variant" in sam or set(sam) & set(_LEGACY_TINY_FIELDS)):
        variant = sam.pop("variant", "vit_h")
        tiny = {new: sam.pop(old) for old, new in _LEGACY_TINY_FIELDS.items() if old in sam}
        if variant == "tiny":
            sam["encoder"] = {**to_dict(SAM_ENCODERS["tiny"]), **tiny}
        else:
            sam["encoder"] = variant
    return upgraded


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


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when available (the pure-Python parser is ~10x slower)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def apply_overrides(config_dict: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) onto a nested dict, in order."""
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
        node[parts[-1]] = load_yaml(raw)
    return result


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        presets = NAMED_PRESETS.get(hint)  # type: ignore[call-overload]
        if presets is not None and isinstance(value, str):
            if value not in presets:
                raise ConfigError(f"{path} must be one of {list(presets)} or a mapping, got {value!r}")
            return presets[value]
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
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            raise ConfigError(f"{path} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a dict, got {value!r}")
        _, item = typing.get_args(hint) or (Any, Any)
        return {k: _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if hint is float:
        return _to_float(value, path)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value


def _to_float(value: Any, path: str) -> float:
    """Numbers, and strings such as "1e-4" (YAML 1.1 reads exponents without a dot as text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{path} must be a number, got {value!r}")


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
