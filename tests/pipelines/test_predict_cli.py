"""The predict CLI on a synthetic image, and the overlay figure on planted inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_models import seg_answering_model

from pipelines.predict import main as predict_main
from read_model.checkpoint import save_trainable
from read_model.overlay import (
    MASK_ALPHA,
    MASK_COLOUR,
    NEGATIVE_COLOUR,
    NEUTRAL_COLOUR,
    POSITIVE_COLOUR,
    jet,
    render_overlay,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def test_overlay_colours_points_by_label_and_blends_mask_and_heatmap() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[25:40, 0:20] = True
    points = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 30.0]])
    labels = np.array([1, 0, -1])
    similarity = np.tile(np.linspace(0.0, 1.0, 60, dtype=np.float32), (40, 1))
    figure = render_overlay(image, mask, points, labels, similarity)
    assert figure.shape == (40, 120, 3) and figure.dtype == np.uint8
    for (x, y), colour in zip(points.astype(int), (POSITIVE_COLOUR, NEGATIVE_COLOUR, NEUTRAL_COLOUR), strict=True):
        assert tuple(figure[y, x]) == colour  # image panel
        assert tuple(figure[y, x + 60]) == colour  # heatmap panel
    tinted = np.round((1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.array(MASK_COLOUR))
    assert tuple(figure[35, 2]) == tuple(tinted.astype(int))  # inside the mask, away from points
    assert tuple(figure[5, 55]) == (100, 100, 100)  # outside mask and points: untouched
    expected_heat = np.round(0.3 * 100 + 0.7 * jet(similarity)[0, 40].astype(float))
    assert tuple(figure[0, 60 + 40]) == tuple(expected_heat.astype(int))
    assert tuple(jet(np.array([[0.0, 0.5, 1.0]]))[0, 0]) == (0, 0, 128)  # jet: blue -> red
    assert tuple(jet(np.array([[1.0]]))[0, 0]) == (128, 0, 0)
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(image, mask[:10], points, labels)


def _synthetic_image(path: Path) -> tuple[int, int]:
    """A red circle and a blue square on grey, drawn with PIL."""
    width, height = 128, 96
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((15, 20, 55, 60), fill=(220, 30, 30))
    draw.rectangle((75, 40, 115, 80), fill=(30, 30, 220))
    image.save(path)
    return width, height


@pytest.fixture(scope="module")
def seg_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that answers "[SEG]" (`tiny_models.seg_answering_model`), saved."""
    model, tokenizer = seg_answering_model()
    directory = tmp_path_factory.mktemp("model") / "tiny-seg"
    save_trainable(model, tokenizer, model.config, directory)
    return directory


def test_predict_cli_writes_mask_overlay_and_prints_answer(seg_model_dir: Path, tmp_path: Path) -> None:
    image_path = tmp_path / "shapes.png"
    width, height = _synthetic_image(image_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", "--model", str(seg_model_dir),
         "--image", str(image_path), "--question", "Where is the red circle?",
         "--out", str(out), "--max-new-tokens", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Answer: [SEG]" in result.stdout
    record = json.loads((out / "shapes_prediction.json").read_text())
    assert f"See: {'yes' if record['exists'] else 'no'}" in result.stdout
    with Image.open(out / "shapes_mask.png") as mask_png:
        assert mask_png.format == "PNG" and mask_png.size == (width, height)
        mask = np.asarray(mask_png)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert record["exists"] == bool(mask.any()) and record["mask_pixels"] == int((mask > 0).sum())
    with Image.open(out / "shapes_overlay.png") as overlay_png:
        assert overlay_png.format == "PNG" and overlay_png.size == (2 * width, height)
        overlay = np.asarray(overlay_png.convert("RGB"))
    assert record["num_seg"] == 1 and len(record["points"][0]) == 12  # the tiny preset's K
    labels = np.array(record["labels"][0])
    assert set(labels.tolist()) <= {-1, 0, 1} and (labels == 1).any()
    x, y = np.floor(np.array(record["points"][0])[labels == 1][0]).astype(int)
    assert tuple(overlay[y, x]) == POSITIVE_COLOUR


def test_predict_cli_reports_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_path = tmp_path / "x.png"
    _synthetic_image(image_path)
    code = predict_main(["--model", str(tmp_path / "missing"), "--image", str(image_path),
                         "--question", "?"])
    assert code == 2 and "no such checkpoint directory" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    code = predict_main(["--model", str(tmp_path), "--image", str(tmp_path / "broken.jpg"),
                         "--question", "?"])
    assert code == 2 and "cannot read image" in capsys.readouterr().err
