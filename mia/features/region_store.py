"""Writing ``region_features`` stores: one layout for every region source.

Downstream code must not be able to tell a store imported from the bottom-up TSVs from one pooled
on given boxes or extracted by a detector, so all of them go through :class:`RegionStoreWriter`:
the same datasets, dtypes, chunking and attribute keys (docs/CONTRACTS.md, ``regions_*``). Each
image gets exactly ``max_boxes`` rows; ``num_boxes`` records how many came from the source.
What fills the rows past ``num_boxes`` is the ``padding`` attribute: ``zeros`` (TSV, detectron2)
or ``whole_image_and_grid`` (given boxes: real features of the whole image and grid cells).
A detector's store (``bottom_up``) also holds what it saw in each box (:class:`BoxLabels`) and the
names of its classes and attributes, so a figure can name a region.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

PADDING_ZEROS = "zeros"
PADDING_GRID = "whole_image_and_grid"
#: Per-box datasets of a detector's store (what it saw in each box), (N, max_boxes) each.
LABEL_DATASETS = ("class_ids", "class_scores", "attribute_ids", "attribute_scores")


@dataclass(frozen=True)
class BoxLabels:
    """What a detector saw in each of an image's boxes (rows aligned with its boxes): the top
    object class and its probability, the top attribute and its probability."""

    class_ids: np.ndarray
    class_scores: np.ndarray
    attribute_ids: np.ndarray
    attribute_scores: np.ndarray


def grid_boxes(width: float, height: float, count: int) -> np.ndarray:
    """``count`` padding boxes (x1, y1, x2, y2): the whole image, then 2x2, 3x3, ... cells."""
    out: list[tuple[float, float, float, float]] = []
    cells = 1
    while len(out) < count:
        for row in range(cells):
            for col in range(cells):
                out.append((width * col / cells, height * row / cells,
                            width * (col + 1) / cells, height * (row + 1) / cells))
        cells += 1
    return np.asarray(out[:count], dtype=np.float32).reshape(count, 4)


def pad_with_grid_boxes(boxes: np.ndarray, width: float, height: float, total: int
                        ) -> tuple[np.ndarray, int]:
    """First ``total`` of ``boxes`` then grid boxes up to ``total``; returns (boxes, real count)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[:total]
    count = len(boxes)
    return np.concatenate([boxes, grid_boxes(width, height, total - count)]), count


