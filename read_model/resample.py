"""Pillow's uint8 resize (bilinear, bicubic), bit for bit, as torch integer arithmetic.

Upstream resizes with PIL: SAM's `ResizeLongestSide` (bilinear, through torchvision's PIL path)
and the CLIP processor it trained with (bicubic). Those resizes were most of the data loader's
CPU time, so the model resizes on its own device instead; to keep upstream's numbers it does
what Pillow does (`Resample.c`, 8 bits per channel): per-axis filter weights in double
precision, normalised to sum 1, rounded to 22-bit fixed point; a horizontal pass, rounded and
clamped to uint8, then a vertical pass over that. Integer sums are exact on every device, so
the result equals Pillow resizing one axis after the other, horizontal first, exactly
(tests/read_model/test_resample.py compares them).

On a CPU device `resize` calls Pillow itself, one axis at a time (the same numbers, many times
faster than this arithmetic there). One axis at a time pins the pass order: Pillow 13 runs the
vertical pass first for some small tall shapes, which moves them by a few levels against the
horizontal-first order of the earlier Pillow versions upstream ran. Photo-shaped images come out
the same either way (tests/read_model/test_resample.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point: 8 bits of result, 2 of headroom
Filter = Literal["bilinear", "bicubic"]


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's (and Keys') bicubic parameter; the expressions keep Pillow's order
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
}


@functools.lru_cache(maxsize=512)
def axis_weights(in_size: int, out_size: int, kind: Filter) -> tuple[Tensor, Tensor]:
    """(source index [out, k] long, fixed-point weight [out, k] long) for one axis.

    Float64 element-wise operations in Pillow's order (so the doubles are Pillow's); taps past
    an output's window get weight 0 (and a valid index), as in Pillow.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    filter_fn, filter_support = FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = math.ceil(support) * 2 + 1
    inverse = 1.0 / filterscale
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) cast
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    taps = np.arange(ksize, dtype=np.int64)
    inside = taps[None, :] < count[:, None]
    source = taps[None, :] + first[:, None]
    values = np.where(inside, filter_fn((source - center[:, None] + 0.5) * inverse), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for tap in range(ksize):  # left to right over the taps, as Pillow sums them
        total = total + values[:, tap]
    safe_total = np.where(total != 0.0, total, 1.0)
    normalised = values / safe_total[:, None]
    rounding = np.where(normalised < 0, -0.5, 0.5)
    weight = np.trunc(rounding + normalised * (1 << PRECISION_BITS)).astype(np.int64)
    index = np.where(inside, source, first[:, None])
    return torch.from_numpy(index), torch.from_numpy(np.where(inside, weight, 0))


def _pass(pixels: Tensor, out_size: int, kind: Filter, dim: int) -> Tensor:
    """Resample uint8 `pixels` along `dim` (-1: width, -2: height) to `out_size`, like Pillow.

    Sums in int32 as Pillow does (its weights keep every partial sum in range), one tap at a
    time, so memory stays at a few output-sized buffers even for a 4096-pixel upload.
    """
    index, weight = axis_weights(pixels.shape[dim], out_size, kind)
    index = index.to(pixels.device)
    weight = weight.to(device=pixels.device, dtype=torch.int32)
    values = pixels.to(torch.int32)
    total = torch.full((), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=pixels.device)
    for tap in range(index.shape[1]):
        if dim == -1:
            total = total + values[..., index[:, tap]] * weight[:, tap]
        else:
            total = total + values[..., index[:, tap], :] * weight[:, tap, None]
    return (total >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_fixed_point(pixels: Tensor, height: int, width: int, kind: Filter) -> Tensor:
    """uint8 [..., H, W] -> uint8 [..., height, width] by Pillow's arithmetic on any device
    (horizontal pass first; an axis whose size does not change is not resampled)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.shape[-1] != width:
        pixels = _pass(pixels, width, kind, dim=-1)
    if pixels.shape[-2] != height:
        pixels = _pass(pixels, height, kind, dim=-2)
    return pixels


PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize(pixels: Tensor, height: int, width: int, kind: Filter) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, height, width] as Pillow resizes, horizontal pass first, on
    the pixels' device: Pillow itself on a CPU, `resize_fixed_point` elsewhere."""
    if pixels.device.type != "cpu":
        return resize_fixed_point(pixels, height, width, kind)
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"expected uint8 [3, H, W] pixels, got {pixels.dtype} {list(pixels.shape)}")
    image = Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))
    if image.size[0] != width:  # horizontal pass
        image = image.resize((width, image.size[1]), resample=PIL_FILTERS[kind])
    if image.size[1] != height:  # then vertical
        image = image.resize((width, height), resample=PIL_FILTERS[kind])
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
