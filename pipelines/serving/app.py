"""The Serve application: an HTTP ingress in front of an autoscaling model deployment.

`build_app(job, tracking_uri)` is what `read-serve` runs; `app_builder` is the same application
for `serve deploy` / a KubeRay RayService (``import_path: pipelines.serving.app:app_builder``)
with `args: {config: <preset YAML>, overrides: [key=value, ...]}`. Replica resources, batching
and autoscaling bounds all come from the config's `serve:` section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.serving.config import ServeConfig
from pipelines.serving.ingress import ReadIngressDeployment
from pipelines.serving.model_server import ReadModelDeployment
from pipelines.serving.model_source import RegistryModelSource, default_reference
from pipelines.serving.queries import RequestLimits

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "read"
BUILDER_ARGS = ("config", "overrides", "tracking_uri")


def model_reference(job: Any) -> str:
    return job.serve.model or default_reference(job.mlflow.registered_model)


def model_deployment_options(settings: ServeConfig) -> dict[str, Any]:
    """Replica size (CPU, or one GPU for the large presets), autoscaling bounds, queue depth."""
    return {
        "ray_actor_options": {
            "num_cpus": settings.num_cpus_per_replica,
            "num_gpus": settings.num_gpus_per_replica,
        },
        "autoscaling_config": {
            "min_replicas": settings.min_replicas,
            "initial_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.autoscaling_target,
        },
        # Room for two full batches (one running, one forming) plus status calls.
        "max_ongoing_requests": 2 * settings.max_batch_size + 2,
    }


def ingress_deployment_options(settings: ServeConfig) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": settings.ingress_cpus},
        "autoscaling_config": {
            "min_replicas": settings.ingress_min_replicas,
            "initial_replicas": settings.ingress_min_replicas,
            "max_replicas": settings.ingress_max_replicas,
        },
    }


def build_app(job: Any, tracking_uri: str, *, source: Any = None) -> Any:
    """The application for job config `job`; `source` overrides where models come from."""
    settings: ServeConfig = job.serve
    source = source or RegistryModelSource(model_reference(job), tracking_uri)
    model = ReadModelDeployment.options(**model_deployment_options(settings)).bind(
        source, settings
    )
    limits = RequestLimits.from_config(settings, job.model.tokenizer)
    return ReadIngressDeployment.options(**ingress_deployment_options(settings)).bind(
        model, settings, limits
    )


def resolve_config_path(path: str) -> Path:
    """A preset path as given, else relative to the checkout (`configs/tiny.yaml` anywhere)."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    return REPO_ROOT / given


def app_builder(args: dict[str, Any]) -> Any:
    """`serve deploy` entry: args `config` (preset YAML), `overrides`, optional `tracking_uri`."""
    from pipelines.config import load_job_config
    from pipelines.tracking import resolve_tracking_uri
    from read_model.config import ConfigError

    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown:
        raise ConfigError(f"unknown application arg(s) {unknown}; valid: {list(BUILDER_ARGS)}")
    if "config" not in args:
        raise ConfigError("application args need `config`, e.g. configs/tiny.yaml")
    overrides = args.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("application arg `overrides` must be a list of key=value strings")
    job = load_job_config(resolve_config_path(str(args["config"])), overrides)
    if not (args.get("tracking_uri") or job.mlflow.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")):
        # The local default (./mlruns) would resolve inside a Ray worker's folder, not yours.
        raise ConfigError(
            "no MLflow tracking URI for the served model: set MLFLOW_TRACKING_URI where Ray runs "
            "(e.g. `MLFLOW_TRACKING_URI=sqlite:///$PWD/mlruns/mlflow.db ray start --head`), "
            "or args.tracking_uri / an mlflow.tracking_uri override"
        )
    return build_app(job, str(args.get("tracking_uri") or resolve_tracking_uri(job.mlflow)))
