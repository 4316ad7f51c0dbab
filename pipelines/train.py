"""Train READ with Ray Train; track in MLflow; register the result as `candidate`.

    read-train --config configs/tiny.yaml [key=value ...]
    RAY_ADDRESS=ray://head:10001 read-train --config configs/read-7b.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/train.py --config configs/tiny.yaml

Setup is checked before any worker starts: config, storage, shards and MLflow first; then, on
the cluster, whether the workers' resources fit now or once the autoscaler adds nodes (refused
only when no node type can ever hold them), waiting up to `scaling.wait_for_workers_s` for them
to arrive, and, on every node the workers will use, the base weights (copied once per node from
`weights.store`). Running the same command again (same train.run_name and train.storage_path)
resumes from the latest checkpoint and keeps logging into the same MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines import outcome, storage
from pipelines.cluster_capacity import training_request
from pipelines.cluster_checks import ClusterCheckError, check_cluster
from pipelines.config import JobConfig, check_job_paths, job_config_dict, load_job_config
from pipelines.ray_runtime import ensure_ray, worker_environment
from pipelines.shard_sets import ShardSet
from pipelines.tracking import (
    finish_run,
    git_commit,
    resolve_tracking_uri,
    start_or_resume_run,
)
from pipelines.training import preflight
from read_model.config import ConfigError, flatten

logger = logging.getLogger("read.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    parser.add_argument("--check-only", action="store_true",
                        help="run the start-up checks and exit without training")
    parser.add_argument("--no-register", action="store_true",
                        help="do not register the trained model in the MLflow registry")
    parser.add_argument("--parent-run-id", default=None,
                        help="MLflow run to nest the training run under (the workflow passes its own)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the job; returns a summary (also printed as one JSON line)."""
    args = parse_args(argv)
    config = load_job_config(args.config, args.overrides)
    check_job_paths(config, ("data", "train", "model"))
    tracking_uri = resolve_tracking_uri(config.mlflow)
    shard_sets = preflight.check_job(config, tracking_uri)
    if args.check_only:
        summary = {"checked": True, "shards": {s.name: s.describe() for s in shard_sets}}
        print(json.dumps(summary), flush=True)
        return summary
    ensure_ray(upload_working_dir=True)
    cluster = check_cluster(config, training_request(config), weights=True)
    run_id = _open_mlflow_run(config, tracking_uri, shard_sets, args.parent_run_id)
    outcome.note_run(tracking_uri, run_id)
    try:
        result = _fit(config, tracking_uri, run_id, shard_sets)
        summary = _finish(config, tracking_uri, run_id, result, register=not args.no_register)
        summary["cluster"] = cluster
    except BaseException as error:
        finish_run(tracking_uri, run_id, status=outcome.terminal_status(error))
        raise
    finish_run(tracking_uri, run_id)
    print(json.dumps(summary), flush=True)
    return summary


def storage_path(config: JobConfig) -> str:
    """Ray wants an absolute local path (workers run elsewhere) or a URI."""
    path = config.train.storage_path
    return path if "://" in path else str(Path(path).resolve())


def _open_mlflow_run(config: JobConfig, tracking_uri: str,
                     shard_sets: list[ShardSet], parent_run_id: str | None) -> str:
    tags = {"git_commit": git_commit(), "ray_run_name": config.train.run_name,
            "storage_path": storage_path(config)}
    for shard_set in shard_sets:  # the exact versions this run reads (resolved once)
        for key, value in shard_set.describe().items():
            tags[f"shards.{shard_set.name}.{key}"] = str(value)
    run_key = f"{storage_path(config)}/{config.train.run_name}"
    return start_or_resume_run(tracking_uri, config.mlflow.experiment, run_key,
                               config.train.run_name, flatten(job_config_dict(config)), tags,
                               parent_run_id)


