"""The HTTP API on a real Serve application: local Ray, a real MLflow server, real HTTP.

One application for the module (started once, ~20 s): answers checked against the registered
model run in this process, bad inputs, a model failure injected into the replica's model, dynamic
batching seen in the responses, and the champion alias moved during a stream of requests.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw
from services import free_port
from tiny_models import register_tiny

from pipelines.champion import CHAMPION_ALIAS
from pipelines.evaluation.predictions_io import decode_rle
from pipelines.registry import load_registered, set_alias
from pipelines.serving.model_source import RegistryModelSource

pytestmark = pytest.mark.integration

MODEL_NAME = "read-serve-api"
FAIL_MARKER = "please fail now"  # a question holding this makes the replica's model raise
QUESTION = "Where is the red circle?"
TIMEOUT_S = 60
SETTINGS = [
    f"mlflow.registered_model={MODEL_NAME}",
    "serve.max_new_tokens=2",
    "serve.alias_poll_s=1",
    "serve.batch_wait_timeout_s=0.2",
    "serve.max_batch_size=8",
    "serve.num_cpus_per_replica=1",
    "serve.ingress_cpus=0.1",
    "serve.max_image_pixels=1000000",
    "serve.max_question_chars=200",
]


class FaultInjectingSource(RegistryModelSource):
    """The registry source, with a model whose `predict` raises on `FAIL_MARKER` questions.

    Pickled by value into the replica (this test module is not importable there).
    """

    def load(self, version: str):
        served = super().load(version)
        original = served.model.predict

        def predict(images, questions, *args, **kwargs):
            if any(FAIL_MARKER in q for q in questions):
                raise RuntimeError("injected fault: CUDA error: an illegal memory access")
            return original(images, questions, *args, **kwargs)

        served.model.predict = predict
        return served


@dataclass
class Served:
    url: str
    tracking_uri: str
    versions: tuple[str, str]  # champion at start, the one the alias moves to


def shapes_png(width: int = 128, height: int = 96) -> bytes:
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((15, 20, 55, 60), fill=(220, 30, 30))
    draw.rectangle((75, 40, 115, 80), fill=(30, 30, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PNG = shapes_png()


def ask(url: str, question: str = QUESTION, image: bytes = PNG, **fields: str) -> requests.Response:
    return requests.post(f"{url}/v1/segment", files={"image": ("shapes.png", image, "image/png")},
                         data={"question": question, **fields}, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def served(ray_local, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import cloudpickle, serve

    from pipelines.config import load_job_config
    from pipelines.serving.app import APP_NAME, build_app

    started = time.monotonic()
    folder = tmp_path_factory.mktemp("serve-api")
    first = register_tiny(folder, MODEL_NAME, mlflow_server, seed=0)
    second = register_tiny(folder, MODEL_NAME, mlflow_server, seed=1)
    set_alias(MODEL_NAME, CHAMPION_ALIAS, first, tracking_uri=mlflow_server)
    print(f"registered in {time.monotonic() - started:.1f} s")

    job = load_job_config("configs/tiny.yaml", SETTINGS)
    source = FaultInjectingSource(f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}", mlflow_server)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(job, mlflow_server, source=source), name=APP_NAME, route_prefix="/")
        print(f"deployed in {time.monotonic() - started:.1f} s")
        yield Served(f"http://127.0.0.1:{port}", mlflow_server, (first, second))
    finally:
        serve.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------------------------------
# Answers


def test_segment_returns_the_registered_models_answer(served: Served, tmp_path: Path) -> None:
    response = ask(served.url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": MODEL_NAME, "version": served.versions[0],
                             "source": f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"}
    # The same version run here, on the same image and question, gives the same answer.
    model, _, _ = load_registered(f"models:/{MODEL_NAME}/{served.versions[0]}",
                                  tracking_uri=served.tracking_uri, destination=tmp_path)
    with Image.open(io.BytesIO(PNG)) as picture:
        image = np.asarray(picture.convert("RGB"))
    [expected] = model.eval().predict([image], [QUESTION], 2)
    assert body["answer"] == expected.text == "[SEG][SEG]"
    assert body["num_seg"] == len(body["masks"]) == len(body["points"]) == 2
    assert len(body["point_labels"]) == 2
    masks = np.stack([decode_rle(rle) for rle in body["masks"]])
    assert masks.shape == (2, 96, 128) and np.array_equal(masks, expected.masks.numpy())
    assert body["see"] is bool(masks.any()) is expected.exists
    assert np.allclose(body["points"], expected.points.numpy(), atol=1e-3)
    assert body["point_labels"] == expected.labels.tolist()
    assert body["image_size"] == [96, 128] and body["prompt_mode"] == "points_dtoc"
    assert "overlay" not in body  # pictures only when asked for


def test_prompt_mode_and_overlay_pictures(served: Served) -> None:
    body = ask(served.url, prompt_mode="seg_only", overlay="true").json()
    assert body["prompt_mode"] == "seg_only" and body["num_seg"] == 2
    for key in ("overlay", "heatmap"):
        assert body[key].startswith("data:image/png;base64,")


def test_model_and_health_endpoints(served: Served) -> None:
    model = requests.get(f"{served.url}/v1/model", timeout=TIMEOUT_S).json()
    assert model["name"] == MODEL_NAME and model["follows_alias"] is True
    assert model["device"] == "cpu" and model["max_batch_size"] == 8
    health = requests.get(f"{served.url}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_concurrent_requests_are_batched(served: Served) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: ask(served.url, f"Where is object {i}?"), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["batch_size"] for r in responses) > 1


# ---------------------------------------------------------------------------------------------
# Bad input: 4xx with a one-line reason, and no model work


def image_part(data: bytes = PNG, name: str = "shapes.png") -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, "image/png")}


@pytest.mark.parametrize("files,data,status,words", [
    (image_part(b"not an image at all"), {"question": QUESTION}, 415, "not an image"),
    (image_part(shapes_png(1200, 1000)), {"question": QUESTION}, 413,
     "1200x1000 = 1200000 pixels, above the limit of 1000000"),
    (image_part(), {"question": "   "}, 400, "'question' is empty"),
    (image_part(), {"question": "x" * 201}, 400, "201 characters, above the limit of 200"),
    (image_part(), {"question": QUESTION, "colour": "red"}, 400, "unknown field(s) 'colour'"),
    (image_part(), {"question": QUESTION, "prompt_mode": "dtoc"}, 400, "prompt_mode 'dtoc'"),
    (image_part(), {"question": "Where? [SEG]"}, 400, "control token '[SEG]'"),
    ({"question": ("q.txt", b"Where?", "text/plain")}, {}, 400, "missing field(s) 'image'"),
    (image_part(), {}, 400, "missing field(s) 'question'"),
    ({"image": (None, "shapes.png")}, {"question": QUESTION}, 400,  # a text part, not a file
     "'image' must be a file upload"),
])
def test_bad_requests_get_4xx_with_a_reason(served: Served, files, data, status: int,
                                            words: str) -> None:
    response = requests.post(f"{served.url}/v1/segment", files=files, data=data, timeout=TIMEOUT_S)
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    assert words in reason and "\n" not in reason


def test_unknown_paths_and_methods_answer_in_the_error_shape(served: Served) -> None:
    missing = requests.get(f"{served.url}/v1/nothing", timeout=TIMEOUT_S)
    assert missing.status_code == 404 and missing.json()["error"] == "GET /v1/nothing: Not Found"
    wrong = requests.get(f"{served.url}/v1/segment", timeout=TIMEOUT_S)
    assert wrong.status_code == 405 and "Method Not Allowed" in wrong.json()["error"]


def test_a_json_body_is_refused(served: Served) -> None:
    response = requests.post(f"{served.url}/v1/segment", json={"question": QUESTION},
                             timeout=TIMEOUT_S)
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]


# ---------------------------------------------------------------------------------------------
# A model failure: 500, batch-mates answered, the same replica keeps serving


def test_model_failure_is_a_500_and_the_replica_keeps_serving(served: Served) -> None:
    before = requests.get(f"{served.url}/v1/model", timeout=TIMEOUT_S).json()["replica"]
    questions = [QUESTION, FAIL_MARKER, "Where is the blue square?", QUESTION]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda q: ask(served.url, q), questions))
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    reason = responses[1].json()["error"]
    assert "injected fault: CUDA error" in reason and "\n" not in reason
    assert f"{MODEL_NAME} v" in reason
    assert ask(served.url).status_code == 200
    assert requests.get(f"{served.url}/v1/model", timeout=TIMEOUT_S).json()["replica"] == before


# ---------------------------------------------------------------------------------------------
# The champion alias moves while requests stream in


def test_alias_move_rolls_over_without_dropping_requests(served: Served) -> None:
    first, second = served.versions
    before = requests.get(f"{served.url}/v1/model", timeout=TIMEOUT_S).json()
    assert before["version"] == first
    stop = threading.Event()
    log: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]

    def client(index: int) -> None:
        while not stop.is_set():
            response = ask(served.url, f"Where is thing {index}?")
            version = response.json()["model"]["version"] if response.ok else None
            log[index].append((response.status_code, version))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while sum(map(len, log)) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        set_alias(MODEL_NAME, CHAMPION_ALIAS, second, tracking_uri=served.tracking_uri)
        # Keep streaming until every client has had a few answers from the new version.
        while time.monotonic() < deadline:
            if all(sum(v == second for _, v in entries) >= 3 for entries in log):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT_S)
    statuses = [status for entries in log for status, _ in entries]
    assert statuses and set(statuses) == {200}, f"failed requests during the move: {statuses}"
    for entries in log:
        versions = [v for _, v in entries]
        assert versions[0] == first and versions[-1] == second, versions
        switch = versions.index(second)
        assert set(versions[:switch]) == {first} and set(versions[switch:]) == {second}, versions
    after = requests.get(f"{served.url}/v1/model", timeout=TIMEOUT_S).json()
    assert after["version"] == second and after["swaps"] == 1
    assert after["replica"] == before["replica"]  # rolled in place, no replica restart
