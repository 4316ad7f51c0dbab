"""Image preprocessing for the two encoders: CLIP (the LLM's view) and SAM (the mask's view).

READ center-crops the CLIP input (shortest edge to S, bicubic, then an S×S center crop) instead
of LLaVA-1.5's pad-to-square, so the borders of a non-square image are invisible to the LLM and
SasP maps the crop back geometrically (`READ:dataloaders/base_dataset.py`). The resize goes through PIL, as the
processor upstream trained with did; the result equals transformers' PIL-backed
`CLIPImageProcessorPil` and differs from its torchvision-backed twin only by interpolation noise.
SAM's input is ResizeLongestSide (from `segment_anything` itself), normalised, zero-padded
bottom/right to a square frame (docs/fidelity.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

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


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: Sequence[np.ndarray],
    size: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """[B, 3, size, size] float32: shortest edge to `size` (bicubic), center crop, /255, normalise."""
    batch = torch.empty(len(images), 3, size, size)
    mean_t, std_t = _channel_vector(mean), _channel_vector(std)
    for index, image in enumerate(images):
        check_rgb_image(image, index)
        height, width = image.shape[:2]
        new_h, new_w = shortest_edge_size(height, width, size)
        resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        top, left = center_crop_box(new_h, new_w, size)
        pixels = np.array(resized.crop((left, top, left + size, top + size)))
        crop = torch.from_numpy(pixels).permute(2, 0, 1)
        target = batch[index]
        target.copy_(crop)  # uint8 -> float32 and HWC -> CHW in one pass
        target.div_(255.0).sub_(mean_t).div_(std_t)  # in place: the same float32 operations
    return batch


def sam_preprocess(
    images: Sequence[np.ndarray],
    size: int = 1024,
    mean: Sequence[float] = SAM_MEAN,
    std: Sequence[float] = SAM_STD,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """([B, 3, size, size] float32, resized (h', w') per image): longest side to `size`,
    normalised on 0-255 values, zero-padded bottom/right."""
    transform = ResizeLongestSide(size)
    batch = torch.zeros(len(images), 3, size, size)
    mean_t, std_t = _channel_vector(mean), _channel_vector(std)
    resized_sizes: list[tuple[int, int]] = []
    for index, image in enumerate(images):
        check_rgb_image(image, index)
        resized = torch.from_numpy(transform.apply_image(image)).permute(2, 0, 1)
        new_h, new_w = resized.shape[1:]
        target = batch[index, :, :new_h, :new_w]
        target.copy_(resized)  # uint8 -> float32 in place, no temporaries of the full frame
        target.sub_(mean_t).div_(std_t)
        resized_sizes.append((int(new_h), int(new_w)))
    return batch, resized_sizes


def _channel_vector(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)
