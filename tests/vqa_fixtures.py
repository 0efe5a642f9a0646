"""Tiny real-format VQA stores for the training, answering and server tests.

A demo world (mia.data.demo) and its test2015 set, the real ``vqa.h5`` / test store builders, and
region + concept stores made directly from the world's instance files and pixels (no CNN, so
the fixture takes about a second): each box's feature is its shape one-hot, its colour one-hot
(read from the JPEG at the box centre) and its relative size, plus noise; 1-2 background boxes
follow; the concepts are the image's caption words by count. Questions about shapes, colours and
counts are then learnable in a few epochs.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mia.data.demo import COLORS, SHAPES, DemoConfig, generate_demo_test_set, generate_demo_world
from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store, build_vqa_test_store
from mia.data.store import write_store

N_BOXES = 6
PALETTE = list(COLORS)
FEATURE_DIM = len(SHAPES) + len(PALETTE) + 1


@dataclass(frozen=True)
class VQAWorld:
    root: Path
    vqa: Path
    regions: Path
    concepts: Path
    test_vqa: Path
    test_regions: Path
    test_concepts: Path
    questions: dict[str, Path]  # train, val, test-dev, test-std
    annotations: dict[str, Path]  # train, val


def _colour(pixels: np.ndarray, box: list[float]) -> str:
    x, y, w, h = box
    rgb = pixels[int(y + h / 2), int(x + w / 2)].astype(float)
    return min(PALETTE, key=lambda c: float(np.linalg.norm(rgb - np.array(COLORS[c]))))


def _region_and_concept_stores(root: Path, instances: list[Path], image_dir: dict[str, Path],
                               captions: dict[int, Counter], words: list[str], out: str,
                               seed: int) -> tuple[Path, Path]:
    images, objects = {}, {}
    for path in instances:
        inst = json.loads(path.read_text())
        for im in inst["images"]:
            images[im["id"]] = (im["width"], im["height"], im["file_name"])
        for a in inst["annotations"]:
            objects.setdefault(a["image_id"], []).append((a["bbox"], a["category_id"]))
    ids = np.array(sorted(images), dtype=np.int64)
    rng = np.random.default_rng(seed)
    boxes = np.zeros((len(ids), N_BOXES, 4), np.float32)
    feats = np.zeros((len(ids), N_BOXES, FEATURE_DIM), np.float16)
    num = np.zeros(len(ids), np.int32)
    for r, image_id in enumerate(ids):
        w, h, name = images[image_id]
        subset = name.split("_")[1]
        pixels = np.asarray(Image.open(image_dir[subset] / name).convert("RGB"))
        rows = []
        for bbox, cat in objects.get(image_id, [])[:N_BOXES - 1]:
            x, y, bw, bh = bbox
            f = np.zeros(FEATURE_DIM)
            f[cat - 1] = 1
            f[len(SHAPES) + PALETTE.index(_colour(pixels, bbox))] = 1
            f[-1] = bw * bh / (w * h)
            rows.append(([x, y, x + bw, y + bh], f))
        for _ in range(int(rng.integers(1, 3))):
            if len(rows) == N_BOXES:
                break
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            rows.append(([x, y, x + w / 3, y + h / 3], np.zeros(FEATURE_DIM)))
        num[r] = len(rows)
        for j, (box, f) in enumerate(rows):
            boxes[r, j] = box
            feats[r, j] = f + 0.1 * rng.standard_normal(FEATURE_DIM)
    regions = write_store(root / f"regions_{out}.h5", kind="region_features", image_ids=ids,
                          datasets={"features": feats, "boxes": boxes, "num_boxes": num,
                                    "image_w": np.array([images[i][0] for i in ids], np.int32),
                                    "image_h": np.array([images[i][1] for i in ids], np.int32)},
                          attrs={"padding": "zeros", "max_boxes": N_BOXES})
    concept_ids = np.full((len(ids), N_BOXES), -1, np.int32)
    for r, image_id in enumerate(ids):
        counts = captions.get(int(image_id), Counter())
        if not counts:  # test images have no captions: their shapes' names stand in
            counts = Counter(next(s for s, c in SHAPES.items() if c == cat)
                             for _, cat in objects.get(image_id, []))
        top = [words.index(w) for w, _ in counts.most_common(N_BOXES) if w in words]
        concept_ids[r, :len(top)] = top
    concepts = write_store(root / f"concepts_{out}.h5", kind="concepts", image_ids=ids,
                           datasets={"concept_ids": concept_ids,
                                     "concept_probs": np.where(concept_ids >= 0, 0.5, 0)
                                     .astype(np.float32)},
                           attrs={"concept_words": words, "k": N_BOXES})
    return regions, concepts


def build_vqa_world(root: Path, num_images: int = 24, test_images: int = 6,
                    seed: int = 3) -> VQAWorld:
    """The demo world of ``num_images`` (48 px) and its test set, with every store a VQA run and
    the server path read."""
    cfg = DemoConfig(num_images=num_images, image_size=48, seed=seed)
    generate_demo_world(root, cfg)
    generate_demo_test_set(root, cfg, num_images=test_images)
    questions = {s: root / f"vqa/v2_OpenEnded_mscoco_{s}2014_questions.json"
                 for s in ("train", "val")}
    annotations = {s: root / f"vqa/v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")}
    vqa = build_vqa_store(questions, annotations, root / "vqa.h5",
                          VQAPreprocessConfig(min_answer_count=1))
    questions["test-dev"] = root / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json"
    questions["test-std"] = root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json"
    test_vqa = build_vqa_test_store(questions["test-std"], vqa, root / "vqa_test2015.h5",
                                    subsets={"test-dev": questions["test-dev"]})
    captions: dict[int, Counter] = {}
    for s in ("train", "val"):
        for c in json.loads((root / f"annotations/captions_{s}2014.json").read_text())[
                "annotations"]:
            captions.setdefault(c["image_id"], Counter()).update(c["caption"].lower().split())
    words = sorted({w for t in captions.values() for w in t} | set(SHAPES))
    dirs = {"train2014": root / "images/train2014", "val2014": root / "images/val2014",
            "test2015": root / "test2015"}
    regions, concepts = _region_and_concept_stores(
        root, [root / f"annotations/instances_{s}2014.json" for s in ("train", "val")], dirs,
        captions, words, "trainval", seed)
    test_regions, test_concepts = _region_and_concept_stores(
        root, [root / "annotations/instances_test2015.json"], dirs, {}, words, "test2015", seed)
    world = vqa_world(root)
    assert (world.vqa, world.regions, world.concepts, world.test_vqa, world.test_regions,
            world.test_concepts) == (vqa, regions, concepts, test_vqa, test_regions, test_concepts)
    return world


def vqa_world(root: Path) -> VQAWorld:
    """The paths of a world :func:`build_vqa_world` wrote under ``root`` (for subprocesses)."""
    root = Path(root)
    return VQAWorld(
        root, root / "vqa.h5", root / "regions_trainval.h5", root / "concepts_trainval.h5",
        root / "vqa_test2015.h5", root / "regions_test2015.h5", root / "concepts_test2015.h5",
        {**{s: root / f"vqa/v2_OpenEnded_mscoco_{s}2014_questions.json" for s in ("train", "val")},
         "test-dev": root / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json",
         "test-std": root / "vqa/v2_OpenEnded_mscoco_test2015_questions.json"},
        {s: root / f"vqa/v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")})
