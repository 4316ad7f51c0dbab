"""Does the training data path keep an accelerator fed? Serial path vs loader processes, same run.

    python bench/ingest.py [--samples 192] [--batches 120] [--workers 2] [--step-ms 80]

Data: `--samples` 640x480 JPEGs with natural-image statistics (a 1/f amplitude spectrum per
channel, quality 90: about COCO's bytes per image), each with 1-3 polygon masks and
ReasonSeg-length questions (20-40 words), written as a shard set with the real writer.
Preprocessing: the real training path (verified shard read, decode, conversation drawing,
tokenisation, CLIP 336 px and SAM 1024 px preprocessing, collation) with READ-7B's image sizes
(the tokenizer is the offline tiny one: no hub access here).

Printed, for the serial path (everything on the training thread, as the loop did before the
ingestion change) and for `--workers` DataLoader processes (pipelines/ingestion/loader.py):
- samples/s delivered to a stand-in step that sleeps `--step-ms` per batch of 2 (one READ-7B
  step on an H100-class GPU) and stall fraction = time the step waited for data / total time,
  over the steady state (the first batch, worker start-up and first shard reads, is reported
  apart);
- preprocessing samples/s per core: samples / CPU seconds of one process doing only the data
  path, no sleep.
With `--ray-data`, a third path for the record of the ingestion choice
(docs/architecture.md §7.1): Ray Data reads the same shards (`ingestion/ray_rows.py`),
`map_batches` on `--workers` CPU tasks runs the same example drawing and collation, and the step
takes batches from `iter_batches(prefetch_batches=4)` (one pass, no resume or mixing).
Goals: stall < 5% with two loader processes; preprocessing >= 40 samples/s per core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the", "which", "object", "person", "holding", "near", "left", "right", "behind", "small",
    "large", "wooden", "metal", "table", "chair", "window", "red", "blue", "green", "could",
    "be", "used", "to", "sit", "on", "placed", "in", "front", "of", "that", "would", "someone",
    "use", "when", "they", "want", "cook", "food", "drink", "water", "carry", "things", "across",
    "room", "what", "part", "picture", "shows", "where", "light", "comes", "from",
)


def natural_image(rng: np.random.Generator, height: int = 480, width: int = 640) -> np.ndarray:
    """RGB uint8 with a 1/f amplitude spectrum (natural-image statistics) and a few edges."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.sqrt(fx ** 2 + fy ** 2)
    radius[0, 0] = 1.0
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, (height, width))
        spectrum = np.exp(1j * phase) / radius
        field = np.real(np.fft.ifft2(spectrum))
        field = (field - field.mean()) / (field.std() + 1e-9)
        channels.append(field * 45 + rng.uniform(90, 160))
    image = np.stack(channels, axis=-1)
    for _ in range(3):  # occluding edges, as objects give
        x, y = rng.integers(0, width), rng.integers(0, height)
        cv2.rectangle(image, (int(x), int(y)), (int(x + rng.integers(40, 200)),
                                                int(y + rng.integers(40, 200))),
                      [float(v) for v in rng.uniform(0, 255, 3)], -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def polygon_mask(rng: np.random.Generator, height: int = 480, width: int = 640) -> np.ndarray:
    center = rng.uniform([80, 80], [width - 80, height - 80])
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = rng.uniform(30, 120, 12)
    points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask


def question(rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(20, 41)))
    return " ".join(words).capitalize() + "?"


