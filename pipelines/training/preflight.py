"""Checks that run before the trainer starts, so a bad job fails in seconds, not after an hour.

Wrong config keys are already refused by `load_job_config`; here the job's outside world is
checked: the checkpoint storage, every shard folder the job reads (its manifest must exist and
list samples) and the MLflow tracking server. What needs the cluster (capacity now or after the
autoscaler grows it, base weights on the worker nodes) is in pipelines/cluster_checks.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.config import JobConfig
from pipelines.shard_format import MANIFEST_NAME


class PreflightError(RuntimeError):
    """The job cannot start; the message says what to fix."""


@dataclass(frozen=True)
class ShardSet:
    """One `<dataset>/<split>` folder the job reads, with its manifest's content hash."""

    entry: str
    url: str
    num_samples: int
    content_hash: str


def check_job(config: JobConfig, tracking_uri: str) -> list[ShardSet]:
    """Everything that can be checked without Ray; returns the shard sets with their hashes."""
    _check_storage(config.train.storage_path, "train.storage_path")
    shard_sets = [shard_set(config.data.shards, entry) for entry in config.data.train]
    shard_sets += [shard_set(config.data.shards, entry) for entry in config.data.val]
    check_tracking(tracking_uri)
    return shard_sets


def shard_set(shards_root: str, entry: str) -> ShardSet:
    """Read `<root>/<entry>/manifest.json`; refuse a missing or empty shard folder."""
    url = storage.join(shards_root, entry)
    _check_storage(shards_root, "data.shards")
    manifest_url = storage.join(url, MANIFEST_NAME)
    if not storage.exists(manifest_url):
        raise PreflightError(
            f"no shards at {url} ({MANIFEST_NAME} missing); build them first with "
            f"`read-build-shards` or fix data.shards / data.train / data.val"
        )
    try:
        manifest = json.loads(storage.read_bytes(manifest_url))
    except (ValueError, OSError) as error:
        raise PreflightError(f"{manifest_url} is not a readable manifest: {error}") from error
    count = int(manifest.get("num_samples", 0))
    if count <= 0:
        raise PreflightError(f"{manifest_url} lists no samples; nothing to read from {url}")
    return ShardSet(entry, url, count, str(manifest.get("content_hash", "")))


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
