"""Checks that run before the trainer starts, so a bad job fails in seconds, not after an hour.

Wrong config keys are already refused by `load_job_config`; here the job's outside world is
checked: the checkpoint storage, every shard folder the job reads (its manifest must exist and
list samples) and the MLflow tracking server. What needs the cluster (capacity now or after the
autoscaler grows it, base weights on the worker nodes) is in pipelines/cluster_checks.py.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from pipelines import storage
from pipelines.config import JobConfig
from pipelines.shard_sets import ShardSet, ShardSetError, resolve


class PreflightError(RuntimeError):
    """The job cannot start; the message says what to fix."""


def check_job(config: JobConfig, tracking_uri: str) -> list[ShardSet]:
    """Everything that can be checked without Ray; returns the resolved shard sets.

    Each `<dataset>/<split>` pointer is resolved here, once: the versions returned are the
    ones the whole run reads (the driver passes them to the workers).
    """
    _check_storage(config.train.storage_path, "train.storage_path")
    _check_storage(config.data.shards, "data.shards")
    names = list(dict.fromkeys([*config.data.train, *config.data.val]))
    sets = [shard_set(config.data.shards, name) for name in names]
    check_tracking(tracking_uri)
    return sets


def shard_set(shards_root: str, name: str) -> ShardSet:
    """Resolve `<root>/<name>`; refuse a missing, empty or incomplete shard set."""
    try:
        resolved = resolve(shards_root, name)
        resolved.check_files()
    except ShardSetError as error:
        raise PreflightError(str(error)) from error
    if resolved.manifest.num_samples <= 0:
        raise PreflightError(f"{resolved.url} lists no samples; nothing to read for {name}")
    return resolved


def check_tracking(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """An HTTP tracking server must answer /health; a local sqlite/file store must be writable."""
    if tracking_uri.startswith(("http://", "https://")):
        health = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                if response.status != 200:
                    raise PreflightError(f"MLflow at {tracking_uri} answered {response.status}")
        except (urllib.error.URLError, OSError) as error:
            raise PreflightError(
                f"MLflow tracking server {tracking_uri} is unreachable ({error}); start it or "
                f"set MLFLOW_TRACKING_URI / mlflow.tracking_uri"
            ) from error
        return
    for scheme in ("sqlite:///", "file://"):
        if tracking_uri.startswith(scheme):
            folder = Path(tracking_uri[len(scheme):]).parent
            try:
                storage.check_reachable(str(folder))
            except storage.StorageError as error:
                raise PreflightError(f"MLflow store {tracking_uri}: {error}") from error


def _check_storage(url: str, field_name: str) -> None:
    try:
        storage.check_reachable(url)
    except storage.StorageError as error:
        raise PreflightError(f"{field_name}: {error}") from error
