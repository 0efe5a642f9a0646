"""A region store as a bottom-up TSV file, so a lab can share its extraction with the tools that
read Anderson et al.'s ``trainval_36`` format (and ``import_bottomup_tsv`` reads it back).

Each image becomes one row ``image_id, image_w, image_h, num_boxes, boxes, features`` with its
``num_boxes`` real boxes (padding rows are not written). The store holds float16 features, so
the TSV's float32 values are those float16 values: a re-import gives the store's features back
exactly, but they carry float16's precision, not the detector's float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mia.data.bottomup_tsv import RegionRecord, write_bottomup_tsv
from mia.data.store import open_store


def _records(store: Path) -> Iterator[RegionRecord]:
    with open_store(store, "region_features") as f:
        for row, image_id in enumerate(f["image_ids"][()]):
            n = int(f["num_boxes"][row])
            yield RegionRecord(int(image_id), int(f["image_w"][row]), int(f["image_h"][row]), n,
                               np.asarray(f["boxes"][row, :n], dtype=np.float32),
                               np.asarray(f["features"][row, :n], dtype=np.float32))


def export_bottomup_tsv(store: str | os.PathLike, out_tsv: str | os.PathLike) -> Path:
    """Write ``store`` (a ``region_features`` store) as a bottom-up TSV file, row by row."""
    return write_bottomup_tsv(out_tsv, _records(Path(store)))
