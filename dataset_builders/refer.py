"""Reader of REFER-format datasets (RefCOCO/+/g, RefCLEF, R-RefCOCO, FP-RefCOCO/+/g).

`refer_seg/<dataset>/refs(<splitBy>).p` (a pickle of plain ref dicts, loaded with the restricted
unpickler) plus `instances.json` (COCO). One Sample per image of the split, as upstream's
evaluation sees it: a Target per ref (mask from its ann_id) and a Query per sentence. Problems
with the dataset files themselves raise; a record upstream's loader would fail on is
quarantined; anything else unusual is kept with a `WarningEntry` (dataset_builders.validation).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_builders.masks import NO_TARGET_ANN_ID, union_of_annotations
from dataset_builders.safe_pickle import load_plain
from dataset_builders.sample import (
    QuarantineEntry,
    Query,
    Sample,
    Target,
    WarningEntry,
    make_key,
)
from dataset_builders.validation import (
    DEFAULT_VALIDATION,
    ValidationConfig,
    check_coco_segmentation,
    check_image,
    check_size,
    check_text,
    check_true_premise_mask,
    coco_segmentation_warnings,
)

REFER_ROOT = Path("refer_seg")
COCO_IMAGE_DIR = REFER_ROOT / "images" / "mscoco" / "images" / "train2014"
CLEF_IMAGE_DIR = REFER_ROOT / "images" / "saiapr_tc-12"

# The splitBy READ/SESAME open per dataset (`READ:dataloaders/refer_seg_dataset.py`
# determine_split_by), then the classic REFER names.
DEFAULT_SPLIT_BY: dict[str, tuple[str, ...]] = {
    "refclef": ("unc", "berkeley"),
    "refcoco": ("unc_exclude_unified", "unc", "google"),
    "refcoco+": ("unc_exclude_unified", "unc"),
    "refcocog": ("umd_exclude_unified", "umd", "google"),
    "R-refcoco": ("unc_exclude_unified", "unc"),
    "R-refcoco+": ("unc_exclude_unified", "unc"),
    "R-refcocog": ("umd_exclude_unified", "umd"),
    "fprefcoco": ("berkeley_exclude_unified",),
    "fprefcoco+": ("berkeley_exclude_unified",),
    "fprefcocog": ("berkeley_exclude_unified",),
}
LETTER_TEST_SPLITS = ("testA", "testB", "testC")
IMAGE_ID_DIGITS = 12  # COCO image ids have at most 12 digits
UPSTREAM_ORDER_KEY = "upstream_order"  # Sample.source: the image's place in upstream's walk


class ReferFormatError(ValueError):
    """A dataset-level file (refs pickle, instances.json) is missing or malformed."""


def refs_path(root: str | Path, dataset: str, split_by: str | None = None) -> Path:
    """The refs pickle to read: the given splitBy, else the upstream default, else any present."""
    folder = Path(root) / REFER_ROOT / dataset
    if split_by is not None:
        path = folder / f"refs({split_by}).p"
        if not path.is_file():
            raise ReferFormatError(f"refs file not found: {path}")
        return path
    for name in DEFAULT_SPLIT_BY.get(dataset, ()):
        path = folder / f"refs({name}).p"
        if path.is_file():
            return path
    present = sorted(folder.glob("refs(*).p"))
    if present:
        return present[0]
    raise ReferFormatError(
        f"no refs(<splitBy>).p in {folder}; tried {list(DEFAULT_SPLIT_BY.get(dataset, ()))}"
    )


def split_matches(wanted: str, ref_split: str) -> bool:
    """REFER's getRefIds rule: testA/B/C by letter, "test" any test split, else equality."""
    if wanted in LETTER_TEST_SPLITS:
        return ref_split.startswith("test") and wanted[-1] in ref_split[len("test") :]
    if wanted == "test":
        return "test" in ref_split
    return ref_split == wanted


def upstream_image_order(image_ids_in_ref_order: list[int]) -> list[int]:
    """The order upstream's evaluation walks images: `READ:dataloaders/refer.py` getImgIds
    returns ``list(set(image ids of the split's refs))``, so CPython's set order decides."""
    return list(set(image_ids_in_ref_order))


def image_key(image_id: int) -> str:
    """The image id zero-padded (COCO ids have at most 12 digits), so keys sort numerically."""
    return f"{int(image_id):0{IMAGE_ID_DIGITS}d}"


