"""The workflow's steps: plain functions of JSON inputs -> JSON outputs (run as Ray tasks).

Each takes everything it needs as arguments (absolute paths, the tracking URI, config overrides)
so it behaves the same in the driver, in a local Ray worker and on a cluster node.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines import progress

# The pooled figures the workflow's final table compares (docs/evaluation.md).
FINAL_TABLE_METRICS = ("giou", "ciou", "true_premise_count", "see", "say", "say_count",
                       "num_queries")


def generate_synthetic(out: str, seed: int, images: int) -> dict[str, Any]:
    """Synthetic scenes in the upstream on-disk formats (ReasonSeg, REFER, FP-RefCOCO)."""
    from dataset_builders.synthetic import generate_dataset

    summary = generate_dataset(out, seed=seed, images=images)
    return {"dataset_root": out, "summary": json.loads(json.dumps(summary, default=str))}


def build(dataset_root: str, shards: str, folders: list[str], source_stamp: str,
          min_shards: int = 1) -> dict[str, Any]:
    """Shard every `<dataset>/<split>` in `folders` in one build (published all or nothing);
    -> their content hashes. `min_shards` follows the loader parts the job will run.

    `source_stamp` only feeds the step fingerprint (it changes when the source data does).
    """
    from pipelines.build_shards import BuildOptions, build_shards

    reports = build_shards(dataset_root, shards, sets=sorted(folders),
                           options=BuildOptions(min_shards=min_shards))
    for report in reports:
        print(f"[build] {report.summary()}", flush=True)
    progress.report(len(folders))
    return {"shards": shards, "content_hashes": manifest_hashes(shards, folders)}


def manifest_hashes(shards: str, folders: list[str]) -> dict[str, str]:
    """`{"<dataset>/<split>": content_hash}` of the published versions; an unbuilt set raises."""
    from pipelines.shard_sets import resolve

    return {name: resolve(shards, name).manifest.content_hash for name in folders}


def shards_unchanged(outputs: dict[str, Any]) -> bool:
    """A cached build is reusable only while every pointer still names the recorded data."""
    from pipelines.shard_sets import ShardSetError

    try:
        current = manifest_hashes(outputs["shards"], list(outputs["content_hashes"]))
    except (ShardSetError, OSError, KeyError, ValueError):
        return False
    return current == outputs["content_hashes"]


def train(config_path: str, overrides: list[str], parent_run_id: str) -> dict[str, Any]:
    """Ray Train run registered as a new model version (pipelines/train.py), nested under the
    workflow run `parent_run_id`."""
    from pipelines.train import main

    progress.report(note="starting the Ray Train workers")
    summary = main(["--config", config_path, *overrides, "--parent-run-id", parent_run_id])
    return {"model_name": summary["registered_model"], "version": str(summary["version"]),
            "train_run_id": summary["run_id"],
            "metrics": {k: float(v) for k, v in summary.get("metrics", {}).items()
                        if isinstance(v, int | float)}}


def evaluate_version(config_path: str, overrides: list[str], model_uri: str, data: list[str],
                     tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """Batch evaluation (pipelines/evaluate.py) with both trivial baselines on the same data."""
    from pipelines.config import load_job_config
    from pipelines.evaluate import evaluate

    config = load_job_config(config_path, overrides)
    summary = evaluate(config, model_uri, data, tracking_uri=tracking_uri,
                       parent_run_id=parent_run_id, with_baselines=True, tag_version=True)
    pooled = {k: v for k, v in summary["metrics"].items() if "." not in k}
    baselines = {kind: {k: v for k, v in b["metrics"].items() if k in FINAL_TABLE_METRICS}
                 for kind, b in summary["baselines"].items()}
    return {"evaluation_run_id": summary["run_id"], "model_version": summary["model_version"],
            "predictions": summary["predictions"], "metrics": pooled, "baselines": baselines}


def promote(tracking_uri: str, model_name: str, version: str, metric: str) -> dict[str, Any]:
    """Move `champion` to `version` when it beats the current champion on `metric`."""
    from mlflow.tracking import MlflowClient

    from pipelines.champion import promote_if_better

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    decision = promote_if_better(client, model_name, version, metric)
    return {"promoted": decision.promoted, "reason": decision.reason,
            "previous_version": decision.previous_version}


def stamp(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (used in run names and fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def absolute(path: str) -> str:
    """Local paths made absolute (Ray workers run elsewhere); URIs unchanged."""
    return path if "://" in path else str(Path(path).resolve())
