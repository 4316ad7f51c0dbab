"""The infra workflows are coherent: every dataset a job consumes is one the same workflow builds,
the steps hand each other the same locations, AWS and KubeRay run the same commands, and every
RayJob's cluster can hold the job it runs.

The commands are the ones the shell really runs (tests/infra_commands.py: submit-jobs.sh is
executed with a stand-in `ray`; RayJob entrypoints are expanded with ConfigMap read-env), with
the presets they name loaded through the project's own config loader.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import infra_commands
import pytest
from infra_commands import Step

from pipelines.build_shards import DEFAULT_SPLITS
from pipelines.config import JobConfig, load_job_config

REPO = infra_commands.REPO
CLUSTER_PRESETS = ("configs/read-7b.yaml", "configs/read-13b.yaml")


def _config(step: Step) -> JobConfig:
    preset = step.option("--config")[0]
    path = Path(preset) if Path(preset).is_absolute() else REPO / preset
    overrides = [f"{k}={v}" for k, v in step.overrides().items()]
    return load_job_config(path, overrides)


def _relative(url: str, root: str) -> str | None:
    root = root.rstrip("/") + "/"
    return url[len(root):].strip("/") if url.startswith(root) else None


def coherence_problems(steps: list[Step]) -> list[str]:
    """Everything in one workflow that a later step needs and an earlier one does not provide."""
    problems: list[str] = []
    by_name = {step.name: step for step in steps}
    expected = ["fetch_weights", "build_shards", "train", "evaluate", "promote"]
    if [step.name for step in steps] != expected:
        return [f"steps {[s.name for s in steps]} are not {expected}"]
    build = by_name["build_shards"]
    shards_root = build.option("--out")[0]
    splits = build.option("--splits")
    built = {f"{dataset}/{split}" for dataset in build.option("--datasets")
             for split in (splits or DEFAULT_SPLITS.get(dataset, ("train", "val")))}
    train, evaluate = _config(by_name["train"]), _config(by_name["evaluate"])
    label = by_name["train"].label
    if train.data.shards != shards_root:
        problems.append(f"{label}: reads shards from {train.data.shards}, the build writes "
                        f"{shards_root}")
    for name in [*train.data.train, *train.data.val]:
        if name not in built:
            problems.append(f"{label}: trains/validates on {name}, which no build step produces "
                            f"(built: {sorted(built)})")
    label = by_name["evaluate"].label
    if evaluate.data.shards != shards_root:
        problems.append(f"{label}: evaluates shards from {evaluate.data.shards}, the build "
                        f"writes {shards_root}")
    for name in by_name["evaluate"].option("--data") or evaluate.data.val:
        if name not in built:
            problems.append(f"{label}: evaluates {name}, which the build step ({shards_root}) "
                            "does not produce")
    stores = {s.name: _config(s).weights.store for s in steps if s.name != "build_shards"
              and s.name != "promote"}
    if len(set(stores.values())) != 1:
        problems.append(f"the weights store differs between steps: {stores}")
    presets = {s.name: s.option("--config")[0] for s in steps if s.option("--config")}
    if len(set(presets.values())) != 1:
        problems.append(f"the steps use different presets: {presets}")
    for later in ("evaluate", "promote"):
        if _config(by_name[later]).mlflow.registered_model != train.mlflow.registered_model:
            problems.append(f"{later} looks at another registered model than train registers")
    if evaluate.eval.use_gpu != train.scaling.use_gpu:
        problems.append("training runs on GPUs but evaluation does not (eval.use_gpu)")
    return problems


def _aws(tmp_path: Path, **env: str) -> list[Step]:
    return infra_commands.aws_steps({"READ_BUCKET": infra_commands.AWS_PLACEHOLDER_BUCKET, **env},
                                    tmp_path)


@pytest.mark.parametrize("preset", CLUSTER_PRESETS)
def test_every_dataset_a_job_consumes_is_built_by_the_same_workflow(preset, tmp_path):
    aws = _aws(tmp_path, READ_PRESET=preset)
    kuberay = infra_commands.kuberay_steps({**infra_commands.kuberay_env(), "READ_PRESET": preset})
    assert coherence_problems(aws) == []
    assert coherence_problems(kuberay) == []


def test_aws_and_kuberay_run_the_same_commands(tmp_path):
    aws = _aws(tmp_path)
    kuberay = infra_commands.kuberay_steps()
    assert [s.argv for s in aws] == [s.argv for s in kuberay]


def test_the_check_names_what_no_build_produces(tmp_path):
    """The bug this guards against: read-7b trained on fprefcoco/train, which nothing built."""
    steps = _aws(tmp_path)
    build = next(s for s in steps if s.name == "build_shards")
    old_build = dataclasses.replace(build, argv=tuple(a for a in build.argv if a != "fprefcoco"))
    broken = [old_build if s is build else s for s in steps]
    problems = coherence_problems(broken)
    assert len(problems) == 1 and "trains/validates on fprefcoco/train" in problems[0]

    evaluate = next(s for s in steps if s.name == "evaluate")
    elsewhere = tuple(a.replace("/shards", "/other-shards") if a.startswith("data.shards=")
                      else a for a in evaluate.argv)
    problems = coherence_problems([dataclasses.replace(evaluate, argv=elsewhere)
                                   if s is evaluate else s for s in steps])
    assert any("evaluates shards from s3://read-data-example/other-shards" in p
               for p in problems)


def test_each_rayjob_cluster_holds_the_job_it_runs():
    """Sizing: the train RayJob's node holds the preset's workers, the evaluate RayJob's nodes its
    actors (one GPU each), as Ray's KubeRay autoscaler reads those clusters."""
    from pipelines.cluster_capacity import (
        capacity_at_start,
        evaluation_request,
        judge,
        raycluster_autoscaling_config,
        training_request,
    )

    preset = load_job_config(REPO / "configs/read-7b.yaml")
    for file, request in (("02-train.yaml", training_request(preset)),
                          ("03-evaluate.yaml", evaluation_request(preset))):
        job = infra_commands.rayjob(infra_commands.WORKFLOW / file)
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": job["metadata"]["name"], "namespace": "read"},
                   "spec": job["spec"]["rayClusterSpec"]}
        capacity = capacity_at_start(raycluster_autoscaling_config(cluster))
        verdict = judge(request, capacity)
        assert verdict.outcome == "fits", f"{file}: {verdict.message}"
    actors = evaluation_request(preset)
    assert all(bundle["GPU"] == 1 for bundle in actors.bundles)
