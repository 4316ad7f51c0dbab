"""Sample <-> WebDataset members: lossless round trip, schema checks, standard tars."""

from __future__ import annotations

import io
import json
import tarfile

import cv2
import numpy as np
import pytest

from dataset_builders.sample import Query, Sample, Target
from pipelines.shard_format import (
    MASKS_MEMBER,
    META_MEMBER,
    ShardFormatError,
    decode_sample,
    encode_sample,
    tar_bytes,
)


def make_sample(index: int, *, height: int = 24, width: int = 32, targets: int = 2) -> Sample:
    """A small sample whose image and masks depend on `index` (so samples differ)."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    target_list = []
    for t in range(targets):
        mask = (rng.random((height, width)) > 0.5).astype(np.uint8)
        mask[0, : t + 1] = 255
        queries = [Query(f"object {index}-{t}", is_sentence=bool(t % 2), query_id=f"{index}:{t}")]
        if t == 1:
            queries.append(Query("the purple whale", False, exists=False, gt_sent="the circle"))
        target_list.append(Target(mask=mask, queries=queries, target_id=f"ann{t}"))
    return Sample(key=f"toy_train_{index:05d}", dataset="toy", split="train", image_bytes=jpeg,
                  width=width, height=height, targets=target_list,
                  source={"image": f"img/{index}.jpg", "image_id": str(index)})


def assert_same_sample(a: Sample, b: Sample) -> None:
    assert (a.key, a.dataset, a.split, a.width, a.height) == (b.key, b.dataset, b.split, b.width,
                                                              b.height)
    assert a.image_bytes == b.image_bytes
    assert a.source == b.source
    assert len(a.targets) == len(b.targets)
    for x, y in zip(a.targets, b.targets, strict=True):
        assert x.target_id == y.target_id
        assert x.queries == y.queries
        assert x.mask.dtype == y.mask.dtype == np.uint8
        np.testing.assert_array_equal(x.mask, y.mask)


def test_round_trip_is_lossless():
    sample = make_sample(3, targets=3)
    members = encode_sample(sample)
    assert set(members) == {"__key__", "jpg", "json", "masks.png"}
    assert members["jpg"] == sample.image_bytes  # original bytes, never re-encoded
    assert_same_sample(decode_sample(members), sample)
    dotted = {("." + k if k != "__key__" else k): v for k, v in members.items()}
    assert_same_sample(decode_sample(dotted), sample)


def test_sample_without_targets_round_trips():
    sample = make_sample(1, targets=0)
    assert_same_sample(decode_sample(encode_sample(sample)), sample)


def test_key_with_dot_is_refused():
    sample = make_sample(1)
    sample.key = "toy.train.1"
    with pytest.raises(ShardFormatError, match="no dots"):
        encode_sample(sample)


def test_mask_of_wrong_size_is_refused():
    sample = make_sample(1)
    sample.targets[0].mask = np.zeros((5, 5), np.uint8)
    with pytest.raises(ShardFormatError, match="do not match"):
        encode_sample(sample)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.update({META_MEMBER: b"{not json"}), "not valid JSON"),
        (lambda m: m.update({META_MEMBER: json.dumps({**json.loads(m[META_MEMBER]), "schema": 2})
                             .encode()}), "schema 2"),
        (lambda m: m.update({MASKS_MEMBER: b"\x89PNG broken"}), "not a readable PNG"),
        (lambda m: m.update({MASKS_MEMBER: cv2.imencode(".png", np.full((24, 32), 7, np.uint8))[1]
                             .tobytes()}), "shape"),
        (lambda m: m.update({MASKS_MEMBER: cv2.imencode(".png", np.full((48, 32), 7, np.uint8))[1]
                             .tobytes()}), "values other than"),
        (lambda m: m.pop("jpg"), "lacks members"),
    ],
)
def test_damaged_members_are_refused_with_a_reason(damage, message):
    members = encode_sample(make_sample(2))
    damage(members)
    with pytest.raises(ShardFormatError, match=message):
        decode_sample(members)


def test_tar_is_standard_and_reproducible():
    samples = [encode_sample(make_sample(i)) for i in range(3)]
    data = tar_bytes(samples)
    assert data == tar_bytes([encode_sample(make_sample(i)) for i in range(3)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names == [f"toy_train_{i:05d}.{m}" for i in range(3) for m in ("jpg", "json", "masks.png")]
