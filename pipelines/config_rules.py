"""What makes the pipeline sections of a `JobConfig` usable (the `model:` rules are in
`read_model.config_rules`): each rule refuses a value that would otherwise fail only after Ray
started (a ZeroDivisionError in a worker, then retries), be misread (Ray takes
``max_failures=-1`` as unlimited retries), or silently do nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.serving.config import serve_problems
from read_model.config import Problems

if TYPE_CHECKING:
    from pipelines.config import JobConfig


def job_problems(config: JobConfig, problems: Problems) -> None:
    """Add every invalid value of the data/scaling/train/eval/mlflow/workflow/serve sections."""
    _data(config, problems)
    _scaling(config, problems)
    _train(config, problems)
    _eval(config, problems)
    _weights(config, problems)
    _mlflow_and_workflow(config, problems)
    serve_problems(config.serve, problems)


def _at_least(problems: Problems, section: object, prefix: str, names: tuple[str, ...],
              low: float, rule: str) -> None:
    for name in names:
        value = getattr(section, name)
        problems.require(value >= low, f"{prefix}.{name}", value, rule)


def _data(config: JobConfig, problems: Problems) -> None:
    require, data = problems.require, config.data
    require(bool(data.shards), "data.shards", data.shards, "must name a folder or s3:// URL")
    require(bool(data.train), "data.train", data.train, "must name at least one <dataset>/<split>")
    rates = data.sample_rates
    require(not rates or len(rates) == len(data.train), "data.sample_rates", rates,
            f"has {len(rates)} entries but data.train names {len(data.train)} datasets; give "
            "one rate per dataset")
    require(all(r >= 0 for r in rates) and (not rates or sum(rates) > 0), "data.sample_rates",
            rates, "must be non-negative with a positive sum")
    require(data.loader_workers >= 0, "data.loader_workers", data.loader_workers,
            "must be >= 0 (0 = prepare batches in the training process)")
    _at_least(problems, data, "data", ("prefetch_batches", "open_shards"), 1, "must be >= 1")
    require(0.0 <= data.max_damaged_shard_fraction <= 1.0, "data.max_damaged_shard_fraction",
            data.max_damaged_shard_fraction, "must be in [0, 1]")
    require(data.cache_max_gb > 0, "data.cache_max_gb", data.cache_max_gb, "must be > 0")
    require(0.0 <= data.true_premise_prob <= 1.0, "data.true_premise_prob",
            data.true_premise_prob, "must be in [0, 1]")
    modes = (data.sem_seg_true_premise_prob, data.sem_seg_denial_prob,
             data.sem_seg_correction_prob)
    require(all(m >= 0 for m in modes) and sum(modes) > 0, "data.sem_seg_*_prob", modes,
            "must be non-negative with a positive sum")
    from pipelines.mixing import mix_problems

    for key, value, rule in mix_problems(data):
        require(False, key, value, rule)


def _scaling(config: JobConfig, problems: Problems) -> None:
    require, scaling = problems.require, config.scaling
    require(scaling.num_workers >= 1, "scaling.num_workers", scaling.num_workers, "must be >= 1")
    require(scaling.cpus_per_worker >= 0, "scaling.cpus_per_worker", scaling.cpus_per_worker,
            "must be >= 0")
    if scaling.use_gpu:
        require(scaling.gpus_per_worker > 0, "scaling.gpus_per_worker", scaling.gpus_per_worker,
                "must be > 0 when scaling.use_gpu")
    for name, amount in scaling.resources_per_worker.items():
        require(amount >= 0, f"scaling.resources_per_worker.{name}", amount, "must be >= 0")
    require(scaling.wait_for_workers_s >= 0, "scaling.wait_for_workers_s",
            scaling.wait_for_workers_s, "must be >= 0 (seconds; 0 = do not wait)")


def _train(config: JobConfig, problems: Problems) -> None:
    require, train = problems.require, config.train
    require(bool(train.run_name), "train.run_name", train.run_name, "must not be empty")
    require(bool(train.storage_path), "train.storage_path", train.storage_path,
            "must name a folder or s3:// URL")
    _at_least(problems, train, "train", ("max_steps", "batch_size", "grad_accumulation_steps"),
              1, "must be >= 1")
    _at_least(problems, train, "train", ("checkpoint_every", "validate_every", "log_every"), 1,
              "must be >= 1 (it is a step interval)")
    _at_least(problems, train, "train", ("lr", "weight_decay", "warmup_steps"), 0,
              "must be >= 0")
    require(0.0 <= train.min_val_coverage <= 1.0, "train.min_val_coverage",
            train.min_val_coverage, "must be within [0, 1]")
    for name in ("beta1", "beta2"):
        value = getattr(train, name)
        require(0.0 <= value < 1.0, f"train.{name}", value, "must be in [0, 1)")
    require(train.grad_clip > 0, "train.grad_clip", train.grad_clip,
            "must be > 0 (the max gradient norm)")
    require(train.max_failures >= 0, "train.max_failures", train.max_failures,
            "must be >= 0 (Ray Train reads -1 as unlimited retries)")
    require(train.num_to_keep >= 1, "train.num_to_keep", train.num_to_keep,
            "must be >= 1 (the latest checkpoint is what a resume starts from)")
    fp16_sharded = (train.strategy == "fsdp" and train.precision == "fp16"
                    and config.scaling.num_workers > 1)
    require(not fp16_sharded, "train.precision", train.precision,
            "is not supported with train.strategy=fsdp (the loss scaler does not agree on "
            "overflows across shards); use bf16")


def _eval(config: JobConfig, problems: Problems) -> None:
    require, settings = problems.require, config.eval
    _at_least(problems, settings, "eval", ("batch_size", "num_actors", "max_new_tokens"), 1,
              "must be >= 1")
    require(bool(settings.modes), "eval.modes", settings.modes, "must name at least one mode")
    require(settings.num_overlays >= 0, "eval.num_overlays", settings.num_overlays, "must be >= 0")
    require(0.0 <= settings.min_coverage <= 1.0, "eval.min_coverage", settings.min_coverage,
            "must be within [0, 1]")
    threshold = settings.siou_threshold
    require(threshold is None or 0.0 <= threshold <= 1.0, "eval.siou_threshold", threshold,
            "must be in [0, 1] (or null: the model's model.sasp.siou_threshold)")
    require(bool(settings.output), "eval.output", settings.output,
            "must name a folder or s3:// URL")
    require(settings.cpus_per_actor >= 0, "eval.cpus_per_actor", settings.cpus_per_actor,
            "must be >= 0")
    if settings.use_gpu:
        require(settings.gpus_per_actor > 0, "eval.gpus_per_actor", settings.gpus_per_actor,
                "must be > 0 when eval.use_gpu")


def _weights(config: JobConfig, problems: Problems) -> None:
    """With a store, every weight path is the node-local place it is copied to."""
    from pipelines.weights import weight_paths

    if not config.weights.store:
        return
    for key, path in weight_paths(config.model).items():
        problems.require(path.startswith("/"), key, path,
                         "must be an absolute local path when weights.store is set (the "
                         "node-local place each node copies the stored weights to)")


def _mlflow_and_workflow(config: JobConfig, problems: Problems) -> None:
    for name in ("outage_budget_s", "retry_every_s"):
        value = getattr(config.mlflow, name)
        problems.require(value > 0, f"mlflow.{name}", value, "must be > 0 (seconds)")
    require, mlflow, workflow = problems.require, config.mlflow, config.workflow
    for name in ("experiment", "registered_model", "champion_metric"):
        value = getattr(mlflow, name)
        require(bool(value), f"mlflow.{name}", value, "must not be empty")
    require(workflow.synthetic_images >= 1, "workflow.synthetic_images",
            workflow.synthetic_images, "must be >= 1")
    require(bool(workflow.ablation_modes), "workflow.ablation_modes", workflow.ablation_modes,
            "must name at least one prompt mode")
    require(bool(workflow.workdir), "workflow.workdir", workflow.workdir, "must name a folder")
