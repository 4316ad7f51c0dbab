"""Score a registered READ model on shard folders with Ray Data; record everything in MLflow.

    read-evaluate --model models:/read-tiny@champion \
        [--data reason_seg/val fprefcoco/val] [data.shards=artifacts/shards] \
        [--protocol teacher_forced|generate] [--modes segmentation siou points_only_tuned points_only_base_sam] \
        [--config configs/tiny.yaml] [--tag-version] [eval.num_actors=2 ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python pipelines/evaluate.py ...

A pool of model actors (`map_batches` with `concurrency=eval.num_actors`, a GPU share each when
`eval.use_gpu`) turns each block of samples into per-query counts; the driver sorts them by query
id and aggregates, so N actors give exactly the single-actor numbers (no padded sampler). The
data are `<dataset>/<split>` names under `data.shards` (default: `data.val`), as in training;
each pointer is resolved once and the run records the exact version read. Every shard's sha256
is checked as it is read: a damaged shard is named and, by default (`data.on_damaged_shard=auto`
means fail here), fails the run; with `skip` it is left out and counted. The run records the
model version it scored, the versions and the hashes of the shards it actually consumed, the
metrics, a metrics table (CSV / JSON / markdown), per-query predictions (JSONL, masks as COCO
RLE) and overlay images.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import outcome, progress, storage
from pipelines.config import JobConfig, check_job_paths, load_job_config
from pipelines.evaluation.overlays import evaluation_figure, png_bytes
from pipelines.evaluation.predictions_io import to_jsonl
from pipelines.evaluation.records import QueryResult
from pipelines.evaluation.scoring import (
    GroupMetrics,
    flat_metrics,
    label_coverage,
    score_results,
    table_rows,
    to_markdown,
)
from pipelines.integrity import IntegrityReport
from pipelines.ray_runtime import ensure_ray
from read_model.config import ConfigError, to_dict

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a key=value override, never a path
MAX_LOGGED_PREDICTIONS_BYTES = 64 * 2**20  # larger JSONL files stay in storage only
PROGRESS_EVERY = 8  # results between two progress reports
DAMAGED_SHARD = "damaged_shard"  # payload key of the result row that stands for a damaged shard


class EvaluationError(RuntimeError):
    """The evaluation cannot start."""


class CoverageError(RuntimeError):
    """Fewer queries were scored than `eval.min_coverage` of the evaluation data; the partial,
    labelled metrics are in the FAILED run."""


def expected_queries(sources: Sequence[Any], reason_seg_queries: str) -> dict[tuple[str, str], int]:
    """{(dataset, reported split): queries a complete evaluation scores}, from the manifests.

    ReasonSeg's "first" protocol scores one query per sample (its first true-premise text);
    every other set scores every query its manifest counts.
    """
    from pipelines.examples import ALL_QUERIES_PROTOCOL, REASON_DATASETS

    expected: dict[tuple[str, str], int] = {}
    for source in sources:
        manifest = source.manifest
        split, count = manifest.split, manifest.num_queries
        if manifest.dataset in REASON_DATASETS:
            if reason_seg_queries == "all":
                split = f"{manifest.split}/{ALL_QUERIES_PROTOCOL}"
            else:
                count = manifest.num_samples
        key = (manifest.dataset, split)
        expected[key] = expected.get(key, 0) + count
    return expected


# ---------------------------------------------------------------------------- model resolution
def resolve_model_version(client: Any, uri: str) -> tuple[str, str]:
    """`models:/name@alias` or `models:/name/N` -> (name, version), checked against the registry.

    Actors load the pinned version, so moving the alias mid-run cannot mix two models.
    """
    match = MODEL_URI.match(uri)
    if not match:
        raise EvaluationError(f"--model {uri!r} must look like models:/<name>@<alias> or "
                              "models:/<name>/<version>")
    from mlflow.exceptions import MlflowException

    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        else:
            version = client.get_model_version(name, match["version"]).version
    except MlflowException as error:
        raise EvaluationError(f"{uri} is not in the registry: {error}") from error
    return name, str(version)


# ---------------------------------------------------------------------------- Ray Data side
def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    size = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def _columns(results: list[QueryResult]) -> dict[str, list[Any]]:
    names = [f for f in QueryResult.__dataclass_fields__]
    rows = [r.to_row() for r in results]
    return {name: [row[name] for row in rows] for name in names}


def _error_result(key: str, reason: str) -> QueryResult:
    return QueryResult(uid=f"{key}/!", dataset="", split="", query_id="", query_text="",
                       is_sentence=False, gt_exists=True, error=reason[:2000])


def _overlay_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", uid) + ".png"


def _damage_result(row: dict[str, Any]) -> QueryResult:
    from pipelines.ingestion.ray_rows import DAMAGE_COLUMN, SHARD_COLUMN

    result = _error_result(str(row["__key__"]), f"damaged shard: {row[DAMAGE_COLUMN]}")
    result.payload = {DAMAGED_SHARD: str(row[SHARD_COLUMN]), "reason": str(row[DAMAGE_COLUMN])}
    return result


def _decode_rows(batch: dict[str, np.ndarray]) -> tuple[list[Any], list[QueryResult]]:
    """(samples, results for rows that are no sample: damaged shards, undecodable records)."""
    from pipelines.ingestion.ray_rows import decode_row, is_damage

    samples, results = [], []
    for row in _rows(batch):
        if is_damage(row):
            results.append(_damage_result(row))
            continue
        try:
            samples.append(decode_row(row))
        except Exception as error:  # a damaged record is reported, the job goes on
            results.append(_error_result(str(row.get("__key__", "?")),
                                         f"undecodable sample: {error}"))
    return samples, results


class ScoringActor:
    """One model replica: decodes a block of shard rows and scores every query in it."""

    def __init__(self, model_uri: str, tracking_uri: str, options: dict[str, Any], output: str,
                 cpus: float, weights: dict[str, Any] | None = None) -> None:
        import torch

        from pipelines.config import WeightsConfig
        from pipelines.evaluation.query_scoring import QueryScorer, ScoringOptions
        from pipelines.registry import checkpoint_dir, download_registered
        from pipelines.weights import provision_model_dir
        from read_model.checkpoint import load_model_dir
        from read_model.config import from_dict

        torch.set_num_threads(max(1, int(cpus)))
        local = checkpoint_dir(download_registered(model_uri, tracking_uri=tracking_uri))
        # The base weights the registered model was trained on, on this node (copied once).
        provision_model_dir(local, from_dict(WeightsConfig, weights or {}, "weights"))
        model, _, _ = load_model_dir(local)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.output = output
        self.scorer = QueryScorer(model.to(device), ScoringOptions(**options), self._write_overlay)

    def _write_overlay(self, uid, image, gt, outcome, heat) -> str:
        picture = evaluation_figure(image, outcome.mask.numpy(), outcome.points.numpy(),
                                    outcome.labels.numpy(), heat, gt_mask=gt)
        url = storage.join(self.output, "overlays", _overlay_name(uid))
        storage.write_bytes(url, png_bytes(picture))
        return url

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        samples, results = _decode_rows(batch)
        try:
            results.extend(self.scorer.score(samples))
        except Exception:
            for sample in samples:  # isolate the sample that breaks the batch
                try:
                    results.extend(self.scorer.score([sample]))
                except Exception as error:
                    results.append(_error_result(sample.key, f"{type(error).__name__}: {error}"))
        return _columns(results)


def _baseline_batch(batch: dict[str, np.ndarray],
                    reason_seg_queries: str = "first") -> dict[str, list[Any]]:
    """Both trivial baselines for a block of samples, on the queries the model is scored on;
    `payload["baseline"]` names the kind."""
    from pipelines.baselines import BASELINES, baseline_results

    samples, results = _decode_rows(batch)
    for kind in BASELINES:
        for result in baseline_results(samples, kind, reason_seg_queries):
            result.payload = {"baseline": kind}
            results.append(result)
    return _columns(results)


def _collect(dataset: Any, shard_sets: Sequence[Any], policy: str, total: int, note: str
             ) -> tuple[list[QueryResult], IntegrityReport]:
    """Every result row, and the integrity of what was read. With the `fail` policy the first
    damaged shard stops the job at once (the Ray Data execution is dropped with the iterator).
    The count goes to the workflow's progress bar when there is one."""
    report = IntegrityReport()
    results: list[QueryResult] = []
    for row in dataset.iter_rows():
        result = QueryResult.from_row(row)
        if DAMAGED_SHARD in result.payload:
            report.shard_damaged(result.payload[DAMAGED_SHARD], result.payload["reason"])
            if policy == "fail":
                break
            continue
        if result.error.startswith("undecodable sample"):
            report.sample_skipped(result.error)
        results.append(result)
        if len(results) % PROGRESS_EVERY == 0:
            progress.report(len(results), total=total, unit="queries", note=note)
    progress.report(len(results), total=total, unit="queries", note=note)
    for shard_set in shard_sets:
        for entry in shard_set.manifest.shards:
            url = shard_set.shard_url(entry.name)
            if url not in report.damaged:
                report.shard_consumed(url, entry.sha256)
    if report.damaged and policy == "fail":
        report.consumed = {}  # the job stopped early: what was read is not a complete record
    return results, report


