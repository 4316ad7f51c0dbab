"""CLIP and SAM preprocessing against the reference implementations in transformers / SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from read_model.preprocess import clip_preprocess, sam_preprocess

SHAPES = [(37, 53), (53, 37), (10, 7), (24, 24), (90, 20)]


def _images(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _processor_kwargs(size: int) -> dict:
    return {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}


@pytest.mark.parametrize("size", [24, 336])
def test_clip_equals_pil_clip_image_processor(size: int) -> None:
    images = _images(SHAPES)
    ours = clip_preprocess(images, size)
    reference = CLIPImageProcessorPil(**_processor_kwargs(size))(
        images=images, return_tensors="pt"
    )["pixel_values"]
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_clip_within_one_level_of_torchvision_processor() -> None:
    """transformers' default CLIP processor resizes with torchvision: at most one uint8 level off."""
    images = _images(SHAPES, seed=1)
    ours = clip_preprocess(images, 24)
    reference = CLIPImageProcessor(**_processor_kwargs(24))(images=images, return_tensors="pt")[
        "pixel_values"
    ]
    one_level = 1.0 / 255.0 / min(CLIPImageProcessor.image_std)
    assert (ours - reference).abs().max().item() <= one_level + 1e-5


def test_clip_center_crops_instead_of_padding() -> None:
    """A wide image keeps its middle: the outer columns (marked red) are cut away."""
    image = np.full((20, 60, 3), 128, dtype=np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, -10:] = (255, 0, 0)
    out = clip_preprocess([image], 20)
    grey = clip_preprocess([np.full((20, 20, 3), 128, dtype=np.uint8)], 20)
    torch.testing.assert_close(out, grey, atol=1e-5, rtol=0)


def _tiny_sam(size: int) -> Sam:
    encoder = ImageEncoderViT(img_size=size, patch_size=16, embed_dim=16, depth=1, num_heads=1)
    grid = size // 16
    prompt = PromptEncoder(
        embed_dim=8, image_embedding_size=(grid, grid), input_image_size=(size, size),
        mask_in_chans=4,
    )  # fmt: skip
    decoder = MaskDecoder(
        transformer_dim=8,
        transformer=TwoWayTransformer(depth=1, embedding_dim=8, mlp_dim=16, num_heads=1),
    )
    return Sam(encoder, prompt, decoder)


def test_sam_equals_segment_anything_preprocessing() -> None:
    size = 64
    images = _images([(37, 53), (53, 37), (64, 64), (5, 90)])
    ours, resized = sam_preprocess(images, size)
    sam = _tiny_sam(size)
    transform = ResizeLongestSide(size)
    for index, image in enumerate(images):
        expected_hw = transform.get_preprocess_shape(image.shape[0], image.shape[1], size)
        assert resized[index] == expected_hw
        scaled = torch.from_numpy(transform.apply_image(image)).permute(2, 0, 1).float()
        reference = sam.preprocess(scaled[None])[0]
        torch.testing.assert_close(ours[index], reference, atol=1e-5, rtol=0)
        h, w = expected_hw
        assert ours[index, :, h:, :].abs().sum() == 0 and ours[index, :, :, w:].abs().sum() == 0
    assert max(max(hw) for hw in resized) == size


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
)
def test_bad_images_are_named(bad: np.ndarray) -> None:
    good = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="image 1"):
        clip_preprocess([good, bad], 16)
    with pytest.raises(ValueError, match="image 1"):
        sam_preprocess([good, bad], 32)
