"""The job configuration shared by every pipeline entry point.

One YAML file (``configs/<preset>.yaml``) holds the model section (``read_model.config.ReadConfig``)
and the sections the pipelines own. ``load_job_config(path, overrides)`` resolves it strictly:
an unknown key anywhere is an error naming the key, and ``JobConfig.validate()`` refuses every
value that could only fail later (on a worker, after Ray started), both before Ray or MLflow is
touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.serving.config import ServeConfig
from pipelines.submitted_job import refuse_relative_paths
from read_model.config import (
    ConfigError,
    Problems,
    PromptMode,
    ReadConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)

EvalProtocol = Literal["teacher_forced", "generate"]
# The paper's <SEG> analyses (docs/evaluation.md); "points_only" is the old name of
# "points_only_tuned".
EvalMode = Literal["segmentation", "siou", "points_only_tuned", "points_only_base_sam",
                   "points_only"]
ReasonSegQueries = Literal["first", "all"]


@dataclass
class DataConfig:
    """Where shards come from and how datasets are mixed (`READ:dataloaders/trainval_dataset.py`)."""

    shards: str = "artifacts/shards"  # local folder or s3://bucket/prefix holding <dataset>/<split>
    train: list[str] = field(default_factory=lambda: ["reason_seg/train"])
    val: list[str] = field(default_factory=lambda: ["reason_seg/val"])
    sample_rates: list[float] = field(default_factory=list)  # one per `train` entry; empty = equal
    # Upstream's --sample_rates, by source (sem_seg, refer_seg, correct_refer_seg, vqa,
    # neg_refer_seg, reason_seg): a source's rate is shared equally by its `train` entries, as
    # upstream draws a source, then one of its datasets (pipelines/mixing.py). Instead of
    # sample_rates; empty = use sample_rates.
    source_rates: dict[str, float] = field(default_factory=dict)
    true_premise_prob: float = 0.85  # ReasonSeg FP-QA mixing (upstream class attribute)
    # Semantic segmentation's premise modes per image (READ:dataloaders/sem_seg_dataset.py).
    sem_seg_true_premise_prob: float = 0.85
    sem_seg_denial_prob: float = 0.07
    sem_seg_correction_prob: float = 0.08
    loader_workers: int = 2  # DataLoader processes per rank preparing batches; 0 = in-process
    prefetch_batches: int = 2  # batches each loader process prepares ahead
    open_shards: int = 2  # shards each loader process reads interleaved, per dataset
    cache_dir: str = ""  # node-local copies of s3:// shards; "" = <tmp>/read-shard-cache
    cache_max_gb: float = 50.0
    # A shard whose sha256/size/tar does not match its manifest: "auto" = skip it (within
    # max_damaged_shard_fraction) when training, fail when evaluating.
    on_damaged_shard: Literal["auto", "skip", "fail"] = "auto"
    max_damaged_shard_fraction: float = 0.05


@dataclass
class ScalingConfig:
    """Ray Train `ScalingConfig` fields; fractional CPUs keep room for Ray Data on small hosts."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = "PACK"
    # How long start-up waits for the cluster (its autoscaler) to provide the workers' (and
    # evaluation actors') resources before refusing; 0 = only what is free right now.
    wait_for_workers_s: float = 900.0


@dataclass
class TrainConfig:
    """Optimiser, schedule and checkpointing (`READ:train_read.py`; docs/fidelity.md)."""

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
    # Validated samples / samples the val manifests hold, below which training fails (damaged
    # val shards skipped under data.on_damaged_shard=skip); the counts are logged either way.
    min_val_coverage: float = 1.0
    num_to_keep: int = 2
    seed: int = 42


@dataclass
class EvalConfig:
    """Batch evaluation (`READ:train_read.py` validate, `READ:test_read.py`; docs/fidelity.md)."""

    protocol: EvalProtocol = "teacher_forced"
    modes: list[EvalMode] = field(default_factory=lambda: ["segmentation"])
    batch_size: int = 4
    num_actors: int = 1
    max_new_tokens: int = 512  # upstream's test generation limit; decoding stops at EOS
    # Upstream's protocol per dataset (docs/fidelity.md): ReasonSeg scores the first query
    # ("all": every query, reported as <split>/all_queries); RefCOCO-family prompts are drawn
    # per split with Python's random seeded `prompt_seed` in upstream's order ("fixed": LISA's
    # question) from `templates`: "project" or the path of an upstream READ/SESAME checkout.
    reason_seg_queries: ReasonSegQueries = "first"
    refer_prompts: Literal["drawn", "fixed"] = "drawn"
    templates: str = "project"
    prompt_seed: int = 42
    num_overlays: int = 8
    siou_threshold: float | None = None  # None: the scored model's model.sasp.siou_threshold
    base_sam_checkpoint: str = ""  # mode points_only_base_sam: off-the-shelf SAM weights
    output: str = "artifacts/eval"  # predictions JSONL + overlays: local folder or s3://
    use_gpu: bool = False  # one GPU share per model actor (set on GPU clusters)
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5  # fractional so Ray Data's read tasks keep a CPU on small hosts
    # Scored queries / queries the evaluation data holds, below which the run fails (its
    # partial, labelled metrics stay in the FAILED run): 1.0 = every query must be scored.
    min_coverage: float = 1.0