def _log_integrity(client: Any, run_id: str, report: IntegrityReport) -> None:
    client.log_dict(run_id, report.to_dict(), "data_integrity.json")
    client.set_tag(run_id, "data.consumed_hash", report.consumed_hash or "-")
    for key, value in report.metrics("data.").items():
        client.log_metric(run_id, key, value)


def _check_tracking(tracking_uri: str) -> None:
    from pipelines.training.preflight import PreflightError, check_tracking

    try:
        check_tracking(tracking_uri)
    except PreflightError as error:
        raise EvaluationError(str(error)) from error


def shard_sets_for(config: JobConfig, names: Sequence[str]) -> list[Any]:
    """Resolve `<dataset>/<split>` names (default `data.val`) under `data.shards`, once."""
    from pipelines.shard_sets import resolve

    sets = [resolve(config.data.shards, name) for name in (names or config.data.val)]
    for shard_set in sets:
        shard_set.check_files()
    return sets


# ---------------------------------------------------------------------------- driver
def _tables(prefix: str, table: list[GroupMetrics]) -> dict[str, bytes]:
    rows = table_rows(table)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {
        f"{prefix}.csv": buffer.getvalue().encode(),
        f"{prefix}.json": json.dumps([asdict(g) for g in table], indent=1).encode(),
        f"{prefix}.md": (to_markdown(rows) + "\n").encode(),
    }


