"""Exit codes and one-line endings (pipelines/outcome.py), without Ray: the mapping of how a
command ended, and the watcher that closes the MLflow runs of a job process that died abruptly."""

from __future__ import annotations

import textwrap

import pytest
from mlflow.tracking import MlflowClient

from pipelines import outcome
from read_model.config import ConfigError

RESUME = "run it again"


def _raise(error: BaseException):
    def body():
        raise error
    return body


@pytest.mark.parametrize(("body", "code", "words"), [
    (lambda: {"done": True}, 0, ""),
    (lambda: 1, 1, ""),
    (_raise(ConfigError("train.max_stepz: unknown key")), 2, "error: train.max_stepz"),
    (_raise(KeyboardInterrupt()), 130, "job: interrupted (SIGINT)"),
    (_raise(outcome.JobInterrupted("Ray Train aborted the workers")), 130,
     "interrupted (SIGINT): Ray Train aborted the workers"),
    (_raise(outcome.JobIncomplete("training stopped at step 3 of 8")), 1,
     "job: failed: JobIncomplete: training stopped at step 3 of 8"),
    (_raise(RuntimeError("boom\nsecond line")), 1, "job: failed: RuntimeError: boom; run it"),
    (_raise(RuntimeError("Training failed due to worker errors:\n  File x\nValueError: bad")), 1,
     "failed: RuntimeError: Training failed due to worker errors: ValueError: bad; run it"),
])
def test_run_command_maps_each_ending_to_one_code_and_line(body, code, words, capsys):
    assert outcome.run_command("job", body, resume=RESUME, usage_errors=(ConfigError,)) == code
    err = capsys.readouterr().err
    assert words in err
    if code in (1, 130) and words:
        assert err.strip().endswith(RESUME) and len(err.strip().splitlines()) == 1


def test_terminal_status_is_killed_only_for_interrupts():
    assert outcome.terminal_status(KeyboardInterrupt()) == "KILLED"
    assert outcome.terminal_status(outcome.JobInterrupted()) == "KILLED"
    assert outcome.terminal_status(RuntimeError()) == "FAILED"


FAKE_JOB = textwrap.dedent('''
    """A job that opens an MLflow run and then dies in the way argv[2] names."""
    import os, sys
    from mlflow.tracking import MlflowClient
    from pipelines import outcome

    uri, how = sys.argv[1], sys.argv[2]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fake") or client.create_experiment("fake")
    experiment = getattr(experiment, "experiment_id", experiment)
    run_id = client.create_run(experiment).info.run_id
    outcome.note_run(uri, run_id)
    if how == "exit1":  # what the Ray core worker does when its raylet dies
        os._exit(1)
    if how == "exit0":  # a library's sys.exit(0) that skipped the final report
        os._exit(0)
    sys.exit(outcome.run_command("fake", lambda: client.set_terminated(run_id), resume="again"))
''')


@pytest.mark.parametrize(("how", "code", "status", "words"), [
    ("exit1", 1, "FAILED", "ended abruptly (exit 1 without its final report)"),
    ("exit0", 1, "FAILED", "ended abruptly (exit 0 without its final report)"),
    ("finish", 0, "FINISHED", None),
])
def test_watcher_closes_the_runs_of_a_job_that_died(how, code, status, words, tmp_path,
                                                    monkeypatch, capfd):
    (tmp_path / "fake_job.py").write_text(FAKE_JOB)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv(outcome.STATE_ENV, raising=False)
    monkeypatch.delenv(outcome.UNSUPERVISED_ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert outcome.supervise("fake", "fake_job", [uri, how], resume=RESUME,
                             direct=lambda: pytest.fail("ran in-process")) == code
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("fake").experiment_id])
    assert run.info.status == status
    err = capfd.readouterr().err
    if words:
        assert words in err and run.info.run_id in err and RESUME in err
        assert run.data.tags["read.ended"].startswith("the job process ended abruptly")
    else:
        assert "abruptly" not in err
