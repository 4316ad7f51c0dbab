"""Image preprocessing for the two encoders: CLIP (the LLM's view) and SAM (the mask's view).

READ center-crops the CLIP input (shortest edge to S, bicubic, then an S×S center crop) instead
of LLaVA-1.5's pad-to-square, so the borders of a non-square image are invisible to the LLM and
SasP maps the crop back geometrically (`READ:dataloaders/base_dataset.py`). The resize goes through PIL, as the
processor upstream trained with did; the result equals transformers' PIL-backed
`CLIPImageProcessorPil` and differs from its torchvision-backed twin only by interpolation noise.
SAM's input is ResizeLongestSide (from `segment_anything` itself), normalised, zero-padded
bottom/right to a square frame (docs/fidelity.md).

A data loader only decodes: `image_batch` ships the uint8 images as they are (a 640x480 photo
is 0.9 MB, against 12 MB for its float32 SAM frame). Where the model runs, `clip_frames` /
`sam_frames` resize them with Pillow's arithmetic (read_model/resample.py: Pillow itself on a
CPU, the same integer arithmetic in torch on an accelerator) and `normalise_clip` /
`normalise_sam` make the encoders' float32 input. Together they give bit for bit the tensors a
one-step Pillow + float32 CPU preprocessing gave (tests/read_model/test_preprocess.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from read_model.resample import resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


def check_rgb_image(image: np.ndarray, index: int = 0) -> None:
    """Reject anything but uint8 [H, W, 3] with a message naming the image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            f"image {index}: expected a uint8 numpy array, got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: expected shape [H, W, 3], got {list(image.shape)}")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to `size`; the longer side is truncated like HF's."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the size×size center crop of an (height, width) image."""
    return (height - size) // 2, (width - size) // 2


def image_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 [B, 3, H_max, W_max]: each decoded image at the top left, zeros elsewhere.

    This is what a data loader ships; the resizes run where the model is (`clip_frames`,
    `sam_frames`), so a loader process only decodes and copies.
    """
    for index, image in enumerate(images):
        check_rgb_image(image, index)
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    batch = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    planes = batch.numpy()
    for index, image in enumerate(images):
        planes[index, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
    return batch


def sam_resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h', w') of an image inside the SAM frame: segment-anything's own ResizeLongestSide."""
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, size)
    return int(new_h), int(new_w)


def clip_frames(
    images: torch.Tensor, original_sizes: Sequence[tuple[int, int]], size: int = 336
) -> torch.Tensor:
    """uint8 [B, 3, size, size] on the images' device: shortest edge to `size` (Pillow bicubic,
    bit for bit), center crop. `images` is an `image_batch`, possibly moved to a device."""
    _check_images(images, original_sizes)
    frames = torch.empty(len(original_sizes), 3, size, size, dtype=torch.uint8,
                         device=images.device)
    for index, (height, width) in enumerate(original_sizes):
        new_h, new_w = shortest_edge_size(height, width, size)
        resized = resize(images[index, :, :height, :width], new_h, new_w, "bicubic")
        top, left = center_crop_box(new_h, new_w, size)
        frames[index] = resized[:, top : top + size, left : left + size]
    return frames


def sam_frames(
    images: torch.Tensor, original_sizes: Sequence[tuple[int, int]], size: int = 1024
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(uint8 [B, 3, size, size] on the images' device, resized (h', w') per image): longest
    side to `size` as ResizeLongestSide does it (Pillow bilinear, bit for bit), zero-padded
    bottom/right; `normalise_sam` follows."""
    _check_images(images, original_sizes)
    frames = torch.zeros(len(original_sizes), 3, size, size, dtype=torch.uint8,
                         device=images.device)
    resized_sizes = [sam_resized_size(height, width, size) for height, width in original_sizes]
    for index, ((height, width), (new_h, new_w)) in enumerate(
        zip(original_sizes, resized_sizes, strict=True)
    ):
        frames[index, :, :new_h, :new_w] = resize(
            images[index, :, :height, :width], new_h, new_w, "bilinear"
        )
    return frames, resized_sizes


def _check_images(images: torch.Tensor, original_sizes: Sequence[tuple[int, int]]) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}"
        )
    if len(original_sizes) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(original_sizes)} original sizes")
    for index, (height, width) in enumerate(original_sizes):
        if not (0 < height <= images.shape[2] and 0 < width <= images.shape[3]):
            raise ValueError(
                f"image {index}: size {height}x{width} does not fit the batch's "
                f"{images.shape[2]}x{images.shape[3]}"
            )


def normalise_clip(
    frames: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """uint8 CLIP frames [B, 3, S, S] -> float32 ((x / 255) - mean) / std on the frames' device.

    Every constant is a tensor on that device: CUDA turns a division by a Python scalar into a
    multiplication by its reciprocal, which can differ from the division in the last bit.
    """
    _check_frames(frames)
    pixels = frames.to(torch.float32)
    scale = torch.tensor(255.0, dtype=torch.float32, device=frames.device)
    return pixels.div_(scale).sub_(_channels(mean, frames)).div_(_channels(std, frames))


def normalise_sam(
    frames: torch.Tensor,
    resized_sizes: Sequence[tuple[int, int]],
    mean: Sequence[float] = SAM_MEAN,
    std: Sequence[float] = SAM_STD,
) -> torch.Tensor:
    """uint8 SAM frames [B, 3, S, S] -> float32 (x - mean) / std on 0-255 values, on the frames'
    device, with everything outside each image's resized (h', w') exactly +0.0 (SAM pads after
    normalising, so the padding is the normalised image's zero, not the normalised black)."""
    _check_frames(frames)
    if len(resized_sizes) != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} SAM frames but {len(resized_sizes)} resized sizes")
    pixels = frames.to(torch.float32).sub_(_channels(mean, frames)).div_(_channels(std, frames))
    sizes = torch.tensor(resized_sizes, dtype=torch.long, device=frames.device).view(-1, 2)
    rows = torch.arange(frames.shape[2], device=frames.device)
    cols = torch.arange(frames.shape[3], device=frames.device)
    inside = (rows.view(1, -1, 1) < sizes[:, 0].view(-1, 1, 1)) & (
        cols.view(1, 1, -1) < sizes[:, 1].view(-1, 1, 1)
    )
    return pixels.masked_fill_(~inside[:, None], 0.0)


def clip_preprocess(
    images: Sequence[np.ndarray],
    size: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """[B, 3, size, size] float32: shortest edge to `size` (bicubic), center crop, /255, normalise."""
    sizes = [(image.shape[0], image.shape[1]) for image in images]
    return normalise_clip(clip_frames(image_batch(images), sizes, size), mean, std)


def sam_preprocess(
    images: Sequence[np.ndarray],
    size: int = 1024,
    mean: Sequence[float] = SAM_MEAN,
    std: Sequence[float] = SAM_STD,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """([B, 3, size, size] float32, resized (h', w') per image): longest side to `size`,
    normalised on 0-255 values, zero-padded bottom/right."""
    sizes = [(image.shape[0], image.shape[1]) for image in images]
    frames, resized_sizes = sam_frames(image_batch(images), sizes, size)
    return normalise_sam(frames, resized_sizes, mean, std), resized_sizes


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"expected uint8 frames [B, 3, S, S], got {frames.dtype} {list(frames.shape)}"
        )


def _channels(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, 3, 1, 1)
