"""Readers for the MS-COCO annotation files: captions (``captions_*.json``) and instances.

Both files share the ``images`` list; captions add ``annotations`` with ``caption`` strings,
instances add ``annotations`` with ``bbox`` in COCO's ``[x, y, width, height]`` pixel convention
(top-left corner) and a ``categories`` list. Boxes are given in both conventions because the
bottom-up features and torchvision's RoIAlign want corners ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mia.data.errors import DataFormatError, load_json, require, require_list

_NUMBER = (int, float)


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoCaption:
    id: int
    image_id: int
    caption: str


@dataclass(frozen=True)
class CocoBox:
    id: int
    image_id: int
    category_id: int
    bbox_xywh: tuple[float, float, float, float]
    area: float
    iscrowd: bool

    @property
    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        """Corner form ``(x1, y1, x2, y2)``: ``x2 = x + w``, ``y2 = y + h`` (no +1: COCO is continuous)."""
        x, y, w, h = self.bbox_xywh
        return (x, y, x + w, y + h)


@dataclass(frozen=True)
class CocoCaptions:
    path: Path
    images: dict[int, CocoImage]
    captions: list[CocoCaption]

    def by_image(self) -> dict[int, list[CocoCaption]]:
        """Captions grouped per image id, in file order."""
        out: dict[int, list[CocoCaption]] = defaultdict(list)
        for cap in self.captions:
            out[cap.image_id].append(cap)
        return dict(out)


@dataclass(frozen=True)
class CocoInstances:
    path: Path
    images: dict[int, CocoImage]
    boxes: list[CocoBox]
    categories: dict[int, str]

    def by_image(self) -> dict[int, list[CocoBox]]:
        """Boxes grouped per image id, in file order."""
        out: dict[int, list[CocoBox]] = defaultdict(list)
        for box in self.boxes:
            out[box.image_id].append(box)
        return dict(out)


def _read_images(data: dict, path: Path) -> dict[int, CocoImage]:
    images: dict[int, CocoImage] = {}
    for i, img in enumerate(require_list(data, "images", path)):
        rec = f"images[{i}]"
        image_id = require(img, "id", int, path, rec)
        rec = f"images[{i}] (id {image_id})"
        if image_id in images:
            raise DataFormatError(path, rec, "id", "duplicate image id")
        images[image_id] = CocoImage(
            id=image_id,
            file_name=require(img, "file_name", str, path, rec),
            width=require(img, "width", int, path, rec),
            height=require(img, "height", int, path, rec),
        )
    return images


def _check_image(image_id: int, images: dict[int, CocoImage], path: Path, rec: str) -> None:
    if image_id not in images:
        raise DataFormatError(path, rec, "image_id", f"image {image_id} is not in 'images'")


def read_coco_captions(path: str | os.PathLike) -> CocoCaptions:
    """Read ``captions_{train,val}2014.json`` (or any file in the COCO caption format)."""
    path = Path(path)
    data = load_json(path)
    images = _read_images(data, path)
    captions: list[CocoCaption] = []
    for i, ann in enumerate(require_list(data, "annotations", path)):
        rec = f"annotations[{i}]"
        ann_id = require(ann, "id", int, path, rec)
        rec = f"annotations[{i}] (id {ann_id})"
        image_id = require(ann, "image_id", int, path, rec)
        _check_image(image_id, images, path, rec)
        caption = require(ann, "caption", str, path, rec)
        if not caption.strip():
            raise DataFormatError(path, rec, "caption", "empty caption")
        captions.append(CocoCaption(id=ann_id, image_id=image_id, caption=caption))
    return CocoCaptions(path=path, images=images, captions=captions)


def read_coco_instances(path: str | os.PathLike) -> CocoInstances:
    """Read ``instances_{train,val}2014.json``: images, boxes (both conventions) and categories."""
    path = Path(path)
    data = load_json(path)
    images = _read_images(data, path)
    categories: dict[int, str] = {}
    for i, cat in enumerate(require_list(data, "categories", path)):
        rec = f"categories[{i}]"
        categories[require(cat, "id", int, path, rec)] = require(cat, "name", str, path, rec)
    boxes: list[CocoBox] = []
    for i, ann in enumerate(require_list(data, "annotations", path)):
        rec = f"annotations[{i}]"
        ann_id = require(ann, "id", int, path, rec)
        rec = f"annotations[{i}] (id {ann_id})"
        image_id = require(ann, "image_id", int, path, rec)
        _check_image(image_id, images, path, rec)
        category_id = require(ann, "category_id", int, path, rec)
        if category_id not in categories:
            raise DataFormatError(path, rec, "category_id", f"unknown category {category_id}")
        bbox = require(ann, "bbox", list, path, rec)
        if len(bbox) != 4 or not all(isinstance(v, _NUMBER) and not isinstance(v, bool)
                                     and math.isfinite(v) for v in bbox):
            # (json accepts NaN and Infinity literals: they would reach RoIAlign as NaN features)
            raise DataFormatError(path, rec, "bbox",
                                  f"expected 4 finite numbers [x, y, w, h], got {bbox}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataFormatError(path, rec, "bbox", f"negative width or height in {bbox}")
        boxes.append(CocoBox(
            id=ann_id,
            image_id=image_id,
            category_id=category_id,
            bbox_xywh=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
            area=float(require(ann, "area", _NUMBER, path, rec)),
            iscrowd=bool(require(ann, "iscrowd", int, path, rec)),
        ))
    return CocoInstances(path=path, images=images, boxes=boxes, categories=categories)
