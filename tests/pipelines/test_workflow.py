"""Workflow machinery: skip unchanged steps, resume after a failure, champion only on improvement."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines.champion import (
    CHAMPION_ALIAS,
    EvaluationBasis,
    PromotionRefused,
    promote_if_better,
    record_version_metrics,
)
from pipelines.workflow_steps.runner import (
    FAIL_STEP_ENV,
    TAG_CODE,
    TAG_SKIPPED_FROM,
    StepFailed,
    StepRunner,
)

CALLS: list[str] = []


def produce(n: int) -> dict:
    CALLS.append("produce")
    return {"items": list(range(n))}


def consume(items: list[int]) -> dict:
    CALLS.append("consume")
    return {"total": sum(items), "metrics": {"total": float(sum(items))}}


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri), folder


@pytest.fixture
def store(sqlite_store, request):
    client, folder = sqlite_store
    name = request.node.name
    experiment = client.create_experiment(name, artifact_location=(folder / name).as_uri())
    return client, experiment


def _workflow(client, experiment, n=4):
    parent = client.create_run(experiment, run_name="workflow").info.run_id
    runner = StepRunner(client, experiment, parent, use_ray=False)
    made = runner.run("produce", produce, {"n": n})
    out = runner.run("consume", consume, {"items": made["items"]})
    client.set_terminated(parent)
    return runner, out


def test_rerun_skips_and_failure_resumes(store, monkeypatch):
    client, experiment = store
    CALLS.clear()
    monkeypatch.setenv(FAIL_STEP_ENV, "consume")
    with pytest.raises(StepFailed, match="consume"):
        _workflow(client, experiment)
    assert CALLS == ["produce"]
    failed = client.search_runs([experiment], "tags.`read.step` = 'consume'")
    assert [r.info.status for r in failed] == ["FAILED"]

    monkeypatch.delenv(FAIL_STEP_ENV)
    runner, out = _workflow(client, experiment)
    assert out["total"] == 6
    assert CALLS == ["produce", "consume"]  # produce was not redone
    assert [r.skipped for r in runner.results] == [True, False]
    skipped = client.get_run(runner.results[0].run_id)
    assert skipped.data.tags[TAG_SKIPPED_FROM]
    assert client.get_run(runner.results[1].run_id).data.metrics["total"] == 6.0

    runner, _ = _workflow(client, experiment)  # nothing changed: everything skipped
    assert CALLS == ["produce", "consume"]
    assert all(r.skipped for r in runner.results)

    runner, out = _workflow(client, experiment, n=5)  # changed input: both steps re-run
    assert out["total"] == 10 and CALLS[-2:] == ["produce", "consume"]


def test_invalid_cached_outputs_are_recomputed(store):
    client, experiment = store
    CALLS.clear()
    parent = client.create_run(experiment).info.run_id
    runner = StepRunner(client, experiment, parent, use_ray=False)
    runner.run("produce", produce, {"n": 2})
    runner.run("produce", produce, {"n": 2}, still_valid=lambda outputs: False)
    assert CALLS == ["produce", "produce"]


def test_champion_moves_only_on_improvement(store):
    client, experiment = store
    name = "read-test"
    client.create_registered_model(name)
    versions = []
    for _ in range(4):
        run = client.create_run(experiment).info.run_id
        versions.append(client.create_model_version(name, f"runs:/{run}/model", run_id=run).version)
    v1, v2, v3, v4 = (str(v) for v in versions)
    basis = EvaluationBasis({"reason_seg/val": "a" * 64}, "generate", ("segmentation",))
    record_version_metrics(client, name, v1, {"giou": 0.40}, basis=basis)
    record_version_metrics(client, name, v2, {"giou": 0.40}, basis=basis)  # tie
    record_version_metrics(client, name, v3, {"giou": 0.55}, basis=basis)  # better
    # v4: evaluation failed, no metric recorded

    assert promote_if_better(client, name, v1, "giou").promoted
    assert not promote_if_better(client, name, v2, "giou").promoted
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v1
    assert not promote_if_better(client, name, v4, "giou").promoted
    decision = promote_if_better(client, name, v3, "giou")
    assert decision.promoted and decision.previous_version == v1
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v3
    record_version_metrics(client, name, v1, {"giou": 0.30}, basis=basis)
    assert not promote_if_better(client, name, v1, "giou").promoted  # worse never demotes
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == v3


def test_runner_reruns_a_finished_step_once_its_code_changed(store, tmp_path):
    """The step's code is part of its fingerprint (pipelines.code_hash), so an edit reruns it."""
    import importlib.util

    client, experiment = store
    module_file = tmp_path / "double_step.py"

    def run_step() -> tuple[bool, dict, str]:
        spec = importlib.util.spec_from_file_location("double_step", module_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parent = client.create_run(experiment).info.run_id
        runner = StepRunner(client, experiment, parent, use_ray=False)
        outputs = runner.run("scale", module.scale, {"n": 5})
        result = runner.results[-1]
        return result.skipped, outputs, client.get_run(result.run_id).data.tags[TAG_CODE]

    module_file.write_text("def scale(n):\n    return {'value': n * 2}\n")
    skipped, outputs, first_code = run_step()
    assert (skipped, outputs) == (False, {"value": 10})
    assert run_step()[:2] == (True, {"value": 10})
    module_file.write_text("def scale(n):\n    # now triple\n    return {'value': n * 3}\n")
    skipped, outputs, code = run_step()
    assert (skipped, outputs) == (False, {"value": 15}) and code != first_code


def test_promotion_refuses_metrics_from_other_evaluation_data(store):
    """A higher gIoU on other shards (or another protocol) is no evidence of a better model."""
    client, experiment = store
    name = "read-basis-test"
    client.create_registered_model(name)
    versions = []
    for _ in range(3):
        run = client.create_run(experiment).info.run_id
        versions.append(str(client.create_model_version(name, f"runs:/{run}/model",
                                                        run_id=run).version))
    champion, other_data, other_protocol = versions
    val = EvaluationBasis({"reason_seg/val": "a" * 64}, "generate", ("segmentation",))
    record_version_metrics(client, name, champion, {"giou": 0.40}, basis=val, run_id="run-1")
    assert promote_if_better(client, name, champion, "giou").promoted
    rebuilt = EvaluationBasis({"reason_seg/val": "b" * 64}, "generate", ("segmentation",))
    record_version_metrics(client, name, other_data, {"giou": 0.90}, basis=rebuilt)
    with pytest.raises(PromotionRefused, match=r"reason_seg/val@bbbbbbbbbbbb.*reason_seg/val@aaaa"):
        promote_if_better(client, name, other_data, "giou")
    forced = EvaluationBasis(val.data, "teacher_forced", ("segmentation",))
    record_version_metrics(client, name, other_protocol, {"giou": 0.95}, basis=forced)
    with pytest.raises(PromotionRefused, match="different data or protocol"):
        promote_if_better(client, name, other_protocol, "giou")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == champion

    # Re-evaluated on the champion's data, the candidate is compared (and wins); the tags name
    # the evaluation run, and metrics of the earlier evaluation do not linger.
    record_version_metrics(client, name, other_data, {"ciou": 0.5}, basis=rebuilt)
    record_version_metrics(client, name, other_data, {"giou": 0.45}, basis=val, run_id="run-2")
    tags = client.get_model_version(name, other_data).tags
    assert "read.eval.ciou" not in tags and tags["read.evaluation.run_id"] == "run-2"
    assert promote_if_better(client, name, other_data, "giou").promoted


# ------------------------------------------------------------------ the real workflow, end to end
@pytest.mark.integration
def test_workflow_end_to_end_resumes_after_a_failed_step(ray_local, mlflow_server, tmp_path,
                                                        monkeypatch):
    from pathlib import Path

    from pipelines.workflow import run_workflow
    from pipelines.workflow_steps.runner import TAG_STEP

    monkeypatch.chdir(tmp_path)
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    overrides = [
        f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment=workflow-test",
        "mlflow.registered_model=read-workflow-test", f"workflow.workdir={tmp_path / 'work'}",
        f"data.shards={tmp_path / 'shards'}", f"train.storage_path={tmp_path / 'ray'}",
        f"eval.output={tmp_path / 'eval'}", "workflow.synthetic_images=24", "train.max_steps=2",
        "train.checkpoint_every=2", "train.validate_every=1000", "train.log_every=1",
        "eval.num_overlays=1",
    ]
    monkeypatch.setenv(FAIL_STEP_ENV, "evaluate[points_dtoc]")
    with pytest.raises(StepFailed, match="evaluate"):
        run_workflow(tiny, overrides)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("workflow-test").experiment_id
    status = {r.data.tags[TAG_STEP]: r.info.status
              for r in client.search_runs([experiment], f"tags.`{TAG_STEP}` != ''")}
    assert status == {"generate": "FINISHED", "build_shards": "FINISHED",
                      "train[points_dtoc]": "FINISHED", "evaluate[points_dtoc]": "FAILED"}

    monkeypatch.delenv(FAIL_STEP_ENV)
    result = run_workflow(tiny, overrides)
    assert result["skipped"] == ["generate", "build_shards", "train[points_dtoc]"]
    assert result["ran"] == ["evaluate[points_dtoc]", "promote"]
    version = result["trained"]["points_dtoc"]["version"]
    assert result["promotion"]["promoted"]
    champion = client.get_model_version_by_alias("read-workflow-test", CHAMPION_ALIAS)
    assert str(champion.version) == version
    evaluation = result["evaluated"]["points_dtoc"]
    assert set(evaluation["baselines"]) == {"empty_mask", "whole_image"}
    assert "giou" in evaluation["metrics"] and "trained model" in result["baseline_table"]
    children = client.search_runs([experiment],
                                  f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'")
    assert {r.data.tags.get(TAG_STEP) for r in children} >= {"train[points_dtoc]", "promote"}
    # The training run nests under the workflow run that launched it (the first, failed one).
    skipped_train = next(r for r in children if r.data.tags.get(TAG_STEP) == "train[points_dtoc]")
    launching_step = client.get_run(skipped_train.data.tags[TAG_SKIPPED_FROM])
    training = client.get_run(result["trained"]["points_dtoc"]["train_run_id"])
    assert training.data.tags["mlflow.parentRunId"] == launching_step.data.tags["mlflow.parentRunId"]
    assert launching_step.data.tags["mlflow.parentRunId"] != result["parent_run_id"]
    # Every experiment the workflow wrote to opens on the runs table, not the GenAI view.
    kinds = {e.name: e.tags.get("mlflow.experimentKind") for e in client.search_experiments()}
    assert kinds["workflow-test"] == "custom_model_development"


def test_console_prints_one_line_per_step_in_a_log_and_redraws_on_a_terminal(store):
    import io

    from pipelines.workflow_steps.console import StepConsole

    client, experiment = store
    log = io.StringIO()
    for _ in range(2):  # the second pass skips both steps
        parent = client.create_run(experiment).info.run_id
        runner = StepRunner(client, experiment, parent, use_ray=False, console=StepConsole(2, log))
        made = runner.run("produce", produce, {"n": 3}, describe=lambda out: f"{len(out['items'])} items")
        runner.run("consume", consume, {"items": made["items"]})
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in log.getvalue()
    assert lines[0].startswith("[1/2] produce") and "done in" in lines[0] and lines[0].endswith("3 items")
    assert lines[1].startswith("[2/2] consume") and "done in" in lines[1]
    assert lines[2].startswith("[1/2] produce") and "unchanged · reused MLflow run" in lines[2]
    assert lines[2].endswith("· 3 items")

    console = StepConsole(1, log)
    console.running("evaluate")
    console.failed("evaluate", "OutOfMemoryError: 6 workers were killed\nMemory usage ...\n" * 3)
    assert log.getvalue().splitlines()[-1].endswith("· OutOfMemoryError: 6 workers were killed")

    screen = io.StringIO()
    console = StepConsole(1, screen, live=True)
    console.running("train")
    console._drawn = 0.0  # let the next update redraw at once
    console.update({"done": 5, "total": 10, "unit": "steps", "note": "loss 0.500"})
    console.done("train", "loss 0.400")
    frames = screen.getvalue().split("\r\033[K")
    assert "█" * 12 + "░" * 12 in frames[-2] and "5/10 steps  loss 0.500" in frames[-2]
    assert frames[-1].startswith("[1/1] train") and frames[-1].endswith("loss 0.400\n")