@dataclass
class WeightsConfig:
    """Where the base weights the model section names come from (pipelines/weights.py).

    `model.llava.path`, `model.sam.checkpoint` and `model.tokenizer.path` name node-local
    locations (e.g. /models/llava-1.5-7b-hf). With a `store` (a folder or s3:// URL filled by
    `read-fetch-weights`, checksums in its manifest.json) each node copies what it lacks from
    there into those locations once; without one the paths are read as they are.
    """

    store: str = ""
    # weight name (the path's last component) -> where read-fetch-weights gets it:
    # hf://<repo>@<revision>, https://..., a folder or an s3:// URL
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class MlflowConfig:
    """Tracking and registry; the URI defaults to MLFLOW_TRACKING_URI or a local store."""

    tracking_uri: str = ""
    experiment: str = "read"
    registered_model: str = "read-tiny"
    champion_metric: str = "giou"
    # Training outlives a tracking outage this long (metrics buffered, retried every
    # `retry_every_s`, flushed when the server answers), then fails saying what was not logged.
    outage_budget_s: float = 3600.0
    retry_every_s: float = 15.0


@dataclass
class WorkflowConfig:
    """The one-command workflow (pipelines/workflow.py): where data comes from, what it compares."""

    dataset_root: str = ""  # upstream-format dataset folder; empty = generate synthetic scenes
    synthetic_images: int = 90  # scenes generated when dataset_root is empty
    synthetic_seed: int = 0
    workdir: str = "artifacts"  # local folder for generated data and evaluation outputs
    eval_data: list[str] = field(default_factory=list)  # "<dataset>/<split>"; empty = data.val
    ablation_modes: list[PromptMode] = field(
        default_factory=lambda: ["seg_only", "points_discrete", "points_dtoc"]
    )  # the paper's prompt ablation (Table: <SEG> only, + discrete points, + DtoC)


@dataclass
class JobConfig:
    """A whole job: the model plus the pipeline sections."""

    model: ReadConfig = field(default_factory=ReadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> None:
        """Refuse, in one `ConfigError` naming every bad key, what would only fail later.

        The `model:` section's rules are `ReadConfig.validate`'s; the pipeline sections' are
        in `pipelines.config_rules`. Every entry point runs this before starting anything.
        """
        from pipelines.config_rules import job_problems
        from read_model.config_rules import model_problems

        problems = Problems()
        model_problems(self.model, problems)
        job_problems(self, problems)
        problems.raise_if_any()


def load_job_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML preset, apply `a.b=value` overrides, and validate every key and value."""
    raw: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = load_yaml(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = apply_overrides(raw, list(overrides or []))
    config = from_dict(JobConfig, raw)
    config.validate()
    return config


def check_job_paths(config: JobConfig, sections: tuple[str, ...]) -> None:
    """Refuse the relative paths of `sections` (the ones a job uses) inside a submitted job."""
    refuse_relative_paths({key: value for key, value in local_paths(config).items()
                           if key.split(".")[0] in sections})


def local_paths(config: JobConfig) -> dict[str, str]:
    """Every path-valued field of the job (local paths or URLs), by its config key."""
    model = config.model
    return {
        "data.shards": config.data.shards,
        "data.cache_dir": config.data.cache_dir,
        "train.storage_path": config.train.storage_path,
        "eval.output": config.eval.output,
        "workflow.workdir": config.workflow.workdir,
        "workflow.dataset_root": config.workflow.dataset_root,
        "weights.store": config.weights.store,
        "model.llava.path": model.llava.path,
        "model.sam.checkpoint": model.sam.checkpoint,
        "model.tokenizer.path": model.tokenizer.path,
    }


def job_config_dict(config: JobConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (logged as MLflow params and saved with checkpoints)."""
    return to_dict(config)
