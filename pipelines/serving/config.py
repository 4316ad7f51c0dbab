"""The `serve:` section of a job config: what `read-serve` serves and how it scales.

Replicas of the model deployment are sized here (CPU for the tiny preset, one GPU each for the
7B/13B presets) and autoscale between `min_replicas` and `max_replicas`; the HTTP ingress scales
separately. Input limits are part of the config so an operator can raise them without code.
"""

from __future__ import annotations

from dataclasses import dataclass

from read_model.config import ConfigError

MEGAPIXEL = 1_000_000


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

    def __post_init__(self) -> None:
        positive = {
            "serve.max_new_tokens": self.max_new_tokens,
            "serve.max_batch_size": self.max_batch_size,
            "serve.num_cpus_per_replica": self.num_cpus_per_replica,
            "serve.max_replicas": self.max_replicas,
            "serve.ingress_max_replicas": self.ingress_max_replicas,
            "serve.max_image_pixels": self.max_image_pixels,
            "serve.max_upload_bytes": self.max_upload_bytes,
            "serve.max_question_chars": self.max_question_chars,
            "serve.overlay_max_side": self.overlay_max_side,
            "serve.port": self.port,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        non_negative = {
            "serve.alias_poll_s": self.alias_poll_s,
            "serve.batch_wait_timeout_s": self.batch_wait_timeout_s,
            "serve.num_gpus_per_replica": self.num_gpus_per_replica,
            "serve.target_ongoing_requests": self.target_ongoing_requests,
            "serve.ingress_cpus": self.ingress_cpus,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                f"serve.min_replicas {self.min_replicas} must be in [1, serve.max_replicas "
                f"{self.max_replicas}]: the API needs at least one model replica"
            )
        if not 1 <= self.ingress_min_replicas <= self.ingress_max_replicas:
            raise ConfigError(
                f"serve.ingress_min_replicas {self.ingress_min_replicas} must be in "
                f"[1, serve.ingress_max_replicas {self.ingress_max_replicas}]"
            )
        if self.model and not self.model.startswith("models:/"):
            raise ConfigError(
                f"serve.model {self.model!r} must be models:/<name>@<alias> or "
                "models:/<name>/<version>"
            )

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus_per_replica > 0

    @property
    def autoscaling_target(self) -> float:
        return self.target_ongoing_requests or float(self.max_batch_size)
