"""Shard builds at RefCOCO scale: does the driver's and the object store's memory stay flat?

    python bench/build_scale.py [--sizes 1000 8000] [--refs 3] [--num-cpus 2]

For each size, writes a synthetic RefCOCO-style tree (COCO-sized 640x480 JPEGs, `--refs` refs
per image with a polygon annotation and two sentences each, a refs(unc).p pickle and an
instances.json, 90% train / 10% val) and builds refcoco/train and refcoco/val with
`pipelines/build_shards.py` on a local Ray of `--num-cpus` CPUs. Printed per size: wall time,
samples/s, and the peak, sampled every 0.2 s during the build, of the driver's resident memory
(above its level before the build, and absolute) and of the object store's used bytes.
Goal: peak memory at the largest size <= 1.5x that at the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

COLOURS = ("red", "green", "blue", "yellow", "white", "black")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def write_tree(root: Path, images: int, refs_per_image: int, seed: int) -> None:
    folder = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    coco_images, annotations, refs = [], [], []
    for index in range(images):
        rng = np.random.default_rng([seed, index])
        image_id = index + 1
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))
        polygons = []
        for _ in range(refs_per_image):
            center = rng.uniform([80, 80], [560, 400])
            angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
            radii = rng.uniform(25, 70, 8)
            points = np.stack([center[0] + radii * np.cos(angles),
                               center[1] + radii * np.sin(angles)], axis=1).round(2)
            polygons.append(points)
            cv2.fillPoly(image, [points.astype(np.int32)], [int(v) for v in rng.integers(0, 255, 3)])
        name = f"COCO_train2014_{image_id:012d}.jpg"
        (folder / name).write_bytes(cv2.imencode(".jpg", image,
                                                 [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        coco_images.append({"id": image_id, "file_name": name, "height": 480, "width": 640})
        split = "val" if index % 10 == 9 else "train"
        for points in polygons:
            ann_id = len(annotations) + 1
            x, y = points.min(axis=0)
            w, h = points.max(axis=0) - points.min(axis=0)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1,
                                "segmentation": [points.reshape(-1).tolist()], "iscrowd": 0,
                                "area": float(w * h), "bbox": [float(x), float(y), float(w),
                                                               float(h)]})
            sentences = [{"sent": f"the {rng.choice(COLOURS)} shape {rng.choice(PLACES)}",
                          "sent_id": 2 * ann_id + k} for k in range(2)]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id,
                         "category_id": 1, "split": split, "sentences": sentences,
                         "sent_ids": [s["sent_id"] for s in sentences]})
    dataset = root / "refer_seg" / "refcoco"
    dataset.mkdir(parents=True, exist_ok=True)
    (dataset / "instances.json").write_text(json.dumps(
        {"images": coco_images, "annotations": annotations,
         "categories": [{"id": 1, "name": "shape"}]}))
    with open(dataset / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)


def object_store_used() -> int:
    """Bytes in this Ray's object store now (Ray's own memory summary)."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Plasma memory usage ([\d.]+) MiB", text)
    return int(float(match.group(1)) * 2**20) if match else 0


class PeakSampler:
    """Peak driver RSS and object store use, sampled in a thread while a build runs."""

    def __init__(self, period_s: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process()
        self.period_s = period_s
        self.baseline = self.process.memory_info().rss
        self.rss = self.store = 0
        self.rss_absolute = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.process.memory_info().rss
            self.rss_absolute = max(self.rss_absolute, rss)
            self.rss = max(self.rss, rss - self.baseline)
            self.store = max(self.store, object_store_used())
            self._stop.wait(self.period_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from pipelines.build_shards import BuildOptions, build_shards

    ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=512 * 2**20,
             include_dashboard=False,
             log_to_driver=False, _node_ip_address=os.environ.get("READ_RAY_NODE_IP",
                                                                    "127.0.0.1"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="read-build-scale-") as tmp:
        for size in args.sizes:
            root, out = Path(tmp) / f"raw{size}", Path(tmp) / f"shards{size}"
            started = time.perf_counter()
            write_tree(root, size, args.refs, args.seed)
            generated = time.perf_counter() - started
            with PeakSampler() as peak:
                started = time.perf_counter()
                reports = build_shards(str(root), str(out), datasets=["refcoco"],
                                       splits=["train", "val"], options=BuildOptions())
                wall = time.perf_counter() - started
            samples = sum(r.num_samples for r in reports)
            assert samples == size and not any(r.quarantine for r in reports), reports
            rows.append((size, samples, sum(r.num_shards for r in reports), wall, peak.rss,
                         peak.store, generated, peak.rss_absolute))
    ray.shutdown()
    print(f"synthetic RefCOCO-style builds, {args.refs} refs per image, {args.num_cpus} CPUs")
    print(f"{'images':>7s} {'shards':>6s} {'wall s':>7s} {'samples/s':>9s} "
          f"{'driver +MB':>10s} {'driver MB':>9s} {'store MB':>8s}   (tree written in)")
    for size, samples, shards, wall, rss, store, generated, absolute in rows:
        print(f"{size:7d} {shards:6d} {wall:7.1f} {samples / wall:9.1f} {rss / 2**20:10.1f} "
              f"{absolute / 2**20:9.1f} {store / 2**20:8.1f}   ({generated:.0f} s)")
    small, large = rows[0], rows[-1]
    ratio = (large[7] + large[5]) / max(small[7] + small[5], 1)  # absolute driver RSS + store
    print(f"peak memory (driver + store) {large[0]} vs {small[0]} images: {ratio:.2f}x "
          f"(goal <= 1.5x)")


if __name__ == "__main__":
    main()
