"""Synthetic scenes as upstream's semantic-segmentation layouts (label maps and part files).

Each layout names the shapes its own way, so every class rule of the readers is exercised:

* ADE20K: one class per (colour, kind), e.g. "red circle"; label value = class id + 1, the
  background 0 ("other", ignored); the class list is written as `ade20k/ade20k_classes.json`.
* COCO-Stuff: one class per kind, plus "wall-other" for the background and "floor-wood"
  (hyphenated, so upstream ignores them) and a one-pixel unlabelled (255) frame; the list is
  `cocostuff/cocostuff_classes.txt` with upstream's "0: unlabeled" header line.
* Mapillary Vistas: one class per colour ("Red Object") and "Unlabeled" for the background,
  which upstream keeps as a class; label maps are palette PNGs, as Mapillary ships them.
* PACO-LVIS: objects ("circle_(shape)": an LVIS suffix upstream strips) and their "top" and
  "bottom" parts, one annotation per instance, on the COCO images.
* PASCAL-Part: "kind:top" / "kind:bottom" parts only.

Masks come from the scene's visible masks, so they are exact.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from dataset_builders.synthetic.scene import Scene
from dataset_builders.synthetic.vocabulary import COLOURS, KINDS

ADE20K_CLASSES = [f"{c.name} {k.name}" for k in KINDS for c in COLOURS]
COCOSTUFF_CLASSES = [k.name for k in KINDS] + ["wall-other", "floor-wood"]
COCOSTUFF_BACKGROUND = COCOSTUFF_CLASSES.index("wall-other")
MAPILLARY_LABELS = [(f"object--{c.name}", f"{c.name.capitalize()} Object", list(c.rgb))
                    for c in COLOURS] + [("void--unlabeled", "Unlabeled", [0, 0, 0])]
MAPILLARY_BACKGROUND = len(MAPILLARY_LABELS) - 1
PACO_OBJECT_NAMES = {k.name: (f"{k.name}_(shape)" if k.name in ("circle", "star") else k.name)
                     for k in KINDS}
PARTS = ("top", "bottom")
UNLABELLED = 255


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    """An 8-bit PNG of class indices: grey, or palette-indexed (the indices stay the values)."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    size = (data.shape[1], data.shape[0])
    image = Image.frombytes("L" if palette is None else "P", size, data.tobytes())
    if palette is not None:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ade20k_label(scene: Scene) -> np.ndarray:
    label = np.zeros((scene.height, scene.width), dtype=np.uint8)
    for shape in scene.shapes:
        class_id = ADE20K_CLASSES.index(shape.name)
        label[shape.visible_mask.astype(bool)] = class_id + 1
    return label


def cocostuff_label(scene: Scene) -> np.ndarray:
    label = np.full((scene.height, scene.width), COCOSTUFF_BACKGROUND, dtype=np.uint8)
    for shape in scene.shapes:
        label[shape.visible_mask.astype(bool)] = COCOSTUFF_CLASSES.index(shape.kind)
    label[[0, -1], :] = UNLABELLED
    label[:, [0, -1]] = UNLABELLED
    return label


def mapillary_label(scene: Scene) -> np.ndarray:
    label = np.full((scene.height, scene.width), MAPILLARY_BACKGROUND, dtype=np.uint8)
    names = [name for name, _, _ in MAPILLARY_LABELS]
    for shape in scene.shapes:
        label[shape.visible_mask.astype(bool)] = names.index(f"object--{shape.colour}")
    return label


def mapillary_palette() -> list[int]:
    flat = [v for _, _, rgb in MAPILLARY_LABELS for v in rgb]
    return flat + [0] * (768 - len(flat))


def write_class_lists(root: Path) -> None:
    """The class lists the readers look for next to each label-map dataset."""
    (root / "ade20k").mkdir(parents=True, exist_ok=True)
    (root / "ade20k" / "ade20k_classes.json").write_text(json.dumps(ADE20K_CLASSES),
                                                         encoding="utf-8")
    (root / "cocostuff").mkdir(parents=True, exist_ok=True)
    lines = ["0: unlabeled"] + [f"{i + 1}: {name}" for i, name in enumerate(COCOSTUFF_CLASSES)]
    (root / "cocostuff" / "cocostuff_classes.txt").write_text("\n".join(lines) + "\n",
                                                              encoding="utf-8")
    (root / "mapillary").mkdir(parents=True, exist_ok=True)
    config = {"labels": [{"name": n, "readable": r, "color": c, "instances": True,
                          "evaluate": True} for n, r, c in MAPILLARY_LABELS],
              "version": "synthetic 2.0"}
    (root / "mapillary" / "config_v2.0.json").write_text(json.dumps(config, indent=1),
                                                         encoding="utf-8")


def write_label_map(path: Path, label: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(label, palette))


# ---------------------------------------------------------------- COCO part files

def _rle(mask: np.ndarray) -> dict[str, Any]:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def part_masks(scene: Scene, index: int) -> dict[str, np.ndarray]:
    """The visible pixels of shape `index` above ("top") and below ("bottom") its centre."""
    shape = scene.shapes[index]
    rows = np.arange(scene.height)[:, None]
    visible = shape.visible_mask.astype(bool)
    above = rows < shape.center[1]
    return {"top": visible & above, "bottom": visible & ~above}


class PartFile:
    """A COCO annotation file under construction (images, annotations, categories)."""

    def __init__(self, categories: list[str]) -> None:
        self.categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(categories)]
        self.ids = {n: i + 1 for i, n in enumerate(categories)}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(self, image_id: int, file_name: str, scene: Scene) -> None:
        self.images.append({"id": image_id, "file_name": file_name, "height": scene.height,
                            "width": scene.width})

    def add(self, image_id: int, category: str, mask: np.ndarray,
            segmentation: Any = None) -> None:
        if not mask.any():
            return
        ys, xs = np.nonzero(mask)
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id,
            "category_id": self.ids[category],
            "segmentation": segmentation if segmentation is not None else _rle(mask),
            "area": float(mask.sum()), "iscrowd": 0,
            "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
        })

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"info": {"description": "synthetic shapes"}, "images": self.images,
                "annotations": self.annotations, "categories": self.categories}
        path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def paco_categories() -> list[str]:
    objects = [PACO_OBJECT_NAMES[k.name] for k in KINDS]
    return objects + [f"{PACO_OBJECT_NAMES[k.name]}:{part}" for k in KINDS for part in PARTS]


def pascal_part_categories() -> list[str]:
    return [f"{k.name}:{part}" for k in KINDS for part in PARTS]


def add_paco(file: PartFile, image_id: int, scene: Scene) -> None:
    """Every shape as an object annotation (its polygon when nothing covers it) and two parts."""
    for index, shape in enumerate(scene.shapes):
        name = PACO_OBJECT_NAMES[shape.kind]
        polygon = None if scene.occluders_of(index) else [shape.flat_polygon()]
        file.add(image_id, name, shape.visible_mask.astype(bool), polygon)
        for part, mask in part_masks(scene, index).items():
            file.add(image_id, f"{name}:{part}", mask)


def add_pascal_part(file: PartFile, image_id: int, scene: Scene) -> None:
    for index, shape in enumerate(scene.shapes):
        for part, mask in part_masks(scene, index).items():
            file.add(image_id, f"{shape.kind}:{part}", mask)
