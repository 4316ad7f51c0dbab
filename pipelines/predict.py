"""Answer one question about one image from the command line.

    read-predict --model DIR_OR_models:/name@alias --image x.jpg \
        --question "Where is the dog?" [--out DIR] [--max-new-tokens N]

Prints the answer and See (whether a non-empty mask was produced), and writes to --out the
binary mask (union over the generated [SEG] tokens, 0/255 PNG), an overlay figure (mask tint,
SasP points coloured by label, similarity heatmap panel) and the prediction as JSON.
``models:/`` URIs are resolved through the MLflow registry (`pipelines.registry`); a checkpoint
directory is loaded with `read_model.checkpoint.load_model_dir` and needs no MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from read_model.config import ConfigError
from read_model.overlay import render_overlay

REGISTRY_SCHEME = "models:/"
DEFAULT_OUT = "read_prediction"
DEFAULT_MAX_NEW_TOKENS = 512  # READ:test_read.py; decoding stops once EOS is written


class PredictError(RuntimeError):
    """A model or image that cannot be used; the message says which and why."""


def load_model(reference: str, tracking_uri: str | None = None) -> Any:
    """A `ReadModel` from a checkpoint directory or a ``models:/name@alias`` registry URI."""
    if reference.startswith(REGISTRY_SCHEME):
        from pipelines.registry import load_registered

        model, _, _ = load_registered(reference, tracking_uri=tracking_uri)
        return model
    from read_model.checkpoint import load_model_dir

    if not Path(reference).is_dir():
        raise PredictError(f"--model {reference}: no such checkpoint directory")
    model, _, _ = load_model_dir(reference)
    return model


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3], EXIF orientation applied as upstream's `cv2.imread` applies it;
    unreadable files are a clear error, not a traceback."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise PredictError(f"cannot read image {path}: {error}") from error


def full_resolution_heatmap(model: Any, prediction: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The first [SEG]'s similarity map at the image resolution (zero outside CLIP's crop)."""
    if prediction.similarity_map.shape[0] == 0:
        return None
    maps = model.sasp.full_resolution_maps(prediction.similarity_map[:1].flatten(1).float(), [size])
    return maps[0].cpu().numpy()


def write_outputs(model: Any, prediction: Any, image: np.ndarray, out: Path, stem: str) -> dict[str, Path]:
    """Mask PNG, overlay PNG and prediction JSON under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    height, width = image.shape[:2]
    mask = prediction.masks.any(0).cpu().numpy() if prediction.masks.shape[0] else np.zeros(
        (height, width), bool
    )
    points = prediction.points.reshape(-1, 2).float().cpu().numpy()
    labels = prediction.labels.reshape(-1).cpu().numpy()
    heatmap = full_resolution_heatmap(model, prediction, (height, width))
    paths = {
        "mask": out / f"{stem}_mask.png",
        "overlay": out / f"{stem}_overlay.png",
        "json": out / f"{stem}_prediction.json",
    }
    Image.fromarray((mask * 255).astype(np.uint8)).save(paths["mask"])
    Image.fromarray(render_overlay(image, mask, points, labels, heatmap)).save(paths["overlay"])
    record = {
        "answer": prediction.text,
        "exists": prediction.exists,
        "num_seg": int(prediction.masks.shape[0]),
        "points": prediction.points.float().cpu().tolist(),
        "labels": prediction.labels.cpu().tolist(),
        "mask_pixels": int(mask.sum()),
    }
    paths["json"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return paths


def _check_out(out: Path) -> None:
    """--out must be a folder this process can write, checked before the model loads."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PredictError(f"--out {out}: cannot create the folder: {error}") from error
    if not os.access(out, os.W_OK):
        raise PredictError(f"--out {out}: the folder is not writable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="read-predict", description="READ: answer and segment one image."
    )
    parser.add_argument("--model", required=True, help="checkpoint directory or models:/name@alias")
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--question", required=True)
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/")
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 answered and wrote its files, 1 failed, 2 unusable input, 130 interrupted."""
    from pipelines.outcome import run_command

    return run_command("read-predict", lambda: _predict(argv),
                       resume="run the same command again")


def _predict(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        print("error: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    try:
        _check_out(args.out)
        image = read_image(args.image)
        model = load_model(args.model, args.tracking_uri).to(torch.device(args.device)).eval()
        prediction = model.predict([image], [args.question], args.max_new_tokens)[0]
        paths = write_outputs(model, prediction, image, args.out, args.image.stem)
    except (PredictError, ConfigError) as error:  # ConfigError: the checkpoint's own config
        print(f"error: {error}", file=sys.stderr)
        return 2
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        print(f"error: outputs not written: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"Answer: {prediction.text}")
    print(f"See: {'yes' if prediction.exists else 'no'}")
    print(f"Mask: {paths['mask']}")
    print(f"Overlay: {paths['overlay']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
