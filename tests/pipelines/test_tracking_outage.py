"""A tracking outage during training (pipelines/tracking.py RankZeroLogger): a real MLflow
server is stopped and started again on the same port and store. Logging says what it waits
for and until when, keeps every value buffered and flushes them when the server is back; an
outage longer than the budget fails naming the steps not logged."""

from __future__ import annotations

import logging
import time

import pytest
from fault_report import last_line
from mlflow.tracking import MlflowClient
from services import start_mlflow

from pipelines.tracking import RankZeroLogger, TrackingOutageError

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RETRY_S = 0.5


def _values(step: int) -> dict[str, float]:
    return {"train/total": 1.0 / step, "progress/resumed_from": 0.0}


def test_outage_is_waited_out_buffered_and_flushed(tmp_path, caplog, fault_table):
    caplog.set_level(logging.WARNING, logger="pipelines.tracking")
    server = start_mlflow(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        client = MlflowClient(server.url)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        tracker = RankZeroLogger(server.url, run_id, 0, system_metrics=False,
                                 outage_budget_s=900, retry_every_s=RETRY_S)
        tracker.log(_values(1), 1)
        assert tracker.buffered == 0
        server.stop()
        for step in (2, 3, 4):  # training goes on: each call returns with the values kept
            tracker.log(_values(step), step)
            time.sleep(RETRY_S)
        assert tracker.buffered == 6
        waiting = [r.getMessage() for r in caplog.records if "waiting for MLflow" in r.getMessage()]
        assert waiting, caplog.text
        assert f"waiting for MLflow at {server.url}" in waiting[-1]
        assert "training continues with 6 metric values of steps 2-4 buffered" in waiting[-1]
        assert "next try in" in waiting[-1] and "giving up at" in waiting[-1]

        server = start_mlflow(tmp_path, port=port)  # the same store, where clients expect it
        time.sleep(RETRY_S)
        tracker.log(_values(5), 5)
        assert tracker.buffered == 0
        back = last_line(caplog.text, "answers again")
        assert "flushed 8 buffered metric values of steps 2-5" in back
        history = client.get_metric_history(run_id, "train/total")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
        assert {m.step: m.value for m in history}[3] == pytest.approx(1 / 3)
        fault_table("MLflow server stopped mid-training, restarted on the same port/store",
                    "n/a (training went on)", waiting[-1][:160], "RUNNING, then every value",
                    "nothing: 3 steps buffered and flushed in order")

        # An outage longer than the budget fails, naming what was not logged.
        server.stop()
        short = RankZeroLogger(server.url, run_id, 0, system_metrics=False,
                               outage_budget_s=1.0, retry_every_s=RETRY_S)
        short.log(_values(6), 6)
        with pytest.raises(TrackingOutageError) as failure:
            short.close()
        message = str(failure.value)
        assert "unreachable for" in message and "mlflow.outage_budget_s=1" in message
        assert "2 metric values of steps 6-6 were not logged" in message
        assert "run the same command again" in message
        fault_table("MLflow outage longer than mlflow.outage_budget_s",
                    "n/a (component test: TrackingOutageError)", message.split(";")[0][:160],
                    "n/a (not run through the driver here)",
                    "the buffered steps' metric values, named in the message; training "
                    "resumes from the last checkpoint")
    finally:
        server.stop()
