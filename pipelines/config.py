"""The job configuration shared by every pipeline entry point.

One YAML file (``configs/<preset>.yaml``) holds the model section (``read_model.config.ReadConfig``)
and the sections the pipelines own. ``load_job_config(path, overrides)`` resolves it strictly:
an unknown key anywhere is an error naming the key, raised before Ray or MLflow is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from read_model.config import ConfigError, ReadConfig, apply_overrides, from_dict, to_dict


@dataclass
class DataConfig:
    """Where shards come from and how datasets are mixed (upstream-spec §1d)."""

    shards: str = "artifacts/shards"  # local folder or s3://bucket/prefix holding <dataset>/<split>
    train: list[str] = field(default_factory=lambda: ["reason_seg/train"])
    val: list[str] = field(default_factory=lambda: ["reason_seg/val"])
    sample_rates: list[float] = field(default_factory=list)  # one per `train` entry; empty = equal
    shuffle_buffer: int = 256
    true_premise_prob: float = 0.85  # ReasonSeg FP-QA mixing (upstream class attribute)


@dataclass
class ScalingSettings:
    """Ray Train `ScalingConfig` fields; fractional CPUs keep room for Ray Data on small hosts."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = "PACK"


@dataclass
class TrainSettings:
    """Optimiser, schedule and checkpointing (upstream-spec §7)."""

    run_name: str = "read-train"
    storage_path: str = "artifacts/ray_results"  # local path or s3://
    max_steps: int = 10000
    batch_size: int = 2  # images per worker per micro-step
    grad_accumulation_steps: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # fp32 trainable masters always; this picks the frozen weights' dtype and autocast.
    # auto: bf16 on a GPU with bf16, fp16 on one without, fp32 on CPU.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    checkpoint_every: int = 500
    validate_every: int = 500
    log_every: int = 10
    max_failures: int = 0
    num_to_keep: int = 2
    seed: int = 42


@dataclass
class EvalSettings:
    """Batch evaluation (upstream-spec §8)."""

    protocol: Literal["teacher_forced", "generate"] = "teacher_forced"
    modes: list[str] = field(default_factory=lambda: ["segmentation"])
    batch_size: int = 4
    num_actors: int = 1
    max_new_tokens: int = 32
    num_overlays: int = 8
    siou_threshold: float | None = None  # None: the scored model's model.sasp.siou_threshold
    output: str = "artifacts/eval"  # predictions JSONL + overlays: local folder or s3://
    use_gpu: bool = False  # one GPU share per model actor (set on GPU clusters)
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5  # fractional so Ray Data's read tasks keep a CPU on small hosts


@dataclass
class MlflowSettings:
    """Tracking and registry; the URI defaults to MLFLOW_TRACKING_URI or a local store."""

    tracking_uri: str = ""
    experiment: str = "read"
    registered_model: str = "read-tiny"
    champion_metric: str = "giou"


@dataclass
class WorkflowSettings:
    """The one-command workflow (pipelines/workflow.py): where data comes from, what it compares."""

    dataset_root: str = ""  # upstream-format dataset folder; empty = generate synthetic scenes
    synthetic_images: int = 90  # scenes generated when dataset_root is empty
    synthetic_seed: int = 0
    workdir: str = "artifacts"  # local folder for generated data and evaluation outputs
    eval_data: list[str] = field(default_factory=list)  # "<dataset>/<split>"; empty = data.val
    ablation_modes: list[str] = field(
        default_factory=lambda: ["seg_only", "points_discrete", "points_dtoc"]
    )  # the paper's prompt ablation (Table: <SEG> only, + discrete points, + DtoC)


@dataclass
class JobConfig:
    """A whole job: the model plus the pipeline sections."""

    model: ReadConfig = field(default_factory=ReadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)


def load_job_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML preset, apply `a.b=value` overrides, and validate every key."""
    raw: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = apply_overrides(raw, list(overrides or []))
    config = from_dict(JobConfig, raw)
    _check_consistency(config)
    return config


def job_config_dict(config: JobConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (logged as MLflow params and saved with checkpoints)."""
    return to_dict(config)


def _check_consistency(config: JobConfig) -> None:
    rates = config.data.sample_rates
    if rates and len(rates) != len(config.data.train):
        raise ConfigError(
            f"data.sample_rates has {len(rates)} entries but data.train names "
            f"{len(config.data.train)} datasets; give one rate per dataset"
        )
    if any(r < 0 for r in rates) or (rates and sum(rates) <= 0):
        raise ConfigError("data.sample_rates must be non-negative with a positive sum")
    if config.scaling.num_workers < 1:
        raise ConfigError("scaling.num_workers must be at least 1")
