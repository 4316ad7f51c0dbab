"""MLflow model registry for READ: log a trained model directory, register it, load it back.

A trained model is the directory `read_model.checkpoint` writes (trainable weights in safetensors
plus the config as YAML/JSON); it is logged as plain run artifacts and registered as a new version
whose source is that artifact folder. Loading downloads the folder and rebuilds the model with
`read_model.checkpoint.load_model_dir`, so nothing is ever unpickled.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CANDIDATE_ALIAS = "candidate"
MODEL_ARTIFACT_PATH = "model"
READY_TIMEOUT_S = 120.0


class RegistryError(RuntimeError):
    """A model could not be registered or loaded; the message names the model and version."""


def log_and_register(
    model_dir: str | Path,
    name: str,
    run_id: str,
    *,
    alias: str = CANDIDATE_ALIAS,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `model_dir` under the run's `model/` artifacts, register it, set `alias`; -> version."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise RegistryError(f"{model_dir} is not a non-empty model directory")
    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="READ reasoning-segmentation models")
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    _wait_ready(client, name, version.version)
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def download_registered(uri: str, destination: str | Path | None = None,
                        *, tracking_uri: str | None = None) -> Path:
    """Download a registered model (`models:/name@alias` or `models:/name/version`) folder."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    destination = Path(destination or tempfile.mkdtemp(prefix="read-model-"))
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination))
    except MlflowException as error:
        raise RegistryError(f"cannot download {uri}: {error}") from error
    return Path(local)


def load_registered(uri: str, *, tracking_uri: str | None = None,
                    destination: str | Path | None = None) -> tuple[Any, Any, Any]:
    """`models:/name@alias` -> (ReadModel, tokenizer, ReadConfig), without unpickling."""
    from read_model.checkpoint import load_model_dir

    return load_model_dir(download_registered(uri, destination, tracking_uri=tracking_uri))


def set_alias(name: str, alias: str, version: str, *, tracking_uri: str | None = None) -> None:
    """Point `alias` (e.g. "champion") at `version`."""
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)


def _wait_ready(client: MlflowClient, name: str, version: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model {name} version {version} is {status}")
        time.sleep(0.5)
