"""Random scenes of a few coloured shapes on a textured background, with exact masks.

Shapes are painted largest first, so any occluder is smaller than what it covers; placements
that would hide too much of an earlier shape are re-drawn, which keeps every object visible
enough to be learnt. Masks come from pycocotools' own polygon rasteriser, so the COCO
annotations written later decode to exactly the pixels that were painted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from dataset_builders.synthetic.vocabulary import COLOURS, KINDS


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the scene sampler (small images keep CPU training fast)."""

    min_side: int = 160
    max_side: int = 320
    min_shapes: int = 2
    max_shapes: int = 4
    min_radius_frac: float = 0.10  # circumradius as a fraction of the shorter image side
    max_radius_frac: float = 0.24
    min_visible_frac: float = 0.55  # every shape keeps at least this share of its pixels
    placement_tries: int = 30
    circle_vertices: int = 32
    star_inner_ratio: float = 0.45
    jpeg_quality: int = 90
    background_grid: int = 6  # low-frequency texture: a random grid this size, upsampled
    background_amplitude: float = 28.0
    background_tint: float = 0.3  # colour share of the blotches: muted, so shapes stand out
    pixel_noise_std: float = 6.0
    shape_colour_jitter: int = 14
    small_radius_frac: float = 0.14  # below: "small"; above large_radius_frac: "large"
    large_radius_frac: float = 0.20
    # Shapes lie inside the central square the CLIP preprocessing keeps (its centre crop), so
    # the language model sees every object it is asked about; the margins of a long side stay
    # background. False: anywhere in the image.
    inside_clip_crop: bool = True


@dataclass
class Shape:
    kind: str
    colour: str
    center: tuple[float, float]  # (x, y) pixels
    radius: float  # circumradius in pixels
    polygon: np.ndarray  # float [N, 2] (x, y), rounded to 0.01 px as written to the files
    full_mask: np.ndarray  # uint8 [H, W] the whole shape
    visible_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    def flat_polygon(self) -> list[float]:
        return [float(v) for v in self.polygon.reshape(-1)]


@dataclass
class Scene:
    width: int
    height: int
    shapes: list[Shape]  # in painting order: later shapes lie on top
    jpeg: bytes

    def occluders_of(self, index: int) -> list[int]:
        """Shapes painted after `index` that cover some of its pixels."""
        target = self.shapes[index].full_mask.astype(bool)
        return [
            j
            for j in range(index + 1, len(self.shapes))
            if np.any(target & self.shapes[j].full_mask.astype(bool))
        ]


def shape_polygon(
    kind: str, center: tuple[float, float], radius: float, angle: float, s: SceneConfig
) -> np.ndarray:
    """Vertices of a regular shape (star: alternating outer / inner radius)."""
    vertices = {"circle": s.circle_vertices, "square": 4, "triangle": 3, "star": 10, "hexagon": 6}
    count = vertices[kind]
    theta = angle + 2.0 * np.pi * np.arange(count) / count
    radii = np.full(count, radius)
    if kind == "star":
        radii[1::2] *= s.star_inner_ratio
    points = np.stack(
        [center[0] + radii * np.cos(theta), center[1] + radii * np.sin(theta)], axis=1
    )
    return np.round(points, 2)


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    rles = coco_mask.frPyObjects([[float(v) for v in polygon.reshape(-1)]], height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int, s: SceneConfig) -> np.ndarray:
    """Muted base colour + low-frequency blotches + a faint stripe texture + pixel noise."""
    base = (rng.uniform(95, 165) + rng.uniform(-15, 15, size=3)).astype(np.float32)
    grid = rng.normal(0.0, 1.0, size=(s.background_grid, s.background_grid, 3)).astype(np.float32)
    grid[..., 1:] = grid[..., :1] + s.background_tint * grid[..., 1:]  # mostly brightness
    grid[..., 0] *= 1.0 + s.background_tint
    blotches = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    freq = rng.uniform(0.05, 0.25)
    direction = rng.uniform(0, np.pi)
    phase = freq * (np.cos(direction) * xs[None, :] + np.sin(direction) * ys[:, None])
    stripes = np.sin(phase, dtype=np.float32)[..., None]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * s.pixel_noise_std
    image = (base + s.background_amplitude * blotches + 8.0 * stripes + noise).astype(np.float32)
    return image


