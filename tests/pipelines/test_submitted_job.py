"""Relative paths in a job submitted with --working-dir are refused by name before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import check_job_paths, load_job_config
from pipelines.submitted_job import JOB_CONFIG_VARIABLE, submitted_working_dir
from pipelines.tracking import resolve_tracking_uri
from read_model.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
UPLOADED = "gcs://_ray_pkg_0123456789abcdef.zip"


@pytest.fixture
def in_submitted_job(monkeypatch):
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps(
        {"runtime_env": {"working_dir": UPLOADED}, "metadata": {}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_outside_a_job_relative_paths_are_fine(monkeypatch):
    monkeypatch.delenv(JOB_CONFIG_VARIABLE, raising=False)
    assert submitted_working_dir() is None
    assert load_job_config(TINY).data.shards == "artifacts/shards"


def test_relative_paths_a_job_uses_are_refused_by_name(in_submitted_job, tmp_path):
    config = load_job_config(TINY, [f"train.storage_path={tmp_path}"])
    with pytest.raises(ConfigError) as refused:
        check_job_paths(config, ("data", "train", "model"))
    message = str(refused.value)
    assert "data.shards=artifacts/shards" in message and UPLOADED in message
    assert "train.storage_path" not in message  # absolute: accepted
    assert "eval.output" not in message  # relative, but training does not use it
    assert "\n" not in message


def test_absolute_paths_and_urls_pass(in_submitted_job, tmp_path):
    config = load_job_config(TINY, [f"data.shards={tmp_path}/shards", "train.storage_path=s3://b/r",
                                    f"eval.output={tmp_path}/eval",
                                    f"workflow.workdir={tmp_path}/work"])
    check_job_paths(config, ("data", "train", "eval", "workflow", "model"))
    assert config.train.storage_path == "s3://b/r"


def test_the_default_local_mlflow_store_is_refused(in_submitted_job, tmp_path):
    config = load_job_config(TINY)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        resolve_tracking_uri(config.mlflow)


def test_train_cli_exits_2_with_one_line(in_submitted_job, capsys):
    from pipelines.train import cli

    assert cli(["--config", str(TINY), "--check-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "data.shards=artifacts/shards" in err
    assert len(err.splitlines()) == 1


def test_evaluate_takes_set_names_and_refuses_only_a_relative_shard_root(in_submitted_job,
                                                                        tmp_path, capsys):
    """`--data` names `<dataset>/<split>` sets, which are not paths; `data.shards` is."""
    from pipelines.evaluate import cli

    code = cli(["--model", "models:/read-tiny@candidate", "--config", str(TINY),
                "--data", "reason_seg/val", "refcoco/val", f"eval.output={tmp_path}/eval"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "data.shards=artifacts/shards" in err and "reason_seg/val" not in err
