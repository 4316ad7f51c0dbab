"""Fault injection into the real commands: Ctrl-C (SIGINT) to training, evaluation and the
workflow, SIGKILL of the Ray node (raylet) under a training driver, and a resume after an
interrupt. Each runs the command as a user does (`python -m pipelines.<command>`, which starts
its own local Ray on loopback) against one local MLflow store, and checks the exit code, the one
line the command ends with and the MLflow run's status; each adds a row to the fault table
(tests/fault_report.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_report import last_line
from mlflow.tracking import MlflowClient

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from pipelines.build_shards import write_samples

pytestmark = [pytest.mark.integration, pytest.mark.fault]

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
SHARD_SIZE_MB = 0.05
EXPERIMENT = "read-tiny"
EVERY = 3  # checkpoint interval of every run here
INTERRUPT_AFTER = 2 * EVERY  # the signal lands once Ray Train has registered this checkpoint
MAX_STEPS = 30  # far enough past it that the run is still going when the signal lands
START_TIMEOUT_S = 420.0
FINISH_TIMEOUT_S = 600.0
STACK_DUMP_WAIT_S = 3.0
STACK_DUMP_CHARS = 12000
TRAIN_ARGS = ["train.log_every=1", "train.validate_every=1000", "train.warmup_steps=1",
              "data.val=[reason_seg/val]", "data.train=[reason_seg/train, refcoco/train]",
              "train.batch_size=2", f"train.checkpoint_every={EVERY}"]


class Command:
    """A `python -m pipelines.<name>` process with its output in a file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        for variable in ("RAY_ADDRESS", "READ_UNSUPERVISED", "READ_OUTCOME_FILE"):
            env.pop(variable, None)
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", f"pipelines.{name}", *args],
                                            stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=log.parent)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"ended before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
            time.sleep(0.3)

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The job runs in a child of this watcher; SIGUSR2 makes it print every thread's
            # stack into the log (pipelines/interrupts.py), so a hang says where it is.
            for child in _children(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGUSR2)
            time.sleep(STACK_DUMP_WAIT_S)
            self.process.kill()
            pytest.fail(f"still running {timeout:.0f} s after the signal:\n"
                        f"{self.output()[-STACK_DUMP_CHARS:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _write_shards(root: Path, base: Path) -> None:
    readers = {("reason_seg", "train"): iter_reason_seg(root, "train"),
               ("reason_seg", "val"): iter_reason_seg(root, "val"),
               ("refcoco", "train"): iter_refer(root, "refcoco", "train")}
    for (dataset, split), reader in readers.items():
        samples = [s for s in reader if isinstance(s, Sample)]
        write_samples(samples, str(base / dataset / split), dataset=dataset, split=split,
                      shard_size_mb=SHARD_SIZE_MB)


@pytest.fixture(scope="module")
def place(synthetic_root, tmp_path_factory):
    """Shards and one MLflow store shared by every scenario of this module."""
    folder = tmp_path_factory.mktemp("faults")
    _write_shards(synthetic_root, folder / "shards")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking).search_experiments()  # create the store before the jobs race to
    return folder, tracking


def _train_args(folder: Path, tracking: str, name: str, max_steps: int) -> list[str]:
    return ["--config", TINY, *TRAIN_ARGS, f"data.shards={folder / 'shards'}",
            f"train.storage_path={folder / 'ray'}", f"mlflow.tracking_uri={tracking}",
            f"train.max_steps={max_steps}", f"train.run_name={name}"]


def _checkpoints(folder: Path, name: str) -> list[int]:
    return sorted(int(p.name.removeprefix("checkpoint-step"))
                  for p in (folder / "ray" / name).glob("checkpoint-step*"))


def _has_checkpoint(folder: Path, name: str, step: int):
    return lambda: step in _checkpoints(folder, name)


