"""Queries about a scene: referring expressions, one-step reasoning, false premises.

Every query is checked against the scene so it names exactly one shape (or, for a false
premise, none): a reasoning phrase about a kind is only used when that kind occurs once.
"""

from __future__ import annotations

import numpy as np

from dataset_builders.synthetic.scene import Scene, Shape, location_phrase, size_word
from dataset_builders.synthetic.vocabulary import (
    COLOUR_BY_NAME,
    COLOURS,
    KIND_BY_NAME,
    KINDS,
    LARGEST_PHRASES,
    LARGEST_SENTENCES,
    SMALLEST_PHRASES,
    SMALLEST_SENTENCES,
)

EXTREME_AREA_RATIO = 1.4  # "the biggest" needs a clear margin over the runner-up


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def referring_expression(
    shape: Shape, scene: Scene, rng: np.random.Generator, *, with_location: bool = True
) -> str:
    """Short RefCOCO-style phrase; (kind, colour) is unique per scene so it always resolves."""
    words = ["the"]
    size = size_word(shape, scene)
    if size and rng.random() < 0.6:
        words.append(size)
    words += [shape.colour, shape.kind]
    if with_location and rng.random() < 0.7:
        words.append(location_phrase(shape, scene))
    if rng.random() < 0.2:
        words = words[1:]  # RefCOCO has many article-less expressions
    return " ".join(words)


def long_referring_expression(shape: Shape, scene: Scene, rng: np.random.Generator) -> str:
    """RefCOCOg-style longer description."""
    size = size_word(shape, scene)
    sized = f"{size} " if size else ""
    where = location_phrase(shape, scene)
    forms = [
        f"the {sized}{shape.colour} {shape.kind} that is {where}",
        f"a {sized}{shape.kind} painted {shape.colour}, {where} of the picture",
        f"the {shape.kind} whose colour is {shape.colour}",
    ]
    return _pick(rng, forms)


def _areas(scene: Scene) -> np.ndarray:
    return np.array([np.count_nonzero(s.full_mask) for s in scene.shapes], dtype=np.float64)


def _is_extreme(index: int, areas: np.ndarray, largest: bool) -> bool:
    others = np.delete(areas, index)
    if others.size == 0:
        return False
    if largest:
        return bool(areas[index] >= EXTREME_AREA_RATIO * others.max())
    return bool(areas[index] * EXTREME_AREA_RATIO <= others.min())


def reasoning_queries(index: int, scene: Scene) -> tuple[list[str], list[str]]:
    """(short phrases, long sentences) that need one inference step and name only this shape."""
    shape = scene.shapes[index]
    kinds = [s.kind for s in scene.shapes]
    colours = [s.colour for s in scene.shapes]
    phrases: list[str] = []
    sentences: list[str] = []
    if kinds.count(shape.kind) == 1:
        phrases += KIND_BY_NAME[shape.kind].phrases
        sentences += KIND_BY_NAME[shape.kind].sentences
    if colours.count(shape.colour) == 1:
        phrases += COLOUR_BY_NAME[shape.colour].phrases
        sentences += COLOUR_BY_NAME[shape.colour].sentences
    areas = _areas(scene)
    if _is_extreme(index, areas, largest=True):
        phrases += LARGEST_PHRASES
        sentences += LARGEST_SENTENCES
    if _is_extreme(index, areas, largest=False):
        phrases += SMALLEST_PHRASES
        sentences += SMALLEST_SENTENCES
    return phrases, sentences


def absent_object(index: int, scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(colour, kind) of an object NOT in the scene, sharing the kind or colour of shape `index`.

    Sharing an attribute makes the false premise a near miss ("the purple circle" when there is
    a red one), which is what FP-RefCOCO's LLM-written variants look like. The kind is kept and
    a colour no shape has is preferred, so the premise is false at a glance (no shape of that
    colour) and a small model can learn to see it; otherwise any absent near pair.
    """
    shape = scene.shapes[index]
    present = {(s.colour, s.kind) for s in scene.shapes}
    colours = {s.colour for s in scene.shapes}
    unseen = [(c.name, shape.kind) for c in COLOURS if c.name not in colours]
    if unseen:
        return unseen[int(rng.integers(len(unseen)))]
    near = [(c.name, shape.kind) for c in COLOURS] + [(shape.colour, k.name) for k in KINDS]
    near = [pair for pair in near if pair not in present]
    if not near:
        near = [(c.name, k.name) for c in COLOURS for k in KINDS if (c.name, k.name) not in present]
    colour, kind = near[int(rng.integers(len(near)))]
    return colour, kind


def absent_expression(index: int, scene: Scene, rng: np.random.Generator,
                      *, with_location: bool = True) -> str:
    """A false-premise referring expression worded exactly like a true one (size and location of
    shape `index`, an absent colour/kind), so only the image tells them apart."""
    colour, kind = absent_object(index, scene, rng)
    shape = scene.shapes[index]
    fake = Shape(kind, colour, shape.center, shape.radius, shape.polygon, shape.full_mask,
                 shape.visible_mask)
    return referring_expression(fake, scene, rng, with_location=with_location)
