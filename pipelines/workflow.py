"""The main job: data -> shards -> train -> evaluate -> promote, each step skipped when unchanged.

    read-workflow                                         # tiny preset, synthetic data, CPU
    read-workflow --config configs/tiny.yaml train.max_steps=50
    read-workflow --ablation                              # the paper's prompt-mode ablation
    RAY_ADDRESS=... MLFLOW_TRACKING_URI=http://... read-workflow \
        --config configs/read-7b.yaml data.shards=s3://bucket/shards

With no `workflow.dataset_root` it generates synthetic scenes in the upstream formats. Every step
is a Ray task recorded as a child run of one MLflow parent run; a step whose inputs did not change
since a finished run is skipped and its recorded outputs reused, so re-running a failed workflow
resumes where it stopped. The new model version becomes `champion` only when it beats the current
champion on `mlflow.champion_metric` (ties and failed evaluations leave the alias where it is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines import outcome, storage
from pipelines.config import JobConfig, check_job_paths, load_job_config
from pipelines.evaluation.scoring import GroupMetrics, summary_markdown
from pipelines.tracking import LOSS_METRIC
from pipelines.workflow_steps import steps
from pipelines.workflow_steps.console import StepConsole, first_line
from pipelines.workflow_steps.runner import TAG_ERROR, TAG_TRACEBACK, StepFailed, StepRunner
from read_model.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"  # the embedded default the README runs


def _banner(text: str) -> None:
    print(f"\n{'=' * 8} {text} {'=' * max(4, 70 - len(text))}", flush=True)


def _config_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _location(path: str) -> str:
    return steps.absolute(path) if not storage.is_s3(path) else path


def run_workflow(config_path: str | Path | None, overrides: list[str], *, ablation: bool = False,
                 use_ray: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) the workflow; returns the step outputs and the final tables.

    The console shows one line (a live bar on a terminal) per step; `verbose` streams every Ray
    worker's output instead (otherwise it stays in the Ray session's log files).
    """
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import ensure_experiment, resolve_tracking_uri

    config_path = Path(config_path or DEFAULT_CONFIG).resolve()
    config = load_job_config(config_path, overrides)  # fails fast on any bad key
    check_job_paths(config, ("data", "train", "eval", "workflow", "model"))
    tracking_uri = resolve_tracking_uri(config.mlflow)
    shards = _location(config.data.shards)
    workdir = _location(config.workflow.workdir)
    eval_names = list(config.workflow.eval_data or config.data.val)
    # Every path a step sees is absolute; the tracking URI is explicit in every step.
    pinned = [*overrides, f"mlflow.tracking_uri={tracking_uri}", f"data.shards={shards}",
              f"train.storage_path={_location(config.train.storage_path)}",
              f"eval.output={_location(config.eval.output)}"]
    context = {"config_sha256": _config_hash(config_path)}
    check_start(config, tracking_uri)

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment_id = ensure_experiment(client, config.mlflow.experiment, tracking_uri)
    parent = client.create_run(experiment_id, run_name="workflow-ablation" if ablation else "workflow",
                               tags={"read.kind": "workflow"}).info.run_id
    outcome.note_run(tracking_uri, parent)
    client.log_param(parent, "config", str(config_path))
    client.log_param(parent, "overrides", " ".join(overrides)[:6000] or "-")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars
    print(f"READ workflow · MLflow run {parent} · {tracking_uri}", flush=True)
    try:
        board = None
        if use_ray:
            from pipelines.progress import start_board
            from pipelines.ray_runtime import ensure_ray, session_log_dir

            ensure_ray(log_to_driver=verbose, quiet=not verbose)
            board = start_board()
            if not verbose:
                print(f"worker logs: {session_log_dir()} (or run with --verbose)", flush=True)
        console = StepConsole(_count_steps(config, ablation))
        runner = StepRunner(client, experiment_id, parent, use_ray=use_ray, console=console,
                            board=board)
        result = _steps(runner, config, config_path, pinned, context, shards, workdir, eval_names,
                        tracking_uri, parent, ablation)
    except BaseException as error:
        status = outcome.terminal_status(error)
        _close_children(client, experiment_id, parent, status)
        client.set_terminated(parent, status)
        raise
    client.set_terminated(parent, RunStatus.to_string(RunStatus.FINISHED))
    result.update(parent_run_id=parent, tracking_uri=tracking_uri,
                  skipped=[r.name for r in runner.results if r.skipped],
                  ran=[r.name for r in runner.results if not r.skipped])
    _report(client, result, tracking_uri)
    return result


