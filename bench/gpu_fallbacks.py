"""Stand-ins for torchvision / PIL when a GPU machine's image lacks them (bench/gpu_suite.sh).

The suite only needs them for preprocessing (segment-anything's ResizeLongestSide resizes
through torchvision and PIL; the CLIP crop resizes through PIL). When either is missing, this
installs a minimal module that resizes with `torch.nn.functional.interpolate` instead: pixel
values differ by interpolation rounding, the tensor shapes and so every timing do not. Each
stand-in is announced, so a table never hides that it was used.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

import numpy as np


class _ArrayImage:
    """The slice of `PIL.Image.Image` preprocessing uses: size, resize, crop, numpy conversion."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]

    def resize(self, size: tuple[int, int], resample: object = None) -> _ArrayImage:
        import torch
        from torch.nn import functional as F

        width, height = size
        mode = "bicubic" if resample == "bicubic" else "bilinear"
        pixels = torch.from_numpy(self.array).permute(2, 0, 1)[None].float()
        out = F.interpolate(pixels, (height, width), mode=mode, align_corners=False,
                            antialias=True)
        out = out.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        return _ArrayImage(out)

    def crop(self, box: tuple[int, int, int, int]) -> _ArrayImage:
        left, top, right, bottom = box
        return _ArrayImage(self.array[top:bottom, left:right])

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)


def _module(name: str) -> types.ModuleType:
    """A module with a spec (importlib.util.find_spec must not fail on it) and no version or
    file, which transformers' availability checks read as "not installed"."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return module


def _fake_pil() -> types.ModuleType:
    pil = _module("PIL")
    image = _module("PIL.Image")
    image.fromarray = _ArrayImage
    image.Image = _ArrayImage
    image.Resampling = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    image.BICUBIC, image.BILINEAR = "bicubic", "bilinear"
    pil.Image = image
    pil.UnidentifiedImageError = OSError
    return pil


def _fake_torchvision() -> types.ModuleType:
    """`torchvision.transforms.functional.{resize, to_pil_image}` as segment-anything calls
    them (uint8 HWC array in, resized image out)."""
    from PIL import Image

    def to_pil_image(array: np.ndarray) -> object:
        return Image.fromarray(array)

    def resize(image: object, size: tuple[int, int]) -> object:
        height, width = size
        return image.resize((width, height), Image.BILINEAR)

    def not_available(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("torchvision stand-in: only the resize path exists")

    vision = _module("torchvision")
    transforms = _module("torchvision.transforms")
    functional = _module("torchvision.transforms.functional")
    functional.resize, functional.to_pil_image = resize, to_pil_image
    transforms.functional = functional
    ops = _module("torchvision.ops")
    boxes = _module("torchvision.ops.boxes")  # imported by SAM's mask generator only
    boxes.batched_nms = boxes.box_area = not_available
    ops.boxes = boxes
    vision.transforms, vision.ops = transforms, ops
    return vision


def install() -> list[str]:
    """Install stand-ins for whatever is missing; return one note per stand-in."""
    notes = []
    try:
        importlib.import_module("PIL.Image")
    except ImportError:
        pil = _fake_pil()
        sys.modules.update({"PIL": pil, "PIL.Image": pil.Image})
        notes.append("PIL missing: images resized with torch interpolate (stand-in)")
    try:
        importlib.import_module("torchvision.transforms.functional")
    except ImportError:
        vision = _fake_torchvision()
        sys.modules.update({"torchvision": vision, "torchvision.transforms": vision.transforms,
                            "torchvision.transforms.functional": vision.transforms.functional,
                            "torchvision.ops": vision.ops, "torchvision.ops.boxes": vision.ops.boxes})
        notes.append("torchvision missing: SAM's resize through a stand-in")
    return notes
