"""MLflow model registry for READ: log a trained model as an MLflow model, register it, load it.

A trained model is the directory `read_model.checkpoint` writes (weights in safetensors plus the
config as JSON). It is logged with `mlflow.pyfunc.log_model` as a models-from-code PythonModel
(`pipelines/mlflow_model/`): the directory is the `checkpoint` artifact, the `read_model` and
`pipelines` packages travel as `code_paths`, and MLmodel carries a signature (image + question ->
answer / See / masks / SasP points) and an input example. So

    mlflow.pyfunc.load_model("models:/read-tiny@champion").predict(frame)
    mlflow models serve -m models:/read-tiny@champion --env-manager local

both work, and `load_registered` rebuilds the plain `ReadModel` from the same artifact (the
evaluation actors and `read-predict` use it). Nothing is ever unpickled.
"""

from __future__ import annotations

import importlib
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

if TYPE_CHECKING:  # MLflow runs this file by path; naming it here puts it in the code hashes
    import pipelines.mlflow_model.model_code  # noqa: F401

CANDIDATE_ALIAS = "candidate"
MODEL_ARTIFACT_PATH = "model"
READY_TIMEOUT_S = 120.0
MODEL_CODE = Path(__file__).resolve().parent / "mlflow_model" / "model_code.py"
# The packages the pyfunc model imports from this project; copied into the model's code/ folder.
CODE_PACKAGES = ("read_model", "pipelines")
# What the model needs at serving time, pinned to the versions it was logged with (listing them
# also spares MLflow its slow dependency inference, which loads the model in a subprocess).
SERVING_REQUIREMENTS = ("mlflow", "torch", "torchvision", "transformers", "tokenizers", "peft",
                        "safetensors", "segment-anything", "numpy", "pandas", "pillow",
                        "pycocotools", "pyyaml")


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
    """Log `model_dir` as the run's pyfunc model, register it, point `alias` at it; -> version."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise RegistryError(f"{model_dir} is not a non-empty model directory")
    info = log_pyfunc_model(model_dir, run_id, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="READ reasoning-segmentation models")
    version = client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                          tags=tags or {}, model_id=info.model_id)
    _wait_ready(client, name, version.version)
    # The logged model's page links to the version registered from it (as mlflow.register_model).
    client.set_logged_model_tags(info.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": name, "version": str(version.version)}])})
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def log_pyfunc_model(model_dir: Path, run_id: str, *, tracking_uri: str | None = None) -> Any:
    """`mlflow.pyfunc.log_model` of a checkpoint folder into run `run_id`; -> its `ModelInfo`.

    The run is re-entered to attach the model to it and ends FINISHED (training calls this once
    its work is done). Before uploading, MLflow loads the saved model once and answers the input
    example with it, so a model that cannot serve shows up as a warning in the log.
    """
    from pipelines.mlflow_model import schema
    from pipelines.mlflow_model.python_model import CHECKPOINT_ARTIFACT

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    roots = {package: Path(importlib.import_module(package).__file__).resolve().parent
             for package in CODE_PACKAGES}
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(model_dir)},
            code_paths=[str(path) for path in roots.values()],
            signature=schema.signature(),
            input_example=schema.input_example(),
            pip_requirements=_pinned(SERVING_REQUIREMENTS),
        )


def _pinned(packages: tuple[str, ...]) -> list[str]:
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


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


def checkpoint_dir(model_folder: str | Path) -> Path:
    """The READ checkpoint inside a downloaded MLflow model folder (its `checkpoint` artifact).

    Versions registered before models were logged as pyfunc are the checkpoint folder itself.
    """
    from mlflow.models import Model

    from pipelines.mlflow_model.python_model import CHECKPOINT_ARTIFACT
    from read_model.checkpoint import META_FILE

    folder = Path(model_folder)
    if (folder / META_FILE).is_file():
        return folder
    try:
        flavor = Model.load(str(folder)).flavors["python_function"]
        relative = flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]
    except (MlflowException, OSError, KeyError) as error:
        raise RegistryError(f"{folder} is neither a READ MLflow model nor a READ checkpoint: "
                            f"{error}") from error
    return folder / relative


def load_registered(uri: str, *, tracking_uri: str | None = None,
                    destination: str | Path | None = None) -> tuple[Any, Any, Any]:
    """`models:/name@alias` -> (ReadModel, tokenizer, ReadConfig), without unpickling."""
    from read_model.checkpoint import load_model_dir

    return load_model_dir(checkpoint_dir(download_registered(uri, destination,
                                                             tracking_uri=tracking_uri)))


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
