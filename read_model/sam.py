"""SAM from the segment-anything package: build, load safely, and prompt with points + [SEG].

Every encoder shape (`SamConfig.encoder`: the official ViT-H/L/B presets or any other) is
constructed here from the package's modeling classes rather than through
``sam_model_registry``, whose loader calls ``torch.load`` without ``weights_only``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import Tensor, nn
from torch.nn import functional as F

from read_model.config import SamConfig


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint that does not match the configured architecture."""


def build_sam(config: SamConfig) -> Sam:
    """Construct SAM for `config` and load `config.checkpoint` (if any) strictly and safely.

    `config` is assumed valid (`ReadConfig.validate`): e.g. image_size a multiple of the patch.
    """
    shape = config.encoder
    embedding_size = config.image_size // shape.patch_size
    dim = config.prompt_embed_dim
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=shape.depth,
            embed_dim=shape.embed_dim,
            img_size=config.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=shape.num_heads,
            patch_size=shape.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=shape.global_attn_indexes,
            window_size=shape.window_size,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    if config.checkpoint:
        load_sam_checkpoint(sam, config.checkpoint)
    return sam


def load_sam_checkpoint(sam: Sam, path: str | Path) -> None:
    """Load an official SAM ``.pth`` with ``weights_only=True``; any key/shape mismatch is fatal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise SamCheckpointError(f"{path} does not hold a state dict (got {type(state).__name__})")
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        raise SamCheckpointError(
            f"{path} does not match the configured SAM (encoder/image_size/prompt_embed_dim?): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatch {wrong[:5]}"
        )
    sam.load_state_dict(state, strict=True)


def to_sam_frame(
    points: Tensor, original_size: tuple[int, int], resized_size: tuple[int, int]
) -> Tensor:
    """Map (x, y) in original pixels [..., 2] into the padded SAM frame: x·w'/W, y·h'/H."""
    (height, width), (resized_h, resized_w) = original_size, resized_size
    scale = points.new_tensor([resized_w / width, resized_h / height])
    return points * scale


def prompt_and_decode(
    sam: Sam,
    image_embedding: Tensor,
    *,
    points: Tensor | None,
    labels: Tensor | None,
    seg_embeddings: Tensor | None,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Tensor:
    """Mask logits [n, H, W] at the original resolution for n prompts on ONE image.

    Sparse tokens are [points + SAM's padding point] (if points are given) followed by the
    [SEG] embedding (if given), as upstream READ orders them. The prompt encoder runs in fp32
    (the pip package does not cast coordinates), the decoder in its own dtype.
    `image_embedding` is [1, C, h, w]: the decoder repeats it over the prompts itself.
    """
    count = _prompt_count(points, seg_embeddings)
    prompt_encoder = sam.prompt_encoder
    pe_dtype = prompt_encoder.point_embeddings[0].weight.dtype
    if points is not None:
        sparse, dense = prompt_encoder(points=(points.to(pe_dtype), labels), boxes=None, masks=None)
    else:
        sparse, dense = prompt_encoder(points=None, boxes=None, masks=None)
        sparse = sparse.expand(count, -1, -1)
        dense = dense.expand(count, -1, -1, -1)
    if seg_embeddings is not None:
        sparse = torch.cat([sparse, seg_embeddings.to(sparse.dtype).unsqueeze(1)], dim=1)
    decoder_dtype = next(sam.mask_decoder.parameters()).dtype
    low_res, _ = sam.mask_decoder(
        image_embeddings=image_embedding.to(decoder_dtype),
        image_pe=prompt_encoder.get_dense_pe().to(decoder_dtype),
        sparse_prompt_embeddings=sparse.to(decoder_dtype),
        dense_prompt_embeddings=dense.to(decoder_dtype),
        multimask_output=False,
    )
    return postprocess_masks(low_res[:, 0], sam.image_encoder.img_size, resized_size, original_size)


def postprocess_masks(
    low_res: Tensor,
    frame_size: int,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Tensor:
    """SAM's post-processing for [n, h, w] logits: bilinear to the frame, crop, bilinear to (H, W)."""
    masks = F.interpolate(
        low_res.unsqueeze(1), (frame_size, frame_size), mode="bilinear", align_corners=False
    )
    masks = masks[..., : resized_size[0], : resized_size[1]]
    masks = F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
    return masks[:, 0]


def _prompt_count(points: Tensor | None, seg_embeddings: Tensor | None) -> int:
    if points is None and seg_embeddings is None:
        raise ValueError("SAM needs points, a [SEG] embedding, or both")
    return int(points.shape[0] if points is not None else seg_embeddings.shape[0])
