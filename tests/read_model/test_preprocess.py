"""CLIP and SAM preprocessing against the reference implementations in transformers / SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
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

from read_model.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    SAM_MEAN,
    SAM_STD,
    clip_frames,
    clip_preprocess,
    image_batch,
    normalise_clip,
    normalise_sam,
    sam_frames,
    sam_preprocess,
)
from read_model.resample import resize_fixed_point

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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns: equality here also tells +0.0 from -0.0."""
    return tensor.detach().cpu().contiguous().view(torch.int32)


def _old_clip(image: np.ndarray, size: int) -> torch.Tensor:
    """The one-step float32 CLIP preprocessing as it was, by hand: PIL bicubic, crop, /255,
    -mean, /std, in place on a float32 frame."""
    height, width = image.shape[:2]
    if width <= height:
        new_h, new_w = int(size * height / width), size
    else:
        new_h, new_w = size, int(size * width / height)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    crop = np.array(resized)[top : top + size, left : left + size]
    frame = torch.empty(3, size, size)
    frame.copy_(torch.from_numpy(crop).permute(2, 0, 1))
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return frame.div_(255.0).sub_(mean).div_(std)


def _old_sam(image: np.ndarray, size: int) -> torch.Tensor:
    """The one-step float32 SAM preprocessing as it was, by hand: ResizeLongestSide, then
    -mean, /std on 0-255 values inside a float32 frame of zeros."""
    resized = torch.from_numpy(ResizeLongestSide(size).apply_image(image)).permute(2, 0, 1)
    frame = torch.zeros(3, size, size)
    inside = frame[:, : resized.shape[1], : resized.shape[2]]
    inside.copy_(resized)
    mean = torch.tensor(SAM_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(SAM_STD, dtype=torch.float32).view(3, 1, 1)
    inside.sub_(mean).div_(std)
    return frame


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arithmetic", ["pillow", "fixed_point"])
def test_images_preprocessed_on_the_device_equal_the_pillow_float32_path_bit_for_bit(
    device: str, arithmetic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader's uint8 batch, moved, resized and normalised where it lands: the old numbers
    (Pillow resize + float32 on the CPU), and the SAM padding +0.0 (not the normalised black,
    not -0.0). "fixed_point" runs the accelerators' resize arithmetic on the CPU."""
    if arithmetic == "fixed_point":
        monkeypatch.setattr("read_model.preprocess.resize", resize_fixed_point)
    images = _images([(480, 640), (640, 480), (37, 53), (300, 300)], seed=4)
    sizes = [(image.shape[0], image.shape[1]) for image in images]
    batch = image_batch(images).to(device)
    clip_pixels = normalise_clip(clip_frames(batch, sizes, 336))
    sam, resized = sam_frames(batch, sizes, 1024)
    sam_pixels = normalise_sam(sam, resized)
    assert clip_pixels.dtype == sam_pixels.dtype == torch.float32
    assert clip_pixels.device.type == sam_pixels.device.type == device
    for index, image in enumerate(images):
        assert torch.equal(_bits(clip_pixels[index]), _bits(_old_clip(image, 336)))
        assert torch.equal(_bits(sam_pixels[index]), _bits(_old_sam(image, 1024)))
        h, w = resized[index]
        padding = torch.cat([sam_pixels[index, :, h:].flatten(), sam_pixels[index, :, :, w:].flatten()])
        assert (_bits(padding) == 0).all()
    assert resized[0] == (768, 1024) and resized[1] == (1024, 768)


def test_preprocessing_checks_its_input() -> None:
    images = image_batch(_images([(10, 12)]))
    frames, resized = sam_frames(images, [(10, 12)], 16)
    with pytest.raises(ValueError, match="uint8 frames"):
        normalise_sam(frames.float(), resized)
    with pytest.raises(ValueError, match="1 SAM frames but 2 resized sizes"):
        normalise_sam(frames, resized * 2)
    with pytest.raises(ValueError, match="uint8 frames"):
        normalise_clip(frames[0])
    with pytest.raises(ValueError, match="1 images but 2 original sizes"):
        sam_frames(images, [(10, 12), (10, 12)], 16)
    with pytest.raises(ValueError, match="image 0: size 11x12 does not fit"):
        clip_frames(images, [(11, 12)], 16)


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
