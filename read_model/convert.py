"""Convert a released READ / LISA / SESAME checkpoint into the project's model directory.

    read-convert SRC DST --clip CLIP_DIR [--sam-checkpoint sam_vit_h_4b8939.pth]

SRC is the LLaVA-original layout (`READ:merge_lora_weights_and_save_hf_model.py` output): a flat
LLaMA ``config.json``, weights in
safetensors or ``pytorch_model*.bin`` shards (read with ``weights_only=True``), and the slow LLaMA
tokenizer with ``[SEG]``/``<im_start>``/``<im_end>`` added. Un-merged peft dumps
(``base_model.model.*`` with ``lora_A/lora_B``) are merged on the way. DST is a *merged* READ
checkpoint directory (`read_model.checkpoint`): ``llava/`` in llava-hf layout, SAM and the [SEG]
projection in ``read_heads.safetensors``, and ``read_config.json``; load it with
`read_model.checkpoint.load_model_dir`.

The token-id clash with llava-hf is resolved by keeping READ's ids and appending ``<image>``
(see `read_model.conversion.tokens`). Tensors are streamed one at a time into bounded shards, so
a 13B checkpoint converts without holding two copies in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from read_model.checkpoint import CONFIG_FILE, FORMAT, HEADS_FILE, LLAVA_DIR, META_FILE
from read_model.config import (
    ConfigError,
    LlavaConfig,
    LoraConfig,
    ReadConfig,
    SamConfig,
    SasPConfig,
    TokenizerConfig,
    to_dict,
)
from read_model.conversion.keys import (
    DROP,
    EMBED_KEY,
    HEADS,
    LM_HEAD_KEY,
    MergedView,
    clip_destination,
    upstream_destination,
    with_placeholder_row,
)
from read_model.conversion.shapes import llava_config_from_source, sam_config_from_weights
from read_model.conversion.tensors import ConversionError, ShardWriter, TensorStore
from read_model.conversion.tokens import ConvertedTokenizer, convert_tokenizer
from read_model.llava import llava_config, resolve_dtype

PROVENANCE_FILE = "conversion.json"
DEFAULT_LORA_ALPHA = 16  # upstream LoraConfig(lora_alpha=16) in every documented run
OFFICIAL_SAM_DECODER_HEADS = 8
DEFAULT_MAX_SHARD_GB = 4.0

Getter = Callable[[], Tensor]


@dataclasses.dataclass
class ConvertOptions:
    """Everything the conversion needs besides SRC and DST (CLI flags map 1:1)."""

    clip: Path | None = None  # CLIP directory: vision config (+ weights when SRC has none)
    sam_checkpoint: Path | None = None  # official SAM .pth, used only when SRC has no SAM
    weights: Path | None = None  # a weights directory/file other than SRC (e.g. a peft dump)
    lora_r: int | None = None  # checked against lora_A's rank; None = inferred
    lora_alpha: float = DEFAULT_LORA_ALPHA
    dtype: str | None = None  # None = config.json's torch_dtype (else float32)
    sam_decoder_heads: int = OFFICIAL_SAM_DECODER_HEADS
    sasp: SasPConfig = dataclasses.field(default_factory=SasPConfig)
    max_shard_bytes: int = int(DEFAULT_MAX_SHARD_GB * (1 << 30))
    tokenizer_legacy: bool = True  # upstream loads the slow tokenizer with legacy=True


def convert_released(source: str | Path, destination: str | Path, options: ConvertOptions) -> Path:
    """Write the project's merged model directory for the released checkpoint at `source`."""
    source, destination = Path(source), Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise ConversionError(f"{destination} exists and is not empty")
    source_config = _read_config(source)
    view = MergedView(
        _store(options.weights or source), lora_alpha=options.lora_alpha, lora_r=options.lora_r
    )
    llava_getters, heads_getters = _route(view)
    clip_config = _vision_config(options.clip)
    if not any(k.startswith("model.vision_tower.") for k in llava_getters):
        llava_getters.update(_clip_getters(options.clip))
    if not any(k.startswith("sam.") for k in heads_getters):
        heads_getters.update(_sam_getters(options.sam_checkpoint))
    elif options.sam_checkpoint is not None:
        print(f"note: {source} carries SAM weights (fine-tuned decoder); "
              f"--sam-checkpoint {options.sam_checkpoint} is not used", file=sys.stderr)

    if EMBED_KEY not in llava_getters or LM_HEAD_KEY not in llava_getters:
        raise ConversionError("the source has no model.embed_tokens.weight / lm_head.weight")
    source_rows = int(llava_getters[EMBED_KEY]().shape[0])
    if int(source_config.get("vocab_size", source_rows)) != source_rows:
        raise ConversionError(
            f"config.json vocab_size {source_config['vocab_size']} but embed_tokens has "
            f"{source_rows} rows"
        )
    tokenizer_config = TokenizerConfig(use_im_start_end=True)
    converted = convert_tokenizer(
        source, tokenizer_config, source_rows, legacy=options.tokenizer_legacy
    )
    ids = converted.ids
    dtype_name = options.dtype or str(source_config.get("torch_dtype") or "float32")
    dtype = resolve_dtype(dtype_name)

    settings = llava_config_from_source(
        source_config, clip_config.to_dict(), torch_dtype=dtype_name
    )
    settings = dataclasses.replace(settings, vocab_size=converted.vocab_rows)
    hf_config = llava_config(settings, converted.vocab_rows, ids.image, ids.pad)
    hf_config.vision_config = clip_config
    if "rope_theta" in source_config:
        hf_config.text_config.rope_parameters["rope_theta"] = float(source_config["rope_theta"])
    hf_config.text_config.bos_token_id, hf_config.text_config.eos_token_id = ids.bos, ids.eos

    sam_keys = [k[len("sam.") :] for k in heads_getters if k.startswith("sam.")]
    sam = sam_config_from_weights(
        sam_keys, lambda k: heads_getters[f"sam.{k}"](), decoder_heads=options.sam_decoder_heads
    )
    if "projection.layers.2.weight" not in heads_getters:
        raise ConversionError("the source has no model.text_hidden_fcs ([SEG] projection)")
    projection_dim = int(heads_getters["projection.layers.2.weight"]().shape[0])
    config = ReadConfig(
        tokenizer=tokenizer_config,
        llava=settings,
        sam=sam,
        sasp=options.sasp,
        lora=LoraConfig(enabled=False),
        prompt_mode="points_dtoc",
        projection_dim=projection_dim,
    )
    config.validate()  # before anything is written

    destination.mkdir(parents=True, exist_ok=True)
    llava_dir = destination / LLAVA_DIR
    llava_dir.mkdir()
    _write_llava(llava_dir, llava_getters, hf_config, converted, dtype, options)
    hf_config.save_pretrained(str(llava_dir))
    converted.save(llava_dir)
    _write_generation_config(llava_dir, ids)
    _write_heads(destination / HEADS_FILE, heads_getters, sam, settings.text_hidden_size, projection_dim)

    _write_json(destination / CONFIG_FILE, to_dict(config))
    _write_json(destination / META_FILE, {"format": FORMAT, "kind": "merged"})
    _write_json(
        destination / PROVENANCE_FILE,
        {
            "source": str(source.resolve()),
            "architectures": source_config.get("architectures", []),
            "source_vocab_rows": source_rows,
            "vocab_rows": converted.vocab_rows,
            "token_ids": dataclasses.asdict(ids),
            "lora_merged_weights": len(view.adapted_keys),
            "lora_alpha": options.lora_alpha if view.adapted_keys else None,
        },
    )
    return destination


