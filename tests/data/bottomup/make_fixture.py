"""Regenerate ``coco_mini_6.tsv``: a bottom-up-attention TSV, in the exact real format, for coco-mini.

Boxes are the images' real COCO instance boxes (x1, y1, x2, y2), largest first, padded with the
whole image and its quadrants to ``NUM_BOXES`` per image. Features are deterministic random
float32 (2048-d, seeded by image id): real Faster R-CNN features would need the detector, and
only the format and box values matter to the tests. Six boxes per image keep the file ~2 MB.

Run: ``python tests/data/bottomup/make_fixture.py``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mia.data.bottomup_tsv import FEATURE_DIM, RegionRecord, write_bottomup_tsv
from mia.data.coco import read_coco_instances

HERE = Path(__file__).resolve().parent
INSTANCES = HERE.parent / "coco-mini" / "instances.json"
OUT = HERE / "coco_mini_6.tsv"
NUM_BOXES = 6


def fixture_records(instances_path: Path = INSTANCES, num_boxes: int = NUM_BOXES
                    ) -> list[RegionRecord]:
    """The fixture's records, in image-id order."""
    instances = read_coco_instances(instances_path)
    by_image = instances.by_image()
    records = []
    for image_id in sorted(instances.images):
        img = instances.images[image_id]
        w, h = float(img.width), float(img.height)
        real = sorted(by_image.get(image_id, []), key=lambda b: (-b.area, b.id))
        boxes = [b.bbox_xyxy for b in real]
        boxes += [(0.0, 0.0, w, h), (0.0, 0.0, w / 2, h / 2), (w / 2, 0.0, w, h / 2),
                  (0.0, h / 2, w / 2, h), (w / 2, h / 2, w, h)] * num_boxes
        rng = np.random.default_rng(image_id)
        features = rng.gamma(1.0, 0.5, size=(num_boxes, FEATURE_DIM)).astype(np.float32)
        records.append(RegionRecord(image_id=image_id, image_w=img.width, image_h=img.height,
                                    num_boxes=num_boxes,
                                    boxes=np.array(boxes[:num_boxes], dtype=np.float32),
                                    features=features))
    return records


if __name__ == "__main__":
    path = write_bottomup_tsv(OUT, fixture_records())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
