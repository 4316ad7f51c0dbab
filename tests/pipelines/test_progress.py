"""Progress reports from any process of the job reach the workflow's board; without one, nothing."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines import progress
from pipelines.tracking import RankZeroLogger


def test_report_without_a_board_does_nothing():
    progress.report(3, total=5, unit="steps", note="no board")  # must not raise or start Ray


@pytest.mark.integration
def test_reports_from_ray_workers_reach_the_board(ray_local, mlflow_server):
    import ray

    from pipelines.tracking import ensure_experiment

    uri = mlflow_server
    client = MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(client, "progress-test", uri)).info.run_id
    board = progress.start_board()
    assert ray.get(board.start.remote("train[x]", 10, "steps")) is None
    assert progress.start_board()._actor_id == board._actor_id  # one board per job

    @ray.remote(num_cpus=0)
    def rank_zero_logs(step: int, loss: float) -> None:  # what the training loop does
        RankZeroLogger(uri, run_id, rank=0, system_metrics=False).log({"train/total": loss}, step)

    ray.get(rank_zero_logs.remote(7, 0.5))
    state = ray.get(board.read.remote())
    assert state == {"step": "train[x]", "done": 7, "total": 10, "unit": "steps",
                     "note": "loss 0.500"}
    assert client.get_run(run_id).data.metrics["train/total"] == 0.5