def image_folder(root: str | Path, dataset: str) -> Path:
    return Path(root) / (CLEF_IMAGE_DIR if dataset == "refclef" else COCO_IMAGE_DIR)


def _load_refs(path: Path) -> list[dict[str, Any]]:
    refs = load_plain(path)  # raises UnsafePickleError for anything but plain data
    if not isinstance(refs, list):
        raise ReferFormatError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def _load_instances(path: Path) -> tuple[dict[int, dict], dict[int, Any]]:
    if not path.is_file():
        raise ReferFormatError(f"instances file not found: {path}")
    try:
        instances = json.loads(path.read_bytes())
        images = {int(im["id"]): im for im in instances["images"]}
        segmentations = {int(a["id"]): a.get("segmentation") for a in instances["annotations"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ReferFormatError(f"{path}: not a COCO instances file: {err}") from err
    return images, segmentations


@dataclass
class ReferIndex:
    """One REFER split loaded once: its refs grouped by image, the images and annotations.

    Builders load it once per process and read disjoint sets of image ids from it in parallel
    (`iter_refer_images`); malformed refs found while grouping are kept in `quarantine`.
    """

    dataset: str
    split: str
    ref_file: Path
    instances_file: Path
    images: dict[int, dict]
    segmentations: dict[int, Any]
    refs_by_image: dict[int, list[dict[str, Any]]]
    quarantine: list[QuarantineEntry]
    upstream_order: dict[int, int]  # image id -> its place in upstream's evaluation walk
    settings: ValidationConfig = DEFAULT_VALIDATION

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.refs_by_image)

    def file_name(self, image_id: int) -> str | None:
        info = self.images.get(image_id)
        return None if info is None else str(info["file_name"])


def load_refer_index(
    root: str | Path,
    dataset: str,
    split: str,
    split_by: str | None = None,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> ReferIndex:
    """Load the refs pickle and instances.json of one split (dataset-level errors raise)."""
    ref_file = refs_path(root, dataset, split_by)
    instances_file = ref_file.parent / "instances.json"
    refs = _load_refs(ref_file)
    images, segmentations = _load_instances(instances_file)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    quarantine = []
    in_ref_order: list[int] = []
    for position, ref in enumerate(refs):
        if not isinstance(ref, dict) or "image_id" not in ref or "split" not in ref:
            quarantine.append(
                QuarantineEntry(str(ref_file), f"ref#{position}", "ref lacks image_id or split"))
            continue
        if split_matches(split, str(ref["split"])):
            by_image[int(ref["image_id"])].append(ref)
            in_ref_order.append(int(ref["image_id"]))
    # Upstream's evaluation walks the images in REFER.getImgIds order and draws its prompt
    # templates in that order (read_model.template_draws); each image records its place in it.
    upstream_order = {image_id: i for i, image_id in enumerate(upstream_image_order(in_ref_order))}
    return ReferIndex(dataset, split, ref_file, instances_file, images, segmentations,
                      dict(by_image), quarantine, upstream_order, settings)


def iter_refer_images(
    index: ReferIndex, image_ids: Iterable[int], image_folder_path: Path
) -> Iterator[Sample | QuarantineEntry]:
    """Samples of the given images of a loaded split (images read from `image_folder_path`)."""
    context = _Context(index.dataset, index.split, index.ref_file, index.instances_file,
                       Path(image_folder_path), index.segmentations, index.settings)
    for image_id in image_ids:
        yield from _image_sample(context, image_id, index.images.get(image_id),
                                 index.refs_by_image.get(image_id, []),
                                 index.upstream_order.get(image_id, -1))


def iter_refer(
    root: str | Path,
    dataset: str,
    split: str,
    split_by: str | None = None,
    settings: ValidationConfig = DEFAULT_VALIDATION,
) -> Iterator[Sample | QuarantineEntry]:
    """Samples of one REFER dataset split, one per image, in image-id order."""
    index = load_refer_index(root, dataset, split, split_by, settings)
    yield from index.quarantine
    yield from iter_refer_images(index, index.image_ids, image_folder(root, dataset))


@dataclass(frozen=True)
class _Context:
    """What every image of one dataset split shares."""

    dataset: str
    split: str
    ref_file: Path
    instances_file: Path
    image_folder: Path
    segmentations: Mapping[int, Any]
    settings: ValidationConfig


def _image_sample(
    ctx: _Context,
    image_id: int,
    image_info: dict | None,
    refs: list[dict[str, Any]],
    upstream_position: int,
) -> Iterator[Sample | QuarantineEntry]:
    ref_ids = ",".join(str(r.get("ref_id")) for r in refs)
    record = f"image {image_id} (refs {ref_ids})"
    if image_info is None:
        yield QuarantineEntry(str(ctx.instances_file), record, "image_id not in instances.json")
        return
    image_path = ctx.image_folder / str(image_info["file_name"])
    if not image_path.is_file():
        yield QuarantineEntry(str(image_path), record, f"image missing: {image_path} not found")
        return
    image_bytes = image_path.read_bytes()
    size, reason = check_image(image_bytes)
    if reason is None:  # masks are drawn at instances.json's size, so the image must have it
        reason = check_size(size, (int(image_info["width"]), int(image_info["height"])))
    if reason:
        yield QuarantineEntry(str(image_path), record, reason)
        return
    width, height = size
    targets = []
    warnings: list[str] = []
    for ref in refs:
        target, reason = _target(ctx, ref, width, height, warnings)
        if reason:
            yield QuarantineEntry(str(ctx.ref_file), f"ref {ref.get('ref_id')}", reason)
        elif target is not None:
            targets.append(target)
    if not targets:  # every ref was quarantined above (with its reason) or has no sentence
        if warnings:
            yield QuarantineEntry(str(ctx.ref_file), record,
                                  "no ref with a sentence: " + "; ".join(warnings[:3]))
        return
    yield Sample(
        key=make_key(ctx.dataset, ctx.split, image_key(image_id)),
        dataset=ctx.dataset,
        split=ctx.split,
        image_bytes=image_bytes,
        width=width,
        height=height,
        targets=targets,
        source={
            "image": str(image_path),
            "annotation": str(ctx.ref_file),
            "instances": str(ctx.instances_file),
            "image_id": str(image_id),
            UPSTREAM_ORDER_KEY: str(upstream_position),
        },
        warnings=[WarningEntry(str(ctx.ref_file), record, w) for w in warnings],
    )


def sentence_exists(sentence: Mapping[str, Any]) -> bool:
    """FP-RefCOCO's is_false_premise wins over R-RefCOCO's exist; neither means it exists."""
    if "is_false_premise" in sentence:
        return not bool(sentence["is_false_premise"])
    if "exist" in sentence:
        return bool(sentence["exist"])
    return True


def _target(
    ctx: _Context, ref: dict[str, Any], width: int, height: int, warnings: list[str]
) -> tuple[Target | None, str | None]:
    """The ref's target, or why upstream would fail on it; unusual details go to `warnings`."""
    where = f"ref {ref.get('ref_id')}"
    ann_ids = ref.get("ann_id")
    ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
    for ann_id in ids:
        if ann_id == NO_TARGET_ANN_ID:
            continue
        if ann_id not in ctx.segmentations:
            return None, f"ann_id {ann_id!r} not in instances.json"
        segmentation = ctx.segmentations[ann_id]
        reason = check_coco_segmentation(segmentation, width, height)
        if reason:
            return None, f"ann {ann_id}: {reason}"
        warnings += [f"{where}, ann {ann_id}: {w}"
                     for w in coco_segmentation_warnings(segmentation, width, height, ctx.settings)]
    queries = []
    for position, sentence in enumerate(ref.get("sentences") or []):
        text = sentence.get("sent") if isinstance(sentence, dict) else None
        if not isinstance(text, str):
            return None, f"sentence {position}: query text is not a string: {text!r}"
        reason = check_text(text)
        if reason:
            warnings.append(f"{where}, sentence {position}: {reason}")
        queries.append(
            Query(
                text=text,
                is_sentence=False,
                exists=sentence_exists(sentence),
                gt_sent=str(sentence.get("gt_sent") or ""),
                query_id=str(sentence.get("sent_id", f"{ref.get('ref_id')}:{position}")),
            )
        )
    if not queries:
        warnings.append(f"{where}: ref has no sentences (nothing to train or score on)")
        return None, None
    mask = union_of_annotations(ids, ctx.segmentations, height, width)
    if any(q.exists for q in queries):
        reason = check_true_premise_mask(mask)
        if reason:
            warnings.append(f"{where}: {reason} (kept: upstream trains and scores it as it is)")
    return Target(mask=mask, queries=queries, target_id=str(ref.get("ref_id"))), None
