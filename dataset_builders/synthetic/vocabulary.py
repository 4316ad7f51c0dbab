"""What the synthetic world contains and the facts the queries may reason about.

Each kind and colour carries one-step-inference phrases ("something that could roll" needs the
reader to know circles roll), so reasoning queries name a property, never the object itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    corners: int  # polygon corners as a person counts them (0 for a circle)
    phrases: tuple[str, ...]  # short reasoning phrases (is_sentence=False)
    sentences: tuple[str, ...]  # long reasoning questions (is_sentence=True)


@dataclass(frozen=True)
class Colour:
    name: str
    rgb: tuple[int, int, int]
    phrases: tuple[str, ...]
    sentences: tuple[str, ...]


KINDS: tuple[Kind, ...] = (
    Kind(
        "circle",
        0,
        ("something that could roll", "the round shape", "the shape with no corners"),
        (
            "If the table were tilted, which object in this picture would roll away first?",
            "Which shape in the picture has no corners at all?",
        ),
    ),
    Kind(
        "square",
        4,
        ("the shape with four equal sides", "the one shaped like a window pane"),
        (
            "Which shape in this image has four corners and four sides of the same length?",
            "Which object has the same outline as a tile on a chessboard?",
        ),
    ),
    Kind(
        "triangle",
        3,
        ("the shape with three corners", "the one shaped like a slice of pizza"),
        (
            "Which shape in the picture has exactly three corners?",
            "Which object has the same outline as a warning road sign?",
        ),
    ),
    Kind(
        "star",
        10,
        ("the shape with five points", "something you might see in the night sky"),
        (
            "Which shape would a child draw to decorate a picture of the night sky?",
            "Which object in this picture has five sharp points?",
        ),
    ),
    Kind(
        "hexagon",
        6,
        ("the shape with six corners", "the one shaped like a honeycomb cell"),
        (
            "Which shape has six corners, like a single cell of a honeycomb?",
            "Which object in the image has the outline of a nut that fits a bolt?",
        ),
    ),
)

COLOURS: tuple[Colour, ...] = (
    Colour(
        "red",
        (214, 39, 40),
        ("the one the colour of a ripe tomato", "the one the colour of a fire truck"),
        ("Which object has the colour of a ripe tomato?",),
    ),
    Colour(
        "green",
        (44, 160, 44),
        ("the one the colour of grass", "the one the colour of a fresh leaf"),
        ("Which object has the same colour as freshly cut grass?",),
    ),
    Colour(
        "blue",
        (31, 90, 220),
        ("the one the colour of a clear sky", "the one the colour of the deep sea"),
        ("Which object has the colour of a clear summer sky?",),
    ),
    Colour(
        "yellow",
        (240, 210, 30),
        ("the one the colour of a banana", "the one the colour of a lemon"),
        ("Which object has the colour of a ripe banana?",),
    ),
    Colour(
        "purple",
        (140, 60, 180),
        ("the one the colour of lavender", "the one the colour of an aubergine"),
        ("Which object has the colour of a lavender flower?",),
    ),
    Colour(
        "orange",
        (250, 130, 20),
        ("the one the colour of a carrot", "the one the colour of a pumpkin"),
        ("Which object has the colour of a carrot?",),
    ),
)

KIND_BY_NAME = {k.name: k for k in KINDS}
COLOUR_BY_NAME = {c.name: c for c in COLOURS}

LARGEST_PHRASES = ("the biggest shape", "the largest object")
LARGEST_SENTENCES = ("Which shape takes up the most space in this picture?",)
SMALLEST_PHRASES = ("the smallest shape", "the tiniest object")
SMALLEST_SENTENCES = ("Which shape in this picture is the smallest one?",)