def _registered(folder: Path, name: str) -> list[int]:
    """Checkpoint steps Ray Train's controller has registered (its snapshot file): what a run
    resumes from. A checkpoint on disk is registered at the controller's next poll (every 2 s),
    so a Ctrl-C right after it is written resumes from the one before (docs/failure-modes.md)."""
    try:
        text = (folder / "ray" / name / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return []
    return sorted({int(step) for step in re.findall(r"checkpoint-step(\d+)", text)})


def _has_registered(folder: Path, name: str, step: int):
    return lambda: step in _registered(folder, name)


def _runs(tracking: str, filter_string: str = "") -> list:
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


def _train_run(tracking: str, name: str):
    [run] = _runs(tracking, f"attributes.run_name = '{name}'")
    return run


def _steps(tracking: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def interrupted_then_resumed(place):
    """Ctrl-C to a training driver after its second checkpoint, then the same command again."""
    folder, tracking = place
    name = "sigint-resume"
    args = _train_args(folder, tracking, name, MAX_STEPS)
    first = Command("train", args, folder / "train-sigint.log")
    try:
        first.wait_for(_has_registered(folder, name, INTERRUPT_AFTER),
                       "a registered second checkpoint")
        registered = _registered(folder, name)
        first.process.send_signal(signal.SIGINT)
        first_code = first.finish()
    finally:
        first.stop()
    run = _train_run(tracking, name)
    evidence = {"first_code": first_code, "first_output": first.output(),
                "first_status": run.info.status, "run_id": run.info.run_id,
                "checkpoints_at_stop": _checkpoints(folder, name),
                "registered_before_signal": registered,
                "logged_at_stop": _steps(tracking, run.info.run_id, "progress/resumed_from")}
    second = Command("train", args, folder / "train-resume.log")
    try:
        evidence["second_code"] = second.finish()
    finally:
        second.stop()
    evidence["second_output"] = second.output()
    evidence["second_status"] = _train_run(tracking, name).info.status
    history = MlflowClient(tracking).get_metric_history(run.info.run_id, "progress/resumed_from")
    evidence["origins"] = sorted({int(m.value) for m in history})
    return evidence


def test_sigint_to_training_exits_130_and_marks_the_run_killed(interrupted_then_resumed,
                                                                fault_table):
    run = interrupted_then_resumed
    message = last_line(run["first_output"], "read-train:")
    committed = run["origins"][-1]  # the checkpoint Ray Train had registered when it stopped
    fault_table("SIGINT to the training driver", run["first_code"], message,
                run["first_status"],
                f"the {max(run['logged_at_stop']) - committed} step(s) after the last registered "
                f"checkpoint (step {committed}), recomputed on resume")
    assert run["first_code"] == 130, run["first_output"][-3000:]
    assert "read-train: interrupted (SIGINT)" in message
    assert "run the same command again: it resumes from the last checkpoint" in message
    assert run["first_status"] == "KILLED"
    assert INTERRUPT_AFTER in run["checkpoints_at_stop"]


def test_resume_after_sigint_finishes_with_one_value_per_step(interrupted_then_resumed, place,
                                                              fault_table):
    _, tracking = place
    run = interrupted_then_resumed
    client = MlflowClient(tracking)
    origins = run["origins"]
    fault_table("resume after SIGINT (same command)", run["second_code"],
                "registered; exactly one value per step", run["second_status"],
                f"nothing: resumed from step {origins[-1]}, history complete")
    assert run["second_code"] == 0, run["second_output"][-3000:]
    assert run["second_status"] == "FINISHED"
    assert origins[0] == 0 and origins[-1] in run["checkpoints_at_stop"]
    assert origins[-1] >= max(run["registered_before_signal"])  # no registered step recomputed
    for key in ("progress/resumed_from", "train/total", "train/lr"):
        steps = _steps(tracking, run["run_id"], key)
        assert steps == list(range(1, MAX_STEPS + 1)), (key, steps)  # one value per step
    tags = client.get_run(run["run_id"]).data.tags
    assert tags.get("read.resumed") == "true"


def test_sigkill_of_the_raylet_under_training_exits_1_and_marks_the_run_failed(place,
                                                                              fault_table):
    folder, tracking = place
    name = "raylet-kill"
    command = Command("train", _train_args(folder, tracking, name, 400),
                      folder / "train-raylet.log")
    try:
        command.wait_for(_has_checkpoint(folder, name, EVERY), "a checkpoint")
        raylets = _descendants(command.process.pid, "raylet")
        assert len(raylets) == 1, raylets
        os.kill(raylets[0], signal.SIGKILL)
        code = command.finish()
    finally:
        command.stop()
    run = _train_run(tracking, name)
    message = last_line(command.output(), "read-train:")
    checkpoints = _checkpoints(folder, name)
    logged = _steps(tracking, run.info.run_id, "progress/resumed_from")
    fault_table("SIGKILL of the raylet under the training driver", code, message,
                run.info.status, f"{max(logged) - max(checkpoints)} step(s) after the last "
                f"checkpoint (step {max(checkpoints)}); resumable")
    assert code == 1, command.output()[-3000:]
    assert "read-train: failed" in message and "run the same command again" in message
    assert run.info.status == "FAILED"


def test_sigint_to_evaluation_exits_130_and_marks_the_run_killed(interrupted_then_resumed,
                                                                 place, fault_table, tmp_path):
    folder, tracking = place
    assert interrupted_then_resumed["second_code"] == 0
    command = Command("evaluate", ["--model", "models:/read-tiny@candidate", "--config", TINY,
                                   "--data", "reason_seg/val", f"data.shards={folder / 'shards'}",
                                   f"mlflow.tracking_uri={tracking}",
                                   f"eval.output={tmp_path / 'eval'}"],
                      folder / "evaluate-sigint.log")
    evaluating = "tags.`read.kind` = 'evaluate' and attributes.status = 'RUNNING'"
    try:
        command.wait_for(lambda: bool(_runs(tracking, evaluating)), "evaluation run")
        time.sleep(3)  # inside Ray's start-up or the scoring loop
        command.process.send_signal(signal.SIGINT)
        code = command.finish()
    finally:
        command.stop()
    [run] = _runs(tracking, "tags.`read.kind` = 'evaluate'")
    message = last_line(command.output(), "read-evaluate:")
    fault_table("SIGINT to evaluation", code, message, run.info.status,
                "the partial evaluation (no metrics logged); rerun from the start")
    assert code == 130, command.output()[-3000:]
    assert "read-evaluate: interrupted (SIGINT)" in message
    assert run.info.status == "KILLED"
    assert "giou" not in run.data.metrics  # nothing partial reported as a result


def test_sigint_to_the_workflow_exits_130_and_kills_its_runs(place, synthetic_root,
                                                              fault_table, tmp_path):
    folder, tracking = place
    storage_path = tmp_path / "ray"
    training_step = "tags.`read.step` LIKE 'train[%' and attributes.status = 'RUNNING'"
    command = Command("workflow", [
        "--config", TINY, f"workflow.dataset_root={synthetic_root}",
        f"workflow.workdir={tmp_path / 'work'}", f"data.shards={tmp_path / 'shards'}",
        f"train.storage_path={storage_path}", f"eval.output={tmp_path / 'eval'}",
        f"mlflow.tracking_uri={tracking}", "train.max_steps=400", f"train.checkpoint_every={EVERY}",
        "train.validate_every=1000", "data.val=[reason_seg/val]",
        "data.train=[reason_seg/train]"], folder / "workflow-sigint.log")
    try:
        command.wait_for(lambda: bool(_runs(tracking, training_step)), "the training step")
        time.sleep(5)  # inside the step's Ray task (starting Ray Train)
        command.process.send_signal(signal.SIGINT)
        code = command.finish()
    finally:
        command.stop()
    [parent] = _runs(tracking, "tags.`read.kind` = 'workflow'")
    family = _runs(tracking, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    statuses = {r.info.run_name: r.info.status for r in family}
    message = last_line(command.output(), "read-workflow:")
    fault_table("SIGINT to the workflow (in its training step)", code, message,
                f"{parent.info.status} (steps: {', '.join(f'{k} {v}' for k, v in statuses.items())})",
                "the running step; finished steps (build_shards) are reused on the next run")
    assert code == 130, command.output()[-3000:]
    assert "read-workflow: interrupted (SIGINT)" in message
    assert "finished steps are skipped" in message
    assert parent.info.status == "KILLED"
    assert statuses.get("build_shards") == "FINISHED"
    assert "KILLED" in statuses.values() and "RUNNING" not in statuses.values(), statuses


def _process_tree() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (for a command: the job process its watcher started)."""
    return _process_tree().get(pid, [])


def _descendants(pid: int, name: str) -> list[int]:
    """PIDs of the processes called `name` below `pid` (this test's own children only)."""
    children = _process_tree()
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            queue.append(child)
            try:
                if (Path("/proc") / str(child) / "comm").read_text().strip() == name:
                    found.append(child)
            except OSError:
                continue
    return found