def check_start(config: JobConfig, tracking_uri: str) -> None:
    """What would fail later, checked before Ray starts: the dataset root (when given) is a
    readable folder, every output location is writable, the tracking store answers."""
    from pipelines.training.preflight import PreflightError, check_tracking

    root = config.workflow.dataset_root
    if root and not storage.is_s3(root) and not Path(root).is_dir():
        raise PreflightError(f"workflow.dataset_root={root}: no such folder")
    for name, url in (("workflow.workdir", config.workflow.workdir),
                      ("data.shards", config.data.shards),
                      ("train.storage_path", config.train.storage_path),
                      ("eval.output", config.eval.output)):
        try:
            storage.check_reachable(url)
        except storage.StorageError as error:
            raise PreflightError(f"{name}: {error}") from error
    check_tracking(tracking_uri)


def _close_children(client: Any, experiment_id: str, parent: str, status: str) -> None:
    """Runs nested under the workflow run (steps, and the training/evaluation runs the steps
    opened) that are still RUNNING end with the workflow's status, e.g. KILLED on Ctrl-C."""
    from pipelines.workflow_steps.runner import PARENT_TAG

    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 max_results=500)
    family, changed = {parent}, True
    while changed:  # nesting is shallow: steps, then the runs they opened
        changed = False
        for run in running:
            run_id = run.info.run_id
            if run_id not in family and run.data.tags.get(PARENT_TAG) in family:
                family.add(run_id)
                client.set_terminated(run_id, status)
                changed = True


def _count_steps(config: JobConfig, ablation: bool) -> int:
    modes = len(config.workflow.ablation_modes) if ablation else 1
    return (0 if config.workflow.dataset_root else 1) + 1 + 2 * modes + (0 if ablation else 1)


def _steps(runner: StepRunner, config: JobConfig, config_path: Path, pinned: list[str],
           context: dict[str, Any], shards: str, workdir: str, eval_names: list[str],
           tracking_uri: str, parent: str, ablation: bool) -> dict[str, Any]:
    settings = config.workflow
    if settings.dataset_root:
        dataset_root, source_stamp, user_data = steps.absolute(settings.dataset_root), "", True
    else:
        generated = runner.run(
            "generate", steps.generate_synthetic,
            {"out": storage.join(workdir, "synthetic"), "seed": settings.synthetic_seed,
             "images": settings.synthetic_images},
            still_valid=lambda out: Path(out["dataset_root"]).is_dir(),
            describe=lambda out: f"{settings.synthetic_images} synthetic images",
        )
        dataset_root, user_data = generated["dataset_root"], False
        source_stamp = steps.stamp(generated["summary"])
    # Everything a later step reads: training, its validation, and the evaluation sets.
    folders = sorted(set(config.data.train) | set(config.data.val) | set(eval_names))
    built = runner.run(
        "build_shards", steps.build,
        {"dataset_root": dataset_root, "shards": shards, "folders": folders,
         "source_stamp": source_stamp,
         "min_shards": 2 * config.scaling.num_workers * max(1, config.data.loader_workers)},
        still_valid=steps.shards_unchanged,
        always=user_data,  # user folders may change in place; build_shards skips what is current
        progress=(len(folders), "shard folders"),
        describe=lambda out: f"{len(out['content_hashes'])} shard folders",
    )
    data_hashes = built["content_hashes"]

    modes = list(settings.ablation_modes) if ablation else [config.model.prompt_mode]
    trained: dict[str, dict[str, Any]] = {}
    evaluated: dict[str, dict[str, Any]] = {}
    for mode in modes:
        train_overrides = [*pinned, f"model.prompt_mode={mode}"]
        run_name = f"wf-{mode}-{steps.stamp(train_overrides, data_hashes, context)}"
        trained[mode] = runner.run(
            f"train[{mode}]", steps.train,
            {"config_path": str(config_path),
             "overrides": [*train_overrides, f"train.run_name={run_name}"]},
            context={**context, "data": data_hashes},
            runtime={"parent_run_id": parent},
            progress=(config.train.max_steps, "steps"),
            describe=_training_note,
        )
        model_uri = f"models:/{trained[mode]['model_name']}/{trained[mode]['version']}"
        evaluated[mode] = runner.run(
            f"evaluate[{mode}]", steps.evaluate_version,
            {"config_path": str(config_path), "overrides": train_overrides,
             "model_uri": model_uri, "data": eval_names, "tracking_uri": tracking_uri},
            context={**context, "data": data_hashes},
            runtime={"parent_run_id": parent},
            describe=_evaluation_note,
        )
    result: dict[str, Any] = {"trained": trained, "evaluated": evaluated, "modes": modes}
    if not ablation:
        mode = modes[0]
        result["promotion"] = runner.run(
            "promote", steps.promote,
            {"tracking_uri": tracking_uri, "model_name": trained[mode]["model_name"],
             "version": trained[mode]["version"], "metric": config.mlflow.champion_metric},
            always=True,
            describe=lambda out: out["reason"],
        )
    return result