def _place_shapes(
    rng: np.random.Generator, width: int, height: int, s: SceneConfig
) -> list[Shape]:
    count = int(rng.integers(s.min_shapes, s.max_shapes + 1))
    pairs = [(k.name, c.name) for k in KINDS for c in COLOURS]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    short = min(width, height)
    radii = np.sort(rng.uniform(s.min_radius_frac, s.max_radius_frac, size=count) * short)[::-1]
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    if s.inside_clip_crop:  # the centre crop of the shorter side
        x0, y0 = (width - short) / 2, (height - short) / 2
        x1, y1 = x0 + short, y0 + short
    placed: list[Shape] = []
    for pair_index, radius in zip(chosen, radii, strict=True):
        kind, colour = pairs[int(pair_index)]
        for _ in range(s.placement_tries):
            center = (
                float(rng.uniform(x0 + radius + 1, x1 - radius - 2)),
                float(rng.uniform(y0 + radius + 1, y1 - radius - 2)),
            )
            polygon = shape_polygon(
                kind, center, float(radius), float(rng.uniform(0, 2 * np.pi)), s
            )
            full = polygon_mask(polygon, height, width)
            hides = full.astype(bool)
            if all(
                np.count_nonzero(p.visible_mask.astype(bool) & ~hides)
                >= s.min_visible_frac * np.count_nonzero(p.full_mask)
                for p in placed
            ):
                for p in placed:
                    p.visible_mask = (p.visible_mask.astype(bool) & ~hides).astype(np.uint8)
                placed.append(
                    Shape(kind, colour, center, float(radius), polygon, full, full.copy())
                )
                break
    return placed


def sample_scene(rng: np.random.Generator, s: SceneConfig | None = None) -> Scene:
    """One scene: sizes, shapes, rendering and JPEG bytes, all drawn from `rng`."""
    s = s or SceneConfig()
    width = int(rng.integers(s.min_side, s.max_side + 1))
    height = int(rng.integers(s.min_side, s.max_side + 1))
    shapes = _place_shapes(rng, width, height, s)
    image = _background(rng, height, width, s)
    for shape in shapes:
        rgb = np.array(COLOUR_RGB[shape.colour], dtype=np.float64)
        rgb = rgb + rng.integers(-s.shape_colour_jitter, s.shape_colour_jitter + 1, size=3)
        painted = shape.full_mask.astype(bool)
        speckle = rng.standard_normal((int(painted.sum()), 3), dtype=np.float32)
        image[painted] = rgb + speckle * (s.pixel_noise_std / 2)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=s.jpeg_quality)
    return Scene(width, height, shapes, buffer.getvalue())


def size_word(shape: Shape, scene: Scene, s: SceneConfig | None = None) -> str:
    s = s or SceneConfig()
    frac = shape.radius / min(scene.width, scene.height)
    if frac < s.small_radius_frac:
        return "small"
    if frac > s.large_radius_frac:
        return "large"
    return ""


def location_phrase(shape: Shape, scene: Scene) -> str:
    """Where the centre lies in thirds of the image; "" when it is in the middle."""
    fx = shape.center[0] / scene.width
    fy = shape.center[1] / scene.height
    horizontal = "left" if fx < 0.4 else "right" if fx > 0.6 else ""
    vertical = "top" if fy < 0.4 else "bottom" if fy > 0.6 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the middle"


COLOUR_RGB = {c.name: c.rgb for c in COLOURS}
