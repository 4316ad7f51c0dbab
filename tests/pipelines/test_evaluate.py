"""Batch evaluation of a registered tiny model from a real MLflow server over synthetic shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from pipelines.build_shards import write_samples
from pipelines.champion import METRIC_TAG_PREFIX
from pipelines.config import load_job_config
from pipelines.evaluate import CoverageError, EvaluationError, evaluate, resolve_model_version
from pipelines.evaluation.predictions_io import decode_rle, from_jsonl
from pipelines.evaluation.records import MISSING
from pipelines.examples import evaluation_queries
from pipelines.integrity import DamagedShardError
from pipelines.shard_sets import resolve
from read_model.metrics import intersection_union

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "read-eval-test"


NAMES = ["reason_seg/val", "fprefcoco/val"]


def _write_eval_sets(root: Path, synthetic_root: Path) -> dict[str, Sample]:
    reason = [s for s in iter_reason_seg(synthetic_root, "val") if isinstance(s, Sample)][:3]
    fp = [s for s in iter_refer(synthetic_root, "fprefcoco", "val") if isinstance(s, Sample)][:2]
    assert reason and fp and any(not q.exists for s in fp for t in s.targets for q in t.queries)
    for name, samples in (("reason_seg", reason), ("fprefcoco", fp)):
        write_samples(samples, str(root / name / "val"), dataset=name, split="val")
    return {s.key: s for s in reason + fp}


@pytest.fixture(scope="module")
def eval_shards(synthetic_root, tmp_path_factory) -> tuple[Path, dict[str, Sample]]:
    root = tmp_path_factory.mktemp("eval-shards")
    return root, _write_eval_sets(root, synthetic_root)


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory) -> str:
    from pipelines.registry import log_and_register
    from read_model.checkpoint import save_trainable
    from read_model.model import build_model

    config = load_job_config(REPO / "configs" / "tiny.yaml")
    model, tokenizer = build_model(config.model)
    folder = tmp_path_factory.mktemp("model") / "model"
    save_trainable(model, tokenizer, config.model, folder)
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment("eval-test-models")
    run = client.create_run(experiment).info.run_id
    return log_and_register(folder, MODEL_NAME, run, alias="champion", tracking_uri=mlflow_server)


@pytest.mark.integration
def test_one_and_two_actors_score_identically(ray_local, mlflow_server, registered, eval_shards,
                                             tmp_path):
    root, samples = eval_shards
    base = [f"eval.output={tmp_path / 'out'}", "eval.batch_size=2", "eval.num_overlays=2",
            "eval.modes=[segmentation,siou]", "mlflow.experiment=eval-test",
            f"data.shards={root}"]
    summaries = []
    for actors in (1, 2):
        config = load_job_config(REPO / "configs" / "tiny.yaml", [*base, f"eval.num_actors={actors}"])
        summaries.append(evaluate(config, f"models:/{MODEL_NAME}@champion", NAMES,
                                  tracking_uri=mlflow_server, with_baselines=actors == 1,
                                  tag_version=actors == 1))
    one, two = summaries
    assert one["metrics"] == two["metrics"]  # exact, not approximate
    assert one["model_version"] == registered and one["num_errors"] == 0
    for key in ("giou", "ciou", "fprefcoco.val.see", "fprefcoco.val.segment_ciou",
                "reason_seg.val.giou"):
        assert key in one["metrics"], key
    # ReasonSeg splits its queries by length; the two parts cover its scored true premises.
    metrics = one["metrics"]
    parts = [f"reason_seg.val.{kind}_count" for kind in ("short", "long")]
    assert any(f"reason_seg.val.{kind}_giou" in metrics for kind in ("short", "long"))
    assert sum(metrics.get(p, 0.0) for p in parts) == metrics["reason_seg.val.true_premise_count"]
    assert one["baselines"]["empty_mask"]["metrics"]["giou"] == 0.0
    assert 0.0 < one["baselines"]["whole_image"]["metrics"]["ciou"] < 1.0

    # Predictions: every query once; the RLE mask reproduces the recorded counts against the GT.
    results = from_jsonl(Path(one["predictions"]).read_text())
    expected = sum(len(evaluation_queries(s)) for s in samples.values())  # ReasonSeg: first only
    assert expected < sum(s.num_queries for s in samples.values())
    assert len(results) == len({r.uid for r in results}) == expected
    # The SIoU analysis ran: pooled SIoU figures exist exactly when some present-object query
    # has an SIoU record, and they cover those queries.
    siou_rows = [r for r in results if r.gt_exists and r.siou_union != MISSING]
    assert ("siou_giou" in one["metrics"]) == bool(siou_rows)
    assert one["metrics"].get("siou_count", 0.0) == len(siou_rows)
    for r in results[:6]:
        key, target, _ = r.uid.split("/")
        sample = samples[key]
        gt = sample.targets[int(target)].mask if r.gt_exists else np.zeros((sample.height, sample.width), np.uint8)
        mask = torch.from_numpy(decode_rle(r.payload["rle"]))
        inter, union = intersection_union(mask, torch.from_numpy(gt))
        assert (int(inter[0]), int(union[0])) == (r.intersection, r.union)

    # The MLflow run names the version and data it scored and carries the tables and overlays.
    client = MlflowClient(mlflow_server)
    run = client.get_run(one["run_id"])
    assert run.data.params["model_version"] == registered
    # Which protocol: ReasonSeg's first query, prompts drawn from the project's own lists.
    assert run.data.params["eval.reason_seg_queries"] == "first"
    assert run.data.params["eval.refer_prompts"] == "drawn"
    assert run.data.params["eval.templates"] == "project"
    assert run.data.params["max_new_tokens"] == "64"  # the tiny preset's (upstream: 512)
    fp_queries = sum(s.num_queries for s in samples.values() if s.dataset == "fprefcoco")
    assert run.data.params["eval.drawn_prompts"] == str(fp_queries)
    reason_val = resolve(str(root), "reason_seg/val")
    assert run.data.params["data.reason_seg/val.content_hash"] == reason_val.manifest.content_hash
    assert run.data.params["data.reason_seg/val.version"] == reason_val.version
    assert one["data"]["versions"]["reason_seg/val"] == reason_val.version
    assert run.data.metrics["data.damaged_shards"] == 0.0
    # A complete evaluation: every query the manifests count was scored.
    assert run.data.metrics["coverage"] == 1.0 and run.data.tags["read.partial"] == "no"
    assert run.data.metrics["expected_queries"] == run.data.metrics["num_queries"]
    integrity = client.download_artifacts(one["run_id"], "data_integrity.json", str(tmp_path))
    consumed = json.loads(Path(integrity).read_text())["consumed"]
    assert consumed[reason_val.shard_url(reason_val.manifest.shards[0].name)] == \
        reason_val.manifest.shards[0].sha256  # the verified bytes, shard by shard
    assert run.data.metrics["giou"] == one["metrics"]["giou"]
    artifacts = {a.path for a in client.list_artifacts(one["run_id"])}
    assert {"metrics.csv", "metrics.json", "metrics.md", "predictions.jsonl", "overlays"} <= artifacts
    assert client.list_artifacts(one["run_id"], "overlays")
    version = client.get_model_version(MODEL_NAME, registered)
    assert float(version.tags[f"{METRIC_TAG_PREFIX}giou"]) == one["metrics"]["giou"]
    # ... with what they were computed on: this run, these shards' content hashes.
    assert version.tags["read.evaluation.run_id"] == one["run_id"]
    assert f"reason_seg/val@{reason_val.manifest.content_hash[:12]}" in version.tags["read.evaluation.data"]
    assert version.tags["read.evaluation.basis"] == one["basis"]["fingerprint"]


@pytest.mark.integration
@pytest.mark.fault
def test_damaged_shard_is_named_and_fails_unless_skipped(ray_local, mlflow_server, registered,
                                                         synthetic_root, tmp_path, fault_table):
    root = tmp_path / "shards"
    _write_eval_sets(root, synthetic_root)
    damaged = resolve(str(root), "fprefcoco/val")
    shard = Path(damaged.shard_url(damaged.manifest.shards[0].name))
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    base = [f"eval.output={tmp_path / 'out'}", "eval.batch_size=2", "eval.num_overlays=0",
            "mlflow.experiment=eval-damage", f"data.shards={root}"]
    config = load_job_config(REPO / "configs" / "tiny.yaml", base)
    with pytest.raises(DamagedShardError, match=r"shard-000000\.tar \(sha256 differs") as stop:
        evaluate(config, f"models:/{MODEL_NAME}@champion", NAMES, tracking_uri=mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("eval-damage").experiment_id
    [failed] = client.search_runs([experiment])
    fault_table("one flipped byte in an evaluation shard (default policy: fail)",
                "1 (DamagedShardError; called in-process here)", str(stop.value)[:160],
                failed.info.status, "nothing reported: the run stops, naming the shard")
    assert failed.info.status == "FAILED" and failed.data.metrics["data.damaged_shards"] == 1.0

    # Skipping the damaged shard leaves fprefcoco/val unscored: the partial metrics are logged
    # with the counts they were computed on and expected, and the default eval.min_coverage=1
    # fails the run.
    config = load_job_config(REPO / "configs" / "tiny.yaml",
                             [*base, "data.on_damaged_shard=skip"])
    with pytest.raises(CoverageError, match=r"fprefcoco/val 0 of \d+"):
        evaluate(config, f"models:/{MODEL_NAME}@champion", NAMES, tracking_uri=mlflow_server)
    partial = max(client.search_runs([experiment]), key=lambda r: r.info.start_time)
    metrics = partial.data.metrics
    assert partial.info.status == "FAILED" and metrics["data.damaged_shards"] == 1.0
    assert metrics["fprefcoco.val.num_queries"] == 0 and metrics["fprefcoco.val.expected_queries"] > 0
    assert "fprefcoco.val.giou" not in metrics and "reason_seg.val.giou" in metrics
    assert metrics["num_queries"] < metrics["expected_queries"]
    assert metrics["coverage"] == metrics["num_queries"] / metrics["expected_queries"]
    assert partial.data.tags["read.partial"].startswith("fprefcoco/val 0 of")
    fault_table("the same shard with data.on_damaged_shard=skip",
                "1 (CoverageError; called in-process here)", partial.data.tags["read.partial"],
                partial.info.status, f"{int(metrics['expected_queries'] - metrics['num_queries'])}"
                " queries, labelled in the metrics and tables")


@pytest.mark.integration
def test_unknown_model_is_a_clear_error(mlflow_server):
    client = MlflowClient(mlflow_server)
    with pytest.raises(EvaluationError, match="not in the registry"):
        resolve_model_version(client, "models:/no-such-model@champion")
    with pytest.raises(EvaluationError, match="must look like"):
        resolve_model_version(client, "runs:/abc/model")
