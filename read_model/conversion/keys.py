"""Upstream (LLaVA-original) key names -> the project's llava-hf / heads names, and LoRA folding.

Released READ/LISA/SESAME weights use the names of `READForCausalLM.save_pretrained` after
`merge_and_unload` (`READ:merge_lora_weights_and_save_hf_model.py`). An un-merged training dump
carries peft names instead
(``base_model.model.`` prefix, ``lora_A/lora_B.default`` adapters); :class:`MergedView` folds
those adapters in so the rest of the conversion only ever sees merged upstream names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from read_model.conversion.tensors import ConversionError, TensorStore

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"

# (pattern on the upstream key, replacement, destination file); first match wins.
LLAVA = "llava"
HEADS = "heads"
DROP = "drop"
_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), replacement, destination)
    for pattern, replacement, destination in (
        (r".*rotary_emb\.inv_freq$", "", DROP),  # a recomputed buffer, not a weight
        (r".*\.position_ids$", "", DROP),
        (r"^model\.visual_model\.pixel_(mean|std)$", "", DROP),  # non-persistent SAM buffers
        (r"^lm_head\.weight$", "lm_head.weight", LLAVA),
        (r"^model\.embed_tokens\.(.*)$", r"model.language_model.embed_tokens.\1", LLAVA),
        (r"^model\.layers\.(.*)$", r"model.language_model.layers.\1", LLAVA),
        (r"^model\.norm\.(.*)$", r"model.language_model.norm.\1", LLAVA),
        (r"^model\.mm_projector\.0\.(.*)$", r"model.multi_modal_projector.linear_1.\1", LLAVA),
        (r"^model\.mm_projector\.2\.(.*)$", r"model.multi_modal_projector.linear_2.\1", LLAVA),
        (r"^model\.vision_tower\.vision_tower\.vision_model\.(.*)$", r"model.vision_tower.\1", LLAVA),
        (r"^model\.visual_model\.(.*)$", r"sam.\1", HEADS),
        (r"^model\.text_hidden_fcs\.0\.0\.(.*)$", r"projection.layers.0.\1", HEADS),
        (r"^model\.text_hidden_fcs\.0\.2\.(.*)$", r"projection.layers.2.\1", HEADS),
    )
)
_CLIP_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r".*\.position_ids$"), "", DROP),
    (re.compile(r"^vision_model\.(.*)$"), r"model.vision_tower.\1", LLAVA),
    (re.compile(r"^(text_model|text_projection|visual_projection|logit_scale)"), "", DROP),
)

EMBED_KEY = "model.language_model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
VISION_PREFIX = "model.vision_tower.vision_tower."


@dataclass(frozen=True)
class Destination:
    """Where an upstream tensor goes: `target` is "llava", "heads" or "drop"."""

    target: str
    key: str


def upstream_destination(key: str) -> Destination:
    """The project key for an upstream (merged, un-prefixed) key; unknown keys are an error."""
    return _apply(_RULES, key, "upstream READ/LISA/SESAME")


def clip_destination(key: str) -> Destination:
    """The llava-hf key for a key of a CLIP (vision) checkpoint."""
    return _apply(_CLIP_RULES, key, "CLIP")


def _apply(rules: tuple[tuple[re.Pattern[str], str, str], ...], key: str, what: str) -> Destination:
    for pattern, replacement, target in rules:
        if pattern.match(key):
            return Destination(target, "" if target == DROP else pattern.sub(replacement, key))
    raise ConversionError(f"unrecognised {what} key {key!r}: refusing to drop it silently")


class MergedView:
    """The merged upstream key space of a store: peft prefixes stripped, LoRA folded in.

    W' = W + (B @ A) * alpha / r, computed in fp32 and cast back to W's dtype (what peft's
    ``merge_and_unload`` does). `r` is read from A's shape; a given `lora_r` must agree.
    """

    def __init__(self, store: TensorStore, *, lora_alpha: float, lora_r: int | None = None) -> None:
        self.store = store
        self.lora_alpha = lora_alpha
        self.lora_r = lora_r
        self._source: dict[str, str] = {}  # merged key -> store key of the base tensor
        self._adapters: dict[str, tuple[str, str]] = {}  # merged weight key -> (A key, B key)
        self.is_peft = any(k.startswith(PEFT_PREFIX) for k in store.names())
        for key in store.names():
            self._index(key)
        orphans = sorted(k for k in self._adapters if k not in self._source)
        if orphans:
            raise ConversionError(f"LoRA adapters without a base weight: {orphans[:5]}")

    def _index(self, key: str) -> None:
        name = key
        if self.is_peft:
            if not key.startswith(PEFT_PREFIX):
                raise ConversionError(f"mixed peft and plain keys: {key!r} lacks {PEFT_PREFIX!r}")
            name = key[len(PEFT_PREFIX) :]
        lora = re.match(rf"^(.*)\.lora_([AB])\.{ADAPTER}\.weight$", name)
        if lora:
            module, which = lora.groups()
            a_key, b_key = self._adapters.get(f"{module}.weight", ("", ""))
            pair = (key, b_key) if which == "A" else (a_key, key)
            self._adapters[f"{module}.weight"] = pair
            return
        if ".lora_" in name or ".original_module." in name:
            if ".lora_dropout" in name or ".original_module." in name:
                return
            raise ConversionError(f"unsupported adapter tensor {key!r} (only '{ADAPTER}' LoRA)")
        name = name.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")
        if name in self._source and ".modules_to_save." not in key:
            return  # the trained modules_to_save copy wins over the original
        self._source[name] = key

    def names(self) -> list[str]:
        return list(self._source)

    def __contains__(self, key: str) -> bool:
        return key in self._source

    def get(self, key: str) -> Tensor:
        base = self.store.get(self._source[key])
        pair = self._adapters.get(key)
        if pair is None:
            return base
        a_key, b_key = pair
        if not a_key or not b_key:
            raise ConversionError(f"{key}: LoRA needs both lora_A and lora_B")
        lora_a, lora_b = self.store.get(a_key).float(), self.store.get(b_key).float()
        rank = lora_a.shape[0]
        if self.lora_r is not None and self.lora_r != rank:
            raise ConversionError(f"{key}: --lora-r {self.lora_r} but lora_A has rank {rank}")
        if lora_b.shape != (base.shape[0], rank) or lora_a.shape != (rank, base.shape[1]):
            raise ConversionError(
                f"{key}: LoRA shapes A {tuple(lora_a.shape)} B {tuple(lora_b.shape)} do not fit "
                f"the weight {tuple(base.shape)}"
            )
        delta = (lora_b @ lora_a) * (self.lora_alpha / rank)
        return (base.float() + delta).to(base.dtype)

    @property
    def adapted_keys(self) -> list[str]:
        return sorted(self._adapters)


def with_placeholder_row(matrix: Tensor, rows: int, *, fill: Tensor | None) -> Tensor:
    """`matrix` grown to `rows` rows; the new rows are `fill` (broadcast) or zero."""
    extra = rows - matrix.shape[0]
    if extra <= 0:
        return matrix
    pad = matrix.new_zeros((extra, matrix.shape[1]))
    if fill is not None:
        pad[:] = fill.to(matrix.dtype)
    return torch.cat([matrix, pad], dim=0)
