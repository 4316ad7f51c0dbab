"""What the READ pyfunc model takes and returns, and the conversions on both sides.

One input row is one question about one image:

* ``image`` (binary): an encoded image file (PNG, JPEG, ...); base64 in a JSON request.
* ``question`` (string): e.g. "What is the dog in this image? Please output segmentation mask."
* ``prompt_mode`` (string, optional): how SAM is prompted (``seg_only``, ``points_discrete``,
  ``points_dtoc``); empty means the mode the model was trained with.

One output row per input row: ``answer`` (the generated text), ``see`` (a [SEG] was generated and
its mask is non-empty), ``masks`` (one COCO RLE per generated [SEG], at the image's resolution),
``points`` ([n_seg][K][x, y] pixels SAM was prompted with) and ``point_labels`` ([n_seg][K],
1 positive / 0 negative / -1 neutral). The request parameter ``max_new_tokens`` bounds the answer.
"""

from __future__ import annotations

import io
import typing
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from read_model.config import PromptMode

IMAGE = "image"
QUESTION = "question"
PROMPT_MODE = "prompt_mode"
ANSWER = "answer"
SEE = "see"
MASKS = "masks"
POINTS = "points"
POINT_LABELS = "point_labels"
MAX_NEW_TOKENS = "max_new_tokens"
DEFAULT_MAX_NEW_TOKENS = 32  # upstream evaluate() default
PROMPT_MODES: tuple[str, ...] = typing.get_args(PromptMode)
EXAMPLE_QUESTION = "What is the circle in this image? Please output segmentation mask."
EXAMPLE_SIZE = (48, 64)  # (height, width): small, so logging's serving check stays quick


class InputError(ValueError):
    """A request row that cannot be answered; the message names the row and the reason."""


def signature() -> Any:
    """The model signature MLflow stores in MLmodel, shows in the UI and enforces on input."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import (
        Array,
        ColSpec,
        DataType,
        Object,
        ParamSchema,
        ParamSpec,
        Property,
        Schema,
    )

    rle = Object([Property("size", Array(DataType.long)), Property("counts", DataType.string)])
    inputs = Schema([
        ColSpec(DataType.binary, IMAGE),
        ColSpec(DataType.string, QUESTION),
        ColSpec(DataType.string, PROMPT_MODE, required=False),
    ])
    outputs = Schema([
        ColSpec(DataType.string, ANSWER),
        ColSpec(DataType.boolean, SEE),
        ColSpec(Array(rle), MASKS),
        ColSpec(Array(Array(Array(DataType.double))), POINTS),
        ColSpec(Array(Array(DataType.long)), POINT_LABELS),
    ])
    params = ParamSchema([ParamSpec(MAX_NEW_TOKENS, DataType.long, DEFAULT_MAX_NEW_TOKENS)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_image() -> np.ndarray:
    """A grey frame with one bright disc: the kind of scene the synthetic data holds."""
    height, width = EXAMPLE_SIZE
    rows, cols = np.mgrid[0:height, 0:width]
    disc = (rows - height / 2) ** 2 + (cols - width / 3) ** 2 <= (height / 4) ** 2
    image = np.full((height, width, 3), 96, dtype=np.uint8)
    image[disc] = (230, 60, 40)
    return image


def encode_image(image: np.ndarray, format: str = "PNG") -> bytes:
    """uint8 RGB [H, W, 3] -> encoded file bytes (what a client sends)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def input_example() -> Any:
    """One-row request (stored with the model; MLflow runs it once when logging)."""
    import pandas as pd

    return pd.DataFrame({IMAGE: [encode_image(example_image())], QUESTION: [EXAMPLE_QUESTION]})


def decode_image(data: Any, row: int) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB [H, W, 3]; anything else is an `InputError`."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise InputError(f"row {row}: '{IMAGE}' must be encoded image bytes, got "
                         f"{type(data).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"row {row}: '{IMAGE}' is not a readable image ({error})") from error


def prompt_mode_of(value: Any, default: str, row: int) -> str:
    """The row's prompt mode: empty/missing means `default`; unknown names are refused."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return default
    if value not in PROMPT_MODES:
        raise InputError(f"row {row}: '{PROMPT_MODE}' must be one of {list(PROMPT_MODES)}, "
                         f"got {value!r}")
    return str(value)


def max_new_tokens_of(params: dict[str, Any] | None) -> int:
    value = int((params or {}).get(MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS))
    if value < 1:
        raise InputError(f"'{MAX_NEW_TOKENS}' must be >= 1, got {value}")
    return value


def output_row(prediction: Any) -> dict[str, Any]:
    """One `read_model.model.Prediction` -> the JSON-friendly output row."""
    from pipelines.evaluation.predictions_io import encode_rle

    return {
        ANSWER: prediction.text,
        SEE: bool(prediction.exists),
        MASKS: [encode_rle(mask) for mask in prediction.masks.cpu().numpy()],
        POINTS: prediction.points.float().cpu().tolist(),
        POINT_LABELS: prediction.labels.cpu().long().tolist(),
    }
