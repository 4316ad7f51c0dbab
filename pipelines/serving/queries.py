"""`POST /v1/segment` input: a multipart form checked field by field before any model work.

Every refusal is a `RequestError` with an HTTP status and a one-line reason: a missing, unknown
or repeated field, a file that is not an image, an image above the pixel limit (checked from the
header, before decoding), an empty or over-long question, a question that smuggles the model's
own control tokens, an unknown prompt mode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.mlflow_model.schema import PROMPT_MODES
from read_model.config import TokenizerConfig

REQUIRED_FIELDS = ("image", "question")
OPTIONAL_FIELDS = ("prompt_mode", "overlay")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
MAX_TEXT_FIELD_BYTES = 64 * 1024  # starlette's per-field cap for the non-file fields


class RequestError(Exception):
    """A request the API refuses: `status` (4xx) and a one-line `reason`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = " ".join(reason.split())


@dataclass(frozen=True)
class RequestLimits:
    max_upload_bytes: int
    max_image_pixels: int
    max_question_chars: int
    forbidden_tokens: tuple[str, ...]  # the model's control tokens (<image>, [SEG], ...)

    @classmethod
    def from_config(cls, serve: Any, tokenizer: TokenizerConfig) -> RequestLimits:
        tokens = (tokenizer.image_token, tokenizer.seg_token, tokenizer.im_start_token,
                  tokenizer.im_end_token)
        return cls(serve.max_upload_bytes, serve.max_image_pixels, serve.max_question_chars,
                   tuple(t for t in tokens if t))


@dataclass
class SegmentQuery:
    """One validated question about one image, as the model replica receives it."""

    image: np.ndarray  # uint8 RGB [H, W, 3]
    question: str
    prompt_mode: str | None = None  # None = the served model's own mode
    with_heatmap: bool = False  # compute the full-resolution similarity map (for overlays)


def decode_image(data: bytes, limits: RequestLimits) -> np.ndarray:
    """Upload bytes -> uint8 RGB [H, W, 3], camera orientation applied."""
    if not data:
        raise RequestError(400, "field 'image' is an empty file")
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"image file is {len(data)} bytes, above the limit of "
                                f"{limits.max_upload_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check only warns below 2x its limit; ours (below) is the one enforced.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > limits.max_image_pixels:
                    raise RequestError(413, f"image is {width}x{height} = {width * height} "
                                            f"pixels, above the limit of "
                                            f"{limits.max_image_pixels} pixels")
                upright = ImageOps.exif_transpose(image)
                return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except RequestError:
        raise
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"image refused as a decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise RequestError(415, "field 'image' is not an image in a format the server reads "
                                "(PNG, JPEG, WebP, ...)") from error
    except (OSError, ValueError, SyntaxError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RequestError(415, f"field 'image' is a damaged image: {detail}") from error


def check_question(text: str, limits: RequestLimits) -> str:
    question = text.strip()
    if not question:
        raise RequestError(400, "field 'question' is empty")
    if len(question) > limits.max_question_chars:
        raise RequestError(400, f"question is {len(question)} characters, above the limit of "
                                f"{limits.max_question_chars}")
    for token in limits.forbidden_tokens:
        if token in question:
            raise RequestError(400, f"question must not contain the model's control token "
                                    f"{token!r}")
    return question


def check_prompt_mode(value: str) -> str | None:
    mode = value.strip()
    if not mode:
        return None
    if mode not in PROMPT_MODES:
        raise RequestError(400, f"prompt_mode {mode!r} is not one of {', '.join(PROMPT_MODES)}")
    return mode


def check_flag(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise RequestError(400, f"field {name!r} must be true or false, got {value[:40]!r}")


def check_fields(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Form items -> one value per known field; unknown, repeated or missing fields refused."""
    names = [name for name, _ in items]
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected "
                                f"{', '.join(FIELDS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RequestError(400, f"field(s) {', '.join(map(repr, repeated))} given more than once")
    missing = [n for n in REQUIRED_FIELDS if n not in names]
    if missing:
        raise RequestError(400, f"missing field(s) {', '.join(map(repr, missing))}")
    return dict(items)


def query_from_fields(fields: dict[str, Any], image_bytes: bytes,
                      limits: RequestLimits) -> tuple[SegmentQuery, bool]:
    """Validated fields (text values) + the image bytes -> (query, overlay wanted)."""
    for name in ("question", "prompt_mode", "overlay"):
        if name in fields and not isinstance(fields[name], str):
            raise RequestError(400, f"field {name!r} must be text, not a file")
    question = check_question(fields["question"], limits)
    mode = check_prompt_mode(fields.get("prompt_mode", ""))
    overlay = check_flag("overlay", fields.get("overlay", ""))
    image = decode_image(image_bytes, limits)
    return SegmentQuery(image, question, mode, with_heatmap=overlay), overlay


async def read_segment_form(request: Any, limits: RequestLimits) -> tuple[SegmentQuery, bool]:
    """Parse a starlette `Request` holding the multipart form -> (query, overlay wanted)."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(415, f"expected a multipart/form-data upload, got "
                                f"{content_type or 'no content type'!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes + MAX_TEXT_FIELD_BYTES:
        raise RequestError(413, f"request body is {declared} bytes, above the limit of "
                                f"{limits.max_upload_bytes} bytes for the image")
    try:
        form = await request.form(max_files=len(FIELDS), max_fields=len(FIELDS) * 2,
                                  max_part_size=MAX_TEXT_FIELD_BYTES)
    except (MultiPartException, HTTPException) as error:
        detail = getattr(error, "detail", None) or getattr(error, "message", str(error))
        raise RequestError(400, f"malformed multipart form: {detail}") from error
    try:
        fields = check_fields(list(form.multi_items()))
        image = fields["image"]
        if not isinstance(image, UploadFile):
            raise RequestError(400, "field 'image' must be a file upload")
        data = await image.read(limits.max_upload_bytes + 1)
        return query_from_fields(fields, data, limits)
    finally:
        await form.close()