class RegionStoreWriter:
    """Fills the datasets of an open :func:`mia.data.store.atomic_h5` file, row by row.

    ``rows`` known: datasets are created at full size and rows written by index (the TSV import
    writes each image at its Karpathy position as rows stream in). ``rows=None``: rows are
    appended and the datasets grow. Datasets are created on the first :meth:`put`, when the
    feature width ``C`` is known.
    """

    def __init__(self, f: h5py.File, max_boxes: int, rows: int | None, *, source: str,
                 padding: str, class_names: Sequence[str] | None = None,
                 attribute_names: Sequence[str] | None = None) -> None:
        self.f = f
        self.max_boxes = max_boxes
        # A detector's store also says what it saw in each box (LABEL_DATASETS).
        self.labelled = class_names is not None
        if self.labelled:
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["attribute_names"] = json.dumps(list(attribute_names or []))
        self.rows = rows
        self.count = 0  # rows written
        self._seen: set[int] = set()  # image ids written: a duplicate stops the run at once
        self.filled: np.ndarray | None = None if rows is None else np.zeros(rows, dtype=bool)
        f.attrs["source"] = source
        f.attrs["max_boxes"] = max_boxes
        f.attrs["padding"] = padding
        f.attrs["skipped_images"] = "[]"

    def _create(self, channels: int) -> None:
        n = self.rows if self.rows is not None else 0
        maxn = self.rows if self.rows is not None else None
        b = self.max_boxes

        def make(name: str, shape: tuple[int, ...], dtype: type) -> None:
            self.f.create_dataset(name, shape=(n, *shape), maxshape=(maxn, *shape), dtype=dtype,
                                  chunks=(1, *shape) if shape else (min(1024, maxn or 1024),))

        make("image_ids", (), np.int64)
        make("features", (b, channels), np.float16)
        make("boxes", (b, 4), np.float32)
        make("num_boxes", (), np.int32)
        make("image_w", (), np.int32)
        make("image_h", (), np.int32)
        if self.labelled:
            for name in LABEL_DATASETS:
                make(name, (b,), np.int32 if name.endswith("_ids") else np.float32)

    def put(self, image_id: int, features: np.ndarray, boxes: np.ndarray, num_boxes: int,
            image_w: int, image_h: int, row: int | None = None,
            labels: BoxLabels | None = None) -> None:
        """Write one image. ``features`` (n, C) and ``boxes`` (n, 4) with n <= max_boxes rows
        are zero-padded to ``max_boxes``; ``num_boxes`` is stored as given (capped). A labelled
        store needs ``labels`` (ids padded with -1, scores with 0)."""
        if self.labelled != (labels is not None):
            raise ValueError(f"image_id {image_id}: box labels "
                             f"{'missing' if self.labelled else 'given'} for a store "
                             f"{'with' if self.labelled else 'without'} class names")
        features = np.asarray(features, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32)
        if "features" not in self.f:
            self._create(features.shape[1])
        b, channels = self.max_boxes, self.f["features"].shape[2]
        if features.ndim != 2 or features.shape[1] != channels or len(boxes) != len(features):
            raise ValueError(f"image_id {image_id}: features {features.shape} / boxes "
                             f"{boxes.shape} do not fit ({b}, {channels}) / ({b}, 4)")
        if int(image_id) in self._seen:
            raise ValueError(f"image_id {image_id} is written to the region store twice; every "
                             f"image must appear once (check the image list for duplicates)")
        n = min(len(features), b)
        feats = np.zeros((b, channels), dtype=np.float16)
        with np.errstate(over="ignore"):
            feats[:n] = features[:n]
        if not np.isfinite(feats).all():
            why = ("overflow float16 (|x| > 65504)" if np.isfinite(features).all()
                   else "hold NaN or inf")
            raise ValueError(f"image_id {image_id}: features {why}; refusing to store values "
                             f"that would train with loss=nan")
        padded = np.zeros((b, 4), dtype=np.float32)
        padded[:n] = boxes[:n]
        if row is None:
            row = self.count
            if self.rows is None:
                for name in self._datasets():
                    self.f[name].resize(row + 1, axis=0)
        elif self.filled is not None:
            self.filled[row] = True
        self.f["image_ids"][row] = image_id
        self.f["features"][row] = feats
        self.f["boxes"][row] = padded
        self.f["num_boxes"][row] = min(num_boxes, b)
        self.f["image_w"][row] = image_w
        self.f["image_h"][row] = image_h
        if labels is not None:
            for name in LABEL_DATASETS:
                padded_labels = np.full(b, -1 if name.endswith("_ids") else 0,
                                        dtype=self.f[name].dtype)
                padded_labels[:n] = np.asarray(getattr(labels, name))[:n]
                self.f[name][row] = padded_labels
        self._seen.add(int(image_id))
        self.count += 1

    def finish(self, skipped: Sequence[dict] = ()) -> None:
        """Shrink to the rows written (append mode, or skipped images) and record skips."""
        if "features" not in self.f:
            raise ValueError("no image was written to the region store")
        if self.rows is not None and self.count < self.rows:
            # Sequential writers (boxes, detectron2) leave the skipped rows at the end.
            for name in self._datasets():
                self.f[name].resize(self.count, axis=0)
        self.f.attrs["skipped_images"] = json.dumps(list(skipped))

    def _datasets(self) -> tuple[str, ...]:
        base = ("image_ids", "features", "boxes", "num_boxes", "image_w", "image_h")
        return base + (LABEL_DATASETS if self.labelled else ())


def box_names(f: h5py.File, row: int, attribute_threshold: float = 0.1) -> list[str] | None:
    """What a detector saw in each box of row ``row`` of an open region store ("white dog";
    the attribute only when its probability reaches ``attribute_threshold``, the bottom-up demo's
    ``attr_thresh``), padding rows ""; None for stores without box labels."""
    if "class_ids" not in f or "class_names" not in f.attrs:
        return None
    classes = json.loads(f.attrs["class_names"])
    attributes = json.loads(f.attrs.get("attribute_names", "[]"))
    names = []
    for cls, attr, score in zip(f["class_ids"][row], f["attribute_ids"][row],
                                f["attribute_scores"][row], strict=True):
        if cls < 0:
            names.append("")
            continue
        prefix = f"{attributes[attr]} " if 0 <= attr < len(attributes) and \
            score >= attribute_threshold else ""
        names.append(prefix + classes[cls])
    return names

