"""What the entry points add to a runtime env: settings only, merged with a job's own."""

from __future__ import annotations

import json

import pytest

from pipelines.ray_runtime import SECRET_VARIABLES, joined_runtime_env, worker_environment
from pipelines.submitted_job import JOB_CONFIG_VARIABLE, submitted_runtime_env

SETTINGS = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_ENDPOINT_URL": "http://s3:9000",
            "AWS_DEFAULT_REGION": "us-west-2"}


@pytest.fixture
def environment(monkeypatch):
    for name in SECRET_VARIABLES:
        monkeypatch.setenv(name, f"secret-{name}")
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(JOB_CONFIG_VARIABLE, raising=False)


def test_credentials_never_travel_only_settings_do(environment):
    env = worker_environment()
    assert not set(env) & set(SECRET_VARIABLES)
    assert not any(value.startswith("secret-") for value in env.values())
    for name, value in SETTINGS.items():
        assert env[name] == value


def test_inside_a_job_only_what_the_job_lacks_is_added(environment, monkeypatch):
    job_env = {"env_vars": {"MLFLOW_TRACKING_URI": "http://other:5000", "USER_NOTE": "x"},
               "working_dir": "/tmp/job"}
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": job_env}))
    assert submitted_runtime_env() == job_env
    joined = joined_runtime_env(submitted_runtime_env(), upload_working_dir=True)
    assert "MLFLOW_TRACKING_URI" not in joined["env_vars"]  # the job's value wins, no conflict
    assert joined["env_vars"]["AWS_ENDPOINT_URL"] == SETTINGS["AWS_ENDPOINT_URL"]
    assert "working_dir" not in joined  # the job's own working_dir stays
    everything = {name: "v" for name in worker_environment()}
    assert joined_runtime_env({"env_vars": everything}, upload_working_dir=True) == {}


def test_outside_a_job_the_checkout_can_be_uploaded(environment):
    joined = joined_runtime_env(None, upload_working_dir=True)
    assert joined["env_vars"] == worker_environment() and joined["working_dir"]
    assert "working_dir" not in joined_runtime_env(None, upload_working_dir=False)


def test_s3_clients_carry_no_keys(environment):
    """The client is built from the endpoint only; a pickled copy holds no credential."""
    import pickle

    from pipelines import storage

    blob = pickle.dumps(storage.s3_filesystem())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert f"secret-{name}".encode() not in blob
    assert b"s3:9000" in blob
