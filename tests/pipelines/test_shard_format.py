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
        (lambda m: m.update({META_MEMBER: json.dumps({**json.loads(m[META_MEMBER]), "schema": 3})
                             .encode()}), r"schema 3; this reader understands versions \[1, 2\]"),
        (lambda m: m.update({META_MEMBER: json.dumps({**json.loads(m[META_MEMBER]),
                                                      "absent_classes": [["a", "b", "c"]]})
                             .encode()}), "neither a name nor"),
        (lambda m: m.update({META_MEMBER: json.dumps({**json.loads(m[META_MEMBER]),
                                                      "dialogue": [["only a question"]]})
                             .encode()}), "not \\[question, answer\\]"),
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


def test_mix_fields_round_trip_and_version_1_still_reads():
    """Schema 2 carries absent classes (names or [object, part]), a dialogue and query parts;
    a version-1 member (written before the mix) decodes to the same sample without them."""
    from dataset_builders.sample import ClassName, Query

    sample = make_sample(3)
    sample.targets[0].queries = [Query("dog", False, part="head")]
    sample.absent_classes = [ClassName("wall"), ClassName("car", "wheel")]
    sample.dialogue = [("<image>\nWhat is it?", "A dog."), ("Is it big?", "No.")]
    members = encode_sample(sample)
    meta = json.loads(members[META_MEMBER])
    assert meta["schema"] == 2
    assert meta["absent_classes"] == ["wall", ["car", "wheel"]]
    decoded = decode_sample(members)
    assert decoded.absent_classes == sample.absent_classes
    assert decoded.dialogue == sample.dialogue
    assert decoded.targets[0].queries == sample.targets[0].queries

    plain = make_sample(4)
    old = encode_sample(plain)
    old_meta = json.loads(old[META_MEMBER])
    old_meta["schema"] = 1
    for target in old_meta["targets"]:
        for query in target["queries"]:
            del query["part"]  # version 1 had no such field
    old[META_MEMBER] = json.dumps(old_meta).encode()
    again = decode_sample(old)
    assert again.absent_classes == [] and again.dialogue == []
    assert [t.queries for t in again.targets] == [t.queries for t in plain.targets]