def _read_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} not found: not a checkpoint directory")
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON: model_type clashes with HF's
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return data


def _store(path: Path) -> TensorStore:
    return TensorStore([path]) if path.is_file() else TensorStore.from_directory(path)


def _route(view: MergedView) -> tuple[dict[str, Getter], dict[str, Getter]]:
    """Project key -> lazy getter, split into the llava-hf part and the heads part."""
    llava: dict[str, Getter] = {}
    heads: dict[str, Getter] = {}
    for key in view.names():
        destination = upstream_destination(key)
        if destination.target == DROP:
            continue
        target = heads if destination.target == HEADS else llava
        target[destination.key] = _getter(view.get, key)
    return llava, heads


def _getter(get: Callable[[str], Tensor], key: str) -> Getter:
    return lambda: get(key)


def _vision_config(clip: Path | None) -> Any:
    from transformers import CLIPVisionConfig

    if clip is None:
        raise ConversionError(
            "--clip is required: the CLIP vision config (and, for released checkpoints, its "
            "weights) comes from a CLIP directory such as openai/clip-vit-large-patch14-336"
        )
    if not (clip / "config.json").is_file():
        raise ConversionError(f"{clip} has no config.json: not a CLIP directory")
    return CLIPVisionConfig.from_pretrained(str(clip))  # takes vision_config out of a CLIPModel


