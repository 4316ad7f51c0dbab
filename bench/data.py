"""Samples/s delivered from shards against reading the upstream folders per sample, same run.

    python bench/data.py [--images 240] [--seed 0] [--work DIR] [--num-cpus 2]

1. Generates a synthetic dataset in the upstream layouts (ReasonSeg folders, REFER refcoco).
2. Builds shards with Ray Data (`build_shards`): prints build samples/s and MB/s.
3. Delivers every sample in one process, both ways, producing the same thing (decoded RGB
   image + all target masks of the image):
   - upstream folders: per sample JSON parse + polygon rasterisation (ReasonSeg, upstream-exact)
     or pycocotools polygon decoding (REFER; the pickle and instances.json are loaded once,
     outside the timing, as upstream's REFER does at start-up) + JPEG read and decode;
   - shards: `rank_samples` (verified tar stream, JSON, lossless PNG masks) + JPEG decode.
   Prints both rates and their ratio (goal >= 3x per core).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dataset_builders.masks import rasterize_labelme
from dataset_builders.safe_pickle import load_plain
from pipelines.build_shards import build_shards
from pipelines.ingestion.sequential import rank_samples
from pipelines.shard_sets import ShardSet, resolve

REASON_SPLITS = ("train", "val", "test")
REFER_DATASET = "refcoco"
REFER_SPLITS = ("train", "val", "testA", "testB")


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def read_image_file(path: Path) -> np.ndarray:
    """What upstream does per sample: cv2.imread then BGR -> RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def upstream_reason_seg(root: Path) -> int:
    count = 0
    for split in REASON_SPLITS:
        for image_path in sorted((root / "reason_seg" / "ReasonSeg" / split).glob("*.jpg")):
            raw = image_path.with_suffix(".json").read_bytes()
            try:
                anno = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                anno = json.loads(raw.decode("cp1252"))
            image = read_image_file(image_path)
            mask = rasterize_labelme(anno["shapes"], image.shape[0], image.shape[1])
            count += int(mask.size > 0)
    return count


def load_refer(root: Path) -> tuple[dict[int, dict], dict[int, dict], list[dict]]:
    """Upstream's REFER start-up: the refs pickle and instances.json into lookup tables."""
    folder = root / "refer_seg" / REFER_DATASET
    refs = load_plain(next(folder.glob("refs(*).p")))
    instances = json.loads((folder / "instances.json").read_bytes())
    images = {im["id"]: im for im in instances["images"]}
    annotations = {a["id"]: a for a in instances["annotations"]}
    return images, annotations, refs


def upstream_refer(root: Path, images: dict[int, dict], annotations: dict[int, dict],
                   refs: list[dict]) -> int:
    from pycocotools import mask as coco_mask

    by_image: dict[int, list[dict]] = defaultdict(list)
    for ref in refs:
        if ref["split"] in REFER_SPLITS:
            by_image[ref["image_id"]].append(ref)
    folder = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    count = 0
    for image_id in sorted(by_image):
        info = images[image_id]
        image = read_image_file(folder / info["file_name"])
        h, w = image.shape[:2]
        for ref in by_image[image_id]:
            segmentation = annotations[ref["ann_id"]]["segmentation"]
            rles = coco_mask.frPyObjects(segmentation, h, w) if isinstance(
                segmentation, list) else [segmentation]
            parts = coco_mask.decode(rles)
            mask = (parts.reshape(h, w, -1).max(axis=2) > 0).astype(np.uint8)
            assert mask.shape == (h, w)
        count += 1
    return count


def from_shards(sources: list[ShardSet]) -> int:
    count = 0
    for sample in rank_samples(sources):
        image = decode_jpeg(sample.image_bytes)
        count += int(image.size > 0 and all(t.mask.shape == image.shape[:2]
                                            for t in sample.targets))
    return count


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="delivery passes; best is kept")
    args = parser.parse_args()

    import ray

    from dataset_builders.synthetic import generate_dataset

    work = Path(args.work or tempfile.mkdtemp(prefix="read-bench-"))
    root, out = work / "dataset", work / "shards"
    generate_dataset(root, seed=args.seed, images=args.images)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    reports, build_s = timed(build_shards, str(root), str(out),
                             datasets=["reason_seg", REFER_DATASET])
    built = sum(r.num_samples for r in reports)
    megabytes = sum(r.bytes for r in reports) / 1e6
    ray.shutdown()

    sources = [resolve(str(out), r.name) for r in reports if r.num_samples]
    refer_tables, refer_init_s = timed(load_refer, root)
    shard_s = upstream_s = float("inf")
    for _ in range(args.repeats):
        shard_n, seconds = timed(from_shards, sources)
        shard_s = min(shard_s, seconds)
        reason_n, reason_s = timed(upstream_reason_seg, root)
        refer_n, refer_s = timed(upstream_refer, root, *refer_tables)
        upstream_s = min(upstream_s, reason_s + refer_s)
    upstream_n = reason_n + refer_n
    if shard_n != upstream_n or shard_n != built:
        raise SystemExit(f"sample counts differ: shards {shard_n}, upstream {upstream_n}, "
                         f"built {built}")

    print(f"dataset: {args.images} synthetic images -> {built} samples "
          f"({reason_n} ReasonSeg, {refer_n} {REFER_DATASET}), {megabytes:.2f} MB of shards")
    print(f"build (Ray Data, {args.num_cpus} CPUs): {build_s:.1f} s, "
          f"{built / build_s:.1f} samples/s, {megabytes / build_s:.2f} MB/s")
    print(f"upstream folders, 1 process: {upstream_n / upstream_s:.1f} samples/s "
          f"(+ {refer_init_s:.2f} s REFER start-up, not counted)")
    print(f"shards, 1 process:           {shard_n / shard_s:.1f} samples/s")
    print(f"ratio shards / upstream per core: {(upstream_s / shard_s):.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
