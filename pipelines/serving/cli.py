"""`read-serve`: serve a registered READ model over HTTP until stopped.

    read-serve --config configs/tiny.yaml [--model models:/read-tiny@champion]
               [--host 127.0.0.1] [--port 8000] [key=value ...]

Embedded default: a private local Ray (`pipelines.ray_runtime.ensure_ray`; `RAY_ADDRESS` joins a
cluster instead) and the config's MLflow store (`./mlruns` unless `MLFLOW_TRACKING_URI` or
`mlflow.tracking_uri` says otherwise). The registry reference is checked before Ray starts, so a
model that was never registered or promoted is a one-line error. Ctrl-C (or SIGTERM) stops the
application; the exit code is 0 after a clean stop, 2 for a config or registry error and 1 when
Ray could not start or the application failed to deploy.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from pipelines.serving.app import APP_NAME, build_app, model_reference
from pipelines.serving.model_source import ModelSourceError, RegistryModelSource

EXIT_CONFIG = 2
EXIT_DEPLOY = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="read-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/tiny.yaml")
    parser.add_argument("--model", help="models:/<name>@<alias> or models:/<name>/<version> "
                                        "(default: serve.model, else the registered champion)")
    parser.add_argument("--host", help="HTTP address to listen on (default: serve.host)")
    parser.add_argument("--port", type=int, help="HTTP port (default: serve.port)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. serve.max_batch_size=4")
    return parser


def load(argv: list[str] | None) -> tuple[Any, str]:
    """Parsed arguments -> (job config, tracking URI); raises ConfigError / ModelSourceError."""
    from pipelines.config import load_job_config
    from pipelines.tracking import resolve_tracking_uri

    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("host", args.host), ("port", args.port)):
        if value is not None:
            overrides.append(f"serve.{key}={value}")
    job = load_job_config(args.config, overrides)
    return job, resolve_tracking_uri(job.mlflow)


def serve_until(job: Any, tracking_uri: str, stop: threading.Event) -> str:
    """Deploy, announce, block until `stop` is set, then remove the application."""
    from ray import serve

    settings = job.serve
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(job, tracking_uri), name=APP_NAME, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}/"
    print(f"READ is served at {url} (model {model_reference(job)}, tracking {tracking_uri})",
          flush=True)
    print(f"  web page: {url}   API: POST {url}v1/segment   model: GET {url}v1/model", flush=True)
    stop.wait()
    serve.delete(APP_NAME)
    return url


def main(argv: list[str] | None = None) -> int:
    from pipelines.ray_runtime import ensure_ray
    from pipelines.serving.errors import one_line
    from read_model.config import ConfigError

    try:
        job, tracking_uri = load(argv)
        source = RegistryModelSource(model_reference(job), tracking_uri)
        version = source.resolve_version()
    except (ConfigError, ModelSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{source.reference.uri} is version {version}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        ensure_ray()
    except Exception as error:
        print(f"error: could not start or join Ray: {one_line(error)}", file=sys.stderr)
        return EXIT_DEPLOY
    try:
        serve_until(job, tracking_uri, stop)
    except Exception as error:  # a replica that cannot start, a port in use, ...
        print(f"error: the application did not deploy: {one_line(error)}", file=sys.stderr)
        return EXIT_DEPLOY
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