def _training_note(outputs: dict[str, Any]) -> str:
    loss = outputs.get("metrics", {}).get(LOSS_METRIC)
    loss_text = "" if loss is None else f"loss {loss:.3f} · "
    return f"{loss_text}registered {outputs['model_name']} v{outputs['version']}"


def _evaluation_note(outputs: dict[str, Any]) -> str:
    metrics = outputs["metrics"]
    return (f"{int(metrics.get('num_queries', 0))} queries · gIoU {_fmt(metrics.get('giou'))} · "
            f"cIoU {_fmt(metrics.get('ciou'))}")


# ---------------------------------------------------------------------------- the final report
def _fmt(value: Any) -> str:
    return "n.a." if value is None else f"{100 * float(value):.2f}"


def baseline_table(evaluation: dict[str, Any]) -> str:
    """The model's pooled figures next to the two constant predictors, on the same queries.

    gIoU/cIoU over the queries whose object is present (their count in the second column); See
    (presence accuracy) over every query of the groups with false premises; Say over the false
    premises that carry a `gt_sent` (docs/evaluation.md). The empty mask never says "present",
    the whole image always does.
    """
    from pipelines.baselines import PRESENCE

    rows = [("trained model", evaluation["metrics"])]
    rows += [(f"baseline: {PRESENCE.get(kind, kind)} ({kind.replace('_', ' ')})", m)
             for kind, m in evaluation["baselines"].items()]
    lines = ["| predictor | queries | gIoU | cIoU | See | Say | Say queries |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        count = m.get("say_count")
        lines.append(f"| {name} | {_count(m.get('true_premise_count'))} | {_fmt(m.get('giou'))} | "
                     f"{_fmt(m.get('ciou'))} | {_fmt(m.get('see'))} | {_fmt(m.get('say'))} | "
                     f"{'n.a.' if count is None else int(count)} |")
    return "\n".join(lines)


def ablation_table(client: Any, evaluated: dict[str, dict[str, Any]]) -> str:
    """The paper's prompt ablation, read back from the evaluation runs in MLflow."""
    labels = {"seg_only": "[SEG] prompt only", "points_discrete": "+ P prompt (discrete points)",
              "points_dtoc": "+ P DtoC (continuous)"}
    lines = ["| configuration | prompt_mode | queries | gIoU | cIoU |", "|---|---|---|---|---|"]
    for mode, outputs in evaluated.items():
        metrics = client.get_run(outputs["evaluation_run_id"]).data.metrics
        lines.append(f"| {labels.get(mode, mode)} | {mode} | "
                     f"{_count(metrics.get('true_premise_count'))} | {_fmt(metrics.get('giou'))} | "
                     f"{_fmt(metrics.get('ciou'))} |")
    return "\n".join(lines)


def _count(value: Any) -> str:
    return "n.a." if value is None else str(int(value))


def metrics_table(client: Any, run_id: str) -> str:
    """The headline metrics table, rebuilt from the evaluation run's metrics.json in MLflow."""
    with tempfile.TemporaryDirectory() as tmp:
        groups = json.loads(Path(client.download_artifacts(run_id, "metrics.json", tmp)).read_text())
    return summary_markdown([GroupMetrics(**group) for group in groups])


def overlay_locations(client: Any, run_id: str) -> list[str]:
    """Where the overlays logged to the evaluation run can be opened (local paths when local)."""
    from urllib.parse import unquote, urlparse

    root = client.get_run(run_id).info.artifact_uri.rstrip("/")
    names = [item.path for item in client.list_artifacts(run_id, "overlays")]
    if root.startswith("file:"):
        return [str(Path(unquote(urlparse(root).path)) / name) for name in names]
    return [f"{root}/{name}" for name in names]


def ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"Open the MLflow UI at {tracking_uri}"
    return f"Open the MLflow UI with: mlflow ui --backend-store-uri {tracking_uri}"


def _report(client: Any, result: dict[str, Any], tracking_uri: str) -> None:
    evaluated = result["evaluated"]
    mode = result["modes"][-1]
    last, trained = evaluated[mode], result["trained"][mode]
    _banner(f"{trained['model_name']} v{trained['version']} on the evaluation data (scores in %)")
    result["metrics_table"] = metrics_table(client, last["evaluation_run_id"])
    print(result["metrics_table"])
    _banner("trained model against constant predictors (same queries; scores in %)")
    result["baseline_table"] = baseline_table(last)
    print(result["baseline_table"])
    if len(evaluated) > 1:
        _banner("prompt ablation (read back from MLflow)")
        result["ablation_table"] = ablation_table(client, evaluated)
        print(result["ablation_table"])
    print()
    if "promotion" in result:
        print(f"champion: {result['promotion']['reason']}")
    result["overlays"] = overlay_locations(client, last["evaluation_run_id"])
    print(f"overlays logged to MLflow run {last['evaluation_run_id']} (artifacts/overlays):")
    for location in result["overlays"]:
        print(f"  {location}")
    print(f"steps run: {', '.join(result['ran']) or '-'}; skipped (unchanged): "
          f"{', '.join(result['skipped']) or '-'}")
    print(ui_hint(tracking_uri), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"YAML preset (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("--ablation", action="store_true",
                        help="train and evaluate every workflow.ablation_modes prompt mode")
    parser.add_argument("--verbose", action="store_true",
                        help="stream every Ray worker's output instead of one line per step")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50")
    return parser.parse_args(argv)


RESUME_HINT = "run the same command again: finished steps are skipped"


def cli(argv: list[str] | None = None) -> int:
    """0 every step finished, 1 a step failed, 2 could not start, 130 interrupted; from the
    command line the workflow runs in a watched child process (pipelines/outcome.py)."""
    args = parse_args(argv)

    def body() -> int:
        try:
            run_workflow(args.config, args.overrides, ablation=args.ablation,
                         verbose=args.verbose)
        except StepFailed as error:
            print(f"\nworkflow stopped: {first_line(str(error))}\nthe whole error and traceback "
                  f"are the tags {TAG_ERROR} and {TAG_TRACEBACK} of that MLflow run; fix the "
                  "cause and run the same command again: finished steps are skipped.",
                  file=sys.stderr)
            return outcome.EXIT_FAILED
        return outcome.EXIT_OK

    def direct() -> int:
        from pipelines.training.preflight import PreflightError

        return outcome.run_command("read-workflow", body, resume=RESUME_HINT,
                                   usage_errors=(ConfigError, PreflightError))

    if argv is not None:
        return direct()
    return outcome.supervise("read-workflow", "pipelines.workflow", sys.argv[1:],
                             resume=RESUME_HINT, direct=direct)


if __name__ == "__main__":
    sys.exit(cli())