def evaluate(
    config: JobConfig,
    model_uri: str,
    data: Sequence[str],
    *,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    run_name: str = "evaluate",
    with_baselines: bool = False,
    tag_version: bool = False,
) -> dict[str, Any]:
    """Run one evaluation; returns a JSON-friendly summary (run id, version, metrics, tables).

    `tag_version` records the pooled metrics on the model version (``read.eval.<metric>`` tags)
    with their basis (the content hash of every shard set scored, the protocol and modes) and
    this run's id: the evidence champion promotion compares, and only between versions with the
    same basis. Only the workflow's own evaluation sets it, so an ad-hoc evaluation on other data
    never changes what promotion sees.
    """
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from pipelines.champion import EvaluationBasis, record_version_metrics
    from pipelines.cluster_capacity import evaluation_request
    from pipelines.cluster_checks import check_cluster
    from pipelines.ingestion.ray_rows import ray_dataset
    from pipelines.integrity import apply_policy, resolve_policy
    from pipelines.tracking import ensure_experiment, resolve_tracking_uri

    settings = config.eval
    options = {"protocol": settings.protocol, "modes": tuple(settings.modes),
               "max_new_tokens": settings.max_new_tokens,
               "siou_threshold": settings.siou_threshold,
               "reason_seg_queries": settings.reason_seg_queries,
               "base_sam_checkpoint": settings.base_sam_checkpoint}
    config.validate()  # also for callers that built `config` themselves
    from pipelines.evaluation.query_scoring import ScoringOptions

    ScoringOptions(**options)  # validate protocol / modes before anything starts
    policy = resolve_policy(config.data.on_damaged_shard, "evaluate")
    sources = shard_sets_for(config, data)
    plan = None
    if settings.refer_prompts == "drawn":  # the whole split's draws, in upstream's order
        from pipelines.evaluation.prompt_plan import build_prompt_plan

        plan = build_prompt_plan(sources, settings.templates, settings.prompt_seed)
        options["prompts"] = plan.prompts
    tracking_uri = tracking_uri or resolve_tracking_uri(config.mlflow)
    _check_tracking(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name, version = resolve_model_version(client, model_uri)
    pinned = f"models:/{name}/{version}"
    storage.check_reachable(settings.output)

    experiment_id = ensure_experiment(client, config.mlflow.experiment, tracking_uri)
    tags = {"read.model_name": name, "read.model_version": version, "read.kind": "evaluate"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
    outcome.note_run(tracking_uri, run_id)
    try:
        params = {"model_uri": model_uri, "model_version": version, "protocol": settings.protocol,
                  "modes": ",".join(settings.modes), "num_actors": settings.num_actors,
                  "batch_size": settings.batch_size, "max_new_tokens": settings.max_new_tokens,
                  "eval.reason_seg_queries": settings.reason_seg_queries,
                  "eval.refer_prompts": settings.refer_prompts,
                  **(plan.params() if plan else {})}
        for source in sources:
            for key, value in source.describe().items():
                if key != "url":
                    params[f"data.{source.name}.{key}"] = value
        for key, value in params.items():
            client.log_param(run_id, key.replace("+", "plus"), str(value))
        base = settings.output if storage.is_s3(settings.output) else str(Path(settings.output).resolve())
        output = storage.join(base, run_id)  # absolute: actors run in other directories
        total_queries = sum(s.manifest.num_queries for s in sources)
        options["overlay_fraction"] = min(1.0, 2.0 * settings.num_overlays / max(total_queries, 1))

        ensure_ray()
        # Actors that can never fit are refused; GPU nodes that scale from zero are waited for.
        check_cluster(config, evaluation_request(config), weights=False)
        import ray.data

        # Bars redraw in place on a terminal; forwarded from a Ray task they become log spam.
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        remote: dict[str, Any] = {"num_cpus": settings.cpus_per_actor}
        if settings.use_gpu:
            remote["num_gpus"] = settings.gpus_per_actor
        scored = ray_dataset(sources).map_batches(
            ScoringActor,
            fn_constructor_kwargs={"model_uri": pinned, "tracking_uri": tracking_uri,
                                   "options": options, "output": output,
                                   "cpus": settings.cpus_per_actor,
                                   "weights": to_dict(config.weights)},
            batch_size=settings.batch_size,
            concurrency=settings.num_actors,
            batch_format="numpy",
            **remote,
        )
        progress.report(0, total=total_queries, unit="queries",
                        note=f"starting {settings.num_actors} model replica(s)")
        results, integrity = _collect(scored, sources, policy, total_queries, "scoring the model")
        _log_integrity(client, run_id, integrity)
        apply_policy(integrity, policy, total_shards=sum(len(s.manifest.shards) for s in sources))
        summary = _record(client, run_id, name, version, results, output, settings.num_overlays,
                          expected_queries(sources, settings.reason_seg_queries),
                          settings.min_coverage)
        summary["data"] = {"versions": {s.name: s.version for s in sources},
                           "consumed_hash": integrity.consumed_hash,
                           "damaged_shards": dict(integrity.damaged)}
        if with_baselines:
            summary["baselines"] = _baselines(client, run_id, sources, settings.batch_size,
                                              total_queries, settings.reason_seg_queries)
        if tag_version:
            pooled = {k: v for k, v in summary["metrics"].items() if "." not in k}
            basis = EvaluationBasis(
                {s.name: s.manifest.content_hash for s in sources},
                settings.protocol, tuple(settings.modes))
            record_version_metrics(client, name, version, pooled, basis=basis, run_id=run_id)
            summary["basis"] = {"fingerprint": basis.fingerprint(), "data": basis.describe()}
    except BaseException as error:
        client.set_terminated(run_id, outcome.terminal_status(error))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return {"run_id": run_id, "model_name": name, "model_version": version, **summary}


def _baselines(client: Any, run_id: str, sources: list[Any], batch_size: int,
               total_queries: int, reason_seg_queries: str) -> dict[str, Any]:
    """Score the empty-mask and whole-image baselines on the same queries; log them to the run."""
    from pipelines.baselines import BASELINES
    from pipelines.ingestion.ray_rows import ray_dataset

    rows, _ = _collect(ray_dataset(sources).map_batches(
        _baseline_batch, batch_format="numpy", batch_size=batch_size, num_cpus=0.5,
        fn_kwargs={"reason_seg_queries": reason_seg_queries}),
        sources, "skip", len(BASELINES) * total_queries, "trivial baselines")
    out = {}
    for kind in BASELINES:
        table = score_results(r for r in rows if r.payload.get("baseline") == kind)
        metrics = flat_metrics(table)
        for key, value in metrics.items():
            client.log_metric(run_id, f"baseline.{kind}.{key}", value)
        out[kind] = {"metrics": metrics, "markdown": to_markdown(table_rows(table))}
    return out


def _record(client: Any, run_id: str, name: str, version: str, results: list[QueryResult],
            output: str, num_overlays: int, expected: dict[tuple[str, str], int],
            min_coverage: float) -> dict[str, Any]:
    """Score on the driver, write predictions, and log metrics, tables and overlays; every
    group carries the queries it was computed on and those its data holds, and a coverage
    below `min_coverage` fails the run after everything is logged."""
    errors = [r for r in results if r.error]
    scored = [r for r in results if not r.error]
    if not scored:
        reasons = "; ".join(r.error for r in errors[:3])
        raise CoverageError(f"no query could be scored ({len(errors)} errors: {reasons})")
    table = score_results(scored)
    coverage = label_coverage(table, expected)
    partial = [f"{g.dataset}/{g.split} {int(g.metrics['num_queries'])} of "
               f"{int(g.metrics['expected_queries'])}" for g in table[:-1]
               if g.metrics["num_queries"] < g.metrics["expected_queries"]]
    client.set_tag(run_id, "read.partial", "; ".join(partial) if partial else "no")
    metrics = flat_metrics(table)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_metric(run_id, "unscorable_samples", float(len(errors)))

    predictions_url = storage.join(output, "predictions.jsonl")
    jsonl = to_jsonl(scored).encode()
    storage.write_bytes(predictions_url, jsonl)
    client.set_tag(run_id, "read.predictions", predictions_url)
    overlays = sorted((r.uid, r.payload["overlay"]) for r in scored if "overlay" in r.payload)
    with tempfile.TemporaryDirectory(prefix="read-eval-") as tmp:
        folder = Path(tmp)
        files = _tables("metrics", table)
        if errors:
            files["unscorable.json"] = json.dumps([{"uid": r.uid, "reason": r.error}
                                                   for r in errors], indent=1).encode()
        if len(jsonl) <= MAX_LOGGED_PREDICTIONS_BYTES:
            files["predictions.jsonl"] = jsonl
        for file_name, blob in files.items():
            (folder / file_name).write_bytes(blob)
            client.log_artifact(run_id, str(folder / file_name))
        (folder / "overlays").mkdir()
        for uid, url in overlays[:num_overlays]:
            (folder / "overlays" / _overlay_name(uid)).write_bytes(storage.read_bytes(url))
        if overlays:
            client.log_artifacts(run_id, str(folder / "overlays"), "overlays")
    if coverage < min_coverage:
        raise CoverageError(
            f"scored {int(table[-1].metrics['num_queries'])} of "
            f"{int(table[-1].metrics['expected_queries'])} queries ({100 * coverage:.1f}%), below "
            f"eval.min_coverage={min_coverage:g} ({'; '.join(partial)}); the labelled partial "
            "metrics, data_integrity.json and unscorable.json are in the run")
    return {"metrics": metrics, "markdown": to_markdown(table_rows(table)),
            "predictions": predictions_url, "num_errors": len(errors),
            "overlays": [url for _, url in overlays[:num_overlays]]}


def refuse_model_overrides(overrides: Sequence[str]) -> None:
    """`model.*` overrides would be ignored: the registered checkpoint's model settings win."""
    ignored = [item.split("=", 1)[0] for item in overrides if item.strip().startswith("model.")]
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)}: evaluation scores the registered model with the model "
            "settings it was trained and registered with, so model.* overrides would be "
            "ignored; register a model trained with these settings and evaluate that one"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="models:/<name>@<alias>, models:/<name>/<N>, or @<alias> for the "
                             "config's mlflow.registered_model (e.g. @candidate)")
    parser.add_argument("--data", nargs="+", default=[],
                        help="<dataset>/<split> names under data.shards (default: data.val)")
    parser.add_argument("--protocol", choices=("teacher_forced", "generate"))
    parser.add_argument("--modes", nargs="+", help="segmentation siou points_only_tuned points_only_base_sam")
    parser.add_argument("--config", help="YAML preset (default: built-in defaults)")
    parser.add_argument("--tag-version", action="store_true",
                        help="record the pooled metrics on the model version (read.eval.*), the "
                             "evidence pipelines/promote.py compares")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. eval.num_actors=2 (model.* is refused: "
                             "the registered model's own settings are used)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # `--data a b key=value`: argparse gives the trailing overrides to --data; take them back.
    data = [d for d in args.data if not OVERRIDE.match(d)]
    overrides = [d for d in args.data if OVERRIDE.match(d)] + list(args.overrides)
    if args.protocol:
        overrides.append(f"eval.protocol={args.protocol}")
    if args.modes:
        overrides.append(f"eval.modes=[{','.join(args.modes)}]")
    refuse_model_overrides(overrides)
    config = load_job_config(args.config, overrides)
    check_job_paths(config, ("eval", "data"))  # --data names sets under data.shards
    model = args.model
    if model.startswith("@"):  # an alias of the model the preset trains and registers
        model = f"models:/{config.mlflow.registered_model}{model}"
    summary = evaluate(config, model, data, tag_version=args.tag_version)
    print(summary["markdown"])
    print(json.dumps({k: v for k, v in summary.items() if k != "markdown"}), flush=True)
    return summary


RESUME_HINT = "run the same command again: the evaluation starts over in a new MLflow run"


def cli(argv: Sequence[str] | None = None) -> int:
    """0 scored and recorded, 1 failed (a damaged shard under the `fail` policy included), 2
    could not start, 130 interrupted; from the command line the job runs in a watched child."""
    from pipelines.cluster_checks import ClusterCheckError
    from pipelines.shard_sets import ShardSetError

    def direct() -> int:
        return outcome.run_command(
            "read-evaluate", lambda: main(argv), resume=RESUME_HINT,
            usage_errors=(ConfigError, EvaluationError, ShardSetError, storage.StorageError,
                          ClusterCheckError))

    if argv is not None:
        return direct()
    parse_args(sys.argv[1:])  # flag errors and --help here, before a child process starts
    return outcome.supervise("read-evaluate", "pipelines.evaluate", sys.argv[1:],
                             resume=RESUME_HINT, direct=direct)


if __name__ == "__main__":
    sys.exit(cli())