def make_samples(count: int, seed: int) -> list:
    from dataset_builders.sample import Query, Sample, Target

    samples = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        jpeg = cv2.imencode(".jpg", natural_image(rng)[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        targets = [Target(polygon_mask(rng), [Query(question(rng), True, query_id=f"{index}:{t}")
                                              for _ in range(2)], f"t{t}")
                   for t in range(int(rng.integers(1, 4)))]
        samples.append(Sample(f"reason_seg_train_{index:06d}", "reason_seg", "train", jpeg, 640,
                              480, targets))
    return samples


def job_config(workers: int):
    from pipelines.config import load_job_config

    repo = Path(__file__).resolve().parents[1]
    return load_job_config(repo / "configs" / "tiny.yaml", [
        "model.llava.vision_image_size=336", "model.llava.vision_patch_size=14",
        "model.sam.image_size=1024",
        "model.tokenizer.model_max_length=2048", "model.num_classes_per_sample=3",
        "train.batch_size=2", "data.train=[reason_seg/train]",
        f"data.loader_workers={workers}", "data.prefetch_batches=4"])


def loader(shard_set, workers: int):
    from pipelines.training.data import train_batches
    from read_model.batch import num_image_tokens_for
    from read_model.tokenizer import load_tokenizer

    config = job_config(workers)
    tokenizer = load_tokenizer(config.model.tokenizer)
    return train_batches(config, [shard_set], rank=0, world_size=1, tokenizer=tokenizer,
                         num_image_tokens=num_image_tokens_for(config.model.llava))


def feed(shard_set, workers: int, batches: int, step_s: float) -> dict[str, float]:
    """Run the stand-in step on `batches` batches; time spent waiting for each batch."""
    data = loader(shard_set, workers)
    started = time.perf_counter()
    next(data)
    first = time.perf_counter() - started
    time.sleep(step_s)
    waited = 0.0
    steady_start = time.perf_counter()
    for _ in range(batches):
        begin = time.perf_counter()
        batch = next(data)
        waited += time.perf_counter() - begin
        assert batch.images.shape[-2:] == (480, 640)
        time.sleep(step_s)
    total = time.perf_counter() - steady_start
    data.close()
    return {"first_batch_s": first, "samples_per_s": 2 * batches / total,
            "stall": waited / total}


class _RayPrepare:
    """Ray Data `map_batches`: rows of 2 samples -> one pickled, collated `ReadBatch`."""

    def __init__(self) -> None:
        import torch

        from read_model.batch import num_image_tokens_for
        from read_model.tokenizer import load_tokenizer

        torch.set_num_threads(1)
        self.config = job_config(0)
        self.tokenizer = load_tokenizer(self.config.model.tokenizer)
        self.tokens = num_image_tokens_for(self.config.model.llava)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from pipelines.examples import training_example
        from pipelines.ingestion.ray_rows import decode_row
        from read_model.batch import collate_train

        examples = []
        for index in range(len(rows["__key__"])):
            sample = decode_row({k: v[index] for k, v in rows.items()})
            examples.append(training_example(sample, num_per_sample=3, seed=0, epoch=0))
        batch = collate_train(examples, self.tokenizer, self.config.model, self.tokens)
        return {"batch": np.array([pickle.dumps(batch)], dtype=object)}


def ray_data_feed(shard_set, workers: int, batches: int, step_s: float) -> dict[str, float]:
    import pickle

    import ray

    from pipelines.ingestion.ray_rows import ray_dataset

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False,
             object_store_memory=512 * 2**20,
             _node_ip_address=os.environ.get("READ_RAY_NODE_IP", "127.0.0.1"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        # Fractional CPUs: preparing actors must leave room for the read tasks, or Ray Data
        # waits for a CPU forever on a small host.
        dataset = ray_dataset([shard_set], read_cpus=0.25).map_batches(
            _RayPrepare, batch_size=2, batch_format="numpy",
            num_cpus=(os.cpu_count() - 0.25) / workers, concurrency=workers)
        iterator = iter(dataset.iter_batches(batch_size=1, prefetch_batches=4,
                                             batch_format="numpy"))
        started = time.perf_counter()
        pickle.loads(next(iterator)["batch"][0])
        first = time.perf_counter() - started
        time.sleep(step_s)
        waited, steady_start, done = 0.0, time.perf_counter(), 0
        for _ in range(batches):
            begin = time.perf_counter()
            try:
                batch = pickle.loads(next(iterator)["batch"][0])
            except StopIteration:
                break
            waited += time.perf_counter() - begin
            assert batch.images.shape[-2:] == (480, 640)
            done += 1
            time.sleep(step_s)
        total = time.perf_counter() - steady_start
    finally:
        ray.shutdown()
    return {"first_batch_s": first, "samples_per_s": 2 * done / total, "stall": waited / total}


def preprocessing_rate(shard_set, batches: int) -> float:
    """Samples per CPU second of the whole data path in one process (one thread)."""
    import torch

    torch.set_num_threads(1)
    data = loader(shard_set, 0)
    next(data)  # first shard read and tokenizer warm-up
    cpu = time.process_time()
    for _ in range(batches):
        next(data)
    return 2 * batches / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--batches", type=int, default=120, help="steady-state batches per path")
    parser.add_argument("--workers", type=int, default=2, help="loader processes of the new path")
    parser.add_argument("--step-ms", type=float, default=80.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-data", action="store_true",
                        help="also time Ray Data map_batches + iter_batches on the same shards")
    args = parser.parse_args()

    from pipelines.build_shards import write_samples
    from pipelines.shard_sets import resolve

    with tempfile.TemporaryDirectory(prefix="read-ingest-") as tmp:
        samples = make_samples(args.samples, args.seed)
        report = write_samples(samples, f"{tmp}/reason_seg/train", dataset="reason_seg",
                               split="train", shard_size_mb=2.0, min_shards=8)
        shard_set = resolve(tmp, "reason_seg/train")
        mean_kb = np.mean([len(s.image_bytes) for s in samples]) / 1e3
        print(f"data: {report.num_samples} samples, {mean_kb:.0f} KB JPEG each, "
              f"{report.num_shards} shards, {report.bytes / 1e6:.1f} MB; "
              f"{os.cpu_count()} CPUs; step {args.step_ms:.0f} ms per batch of 2")
        rate = preprocessing_rate(shard_set, args.batches // 2)
        print(f"preprocessing, 1 process: {rate:.1f} samples/s per core (goal >= 40)")
        step_s = args.step_ms / 1000
        print(f"{'path':28s} {'samples/s':>10s} {'stall':>7s} {'first batch':>12s}"
              f"   (a never-waiting step: {2 / step_s:.1f} samples/s)", flush=True)
        runs = {}
        paths = [("serial (training thread)", lambda: feed(shard_set, 0, args.batches, step_s)),
                 (f"{args.workers} loader processes",
                  lambda: feed(shard_set, args.workers, args.batches, step_s))]
        if args.ray_data:  # one pass over the data: at most samples / 2 - 1 steady batches
            paths.append((f"Ray Data, {args.workers} tasks", lambda: ray_data_feed(
                shard_set, args.workers, min(args.batches, args.samples // 2 - 1), step_s)))
        for name, run in paths:
            try:
                runs[name] = run()
            except Exception as error:  # e.g. Ray not starting on an overloaded machine
                print(f"{name:28s} not measured: {type(error).__name__}: {error}", flush=True)
                continue
            print(f"{name:28s} {runs[name]['samples_per_s']:10.1f} "
                  f"{100 * runs[name]['stall']:6.1f}% {runs[name]['first_batch_s']:11.2f}s",
                  flush=True)
    serial, new = (runs[name] for name, _ in paths[:2])
    print(f"ratio new/serial samples/s: {new['samples_per_s'] / serial['samples_per_s']:.2f}x; "
          f"stall goal < 5%: {'met' if new['stall'] < 0.05 else 'NOT met'}")

if __name__ == "__main__":
    main()
