"""The registered model is an MLflow pyfunc model: loaded in a fresh process and served over HTTP.

A tiny model whose weights make it answer "[SEG]" is registered on the session MLflow server the
way training registers models; a new Python process loads `models:/<name>@champion` with
`mlflow.pyfunc.load_model` and `mlflow models serve` answers /invocations. Both must return what
`ReadModel.predict` returns for the same weights, image and prompt mode.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw
from services import start_model_server
from tiny_models import seg_answering_model

from pipelines.evaluation.predictions_io import decode_rle
from pipelines.mlflow_model import schema
from pipelines.registry import checkpoint_dir, download_registered, log_and_register
from pipelines.tracking import ensure_experiment
from read_model.checkpoint import load_model_dir, save_trainable

MODEL_NAME = "read-pyfunc-test"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
QUESTION = "Where is the red circle? Please output segmentation mask."
FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import read_model
frame = pd.DataFrame({"image": [open(sys.argv[2], "rb").read()] * 2,
                      "question": [sys.argv[3]] * 2, "prompt_mode": [None, "seg_only"]})
answers = model.predict(frame, params={"max_new_tokens": 1})
print(json.dumps({"read_model": read_model.__file__,
                  "inputs": [c.name for c in model.metadata.get_input_schema().inputs],
                  "rows": answers.to_dict(orient="records")}))
"""


def _image_bytes() -> bytes:
    image = Image.new("RGB", (96, 72), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((10, 15, 50, 55), fill=(220, 30, 30))
    return schema.encode_image(np.asarray(image))


@pytest.fixture(scope="module")
def registered(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    model, tokenizer = seg_answering_model()
    folder = save_trainable(model, tokenizer, model.config,
                            tmp_path_factory.mktemp("pyfunc") / "model")
    client = MlflowClient(mlflow_server)
    experiment = ensure_experiment(client, "pyfunc-test", mlflow_server)
    run_id = client.create_run(experiment).info.run_id
    version = log_and_register(folder, MODEL_NAME, run_id, alias="champion",
                               tracking_uri=mlflow_server)
    return {"folder": folder, "run_id": run_id, "version": version}


def _expected(folder: Path, mode: str | None) -> dict:
    """`ReadModel.predict` on the same weights, image and prompt mode (the reference)."""
    model, _, config = load_model_dir(folder)
    if mode:
        model.config = dataclasses.replace(config, prompt_mode=mode)
    image = schema.decode_image(_image_bytes(), 0)
    with torch.no_grad():
        [prediction] = model.eval().predict([image], [QUESTION], 1)
    return {"text": prediction.text, "masks": prediction.masks.numpy(),
            "points": prediction.points.float().numpy(), "labels": prediction.labels.numpy()}


def _check_row(row: dict, expected: dict) -> None:
    assert row["answer"] == expected["text"] == "[SEG]"
    masks = np.stack([decode_rle(rle) for rle in row["masks"]])
    assert masks.shape == (1, 72, 96)
    assert np.array_equal(masks, expected["masks"])
    assert row["see"] == bool(masks.any())
    np.testing.assert_allclose(np.array(row["points"]), expected["points"], atol=1e-4)
    assert np.array_equal(np.array(row["point_labels"]), expected["labels"])
    assert np.array(row["points"]).shape == (1, 12, 2)  # the tiny preset's K points, (x, y)


@pytest.mark.integration
def test_registered_model_is_a_pyfunc_model_in_a_fresh_process(registered, mlflow_server,
                                                                tmp_path):
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL_NAME, registered["version"])
    run = client.get_run(registered["run_id"])
    # The version is the MLflow model logged by the run (shown under the run's "Logged models").
    assert version.source in {f"models:/{output.model_id}" for output in run.outputs.model_outputs}
    local = download_registered(MODEL_URI, tmp_path / "download", tracking_uri=mlflow_server)
    assert {"MLmodel", "input_example.json", "serving_input_example.json", "code"} <= {
        p.name for p in local.iterdir()}
    assert (checkpoint_dir(local) / "trainable.safetensors").is_file()
    assert not list(local.rglob("*.pkl"))  # models from code: nothing pickled

    image = tmp_path / "circle.png"
    image.write_bytes(_image_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, MODEL_URI, str(image), QUESTION],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**env, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    repo = Path(__file__).resolve().parents[2]
    assert not Path(out["read_model"]).is_relative_to(repo)  # the model's own code/ copy
    assert out["inputs"] == ["image", "question", "prompt_mode"]
    default, seg_only = out["rows"]
    _check_row(default, _expected(registered["folder"], None))
    _check_row(seg_only, _expected(registered["folder"], "seg_only"))


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.integration
def test_mlflow_models_serve_answers_invocations(registered, mlflow_server, tmp_path):
    server = start_model_server(MODEL_URI, mlflow_server, tmp_path)
    try:
        invocations = f"{server.url}/invocations"
        encoded = base64.b64encode(_image_bytes()).decode("ascii")
        status, body = _post(invocations, {
            "dataframe_split": {"columns": ["image", "question"], "data": [[encoded, QUESTION]]},
            "params": {"max_new_tokens": 1}})
        assert status == 200, body
        [row] = body["predictions"]
        _check_row(row, _expected(registered["folder"], None))

        example = download_registered(MODEL_URI, tmp_path / "m", tracking_uri=mlflow_server)
        status, body = _post(invocations, json.loads(
            (example / "serving_input_example.json").read_text()))
        assert status == 200 and len(body["predictions"]) == 1, body

        bad_image = base64.b64encode(b"not an image").decode("ascii")
        status, body = _post(invocations, {"dataframe_split": {
            "columns": ["image", "question"], "data": [[encoded, "?"], [bad_image, "?"]]}})
        assert status == 400 and "row 1" in body["message"], body
        status, body = _post(invocations, {"dataframe_split": {
            "columns": ["image", "question", "prompt_mode"], "data": [[encoded, "?", "boxes"]]}})
        assert status == 400 and "prompt_mode" in body["message"], body
    finally:
        server.stop()
