"""Training throughput of the tiny preset with 1 and 2 Ray Train workers on this machine.

    python bench/train_throughput.py [--steps 12] [--images 48] [--cpus-per-worker 0.5]

Both runs go through `pipelines/train.py` (real Ray Train, DDP over gloo, real shard streaming)
against the same synthetic shards and a local MLflow store; samples/s is the median of the
per-step global rate logged by rank 0, skipping the first steps (start-up and allocation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WARMUP_STEPS = 2


def overrides(workers: int, args: argparse.Namespace) -> list[str]:
    """The config overrides of one run (shared by the start-up check and the run itself)."""
    return [
        "data.val=[reason_seg/val]", f"train.run_name=throughput-{workers}",
        f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}",
        "train.validate_every=1000000", "train.log_every=1",
        f"train.batch_size={args.batch_size}", f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={args.cpus_per_worker}",
    ]


def run(workers: int, args: argparse.Namespace, shards: Path, workdir: Path) -> float:
    from mlflow.tracking import MlflowClient

    from pipelines.train import main

    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    summary = main([
        "--config", str(REPO / "configs" / "tiny.yaml"), "--no-register",
        f"data.shards={shards}", f"train.storage_path={workdir / 'ray'}",
        *overrides(workers, args),
    ])
    history = MlflowClient(tracking).get_metric_history(summary["run_id"], "train/samples_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step) if m.step > WARMUP_STEPS]
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=2, help="images per worker per step")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    args = parser.parse_args(argv)

    from pipelines.config import load_job_config
    from read_model.config import ConfigError

    try:  # both runs' configs, before any data is generated or Ray started
        for workers in (1, 2):
            load_job_config(REPO / "configs" / "tiny.yaml", overrides(workers, args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from synthetic_shards import synthetic_shards

    from pipelines.ray_runtime import ensure_ray

    with tempfile.TemporaryDirectory(prefix="read-throughput-") as tmp:
        workdir = Path(tmp)
        synthetic_shards(workdir, images=args.images)
        ensure_ray()
        rates = {n: run(n, args, workdir / "shards", workdir) for n in (1, 2)}
    print(f"tiny preset, batch {args.batch_size}/worker, {os.cpu_count()} CPUs:")
    for workers, rate in rates.items():
        print(f"  {workers} worker(s): {rate:.2f} samples/s")
    print(f"  ratio 2/1: {rates[2] / rates[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
