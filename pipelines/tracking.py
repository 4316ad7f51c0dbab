"""Every MLflow helper the entry points share: URI resolution, experiments, runs, rank-0 logging.

Training, evaluation and the workflow all open their experiment through `ensure_experiment`, so
each experiment is created the same way (a local store keeps its artifacts beside the database,
and the UI opens it on the runs table). The training driver creates (or, when the same Ray run is
started again, re-opens) one MLflow run and hands its id to the workers, so a group restarted by
Ray's FailureConfig keeps logging into the same run and the step history shows exactly where it
resumed. Only rank 0 logs.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipelines import progress
from pipelines.config import MlflowConfig
from pipelines.submitted_job import submitted_working_dir
from read_model.config import ConfigError

RUN_KEY_TAG = "read.train_run_key"
PARENT_RUN_TAG = "mlflow.parentRunId"  # the UI nests a run under the run this tag names
# MLflow 3's UI opens an experiment in its GenAI view (traces, sessions) unless this tag says the
# experiment is about model development, which is what every READ experiment is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SQLITE_PREFIX = "sqlite:///"
LOSS_METRIC = "train/total"  # shown next to the workflow's training progress bar
MAX_PARAM_LENGTH = 6000  # MLflow's param value limit (8000 on sqlite, lower on some servers)
RESUMED_FROM_METRIC = "progress/resumed_from"  # logged at every step by the training loop
RERUN_TAG = "read.rerun_steps_kept_from_earlier_attempt"
LOG_BATCH_SIZE = 1000  # MLflow's log_batch limit on metrics per call
SINGLE_ATTEMPT_TIMEOUT_S = "10"  # one try of a buffered flush, no client-side retries

logger = logging.getLogger(__name__)


def resolve_tracking_uri(settings: MlflowConfig, cwd: str | Path | None = None) -> str:
    """The config's `mlflow.tracking_uri`, then MLFLOW_TRACKING_URI, then ./mlruns (sqlite).

    An explicit config value wins over the environment because `mlflow.set_tracking_uri` also
    writes MLFLOW_TRACKING_URI, so an earlier call in the same process would otherwise override
    the job's own setting. The local default is absolute because Ray workers run elsewhere.
    """
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    working_dir = submitted_working_dir()
    if working_dir is not None:
        raise ConfigError(
            "no MLflow tracking URI: in a job submitted with --working-dir the local default "
            f"store would be written inside the uploaded copy ({working_dir}) and lost; set "
            "MLFLOW_TRACKING_URI (e.g. --runtime-env-json '{\"env_vars\": "
            "{\"MLFLOW_TRACKING_URI\": \"http://mlflow:5000\"}}') or mlflow.tracking_uri"
        )
    store = Path(cwd or Path.cwd()).resolve() / "mlruns"
    return f"sqlite:///{store / 'mlflow.db'}"


def git_commit(repo: str | Path | None = None) -> str:
    """The checkout's commit (suffixed `-dirty` when modified), or "unknown" outside git."""
    repo = Path(repo or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def start_or_resume_run(
    tracking_uri: str,
    experiment: str,
    run_key: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Open the unfinished run of this Ray run (same name + storage) or create one; return its id.

    `parent_run_id` (the workflow run that launched the job) nests the run under it; a resumed
    run moves under the workflow run that resumes it.
    """
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    previous = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status != 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "read.resumed", "true")
        if parent_run_id:
            client.set_tag(run_id, PARENT_RUN_TAG, parent_run_id)
        return run_id
    if parent_run_id:
        tags = {**tags, PARENT_RUN_TAG: parent_run_id}
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_KEY_TAG: run_key, **tags})
    batch = [
        mlflow.entities.Param(key, _param_text(value)) for key, value in sorted(params.items())
    ]
    for start in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[start : start + 100])
    return run.info.run_id


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str | None = None) -> str:
    """The id of experiment `name`, created when missing, always tagged as model development."""
    found = client.get_experiment_by_name(name)
    if found is None:
        artifacts = _local_artifact_root(tracking_uri) if tracking_uri else None
        experiment_id = client.create_experiment(name, artifact_location=artifacts)
    else:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND:
            return experiment_id
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def _local_artifact_root(tracking_uri: str) -> str | None:
    """A local sqlite store keeps its artifacts beside the database, not in the working dir."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    folder = Path(tracking_uri[len(SQLITE_PREFIX):]).parent
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / "artifacts").as_uri()


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close the run the driver opened."""
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


class TrackingOutageError(RuntimeError):
    """The tracking server stayed unreachable longer than `mlflow.outage_budget_s`."""


class RankZeroLogger:
    """Metric logging into an existing run; a no-op on every rank but 0.

    A tracking outage does not stop training: each step's values are buffered, a failed
    `log_batch` (tried once, without MLflow's own minute of HTTP retries) is retried every
    `retry_every_s` at the next step, and the log says what it is waiting for, since when and
    until when. When the server answers, everything buffered is flushed in step order. An
    outage longer than `outage_budget_s` raises TrackingOutageError naming the steps whose
    values were not logged (docs/failure-modes.md).
    """

    def __init__(self, tracking_uri: str, run_id: str, rank: int, system_metrics: bool = True,
                 *, outage_budget_s: float = 3600.0, retry_every_s: float = 15.0):
        self.active = rank == 0 and bool(run_id)
        self._client = MlflowClient(tracking_uri) if self.active else None
        self._run_id = run_id
        self._tracking_uri = tracking_uri
        self._system_metrics = system_metrics
        self._logged_through = 0  # steps up to here already have their values in the run
        self._pending: list[mlflow.entities.Metric] = []
        self._outage_since: float | None = None
        self._next_try = 0.0
        self.outage_budget_s = outage_budget_s
        self.retry_every_s = retry_every_s

    def resume_at(self, step: int) -> None:
        """A resumed attempt restarts at checkpoint `step`; steps the interrupted attempt had
        already logged past it are recomputed but not logged again, so MLflow's history keeps
        exactly one value per step. The run's tag RERUN_TAG names those steps."""
        if not self.active or step <= 0:
            return
        history = self._client.get_metric_history(self._run_id, RESUMED_FROM_METRIC)
        self._logged_through = max((m.step for m in history), default=0)
        if self._logged_through > step:
            self._client.set_tag(self._run_id, RERUN_TAG,
                                 f"{step + 1}-{self._logged_through}")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        import time

        loss = metrics.get(LOSS_METRIC)
        progress.report(step, note=None if loss is None else f"loss {loss:.3f}")
        if step <= self._logged_through:
            return
        stamp = int(time.time() * 1000)
        self._pending += [mlflow.entities.Metric(key, float(value), stamp, step)
                          for key, value in metrics.items()]
        self.flush()

    @property
    def buffered(self) -> int:
        """Metric values waiting for the tracking server."""
        return len(self._pending)

    def flush(self, *, wait: bool = False) -> bool:
        """Send what is buffered; True when nothing is left. `wait` keeps retrying (the end of
        training) until the server answers or the outage budget is spent."""
        import time

        while self._pending:
            now = time.monotonic()
            if now < self._next_try:
                if not wait:
                    return False
                time.sleep(self._next_try - now)
                continue
            backlog = (len(self._pending), self._pending[0].step, self._pending[-1].step)
            try:
                with _single_attempt():
                    while self._pending:
                        chunk = self._pending[:LOG_BATCH_SIZE]
                        self._client.log_batch(self._run_id, metrics=chunk)
                        del self._pending[:len(chunk)]
            except Exception as error:  # connection refused, 5xx, timeout: all mean "wait"
                self._waiting(error)
                continue
            self._recovered(*backlog)
        return True

    def close(self) -> None:
        """End of training: everything buffered reaches the run, or TrackingOutageError."""
        if self.active:
            self.flush(wait=True)

    def _waiting(self, error: Exception) -> None:
        import datetime
        import time

        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        waited = now - self._outage_since
        steps = sorted({m.step for m in self._pending})
        if waited >= self.outage_budget_s:
            raise TrackingOutageError(
                f"MLflow at {self._tracking_uri} unreachable for {waited:.0f} s (more than "
                f"mlflow.outage_budget_s={self.outage_budget_s:g}): {len(self._pending)} metric "
                f"values of steps {steps[0]}-{steps[-1]} were not logged; the checkpoints "
                f"hold the training state: run the same command again once it is back "
                f"({_first_line(error)})") from error
        wall = datetime.datetime.now(datetime.UTC)
        retry_at = wall + datetime.timedelta(seconds=self.retry_every_s)
        give_up = wall + datetime.timedelta(seconds=self.outage_budget_s - waited)
        logger.warning(
            "waiting for MLflow at %s (unreachable for %.0f s: %s): training continues with "
            "%d metric values of steps %d-%d buffered; next try in %.0f s at %s UTC, giving up "
            "at %s UTC (mlflow.outage_budget_s)", self._tracking_uri, waited,
            _first_line(error), len(self._pending), steps[0], steps[-1], self.retry_every_s,
            retry_at.strftime("%H:%M:%S"), give_up.strftime("%H:%M:%S"))
        self._next_try = now + self.retry_every_s

    def _recovered(self, count: int, first: int, last: int) -> None:
        import time

        if self._outage_since is None:
            return
        logger.warning("MLflow at %s answers again after %.0f s: flushed %d buffered metric "
                       "values of steps %d-%d", self._tracking_uri,
                       time.monotonic() - self._outage_since, count, first, last)
        self._outage_since = None
        self._next_try = 0.0

    @contextmanager
    def system_metrics(self) -> Iterator[None]:
        """CPU/GPU/memory sampling into the run while training (needs psutil)."""
        if not (self.active and self._system_metrics and _has_psutil()):
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self._run_id, resume_logging=True, tracking_uri=self._tracking_uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


@contextmanager
def _single_attempt() -> Iterator[None]:
    """MLflow's client retries a failed request for about a minute by default; a buffered
    flush tries once and lets training go on (the variables are read per request)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": SINGLE_ATTEMPT_TIMEOUT_S}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__
