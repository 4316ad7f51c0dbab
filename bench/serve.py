"""Online serving: requests/s and latency of `read-serve` with and without dynamic batching.

    python bench/serve.py [--clients 1 4 16] [--requests 8] [--max-batch-size 8]
                          [--config configs/tiny.yaml] [key=value ...]

The embedded default, as `read-serve` runs it: a local Ray, a local MLflow store (a temporary
SQLite file) holding the tiny preset (random initial weights) registered as `champion`, the
application over real HTTP on 127.0.0.1. Each of C clients sends `--requests` requests one after
the other (a closed loop: a new request when the last answer arrives), each a 320x240 picture and
a question. The same application is measured twice in one run: with request batching
(`serve.max_batch_size`) and without (`serve.max_batch_size=1`: every request is its own
`predict` call); the script prints requests/s and p50/p95 latency for both and the ratio.
Exit code 0 only when every request was answered with 200.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_NAME = "read-tiny-bench"
QUESTION = "What is the {} shape in this image? Please output segmentation mask."
COLOURS = ("red", "blue", "green", "yellow")


@dataclass
class Measurement:
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    failures: int
    mean_batch: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000


def picture(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.full((240, 320, 3), 128, np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, 180), rng.integers(0, 260)
        image[y : y + 60, x : x + 60] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def register_tiny_model(folder: Path, tracking_uri: str, config_path: str) -> str:
    from mlflow.tracking import MlflowClient

    from pipelines.champion import CHAMPION_ALIAS
    from pipelines.registry import log_and_register, set_alias
    from read_model.checkpoint import save_trainable
    from read_model.model import build_model
    from read_model.presets import load_model_config

    model, tokenizer = build_model(load_model_config(config_path))
    model_dir = save_trainable(model, tokenizer, model.config, folder / "model")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(MODEL_NAME, artifact_location=(folder / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    version = log_and_register(model_dir, MODEL_NAME, run_id, tracking_uri=tracking_uri)
    set_alias(MODEL_NAME, CHAMPION_ALIAS, version, tracking_uri=tracking_uri)
    client.set_terminated(run_id)
    return version


def measure(url: str, clients: int, per_client: int, pictures: list[bytes]) -> Measurement:
    latencies: list[float] = []
    batches: list[int] = []
    failures = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        for step in range(per_client):
            k = index * per_client + step
            started = time.perf_counter()
            response = session.post(
                f"{url}/v1/segment",
                files={"image": ("p.png", pictures[k % len(pictures)], "image/png")},
                data={"question": QUESTION.format(COLOURS[k % len(COLOURS)])}, timeout=600)
            elapsed = time.perf_counter() - started
            with lock:
                if response.status_code == 200:
                    latencies.append(elapsed)
                    batches.append(response.json()["batch_size"])
                else:
                    failures[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return Measurement(clients, clients * per_client, seconds, latencies, failures[0],
                       statistics.fmean(batches) if batches else 0.0)


def deploy(job, tracking_uri: str, url: str) -> None:
    from ray import serve

    from pipelines.serving.app import APP_NAME, build_app

    serve.run(build_app(job, tracking_uri), name=APP_NAME, route_prefix="/")
    deadline = time.monotonic() + 300
    while requests.get(f"{url}/healthz", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the application did not become healthy")
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. serve.max_new_tokens=16")
    args = parser.parse_args()

    import ray
    from ray import serve

    from pipelines.config import load_job_config
    from pipelines.ray_runtime import ensure_ray, free_port

    folder = Path(tempfile.mkdtemp(prefix="read-bench-serve-"))
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    version = register_tiny_model(folder, tracking_uri, args.config)
    ensure_ray(log_to_driver=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    pictures = [picture(seed) for seed in range(16)]
    results: dict[str, list[Measurement]] = {}
    base = [f"mlflow.registered_model={MODEL_NAME}", *args.overrides]
    try:
        for label, batch in (("batched", args.max_batch_size), ("unbatched", 1)):
            job = load_job_config(args.config, [*base, f"serve.max_batch_size={batch}"])
            deploy(job, tracking_uri, url)
            measure(url, 2, 2, pictures)  # warm-up: first calls pay one-off costs
            results[label] = [measure(url, c, args.requests, pictures) for c in args.clients]
    finally:
        serve.shutdown()
        ray.shutdown()

    settings = load_job_config(args.config, base).serve
    print(f"\nread-serve, {MODEL_NAME} v{version} (tiny preset, random weights), CPU, "
          f"max_new_tokens={settings.max_new_tokens}, batch window "
          f"{settings.batch_wait_timeout_s * 1000:.0f} ms, {args.requests} requests per client")
    print(f"{'clients':>7} | {'mode':>9} | {'req/s':>6} | {'p50 ms':>7} | {'p95 ms':>7} | "
          f"{'mean batch':>10} | {'failed':>6}")
    failed = 0
    for index, clients in enumerate(args.clients):
        for label in ("batched", "unbatched"):
            m = results[label][index]
            failed += m.failures
            print(f"{clients:>7} | {label:>9} | {m.rps:>6.2f} | {m.percentile(50):>7.0f} | "
                  f"{m.percentile(95):>7.0f} | {m.mean_batch:>10.2f} | {m.failures:>6}")
        ratio = results["batched"][index].rps / results["unbatched"][index].rps
        print(f"{'':>7}   batched / unbatched requests/s: {ratio:.2f}x")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
