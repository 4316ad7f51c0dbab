"""Pillow's resize re-done in torch integer arithmetic must give Pillow's pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from read_model.preprocess import shortest_edge_size
from read_model.resample import resize, resize_fixed_point

PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _pillow(image: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    """Pillow's own one-call resize."""
    return np.array(Image.fromarray(image).resize((width, height), PIL_FILTERS[kind]))


def _pillow_horizontal_first(image: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    """Pillow, one axis per call: the horizontal-first order of every Pillow before 13."""
    wide = Image.fromarray(image).resize((width, image.shape[0]), PIL_FILTERS[kind])
    return np.array(wide.resize((width, height), PIL_FILTERS[kind]))


def _ours(image: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    pixels = torch.from_numpy(image).permute(2, 0, 1)
    return resize_fixed_point(pixels, height, width, kind).permute(1, 2, 0).numpy()


def _model_resizes(height: int, width: int, size: int) -> list[tuple[int, int, str]]:
    """The two resizes the model makes of an image: SAM's longest side, CLIP's shortest edge."""
    sam = ResizeLongestSide.get_preprocess_shape(height, width, size)
    return [(*sam, "bilinear"), (*shortest_edge_size(height, width, size), "bicubic")]


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(480, 640, 1024), (640, 480, 1024), (480, 640, 336), (427, 640, 336), (612, 612, 336),
     (333, 500, 224), (7, 300, 64), (1, 1, 33)],
)
def test_fixed_point_equals_pillow_on_the_model_resizes(height: int, width: int, size: int) -> None:
    image = np.random.default_rng(height * 7 + width).integers(0, 256, (height, width, 3),
                                                                 dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)
    for out_h, out_w, kind in _model_resizes(height, width, size):
        expected = _pillow(image, out_h, out_w, kind)
        assert np.array_equal(_ours(image, out_h, out_w, kind), expected), (out_h, out_w, kind)
        on_cpu = resize(pixels, out_h, out_w, kind).permute(1, 2, 0).numpy()
        assert np.array_equal(on_cpu, expected), (out_h, out_w, kind)


def test_fixed_point_equals_pillow_horizontal_first_on_many_small_shapes() -> None:
    """Up- and downscales of every aspect, both filters, including saturating bicubic overshoot,
    against Pillow run one axis at a time (Pillow 13's one call may take the vertical pass first
    on thin shapes; it must then equal Pillow's vertical-first two calls)."""
    rng = np.random.default_rng(0)
    for height in range(1, 60, 4):
        for width in range(1, 60, 7):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image[::2, ::2] = 255  # hard edges: bicubic rings past 0 and 255 and is clamped
            pixels = torch.from_numpy(image).permute(2, 0, 1)
            for out_h, out_w, kind in _model_resizes(height, width, 24):
                if min(out_h, out_w) < 1:
                    continue
                where = (height, width, out_h, out_w, kind)
                expected = _pillow_horizontal_first(image, out_h, out_w, kind)
                assert np.array_equal(_ours(image, out_h, out_w, kind), expected), where
                on_cpu = resize(pixels, out_h, out_w, kind).permute(1, 2, 0).numpy()
                assert np.array_equal(on_cpu, expected), where
                tall = Image.fromarray(image).resize((width, out_h), PIL_FILTERS[kind])
                vertical_first = np.array(tall.resize((out_w, out_h), PIL_FILTERS[kind]))
                one_call = _pillow(image, out_h, out_w, kind)
                assert np.array_equal(one_call, expected) or np.array_equal(
                    one_call, vertical_first), where


def test_cpu_resize_checks_its_input() -> None:
    pixels = torch.zeros(3, 30, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        resize(pixels.float(), 48, 64, "bilinear")
    with pytest.raises(ValueError, match="uint8"):
        resize_fixed_point(pixels.float(), 48, 64, "bilinear")
    with pytest.raises(ValueError, match="cannot resize 40 pixels to 0"):
        resize_fixed_point(pixels, 48, 0, "bilinear")
