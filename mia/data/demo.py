"""The demo world: seeded images of coloured shapes, annotated in the exact formats of real COCO.

The demo must run every rule of the pipeline on CPU in minutes, through the same readers as the
real data, so this module writes the raw layout of docs/CONTRACTS.md: COCO 2014 images and
caption/instance annotations, Karpathy's ``dataset_coco.json`` and VQA v2 questions/annotations.
The content is simple enough to learn from a few thousand images but not trivial: captions vary
in template and vocabulary, questions ask for counts (VQA's "number" type, where the paper claims
MIA's largest VQA gain), colours, shapes, existence and positions, and the ten answers per
question carry human-like noise (number words, casing, punctuation, synonyms, a minority of wrong
answers) so answer normalisation and soft scores matter.

Every caption and answer is derived from the scene that is drawn, so they are true of the pixels.
Scenes and drawing live in :mod:`mia.data.demo_scene`, captions, questions and answers in
:mod:`mia.data.demo_language`; this module sizes the world and writes the files.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL

from mia.data.demo_language import make_answers, make_captions, make_questions, question_surface
from mia.data.demo_scene import (  # noqa: F401 (re-exported: the world's vocabulary)
    BACKGROUNDS,
    COLORS,
    SHAPES,
    DemoObject,
    Scene,
    render_scene,
    sample_scene,
)
from mia.data.karpathy import tokenize_caption
from mia.io import write_bytes

_SPLITS = ("train", "restval", "val", "test")
#: What the generator drew in every image (objects with shape, colour, size, cell, box; the
#: background; the Karpathy split): the world's ground truth, which no real dataset has. The
#: pipeline never trains on it; the demo reports measure against it (e.g. which concept words
#: are true of an image, mia.data.demo_truth).
SCENES_FILE = "annotations/demo_scenes.json"


@dataclass(frozen=True)
class DemoConfig:
    """Size and randomness of the demo world.

    ``val_fraction``/``test_fraction``/``restval_fraction`` of the images form Karpathy's
    val/test/restval splits, all drawn from ``val2014`` as in the real split; the rest are
    ``train2014``/train. ``answer_noise`` is the mean chance that one of the ten VQA annotators
    dissents (a wrong answer, or a synonym the normalisation does not undo); at most 3 of 10
    do, so the majority answer stays true.
    """

    num_images: int = 1000
    image_size: int = 128
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    restval_fraction: float = 0.1
    captions_per_image: int = 5
    questions_per_image: int = 5
    max_objects: int = 4
    answer_noise: float = 0.1
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_images < 4:
            raise ValueError(f"DemoConfig.num_images must be >= 4 (one per split), got "
                             f"{self.num_images}")
        if self.image_size < 48:
            raise ValueError(f"DemoConfig.image_size must be >= 48 pixels, got {self.image_size}")
        if not 1 <= self.max_objects <= 9:
            raise ValueError(f"DemoConfig.max_objects must be in 1..9 (3x3 cells), got "
                             f"{self.max_objects}")
        fractions = self.val_fraction + self.test_fraction + self.restval_fraction
        if min(self.val_fraction, self.test_fraction, self.restval_fraction) < 0 or fractions >= 1:
            raise ValueError("DemoConfig: val/test/restval fractions must be >= 0 and sum below 1")
        if not 0 <= self.answer_noise <= 0.3:
            raise ValueError(f"DemoConfig.answer_noise must be in [0, 0.3], got "
                             f"{self.answer_noise}")



@dataclass
class DemoManifest:
    """What :func:`generate_demo_world` wrote (also saved as ``demo_manifest.json``)."""

    root: Path
    config: DemoConfig
    split_sizes: dict[str, int]
    num_captions: int
    num_questions: dict[str, int]
    files: list[str] = field(default_factory=list)  # JSON files, relative to root



# --------------------------------------------------------------------------- files


def scene_record(scene: Scene) -> dict:
    """One image of :data:`SCENES_FILE`: everything the generator drew."""
    return {"image_id": scene.image_id, "split": scene.split, "background": scene.background,
            "objects": [{"shape": o.shape, "color": o.color, "size": o.size,
                         "cell": list(o.cell), "position": o.position,
                         "bbox": [round(v, 2) for v in o.bbox]} for o in scene.objects]}


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def _assign_splits(rng: random.Random, cfg: DemoConfig) -> list[str]:
    n = cfg.num_images
    sizes = {name: max(1, round(frac * n)) for name, frac in
             (("val", cfg.val_fraction), ("test", cfg.test_fraction),
              ("restval", cfg.restval_fraction))}
    sizes["train"] = n - sum(sizes.values())
    if sizes["train"] < 1:
        raise ValueError(f"DemoConfig: {n} images leave none for train; raise num_images")
    splits = [s for s in _SPLITS for _ in range(sizes[s])]
    rng.shuffle(splits)
    return splits


_COCO_INFO = {"url": "", "version": "1.0", "year": 2014, "contributor": "mia-repro demo world",
              "date_created": "2019-01-01 00:00:00"}
_LICENSES = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
              "name": "CC0 1.0 (generated image)"}]
_VQA_INFO = {"description": "VQA v2 format questions about the mia-repro demo world",
             "url": "", "version": "2.0", "year": 2017, "contributor": "mia-repro demo world",
             "date_created": "2019-01-01 00:00:00"}
_VQA_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
                "name": "Creative Commons Attribution 4.0 International License"}


def generate_demo_world(root: str | os.PathLike, cfg: DemoConfig | None = None) -> DemoManifest:
    """Write the demo world under ``root`` in the raw layout of docs/CONTRACTS.md.

    Deterministic for ``cfg.seed``: the JSON files are byte-identical across runs, the JPEGs too
    for one Pillow version. Each file is written atomically.
    """
    cfg = cfg or DemoConfig()
    root = Path(root)
    rng = random.Random(f"mia-demo-world:{cfg.seed}")
    image_ids = rng.sample(range(1, 600_000), cfg.num_images)  # COCO-like, not contiguous
    splits = _assign_splits(rng, cfg)

    coco: dict[str, dict[str, list]] = {s: {"images": [], "captions": [], "instances": []}
                                        for s in ("train2014", "val2014")}
    vqa: dict[str, dict[str, list]] = {s: {"questions": [], "annotations": []}
                                       for s in ("train2014", "val2014")}
    karpathy: list[dict] = []
    scenes: list[dict] = []
    caption_id = instance_id = 0
    for subset in ("train2014", "val2014"):
        (root / "images" / subset).mkdir(parents=True, exist_ok=True)
    for imgid, (image_id, split) in enumerate(zip(image_ids, splits, strict=True)):
        srng = random.Random(f"mia-demo-scene:{cfg.seed}:{image_id}")
        subset = "train2014" if split == "train" else "val2014"
        scene = sample_scene(srng, image_id, subset, split, cfg.image_size, cfg.max_objects)
        buf = io.BytesIO()
        # 4:4:4 chroma: colour is what the world is about, so keep it unblurred.
        render_scene(scene, cfg.image_size).save(buf, "JPEG", quality=cfg.jpeg_quality,
                                                 subsampling=0)
        write_bytes(root / "images" / subset / scene.file_name, buf.getvalue())

        scenes.append(scene_record(scene))
        out = coco[subset]
        out["images"].append({"license": 1, "file_name": scene.file_name, "coco_url": "",
                              "height": cfg.image_size, "width": cfg.image_size,
                              "date_captured": "2019-01-01 00:00:00", "flickr_url": "",
                              "id": image_id})
        sentences = []
        for raw in make_captions(srng, scene, cfg.captions_per_image):
            caption_id += 1
            out["captions"].append({"image_id": image_id, "id": caption_id, "caption": raw})
            sentences.append({"tokens": tokenize_caption(raw), "raw": raw, "imgid": imgid,
                              "sentid": caption_id})
        karpathy.append({"filepath": subset, "sentids": [s["sentid"] for s in sentences],
                         "filename": scene.file_name, "imgid": imgid, "split": split,
                         "sentences": sentences, "cocoid": image_id})
        for obj in scene.objects:
            instance_id += 1
            out["instances"].append({
                "segmentation": [[v for point in obj.polygon for v in point]],
                "area": round(obj.area, 2), "iscrowd": 0, "image_id": image_id,
                "bbox": [round(v, 2) for v in obj.bbox], "category_id": SHAPES[obj.shape],
                "id": instance_id})
        for k, q in enumerate(make_questions(srng, scene, cfg.questions_per_image)):
            qid = image_id * 1000 + k
            answers = make_answers(srng, q, cfg.answer_noise)
            vqa[subset]["questions"].append({"image_id": image_id, "question": question_surface(
                srng, q.text), "question_id": qid})
            vqa[subset]["annotations"].append({
                "question_type": q.question_type, "multiple_choice_answer": q.answer,
                "answers": answers, "image_id": image_id, "answer_type": q.answer_type,
                "question_id": qid})

    categories = [{"supercategory": "shape", "id": cid, "name": name}
                  for name, cid in SHAPES.items()]
    files = []
    for subset, out in coco.items():
        info = {"description": f"mia-repro demo world ({subset}, seed {cfg.seed}): "
                               f"generated coloured shapes in COCO format", **_COCO_INFO}
        cap_path = f"annotations/captions_{subset}.json"
        _write_json(root / cap_path, {"info": info, "licenses": _LICENSES,
                                      "images": out["images"], "annotations": out["captions"]})
        inst_path = f"annotations/instances_{subset}.json"
        _write_json(root / inst_path, {"info": info, "licenses": _LICENSES,
                                       "images": out["images"], "annotations": out["instances"],
                                       "categories": categories})
        q_path = f"vqa/v2_OpenEnded_mscoco_{subset}_questions.json"
        _write_json(root / q_path, {"info": _VQA_INFO, "task_type": "Open-Ended",
                                    "data_type": "mscoco", "license": _VQA_LICENSE,
                                    "data_subtype": subset,
                                    "questions": vqa[subset]["questions"]})
        a_path = f"vqa/v2_mscoco_{subset}_annotations.json"
        _write_json(root / a_path, {"info": _VQA_INFO, "license": _VQA_LICENSE,
                                    "data_subtype": subset, "data_type": "mscoco",
                                    "annotations": vqa[subset]["annotations"]})
        files += [cap_path, inst_path, q_path, a_path]
    _write_json(root / "karpathy/dataset_coco.json", {"images": karpathy, "dataset": "coco"})
    files.append("karpathy/dataset_coco.json")
    _write_json(root / SCENES_FILE, {"generator": "mia.data.demo", "images": scenes})
    files.append(SCENES_FILE)

    manifest = DemoManifest(
        root=root, config=cfg, split_sizes={s: splits.count(s) for s in _SPLITS},
        num_captions=caption_id,
        num_questions={s.removesuffix("2014"): len(vqa[s]["questions"]) for s in vqa},
        files=files)
    _write_json(root / "demo_manifest.json", {
        "generator": "mia.data.demo", "pillow": PIL.__version__, "config": asdict(cfg),
        "split_sizes": manifest.split_sizes, "num_captions": manifest.num_captions,
        "num_questions": manifest.num_questions, "files": files})
    return manifest


# --------------------------------------------------------------------------- server test set

#: Image ids of the test set start here; the world's own ids are below (disjoint, as COCO's).
TEST_IMAGE_IDS_FROM = 600_000


@dataclass
class DemoTestManifest:
    """What :func:`generate_demo_test_set` wrote."""

    root: Path
    image_ids: list[int]
    test_dev_image_ids: list[int]
    num_questions: dict[str, int]
    files: list[str] = field(default_factory=list)


def generate_demo_test_set(root: str | os.PathLike, cfg: DemoConfig | None = None,
                           num_images: int = 20, test_dev_fraction: float = 0.5
                           ) -> DemoTestManifest:
    """The demo world's counterpart of VQA v2's test2015: new images and questions only.

    The evaluation-server path (a model trained on train + val answering test-dev and
    test-std) needs questions about images that no training or validation question is about.
    This writes, under ``root`` and beside an existing world of the same ``cfg``:

    * ``test2015/COCO_test2015_<id>.jpg``: ``num_images`` new scenes, ids from
      :data:`TEST_IMAGE_IDS_FROM` on (never a world image);
    * ``vqa/v2_OpenEnded_mscoco_test2015_questions.json`` (test-std: every question) and
      ``vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json`` (the questions of a
      ``test_dev_fraction`` of the images), in VQA v2's test format: questions, no annotations;
    * ``annotations/instances_test2015.json``: the shapes' boxes in COCO instances format. Real
      COCO has no test boxes; the demo writes them so that its region features (``source:
      boxes``, RoIAlign on given boxes) exist for these images as for the others.

    A generator of its own (seeded by ``cfg.seed``) draws everything, so the world's files are
    untouched and byte-identical with or without a test set.
    """
    cfg = cfg or DemoConfig()
    if num_images < 2:
        raise ValueError(f"demo test set: num_images must be >= 2 (test-dev and the rest), got "
                         f"{num_images}")
    if not 0 < test_dev_fraction < 1:
        raise ValueError(f"demo test set: test_dev_fraction must be in (0, 1), got "
                         f"{test_dev_fraction}")
    root = Path(root)
    rng = random.Random(f"mia-demo-test2015:{cfg.seed}")
    image_ids = rng.sample(range(TEST_IMAGE_IDS_FROM, 1_000_000), num_images)
    n_dev = min(num_images - 1, max(1, round(test_dev_fraction * num_images)))
    dev_images = set(rng.sample(image_ids, n_dev))
    (root / "test2015").mkdir(parents=True, exist_ok=True)
    images, instances, questions = [], [], []
    instance_id = 0
    for image_id in image_ids:
        srng = random.Random(f"mia-demo-test2015-scene:{cfg.seed}:{image_id}")
        scene = sample_scene(srng, image_id, "test2015", "test", cfg.image_size, cfg.max_objects)
        buf = io.BytesIO()
        render_scene(scene, cfg.image_size).save(buf, "JPEG", quality=cfg.jpeg_quality,
                                                 subsampling=0)
        write_bytes(root / "test2015" / scene.file_name, buf.getvalue())
        images.append({"license": 1, "file_name": scene.file_name, "coco_url": "",
                       "height": cfg.image_size, "width": cfg.image_size,
                       "date_captured": "2019-01-01 00:00:00", "flickr_url": "", "id": image_id})
        for obj in scene.objects:
            instance_id += 1
            instances.append({
                "segmentation": [[v for point in obj.polygon for v in point]],
                "area": round(obj.area, 2), "iscrowd": 0, "image_id": image_id,
                "bbox": [round(v, 2) for v in obj.bbox], "category_id": SHAPES[obj.shape],
                "id": instance_id})
        for k, q in enumerate(make_questions(srng, scene, cfg.questions_per_image)):
            questions.append({"image_id": image_id, "question": question_surface(srng, q.text),
                              "question_id": image_id * 1000 + k})
    dev = [q for q in questions if q["image_id"] in dev_images]
    files = []
    for subtype, subset in (("test2015", questions), ("test-dev2015", dev)):
        rel = f"vqa/v2_OpenEnded_mscoco_{subtype}_questions.json"
        _write_json(root / rel, {"info": _VQA_INFO, "task_type": "Open-Ended",
                                 "data_type": "mscoco", "license": _VQA_LICENSE,
                                 "data_subtype": subtype, "questions": subset})
        files.append(rel)
    categories = [{"supercategory": "shape", "id": cid, "name": name}
                  for name, cid in SHAPES.items()]
    info = {"description": f"mia-repro demo world (test2015, seed {cfg.seed}): generated coloured "
                           "shapes in COCO format; boxes given for the demo's region features",
            **_COCO_INFO}
    rel = "annotations/instances_test2015.json"
    _write_json(root / rel, {"info": info, "licenses": _LICENSES, "images": images,
                             "annotations": instances, "categories": categories})
    files.append(rel)
    return DemoTestManifest(root=root, image_ids=image_ids,
                            test_dev_image_ids=[i for i in image_ids if i in dev_images],
                            num_questions={"test-std": len(questions), "test-dev": len(dev)},
                            files=files)
