"""Run workflow steps as Ray tasks, record each as an MLflow child run, skip unchanged ones.

A step is a plain function of JSON-serialisable keyword inputs returning a JSON-serialisable dict.
Its fingerprint is a hash of its name, the project code it can run (`pipelines.code_hash`) and its
inputs (which include the outputs of the steps it depends on), so editing a module reruns exactly
the steps that import it. A FINISHED child run in the experiment with the same
fingerprint means the step already ran: its recorded outputs are reused and the step is skipped.
MLflow is therefore the state store, so a workflow that failed half-way resumes where it stopped
on a laptop (local store) and on a cluster (a shared tracking server) alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from pipelines.code_hash import function_code_hash
from pipelines.outcome import JobInterrupted
from pipelines.workflow_steps.console import StepConsole, progress_text

FAIL_STEP_ENV = "READ_WORKFLOW_FAIL_STEP"  # test hook: name of a step to fail on purpose
TAG_STEP = "read.step"
TAG_FINGERPRINT = "read.fingerprint"
TAG_CODE = "read.code_hash"  # the step's code part of the fingerprint (pipelines.code_hash)
TAG_OUTPUTS = "read.outputs"
TAG_SKIPPED_FROM = "read.skipped_from"
TAG_ERROR = "read.error"
TAG_TRACEBACK = "read.traceback"
TAG_WORKFLOW = "read.workflow"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_CHARS = 6000  # MLflow's parameter value limit
MAX_TAG_CHARS = 8000
POLL_S = 0.5  # how often the driver redraws a running step's progress


class StepFailed(RuntimeError):
    """A workflow step raised; the message names the step and its MLflow run."""


class InjectedFailure(RuntimeError):
    """Raised inside a step when FAIL_STEP_ENV names it (resume tests, drills)."""


def fingerprint(name: str, inputs: dict[str, Any], code: str) -> str:
    """Stable hash of a step's identity, code hash and inputs."""
    blob = json.dumps({"step": name, "code": code, "inputs": inputs},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StepResult:
    name: str
    outputs: dict[str, Any]
    skipped: bool
    run_id: str


def _call_step(fn: Callable[..., dict[str, Any]], name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get(FAIL_STEP_ENV) == name:
        raise InjectedFailure(f"step {name!r} failed on purpose ({FAIL_STEP_ENV}={name})")
    return fn(**inputs)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value, default=str)[:MAX_PARAM_CHARS]


class StepRunner:
    """Executes steps under one parent MLflow run, each as a child run."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        *,
        use_ray: bool = True,
        console: StepConsole | None = None,
        board: Any = None,
    ) -> None:
        """`console` prints the step lines (nothing when None); `board` is the workflow's
        `pipelines.progress` actor, whose reports feed the live bar and the final lines."""
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.use_ray = use_ray
        self.console = console
        self.board = board
        self.results: list[StepResult] = []

    def find_finished(self, name: str, fp: str) -> tuple[str, dict[str, Any]] | None:
        """The newest FINISHED run of step `name` with fingerprint `fp`, and its outputs."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TAG_STEP}` = '{name}' and tags.`{TAG_FINGERPRINT}` = '{fp}' "
                           "and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs or TAG_OUTPUTS not in runs[0].data.tags:
            return None
        return runs[0].info.run_id, json.loads(runs[0].data.tags[TAG_OUTPUTS])

    def run(
        self,
        name: str,
        fn: Callable[..., dict[str, Any]],
        inputs: dict[str, Any],
        *,
        still_valid: Callable[[dict[str, Any]], bool] | None = None,
        always: bool = False,
        context: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        num_cpus: float = 0,
        progress: tuple[float | None, str] = (None, ""),
        describe: Callable[[dict[str, Any]], str] | None = None,
    ) -> dict[str, Any]:
        """Run (or skip) one step and return its outputs.

        `inputs` are passed to `fn` and fingerprinted; `context` is fingerprinted only (e.g. the
        hash of a config file whose path is an input); `runtime` is passed only (e.g. the parent
        run id, which differs on every invocation). `still_valid(outputs)` lets a step refuse a
        cached result whose files are gone; `always` runs the step even when unchanged (cheap
        decisions such as promotion). The step runs as a Ray task with `num_cpus` (0 by default:
        the step only orchestrates; the Ray Train / Ray Data work it starts reserves its CPUs).
        `progress` is the (total, unit) its bar starts with; `describe(outputs)` is the phrase
        its final line ends with (default: its last progress report).
        """
        code = function_code_hash(fn).digest
        fp = fingerprint(name, {"inputs": inputs, "context": context or {}}, code)
        cached = None if always else self.find_finished(name, fp)
        if cached is not None and (still_valid is None or still_valid(cached[1])):
            source_run, outputs = cached
            run = self._child(name, fp, {TAG_SKIPPED_FROM: source_run, TAG_CODE: code})
            self._finish(run, outputs)
            if self.console:
                note = f"reused MLflow run {source_run[:8]}"
                self.console.skipped(name, note + (f" · {describe(outputs)}" if describe else ""))
            self.results.append(StepResult(name, outputs, True, run))
            return outputs

        run = self._child(name, fp, {TAG_CODE: code})
        params: dict[str, str] = {}
        _flatten("", inputs, params)
        for key in sorted(params)[:100]:
            self.client.log_param(run, key[:250], params[key])
        if self.console:
            self.console.running(name)
        if self.board is not None:
            import ray

            ray.get(self.board.start.remote(name, *progress))
        start = time.monotonic()
        try:
            outputs = self._execute(fn, name, {**inputs, **(runtime or {})}, num_cpus)
        except (KeyboardInterrupt, JobInterrupted) as error:
            self.client.set_tag(run, TAG_ERROR, "interrupted (SIGINT)")
            self.client.set_terminated(run, "KILLED")
            if self.console:
                self.console.failed(name, "interrupted")
            raise JobInterrupted(f"during step {name!r} (MLflow run {run})") from error
        except BaseException as error:
            message = f"{type(error).__name__}: {error}"
            self.client.set_tag(run, TAG_ERROR, message[:MAX_TAG_CHARS])
            self.client.set_tag(run, TAG_TRACEBACK, traceback.format_exc()[-MAX_TAG_CHARS:])
            self.client.set_terminated(run, RunStatus.to_string(RunStatus.FAILED))
            if self.console:
                self.console.failed(name, message)
            raise StepFailed(f"step {name!r} failed (MLflow run {run}): {message}") from error
        self.client.log_metric(run, "step_seconds", time.monotonic() - start)
        self._finish(run, outputs)
        if self.console:
            self.console.done(name, describe(outputs) if describe else
                              progress_text(self._progress()))
        self.results.append(StepResult(name, outputs, False, run))
        return outputs

    def _execute(self, fn, name, inputs, num_cpus):
        if not self.use_ray:
            return _call_step(fn, name, inputs)
        import ray

        options: dict[str, Any] = {"name": f"workflow:{name}"}
        if os.environ.get(FAIL_STEP_ENV):  # the drill hook reaches the worker process too
            options["runtime_env"] = {"env_vars": {FAIL_STEP_ENV: os.environ[FAIL_STEP_ENV]}}
        remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_call_step).options(**options)
        pending = remote.remote(fn, name, inputs)
        try:
            while not ray.wait([pending], timeout=POLL_S)[0]:
                if self.console:
                    self.console.update(self._progress())
        except KeyboardInterrupt:
            ray.cancel(pending, force=True)  # the step's Ray Train / Ray Data work ends with it
            raise
        return ray.get(pending)

    def _progress(self) -> dict[str, Any]:
        if self.board is None:
            return {}
        import ray

        return ray.get(self.board.read.remote())

    def _child(self, name: str, fp: str, extra_tags: dict[str, str]) -> str:
        tags = {PARENT_TAG: self.parent_run_id, TAG_STEP: name, TAG_FINGERPRINT: fp, **extra_tags}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return run.info.run_id

    def _finish(self, run_id: str, outputs: dict[str, Any]) -> None:
        text = json.dumps(outputs, sort_keys=True, default=str)
        if len(text) > MAX_TAG_CHARS:
            raise ValueError(f"step outputs are {len(text)} chars; keep them small (paths, ids)")
        self.client.set_tag(run_id, TAG_OUTPUTS, text)
        for key, value in (outputs.get("metrics") or {}).items():
            if isinstance(value, int | float):
                self.client.log_metric(run_id, key, float(value))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
