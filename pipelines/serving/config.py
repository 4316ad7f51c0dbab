"""The `serve:` section of a job config: what `read-serve` serves and how it scales.

Replicas of the model deployment are sized here (CPU for the tiny preset, one GPU each for the
7B/13B presets) and autoscale between `min_replicas` and `max_replicas`; the HTTP ingress scales
separately. Input limits are part of the config so an operator can raise them without code.
"""

from __future__ import annotations

from dataclasses import dataclass

from read_model.config import Problems


@dataclass
class ServeConfig:
    """Online inference settings (pipelines/serving)."""

    # models:/<name>@<alias> (follows the alias) or models:/<name>/<version> (pinned);
    # empty = models:/<mlflow.registered_model>@champion
    model: str = ""
    alias_poll_s: float = 30.0  # how often each replica checks where the alias points; 0 = never
    host: str = "127.0.0.1"  # the Serve HTTP proxy (embedded `read-serve`); 0.0.0.0 on a cluster
    port: int = 8000
    max_new_tokens: int = 32  # upstream evaluate() default
    max_batch_size: int = 8  # requests one replica answers in one batched `predict`
    batch_wait_timeout_s: float = 0.05  # how long a replica waits to fill a batch
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0  # 1 for the 7B/13B presets; 0 runs on the CPU
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 0.0  # autoscaling target per replica; 0 = max_batch_size
    ingress_cpus: float = 0.25
    ingress_min_replicas: int = 1
    ingress_max_replicas: int = 1
    max_image_pixels: int = 4096 * 4096  # larger uploads get 413 before they are decoded
    max_upload_bytes: int = 20 * 2**20
    max_question_chars: int = 1000
    overlay_max_side: int = 1024  # pictures returned to the web page are scaled down to this

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus_per_replica > 0

    @property
    def autoscaling_target(self) -> float:
        return self.target_ongoing_requests or float(self.max_batch_size)


def serve_problems(serve: ServeConfig, problems: Problems) -> None:
    """Add every invalid value of the `serve:` section (called by `JobConfig.validate`)."""
    require = problems.require
    for name in ("max_new_tokens", "max_batch_size", "max_replicas", "ingress_max_replicas",
                 "max_image_pixels", "max_upload_bytes", "max_question_chars",
                 "overlay_max_side", "port"):
        value = getattr(serve, name)
        require(value >= 1, f"serve.{name}", value, "must be >= 1")
    require(serve.num_cpus_per_replica > 0, "serve.num_cpus_per_replica",
            serve.num_cpus_per_replica, "must be > 0")
    for name in ("alias_poll_s", "batch_wait_timeout_s", "num_gpus_per_replica",
                 "target_ongoing_requests", "ingress_cpus"):
        value = getattr(serve, name)
        require(value >= 0, f"serve.{name}", value, "must be >= 0")
    require(1 <= serve.min_replicas <= serve.max_replicas, "serve.min_replicas",
            serve.min_replicas, f"must be in [1, serve.max_replicas={serve.max_replicas}]: the "
            "API needs at least one model replica")
    require(1 <= serve.ingress_min_replicas <= serve.ingress_max_replicas,
            "serve.ingress_min_replicas", serve.ingress_min_replicas,
            f"must be in [1, serve.ingress_max_replicas={serve.ingress_max_replicas}]")
    require(not serve.model or serve.model.startswith("models:/"), "serve.model", serve.model,
            "must be models:/<name>@<alias> or models:/<name>/<version>")