def _clip_getters(clip: Path | None) -> dict[str, Getter]:
    assert clip is not None  # _vision_config already refused None
    store = TensorStore.from_directory(clip)
    getters: dict[str, Getter] = {}
    for key in store.names():
        destination = clip_destination(key)
        if destination.target != DROP:
            getters[destination.key] = _getter(store.get, key)
    if not getters:
        raise ConversionError(f"{clip} holds no vision_model.* weights")
    return getters


def _sam_getters(checkpoint: Path | None) -> dict[str, Getter]:
    if checkpoint is None:
        raise ConversionError(
            "the source has no SAM weights (model.visual_model.*): pass --sam-checkpoint"
        )
    store = TensorStore([checkpoint])
    return {
        f"sam.{key}": _getter(store.get, key)
        for key in store.names()
        if key not in ("pixel_mean", "pixel_std")
    }


def _expected_shapes(module_factory: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a module built on the meta device (no memory used)."""
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _check_keys(what: str, expected: dict[str, tuple[int, ...]], present: set[str]) -> None:
    missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"{what} weights do not match the architecture: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )


def _checked(what: str, key: str, tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(tensor.shape) != shape:
        raise ConversionError(f"{what} {key}: shape {tuple(tensor.shape)}, expected {shape}")
    return tensor


def _write_llava(
    directory: Path,
    getters: dict[str, Getter],
    hf_config: Any,
    converted: ConvertedTokenizer,
    dtype: torch.dtype,
    options: ConvertOptions,
) -> None:
    from transformers import LlavaForConditionalGeneration

    vocab_rows, image_id = converted.vocab_rows, converted.ids.image
    expected = _expected_shapes(lambda: LlavaForConditionalGeneration(hf_config))
    _check_keys("LLaVA", expected, set(getters))
    writer = ShardWriter(directory, "model", options.max_shard_bytes)
    for key, get in getters.items():
        tensor = get()
        if key == EMBED_KEY:  # <image> row: overwritten by CLIP features, any finite value
            tensor = with_placeholder_row(tensor, vocab_rows, fill=tensor.float().mean(0))
        elif key == LM_HEAD_KEY:  # never predicted (masked at decode time): zero row, also
            tensor = with_placeholder_row(tensor, vocab_rows, fill=None).clone()  # when <image>
            tensor[image_id] = 0  # reuses an unused padding row of a padded vocabulary
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        writer.add(key, _checked("LLaVA", key, tensor, expected[key]))
    writer.close()


def _write_heads(
    path: Path,
    getters: dict[str, Getter],
    sam: SamConfig,
    hidden_size: int,
    projection_dim: int,
) -> None:
    from read_model.projection import SegProjection
    from read_model.sam import build_sam

    expected = {f"sam.{k}": v for k, v in _expected_shapes(lambda: build_sam(sam)).items()}
    expected.update(
        {
            f"projection.{k}": v
            for k, v in _expected_shapes(
                lambda: SegProjection(hidden_size=hidden_size, projection_dim=projection_dim)
            ).items()
        }
    )
    _check_keys("SAM / [SEG] projection", expected, set(getters))
    heads = {
        key: _checked("heads", key, get(), expected[key]).contiguous()
        for key, get in getters.items()
    }
    save_file(heads, str(path), metadata={"format": FORMAT})


def _write_generation_config(directory: Path, ids: Any) -> None:
    """Plain HF `generate` must never emit the <image> placeholder either."""
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        suppress_tokens=[ids.image],
    ).save_pretrained(str(directory))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    defaults = SasPConfig()
    parser = argparse.ArgumentParser(
        prog="read-convert",
        description="Convert a released READ/LISA/SESAME checkpoint (LLaVA-original layout) "
        "into a READ model directory (llava-hf layout + SAM + [SEG] projection).",
    )
    parser.add_argument("source", type=Path, help="released checkpoint directory")
    parser.add_argument("destination", type=Path, help="new (empty) model directory")
    parser.add_argument("--clip", type=Path, help="CLIP directory (openai/clip-vit-large-patch14-336)")
    parser.add_argument("--sam-checkpoint", type=Path, help="SAM .pth when the source has no SAM")
    parser.add_argument("--weights", type=Path, help="weights file/dir other than SOURCE (peft dump)")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (checked; default: inferred)")
    parser.add_argument("--lora-alpha", type=float, default=DEFAULT_LORA_ALPHA)
    parser.add_argument("--dtype", default=None, help="weights dtype (default: config.json torch_dtype)")
    parser.add_argument("--sam-decoder-heads", type=int, default=OFFICIAL_SAM_DECODER_HEADS)
    parser.add_argument("--num-points", type=int, default=defaults.num_points)
    parser.add_argument("--down-sample", type=int, default=defaults.down_sample)
    parser.add_argument("--t-pos", type=float, default=defaults.t_pos)
    parser.add_argument("--t-neg", type=float, default=defaults.t_neg)
    parser.add_argument(
        "--threshold-mode", choices=["fixed", "meanstd"], default=defaults.threshold_mode
    )
    parser.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_GB)
    parser.add_argument(
        "--no-tokenizer-legacy",
        dest="tokenizer_legacy",
        action="store_false",
        help="do not force legacy=True spacing after added tokens (upstream forces it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 converted, 1 failed, 2 unusable input, 130 interrupted (pipelines/outcome.py)."""
    from pipelines.outcome import run_command

    return run_command("read-convert", lambda: _convert(argv),
                       resume="run the same command again")


def _convert(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    options = ConvertOptions(
        clip=args.clip,
        sam_checkpoint=args.sam_checkpoint,
        weights=args.weights,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        dtype=args.dtype,
        sam_decoder_heads=args.sam_decoder_heads,
        sasp=SasPConfig(
            num_points=args.num_points,
            down_sample=args.down_sample,
            t_pos=args.t_pos,
            t_neg=args.t_neg,
            threshold_mode=args.threshold_mode,
        ),
        max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
        tokenizer_legacy=args.tokenizer_legacy,
    )
    try:
        # The SasP options first, before any input is read; the whole model config (with the
        # shapes read from the source) is validated again before anything is written.
        ReadConfig(llava=LlavaConfig(path=str(args.source)), sasp=options.sasp).validate()
        out = convert_released(args.source, args.destination, options)
    except (ConversionError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    provenance = json.loads((out / PROVENANCE_FILE).read_text(encoding="utf-8"))
    print(f"converted {args.source} -> {out}")
    print(f"token ids: {provenance['token_ids']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
