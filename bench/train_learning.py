"""Does the tiny preset learn? Held-out val gIoU after training vs two trivial baselines.

    python bench/train_learning.py [--images 240] [--steps 300] [key=value ...]

Generates synthetic scenes, shards them, trains the tiny preset through `pipelines/train.py`
(Ray Train, 1 worker, local MLflow store), and prints the final teacher-forced validation on
the held-out val split: the model's gIoU against an empty mask and a whole-image mask on the
same queries ("present" = queries whose object is in the image; "all" adds false premises,
which have an empty GT and so favour the empty mask).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--workdir", default=None, help="keep shards, runs and MLflow here")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)

    from pipelines.config import load_job_config
    from read_model.config import ConfigError

    config_path = REPO / "configs" / "tiny.yaml"
    steps = [f"train.max_steps={args.steps}"] if args.steps else []
    try:  # before any data is generated
        load_job_config(config_path, [*steps, *args.overrides])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from synthetic_shards import synthetic_shards

    from pipelines.train import main as train

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="read-learning-"))
    counts = synthetic_shards(workdir, images=args.images)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    overrides = [f"data.shards={workdir / 'shards'}", "data.val=[reason_seg/val, refcoco/val]",
                 f"train.storage_path={workdir / 'ray'}", "train.run_name=learning", *steps]
    started = time.perf_counter()
    summary = train(["--config", str(config_path), *overrides, *args.overrides])
    minutes = (time.perf_counter() - started) / 60
    metrics = summary["metrics"]
    print(f"shards: {json.dumps(counts)}")
    print(f"trained {metrics['step']} steps in {minutes:.1f} min; MLflow run {summary['run_id']}")
    print(f"held-out val, {int(metrics['val/count'])} queries   gIoU (present)   gIoU (all)")
    print(f"  tiny READ (trained)        {metrics['val/giou_present']:14.3f} "
          f"{metrics['val/giou']:12.3f}")
    for who, label in (("empty_mask", "empty mask"), ("whole_image", "whole-image mask")):
        print(f"  baseline: {label:<16} {metrics[f'val/baseline_{who}_giou_present']:14.3f} "
              f"{metrics[f'val/baseline_{who}_giou']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