def _fit(config: JobConfig, tracking_uri: str, run_id: str, shard_sets: list[ShardSet]) -> Any:
    """`trainer.fit()`; an interrupt raises JobInterrupted, a run short of max_steps JobIncomplete."""
    from ray.train.torch import TorchTrainer

    from pipelines.training.loop import train_loop_per_worker

    class InterruptAwareTrainer(TorchTrainer):
        """Ray Train turns Ctrl-C into an abort that ends in `sys.exit(0)` or a dead controller;
        a recorder in front of its SIGINT handler lets the driver say it was interrupted."""

        def _register_sigint_handler(self, controller: Any) -> None:
            super()._register_sigint_handler(controller)
            outcome.wrap_sigint_handler(interrupted)

    scaling = config.scaling
    path, filesystem = storage_path(config), None
    if storage.is_s3(path):  # carries the endpoint; each worker resolves its own credentials
        filesystem, path = storage.resolve(path)
    resources = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    with outcome.sigint_watch() as interrupted:  # restores the handler Ray Train replaces
        trainer = InterruptAwareTrainer(
            train_loop_per_worker, **_trainer_options(config, tracking_uri, run_id, shard_sets,
                                                      path, filesystem, resources))
        try:
            result = trainer.fit()
        except BaseException as error:
            if interrupted.is_set() or (isinstance(error, SystemExit) and not error.code):
                raise outcome.JobInterrupted("Ray Train aborted the workers") from error
            raise
        if interrupted.is_set():
            raise outcome.JobInterrupted("Ray Train aborted the workers")
    step = (result.metrics or {}).get("step")
    if step is not None and int(step) < config.train.max_steps:
        raise outcome.JobIncomplete(f"training stopped at step {int(step)} of "
                                    f"{config.train.max_steps}")
    return result


def _trainer_options(config: JobConfig, tracking_uri: str, run_id: str,
                     shard_sets: list[ShardSet], path: str, filesystem: Any,
                     resources: dict[str, float]) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScalingConfig  # ours is pipelines.config's
    from ray.train.torch import TorchConfig

    scaling = config.scaling
    return dict(
        train_loop_config={
            "job": job_config_dict(config),
            "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id},
            "env": worker_environment(),
            "shards": {s.name: s.url for s in shard_sets},  # the pinned versions
        },
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=RayScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=config.train.run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.num_to_keep),
        ),
    )


def _finish(config: JobConfig, tracking_uri: str, run_id: str, result: Any,
            *, register: bool) -> dict[str, Any]:
    from pipelines.registry import log_and_register
    from pipelines.training.loop import EXPORT_DIR

    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; see the Ray Train logs")
    summary: dict[str, Any] = {
        "run_id": run_id,
        "checkpoint": _checkpoint_url(result.checkpoint),
        "metrics": {k: v for k, v in (result.metrics or {}).items()
                    if isinstance(v, int | float)},
    }
    with tempfile.TemporaryDirectory(prefix="read-final-") as local:
        result.checkpoint.to_directory(local)
        summary["data"] = _log_data_integrity(tracking_uri, run_id, local)
        if register:
            version = log_and_register(
                Path(local) / EXPORT_DIR, config.mlflow.registered_model, run_id,
                tracking_uri=tracking_uri, tags={"git_commit": git_commit()},
            )
            summary.update(registered_model=config.mlflow.registered_model, version=version)
    return summary


def _log_data_integrity(tracking_uri: str, run_id: str, checkpoint_dir: str) -> dict[str, Any]:
    """Record the shards the run actually consumed (verified hashes) and what it skipped."""
    from mlflow.tracking import MlflowClient

    from pipelines.ingestion.loader import load_reports

    report = load_reports(checkpoint_dir)
    client = MlflowClient(tracking_uri)
    client.log_dict(run_id, report.to_dict(), "data_integrity.json")
    client.set_tag(run_id, "data.consumed_hash", report.consumed_hash)
    for key, value in report.metrics("data/total_").items():
        client.log_metric(run_id, key, value)
    if report.damaged:
        logger.warning("training skipped damaged shards: %s", report.summary())
    return {"consumed_hash": report.consumed_hash, **report.metrics("")}


def _checkpoint_url(checkpoint: Any) -> str:
    """The checkpoint as a URL the storage helpers accept (s3://bucket/... or a local path)."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.S3FileSystem):
        return f"{storage.S3_SCHEME}{checkpoint.path.lstrip('/')}"
    return str(checkpoint.path)


RESUME_HINT = ("run the same command again: it resumes from the last checkpoint into the same "
               "MLflow run")


def cli(argv: list[str] | None = None) -> int:
    """0 finished and registered, 1 failed, 2 could not start, 130 interrupted (pipelines/outcome).

    From the command line (`argv` None) the job runs in a watched child process, so even a
    driver killed with its Ray node exits non-zero and leaves no MLflow run RUNNING.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def direct() -> int:
        return outcome.run_command("read-train", lambda: main(argv), resume=RESUME_HINT,
                                   usage_errors=(ConfigError, preflight.PreflightError,
                                                 ClusterCheckError))

    if argv is not None:
        return direct()
    parse_args(sys.argv[1:])  # flag errors and --help here, before a child process starts
    return outcome.supervise("read-train", "pipelines.train", sys.argv[1:], resume=RESUME_HINT,
                             direct=direct)


if __name__ == "__main__":
    sys.exit(cli())
