"""The synthetic generator: layout, determinism, scene constraints, unambiguous queries."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_builders.synthetic import generate_dataset
from dataset_builders.synthetic.__main__ import main as cli_main
from dataset_builders.synthetic.language import absent_object, reasoning_queries
from dataset_builders.synthetic.scene import COLOUR_RGB, SceneConfig, sample_scene

REPO = Path(__file__).resolve().parents[2]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("gen")
    return root, generate_dataset(root, seed=11, images=18)


def test_upstream_layout(generated) -> None:
    root, summary = generated
    for split in ("train", "val", "test"):
        folder = root / "reason_seg" / "ReasonSeg" / split
        jpgs = sorted(p.stem for p in folder.glob("*.jpg"))
        assert jpgs == sorted(p.stem for p in folder.glob("*.json"))
        assert len(jpgs) == summary["reason_seg_images"][split]
    refer = root / "refer_seg"
    for name in (
        "refcoco/refs(unc).p",
        "refcoco+/refs(unc_exclude_unified).p",
        "refcocog/refs(umd).p",
        "fprefcoco/refs(berkeley_exclude_unified).p",
    ):
        assert (refer / name).is_file()
        assert (refer / name).parent.joinpath("instances.json").is_file()
    images = sorted((refer / "images/mscoco/images/train2014").glob("COCO_train2014_*.jpg"))
    assert len(images) == summary["refer_images"] == 12
    assert images[0].name == "COCO_train2014_000000000001.jpg"
    for path in images:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert all(160 <= side <= 320 for side in image.size)


def test_same_seed_is_byte_identical_and_seeds_differ(generated, tmp_path: Path) -> None:
    root, _ = generated
    again = tmp_path / "again"
    generate_dataset(again, seed=11, images=18)
    assert _tree_digest(again) == _tree_digest(root)
    other = tmp_path / "other"
    generate_dataset(other, seed=12, images=18)
    reference = _tree_digest(root)
    differing = [k for k, v in _tree_digest(other).items() if reference.get(k) != v]
    assert len(differing) > 15


def test_more_images_keep_the_first_ones(generated, tmp_path: Path) -> None:
    root, _ = generated
    bigger = tmp_path / "bigger"
    generate_dataset(bigger, seed=11, images=19)
    first = root / "refer_seg/images/mscoco/images/train2014/COCO_train2014_000000000007.jpg"
    same = bigger / first.relative_to(root)
    assert same.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("seed", range(40))
def test_scene_constraints(seed: int) -> None:
    settings = SceneConfig()
    scene = sample_scene(np.random.default_rng(seed), settings)
    assert settings.min_side <= scene.width <= settings.max_side
    assert settings.min_side <= scene.height <= settings.max_side
    assert settings.min_shapes <= len(scene.shapes) <= settings.max_shapes
    pairs = [(s.kind, s.colour) for s in scene.shapes]
    assert len(set(pairs)) == len(pairs)  # (kind, colour) names exactly one shape
    union = np.zeros((scene.height, scene.width), bool)
    for shape in reversed(scene.shapes):  # recompute visibility from the painting order
        visible = shape.full_mask.astype(bool) & ~union
        np.testing.assert_array_equal(visible, shape.visible_mask.astype(bool))
        assert visible.sum() >= settings.min_visible_frac * shape.full_mask.sum()
        union |= shape.full_mask.astype(bool)
    for index, shape in enumerate(scene.shapes):
        phrases, _ = reasoning_queries(index, scene)
        for phrase in phrases:  # every reasoning phrase singles out this shape
            if "corner" in phrase or "roll" in phrase or "shaped like" in phrase:
                assert [s.kind for s in scene.shapes].count(shape.kind) == 1
            if "colour of" in phrase:
                assert [s.colour for s in scene.shapes].count(shape.colour) == 1
        colour, kind = absent_object(index, scene, np.random.default_rng(seed))
        assert (kind, colour) not in pairs
        assert kind == shape.kind or colour == shape.colour


def test_shapes_are_painted_where_the_masks_say() -> None:
    """The learnable signal: inside a mask the image has the shape's colour, not the background."""
    scene = sample_scene(np.random.default_rng(3))
    pixels = np.asarray(Image.open(io.BytesIO(scene.jpeg)).convert("RGB"), dtype=np.float64)
    for shape in scene.shapes:
        inside = shape.visible_mask.astype(bool)
        mean = pixels[inside].mean(axis=0)
        assert np.abs(mean - np.array(COLOUR_RGB[shape.colour])).max() < 30


def test_command_line(tmp_path: Path, capsys) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataset_builders.synthetic",
            "--out",
            str(tmp_path / "cli"),
            "--seed",
            "4",
            "--images",
            "6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    summary = json.loads(result.stdout)
    assert summary["images"] == 6 and summary["seed"] == 4
    assert sum(summary["reason_seg_images"].values()) == 2 and summary["refer_images"] == 4
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--out", str(tmp_path / "x"), "--images", "-1"])
    assert exit_info.value.code == 2
    assert "--images must be >= 0" in capsys.readouterr().err
