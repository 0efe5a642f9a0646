"""Pre-training scenes of the demo world: its ImageNet / Visual Genome.

The paper's features come from networks pre-trained on OTHER labelled data (ResNet-152 on
ImageNet for the grid, Faster R-CNN on Visual Genome's objects and attributes for the regions),
never on the captioning images. The demo world mirrors that: this module draws more scenes from
the same generator as the world (:func:`mia.data.demo_scene.sample_scene`, the same renderer
and JPEG settings) and labels each with its objects only (shape, colour, size, 3x3 cell and
position, box) and its background; no captions, no questions. A backbone trained on them
(:mod:`mia.features.demo_pretrain`) is what the demo's grid and region extractors load.

Disjoint from the world by construction: image ids start at :data:`PRETRAIN_IMAGE_IDS_FROM`,
above every world id (< 600,000) and server test id (< 1,000,000), and each scene is drawn from
its own seed stream (``mia-demo-pretrain-scene:{seed}:{id}``), so neither the world's files nor
its test set change when pre-training scenes are written, or how many.

Layout under ``root``::

    images/DEMO_pretrain_<id>.jpg
    labels.json   {"generator", "config", "label_space", "images": [{"image_id", "file_name",
                   "width", "height", "background", "objects": [{"shape", "color", "size",
                   "cell": [col, row], "position", "bbox": [x, y, w, h]}]}]}
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PIL

from mia.data.demo import DemoConfig, scene_record
from mia.data.demo_scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, render_scene, sample_scene
from mia.io import write_bytes

#: Pre-training image ids start here: above the world (< 600,000) and its test set (< 1,000,000).
PRETRAIN_IMAGE_IDS_FROM = 1_000_000
#: What a label can be, in the order the backbone's heads use (mia.features.demo_pretrain).
LABEL_SPACE: dict[str, list[str]] = {
    "shape": list(SHAPES),
    "color": list(COLORS),
    "size": ["small", "large"],
    "position": [POSITIONS[cell] for cell in sorted(POSITIONS, key=lambda c: (c[1], c[0]))],
    "background": list(BACKGROUNDS),
}
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class PretrainScenesConfig:
    """How many pre-training scenes, at which size, from which seed.

    ``image_size``, ``max_objects`` and ``jpeg_quality`` must be the world's own (the workflow
    takes them from ``data.demo``) so the backbone is trained on the pictures it will see.
    """

    num_images: int = 3000
    image_size: int = 128
    seed: int = 0
    max_objects: int = 4
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_images < 10:
            raise ValueError(f"pretrain.scenes.num_images must be >= 10, got {self.num_images}")
        if self.image_size < 48:
            raise ValueError(f"pretrain.scenes.image_size must be >= 48 pixels, got "
                             f"{self.image_size}")
        if not 1 <= self.max_objects <= 9:
            raise ValueError(f"pretrain.scenes.max_objects must be in 1..9, got "
                             f"{self.max_objects}")


def pretrain_file_name(image_id: int) -> str:
    return f"DEMO_pretrain_{image_id:012d}.jpg"


def generate_pretrain_scenes(root: str | os.PathLike, cfg: PretrainScenesConfig | None = None
                             ) -> Path:
    """Write ``cfg.num_images`` labelled scenes under ``root``; returns the labels file.

    Deterministic for ``cfg``: the labels are byte-identical across runs, the JPEGs too for one
    Pillow version. Scene ``k`` is the same whatever ``num_images`` is (its seed stream depends
    on its id only), so a larger set extends a smaller one.
    """
    cfg = cfg or PretrainScenesConfig()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for k in range(cfg.num_images):
        image_id = PRETRAIN_IMAGE_IDS_FROM + k
        rng = random.Random(f"mia-demo-pretrain-scene:{cfg.seed}:{image_id}")
        scene = sample_scene(rng, image_id, "pretrain", "pretrain", cfg.image_size,
                             cfg.max_objects)
        buf = io.BytesIO()
        render_scene(scene, cfg.image_size).save(buf, "JPEG", quality=cfg.jpeg_quality,
                                                 subsampling=0)  # as the world's images
        file_name = pretrain_file_name(image_id)
        write_bytes(root / "images" / file_name, buf.getvalue())
        record = scene_record(scene)
        del record["split"]
        records.append({"file_name": file_name, "width": cfg.image_size,
                        "height": cfg.image_size, **record})
    labels = root / LABELS_FILE
    write_bytes(labels, json.dumps({
        "generator": "mia.data.demo_pretrain", "pillow": PIL.__version__, "config": asdict(cfg),
        "label_space": LABEL_SPACE, "images": records}, separators=(",", ":")).encode())
    return labels


def scenes_config_for(world: DemoConfig, scenes: Mapping[str, Any]) -> PretrainScenesConfig:
    """``pretrain.scenes`` of a config, with the picture settings of its world (``data.demo``):
    the backbone must learn on pictures like those it will describe."""
    return PretrainScenesConfig(**{**scenes, "image_size": world.image_size,
                                   "max_objects": world.max_objects,
                                   "jpeg_quality": world.jpeg_quality})
