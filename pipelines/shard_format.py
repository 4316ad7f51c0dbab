"""Canonical `Sample` <-> WebDataset members (shard schema version 2, docs/architecture.md §2).

The manifest that lists the shards is `pipelines/manifest.py`.

One WebDataset sample per canonical sample, key = `Sample.key`:
`<key>.jpg` the original image bytes (never re-encoded), `<key>.json` the metadata and queries,
`<key>.masks.png` every target mask stacked vertically into one lossless 8-bit PNG [T*H, W].
Decoding validates the schema so a shard written by another version, or damaged in transit,
is refused with a reason instead of producing a wrong sample.

Version 2 (the full training mix) adds to the json member: ``absent_classes`` (semantic
segmentation: names of the classes the image lacks, a plain string or an ``[object, part]``
pair each), ``dialogue`` (VQA: ``[question, answer]`` turns) and the query field ``part``; the
first two appear only when non-empty. A version-1 shard holds none of them and reads as before.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import asdict, fields
from typing import Any

import cv2
import numpy as np

from dataset_builders.sample import (
    MASK_BACKGROUND,
    MASK_IGNORE,
    MASK_OBJECT,
    ClassName,
    Query,
    Sample,
    Target,
)

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # version 1 is version 2 without the mix's fields
SHARD_PATTERN = re.compile(r"^shard-\d{6}\.tar$")
IMAGE_MEMBER = "jpg"
META_MEMBER = "json"
MASKS_MEMBER = "masks.png"
MEMBER_NAMES = (IMAGE_MEMBER, META_MEMBER, MASKS_MEMBER)
PNG_COMPRESSION = 3  # cv2 zlib level: masks are mostly flat, higher levels cost time for little
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_QUERY_FIELDS = tuple(f.name for f in fields(Query))
if (MASK_BACKGROUND, MASK_OBJECT, MASK_IGNORE) != (0, 1, 255):  # decode_masks' value check
    raise ImportError("the shard schema expects mask values 0, 1 and 255")


class ShardFormatError(ValueError):
    """A WebDataset sample does not follow the shard schema."""


def encode_sample(sample: Sample) -> dict[str, Any]:
    """WebDataset members of one sample: {"__key__", "jpg", "json", "masks.png"}."""
    if not _KEY_PATTERN.match(sample.key):
        raise ShardFormatError(f"key {sample.key!r} must match [A-Za-z0-9_-]+ (no dots)")
    meta = {
        "schema": SCHEMA_VERSION,
        "dataset": sample.dataset,
        "split": sample.split,
        "width": int(sample.width),
        "height": int(sample.height),
        "source": dict(sample.source),
        "targets": [
            {"target_id": t.target_id, "queries": [asdict(q) for q in t.queries]}
            for t in sample.targets
        ],
    }
    if sample.absent_classes:
        meta["absent_classes"] = [c.name if not c.part else [c.name, c.part]
                                  for c in sample.absent_classes]
    if sample.dialogue:
        meta["dialogue"] = [[question, answer] for question, answer in sample.dialogue]
    return {
        "__key__": sample.key,
        IMAGE_MEMBER: bytes(sample.image_bytes),
        META_MEMBER: json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        MASKS_MEMBER: encode_masks([t.mask for t in sample.targets], sample.height, sample.width),
    }


def encode_masks(masks: list[np.ndarray], height: int, width: int) -> bytes:
    """Stack [H, W] uint8 masks into one lossless PNG of shape [T*H, W]."""
    shapes = [np.shape(m) for m in masks]
    if any(shape != (height, width) for shape in shapes):
        raise ShardFormatError(f"mask shapes {shapes} do not match the image {height}x{width}")
    if masks:
        stacked = np.concatenate([np.asarray(m, dtype=np.uint8) for m in masks], axis=0)
    else:
        stacked = np.zeros((0, width), dtype=np.uint8)
    if stacked.shape[0] == 0:
        return b""  # PNG cannot hold a zero-height image; no targets -> empty member
    ok, buffer = cv2.imencode(".png", stacked, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ShardFormatError("PNG encoding of the masks failed")
    return buffer.tobytes()


def decode_masks(data: bytes, count: int, height: int, width: int) -> list[np.ndarray]:
    """Inverse of `encode_masks`, checking the shape and the value set."""
    if count == 0:
        if data:
            raise ShardFormatError("masks member is not empty but the sample has no targets")
        return []
    stacked = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if stacked is None:
        raise ShardFormatError("masks member is not a readable PNG")
    if stacked.dtype != np.uint8 or stacked.shape != (count * height, width):
        raise ShardFormatError(
            f"masks PNG has shape {stacked.shape} {stacked.dtype}, expected "
            f"({count}*{height}, {width}) uint8"
        )
    # uint8 wrap-around maps the valid values 255, 0, 1 onto 0, 1, 2: one add and one max.
    if int(np.add(stacked, 1, dtype=np.uint8).max()) > 2:
        raise ShardFormatError("masks PNG holds values other than 0, 1 and 255")
    return list(stacked.reshape(count, height, width))


def decode_sample(members: dict[str, Any]) -> Sample:
    """A `Sample` from WebDataset members (plain `webdataset` or Ray Data rows, bytes values).

    Member names may carry a leading dot (".jpg") as some readers keep it; the json member may
    be bytes or an already parsed dict (`webdataset`'s default `.decode()`).
    """
    named = {str(k).lstrip("."): v for k, v in members.items()}
    missing = [m for m in ("__key__", *MEMBER_NAMES) if m not in named]
    if missing:
        raise ShardFormatError(f"sample {named.get('__key__')!r} lacks members {missing}")
    key = _as_text(named["__key__"])
    meta = named[META_MEMBER]
    if not isinstance(meta, dict):  # webdataset's `.decode()` already parses JSON
        try:
            meta = json.loads(_as_bytes(meta).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ShardFormatError(
                f"sample {key!r}: json member is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("schema") not in READABLE_SCHEMAS:
        found = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise ShardFormatError(
            f"sample {key!r}: shard schema {found!r}; this reader understands versions "
            f"{list(READABLE_SCHEMAS)} (rebuild the shards with this version's build_shards, or "
            "read them with the version that wrote them)"
        )
    try:
        height, width = int(meta["height"]), int(meta["width"])
        target_meta = list(meta["targets"])
        queries = [[Query(**_query_fields(q)) for q in t["queries"]] for t in target_meta]
        masks = decode_masks(_as_bytes(named[MASKS_MEMBER]), len(target_meta), height, width)
        return Sample(
            key=key,
            dataset=str(meta["dataset"]),
            split=str(meta["split"]),
            image_bytes=_as_bytes(named[IMAGE_MEMBER]),
            width=width,
            height=height,
            targets=[
                Target(mask=mask, queries=q, target_id=str(t.get("target_id", "")))
                for mask, q, t in zip(masks, queries, target_meta, strict=True)
            ],
            source={str(k): str(v) for k, v in dict(meta.get("source", {})).items()},
            absent_classes=_absent_classes(meta.get("absent_classes", [])),
            dialogue=_dialogue(meta.get("dialogue", [])),
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ShardFormatError):
            raise
        raise ShardFormatError(f"sample {key!r}: malformed metadata: {error!r}") from error


def tar_bytes(samples: list[dict[str, Any]]) -> bytes:
    """A standard WebDataset tar of encoded samples, byte-for-byte reproducible.

    Members of one sample are contiguous (a WebDataset requirement) and every header field that
    could vary between runs (mtime, owner, mode) is fixed, so equal inputs give equal sha256s.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for members in samples:
            key = _as_text(members["__key__"])
            for name in MEMBER_NAMES:
                data = _as_bytes(members[name])
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _absent_classes(raw: Any) -> list[ClassName]:
    out = []
    for item in list(raw):
        if isinstance(item, str):
            out.append(ClassName(item))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            out.append(ClassName(item[0], item[1]))
        else:
            raise ShardFormatError(f"absent class {item!r} is neither a name nor [object, part]")
    return out


def _dialogue(raw: Any) -> list[tuple[str, str]]:
    turns = []
    for turn in list(raw):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(v, str) for v in turn)):
            raise ShardFormatError(f"dialogue turn {turn!r} is not [question, answer]")
        turns.append((turn[0], turn[1]))
    return turns


def _query_fields(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = set(raw) - set(_QUERY_FIELDS)
    if unknown:
        raise ShardFormatError(f"unknown query fields {sorted(unknown)}")
    return raw


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    raise ShardFormatError(f"expected raw bytes, got {type(value).__name__} (decode disabled?)")


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
