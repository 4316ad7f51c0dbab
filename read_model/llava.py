"""LLaVA-1.5 through transformers' ``LlavaForConditionalGeneration`` (llava-hf layout), plus LoRA.

The READ model does not call LLaVA's own ``forward``: it needs CLIP features once per *image*
(several conversation rows share an image), the post-norm last-layer hidden states of every row,
and the logits. :class:`LlavaParts` names the sub-modules so the model can compose them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration
from transformers import LlavaConfig as HfLlavaConfig

from read_model.config import LlavaConfig, LoraConfig


def resolve_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` -> torch.bfloat16, refusing names that are not torch floating dtypes."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"llava.torch_dtype {name!r} is not a torch floating-point dtype")
    return dtype


def build_llava(
    settings: LlavaConfig,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    new_token_ids: Sequence[int] = (),
) -> LlavaForConditionalGeneration:
    """Load `settings.path` (llava-hf layout) or build the shapes in `settings` with random weights.

    The embedding / LM-head matrices grow to `vocab_size` rows when the tokenizer (with `[SEG]`
    added) outgrows them; the rows of `new_token_ids` (tokens the loaded checkpoint did not
    have) are then initialised per `settings.new_token_init`.
    """
    dtype = resolve_dtype(settings.torch_dtype)
    if settings.path:
        llava = LlavaForConditionalGeneration.from_pretrained(
            settings.path, dtype=dtype, attn_implementation=settings.attn_implementation
        )
        if llava.config.image_token_id != image_token_id:
            raise ValueError(
                f"{settings.path}: config image_token_id {llava.config.image_token_id} differs "
                f"from the tokenizer's <image> id {image_token_id}"
            )
        if llava.get_input_embeddings().num_embeddings < vocab_size:
            # Grow only (llava-hf pads its matrix to a multiple of 64, so READ's tokens usually
            # land on existing padding rows instead).
            llava.resize_token_embeddings(vocab_size, mean_resizing=False)
        init_new_token_rows(llava, new_token_ids, settings)
    else:
        llava = LlavaForConditionalGeneration(
            llava_config(settings, vocab_size, image_token_id, pad_token_id)
        ).to(dtype)
    llava.config.use_cache = False
    return llava


def init_new_token_rows(
    llava: LlavaForConditionalGeneration, token_ids: Sequence[int], settings: LlavaConfig
) -> None:
    """Draw the embedding and LM-head rows of tokens new to a loaded checkpoint from
    N(0, std), as upstream's `resize_token_embeddings` (transformers 4.31 `_init_weights`) did
    for [SEG] / <im_start> / <im_end> on LLaVA-1.5; the caller seeds the generator."""
    if settings.new_token_init == "keep" or not token_ids:
        return
    rows = torch.as_tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)
    with torch.no_grad():
        for matrix in (llava.get_input_embeddings().weight, llava.get_output_embeddings().weight):
            if int(rows.max()) >= matrix.shape[0]:
                raise ValueError(f"new token id {int(rows.max())} has no row in a "
                                 f"{matrix.shape[0]}-row matrix")
            drawn = torch.randn((len(rows), matrix.shape[1]), dtype=torch.float32)
            matrix[rows.to(matrix.device)] = (drawn * settings.new_token_init_std).to(
                device=matrix.device, dtype=matrix.dtype)


def llava_config(
    settings: LlavaConfig, vocab_size: int, image_token_id: int, pad_token_id: int
) -> HfLlavaConfig:
    """A llava-hf config for the shapes in `settings` (CLIP vision tower + Llama text model)."""
    vision = CLIPVisionConfig(
        hidden_size=settings.vision_hidden_size,
        num_hidden_layers=settings.vision_layers,
        num_attention_heads=settings.vision_heads,
        intermediate_size=settings.vision_intermediate,
        image_size=settings.vision_image_size,
        patch_size=settings.vision_patch_size,
        projection_dim=settings.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.text_hidden_size,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=settings.text_heads,
        num_key_value_heads=settings.text_kv_heads,
        intermediate_size=settings.text_intermediate,
        max_position_embeddings=settings.max_position_embeddings,
        rms_norm_eps=settings.rms_norm_eps,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    grid = settings.vision_image_size // settings.vision_patch_size
    config = HfLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=grid * grid,
        projector_hidden_act=settings.projector_hidden_act,
        vision_feature_select_strategy="default",
        vision_feature_layer=settings.vision_feature_layer,
        tie_word_embeddings=False,
    )
    config._attn_implementation = settings.attn_implementation
    return config


def apply_lora(llava: nn.Module, settings: LoraConfig) -> nn.Module:
    """Wrap `llava` with LoRA adapters on the language model's q/v projections (if enabled).

    Returns the peft wrapper (or `llava` itself when LoRA is off); LoRA layers are injected in
    place, so the sub-modules reached through :class:`LlavaParts` already carry the adapters.
    """
    if not settings.enabled:
        return llava
    config = PeftLoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
    )
    return get_peft_model(llava, config)


def base_llava(module: nn.Module) -> LlavaForConditionalGeneration:
    """The underlying ``LlavaForConditionalGeneration`` of a peft wrapper or of the model itself."""
    return module.get_base_model() if isinstance(module, PeftModel) else module


@dataclass
class LlavaParts:
    """Named access to the LLaVA sub-modules READ composes by hand."""

    llava: LlavaForConditionalGeneration

    @property
    def vision_tower(self) -> nn.Module:
        return self.llava.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.llava.model.language_model.embed_tokens

    @property
    def lm_head(self) -> nn.Linear:
        return self.llava.lm_head

    @property
    def hidden_size(self) -> int:
        return self.llava.config.text_config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        vision = self.llava.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def image_features(self, clip_pixels: Tensor, *, track_grad: bool) -> Tensor:
        """Projected CLIP patch features [B_img, N, D] (layer `vision_feature_layer`, CLS dropped).

        `track_grad=False` runs the frozen tower and projector without building a graph.
        """
        layer = self.llava.config.vision_feature_layer
        dtype = next(self.vision_tower.parameters()).dtype
        with torch.set_grad_enabled(track_grad and torch.is_grad_enabled()):
            out = self.vision_tower(clip_pixels.to(dtype), output_hidden_states=True)
            patches = out.hidden_states[layer][:, 1:]
            return self.projector(patches)
