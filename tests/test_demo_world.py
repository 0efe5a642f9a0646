"""The demo world (mia.data.demo): real formats field by field, and text that is true of pixels.

Formats are compared with the real COCO files in tests/data/coco-mini and with the documented
Karpathy / VQA v2 record layouts; truthfulness is checked against the JPEGs themselves (the colour
at each box centre, the background along the border), not against the generator's internal scene.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mia.data.demo import BACKGROUNDS, COLORS, SHAPES, DemoConfig, generate_demo_world

CFG = DemoConfig(num_images=120, image_size=96, seed=3)
COCO_MINI_CANDIDATES = [Path(__file__).resolve().parent / "data" / "coco-mini"]
SUBSETS = ("train2014", "val2014")

# Words the captions may use for each shape / colour.
SHAPE_WORDS = {"circle": "circle", "disc": "circle", "square": "square", "block": "square",
               "triangle": "triangle", "diamond": "diamond", "rhombus": "diamond", "star": "star"}
COLOR_WORDS = {**{c: c for c in COLORS}, "grey": "gray"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large",
              "big": "large"}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_SHAPE_RE = "|".join(sorted(SHAPE_WORDS, key=len, reverse=True))
OBJECT_RE = re.compile(rf"\b(?:({'|'.join(SIZE_WORDS)}) )?({'|'.join(COLOR_WORDS)}) "
                       rf"({_SHAPE_RE})(?:s|es)?\b")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "world"
    start = time.perf_counter()
    manifest = generate_demo_world(root, CFG)
    seconds = time.perf_counter() - start
    print(f"demo world: {CFG.num_images} images in {seconds:.2f} s "
          f"({CFG.num_images / seconds:.0f} images/s)")
    return root, manifest, seconds


def _load(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    dists = {name: float(np.linalg.norm(rgb.astype(float) - np.array(c))) for name, c in
             palette.items()}
    name = min(dists, key=dists.get)
    return name, dists[name]


def _observed(root: Path, subset: str) -> dict[int, dict]:
    """Per image, what the pixels show: background colour and (colour, shape, box) per box."""
    inst = _load(root, f"annotations/instances_{subset}.json")
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    out = {}
    for img in inst["images"]:
        pixels = np.asarray(Image.open(root / "images" / subset / img["file_name"]).convert("RGB"))
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background, dist = _nearest(np.median(border, axis=0), BACKGROUNDS)
        assert dist < 20, f"{img['file_name']}: border pixels are no background colour"
        out[img["id"]] = {"background": background, "pixels": pixels, "objects": []}
    for ann in inst["annotations"]:
        x, y, w, h = ann["bbox"]
        pixels = out[ann["image_id"]]["pixels"]
        color, dist = _nearest(pixels[int(y + h / 2), int(x + w / 2)], COLORS)
        assert dist < 40, f"annotation {ann['id']}: box centre pixel is not a shape colour"
        out[ann["image_id"]]["objects"].append(
            {"color": color, "shape": cats[ann["category_id"]], "bbox": ann["bbox"],
             "size": "large" if max(w, h) > 0.5 * CFG.image_size / 3 else "small"})
    return out


# --------------------------------------------------------------------------- layout and formats


def test_layout_of_contracts(world):
    root, manifest, _ = world
    for rel in ["karpathy/dataset_coco.json", *(f"annotations/{k}_{s}.json" for k in
                                                ("captions", "instances") for s in SUBSETS),
                *(f"vqa/v2_OpenEnded_mscoco_{s}_questions.json" for s in SUBSETS),
                *(f"vqa/v2_mscoco_{s}_annotations.json" for s in SUBSETS)]:
        assert (root / rel).is_file(), rel
    images = _load(root, "karpathy/dataset_coco.json")["images"]
    assert len(images) == CFG.num_images == sum(manifest.split_sizes.values())
    for img in images:
        assert img["filename"] == f"COCO_{img['filepath']}_{img['cocoid']:012d}.jpg"
        with Image.open(root / "images" / img["filepath"] / img["filename"]) as im:
            assert im.format == "JPEG" and im.size == (CFG.image_size, CFG.image_size)
            assert im.mode == "RGB"
    jpegs = list((root / "images").rglob("*.jpg"))
    assert len(jpegs) == CFG.num_images
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "temporary files left behind"


def _coco_mini() -> Path:
    for path in COCO_MINI_CANDIDATES:
        if (path / "captions.json").is_file() and (path / "instances.json").is_file():
            return path
    pytest.skip(f"no real COCO files to compare with in {COCO_MINI_CANDIDATES}")


def _types(record: dict) -> dict[str, type]:
    return {k: type(v) for k, v in record.items()}


def test_coco_files_match_real_coco_field_by_field(world):
    root, _, _ = world
    real_caps = json.loads((_coco_mini() / "captions.json").read_text())
    real_inst = json.loads((_coco_mini() / "instances.json").read_text())
    for subset in SUBSETS:
        caps = _load(root, f"annotations/captions_{subset}.json")
        inst = _load(root, f"annotations/instances_{subset}.json")
        assert caps.keys() == real_caps.keys()
        assert inst.keys() == real_inst.keys()
        assert set(real_caps["info"]) <= set(caps["info"])
        for ours, real in [(caps["licenses"][0], real_caps["licenses"][0]),
                           (caps["images"][0], real_caps["images"][0]),
                           (caps["annotations"][0], real_caps["annotations"][0]),
                           (inst["images"][0], real_inst["images"][0]),
                           (inst["categories"][0], real_inst["categories"][0])]:
            assert _types(ours) == _types(real)
        # Instances: same keys and JSON types; polygons are lists of coordinate lists.
        real_ann = next(a for a in real_inst["annotations"] if not a["iscrowd"])
        for ann in inst["annotations"]:
            assert ann.keys() == real_ann.keys()
            assert type(ann["area"]) is type(real_ann["area"]) is float
            assert all(type(v) is float for v in ann["bbox"])
            assert isinstance(ann["segmentation"], list)
            assert all(isinstance(v, float) for poly in ann["segmentation"] for v in poly)
            assert all(len(poly) % 2 == 0 and len(poly) >= 6 for poly in ann["segmentation"])
        assert caps["images"] == inst["images"]
        assert {c["name"] for c in inst["categories"]} == set(SHAPES)


def test_karpathy_format_and_splits(world):
    root, manifest, _ = world
    data = _load(root, "karpathy/dataset_coco.json")
    assert data.keys() == {"images", "dataset"} and data["dataset"] == "coco"
    captions = {}
    for subset in SUBSETS:
        for ann in _load(root, f"annotations/captions_{subset}.json")["annotations"]:
            captions[ann["id"]] = (ann["image_id"], ann["caption"], subset)
    sizes = Counter()
    for imgid, img in enumerate(data["images"]):
        # The real file's record layout (keys as in Karpathy's caption_datasets.zip).
        assert img.keys() == {"filepath", "sentids", "filename", "imgid", "split", "sentences",
                              "cocoid"}
        assert img["imgid"] == imgid
        assert img["filepath"] == ("train2014" if img["split"] == "train" else "val2014")
        assert len(img["sentences"]) == CFG.captions_per_image
        assert img["sentids"] == [s["sentid"] for s in img["sentences"]]
        for s in img["sentences"]:
            assert s.keys() == {"tokens", "raw", "imgid", "sentid"} and s["imgid"] == imgid
            assert captions[s["sentid"]] == (img["cocoid"], s["raw"], img["filepath"])
            assert s["tokens"] == re.sub(r"[^a-z0-9 ]", " ", s["raw"].lower()).split()
        sizes[img["split"]] += 1
    n = CFG.num_images
    expected = {"val": round(n * CFG.val_fraction), "test": round(n * CFG.test_fraction),
                "restval": round(n * CFG.restval_fraction)}
    expected["train"] = n - sum(expected.values())
    assert dict(sizes) == expected == manifest.split_sizes
    assert len(captions) == n * CFG.captions_per_image == manifest.num_captions


def test_vqa_format(world):
    root, manifest, _ = world
    types = Counter()
    for subset in SUBSETS:
        image_ids = {i["id"] for i in _load(root, f"annotations/captions_{subset}.json")["images"]}
        q = _load(root, f"vqa/v2_OpenEnded_mscoco_{subset}_questions.json")
        a = _load(root, f"vqa/v2_mscoco_{subset}_annotations.json")
        assert q.keys() == {"info", "task_type", "data_type", "license", "data_subtype",
                            "questions"}
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == ("Open-Ended", "mscoco",
                                                                         subset)
        assert a.keys() == {"info", "license", "data_subtype", "annotations", "data_type"}
        assert (a["data_type"], a["data_subtype"]) == ("mscoco", subset)
        assert len(q["questions"]) == len(a["annotations"]) == manifest.num_questions[
            subset.removesuffix("2014")]
        assert {x["image_id"] for x in q["questions"]} == image_ids
        for question, ann in zip(q["questions"], a["annotations"], strict=True):
            assert question.keys() == {"image_id", "question", "question_id"}
            assert ann.keys() == {"question_type", "multiple_choice_answer", "answers",
                                  "image_id", "answer_type", "question_id"}
            assert question["question_id"] == ann["question_id"]
            assert question["question_id"] // 1000 == question["image_id"] == ann["image_id"]
            assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
            assert all(x.keys() == {"answer", "answer_confidence", "answer_id"}
                       and x["answer_confidence"] in ("yes", "maybe", "no")
                       for x in ann["answers"])
            assert question["question"].lower().startswith(ann["question_type"])
            types[ann["answer_type"]] += 1
    total = sum(types.values())
    assert set(types) == {"yes/no", "number", "other"}
    assert all(c / total > 0.2 for c in types.values()), types


# --------------------------------------------------------------------------- truthfulness


def test_boxes_inside_images_and_tight_on_drawn_pixels(world):
    root, _, _ = world
    size = CFG.image_size
    for subset in SUBSETS:
        for image_id, obs in _observed(root, subset).items():
            pixels = obs["pixels"].astype(float)
            bg = np.array(BACKGROUNDS[obs["background"]], dtype=float)
            drawn = np.linalg.norm(pixels - bg, axis=2) > 80
            covered = np.zeros_like(drawn)
            for obj in obs["objects"]:
                x, y, w, h = obj["bbox"]
                assert x >= 0 and y >= 0 and x + w <= size and y + h <= size, (image_id, obj)
                x0, y0, x1, y1 = int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))
                covered[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
                ys, xs = np.nonzero(drawn[y0:y1 + 1, x0:x1 + 1])
                # Tight: the drawn shape spans its box (up to rasterisation and JPEG blur).
                assert xs.max() - xs.min() >= w - 3 and ys.max() - ys.min() >= h - 3, \
                    (image_id, obj)
            assert not (drawn & ~covered).any(), f"image {image_id}: drawn pixels outside boxes"


def test_captions_true_of_the_pixels(world):
    root, _, _ = world
    data = _load(root, "karpathy/dataset_coco.json")
    observed = {k: v for s in SUBSETS for k, v in _observed(root, s).items()}
    seen_templates = Counter()
    for img in data["images"]:
        obs = observed[img["cocoid"]]
        objects = obs["objects"]
        colors = {o["color"] for o in objects}
        shapes = {o["shape"] for o in objects}
        raws = [s["raw"] for s in img["sentences"]]
        assert len(set(raws)) >= 3, raws  # varied, not one sentence five times
        for raw in raws:
            text = raw.lower()
            words = re.findall(r"[a-z]+", text)
            assert {COLOR_WORDS[w] for w in words if w in COLOR_WORDS} <= colors, (raw, objects)
            assert {SHAPE_WORDS[w.rstrip("s")] for w in words
                    if w.rstrip("s") in SHAPE_WORDS} | {"diamond" for w in words
                                                        if w == "rhombuses"} <= shapes, raw
            for bg in BACKGROUNDS:
                if f"{bg} background" in text:
                    assert obs["background"] == bg, raw
                    seen_templates["background"] += 1
            matches = list(OBJECT_RE.finditer(text))
            for m in matches:  # every "(size) colour shape" names a drawn object
                size, color, shape = (SIZE_WORDS.get(m.group(1) or ""), COLOR_WORDS[m.group(2)],
                                      SHAPE_WORDS[m.group(3)])
                assert any(o["color"] == color and o["shape"] == shape
                           and size in (None, o["size"]) for o in objects), (raw, objects)
            count = re.search(r"\b(one|two|three|four) (?:colorful )?shapes? on a", text)
            if count:
                assert NUMBERS[count.group(1)] == len(objects), raw
                seen_templates["count"] += 1
            others = re.search(r"and (two|three|four) other shapes", text)
            if others:
                assert NUMBERS[others.group(1)] + 1 == len(objects), raw
            for m in re.finditer(rf"\b(two|three|four) ({'|'.join(COLOR_WORDS)}) "
                                 rf"({_SHAPE_RE})", text):
                assert sum(o["color"] == COLOR_WORDS[m.group(2)]
                           and o["shape"] == SHAPE_WORDS[m.group(3)] for o in objects) == \
                    NUMBERS[m.group(1)], raw
                seen_templates["plural"] += 1
            if " to the left of " in text and len(matches) == 2:
                a, b = matches
                xa = [o["bbox"][0] + o["bbox"][2] / 2 for o in objects
                      if o["color"] == COLOR_WORDS[a.group(2)]
                      and o["shape"] == SHAPE_WORDS[a.group(3)]]
                xb = [o["bbox"][0] + o["bbox"][2] / 2 for o in objects
                      if o["color"] == COLOR_WORDS[b.group(2)]
                      and o["shape"] == SHAPE_WORDS[b.group(3)]]
                assert min(xa) < max(xb), raw
                seen_templates["left of"] += 1
    assert all(seen_templates[t] > 0 for t in ("background", "count", "plural", "left of")), \
        seen_templates


def test_vqa_answers_true_of_the_pixels_with_human_noise(world):
    from mia.data.answers import training_answer

    root, _, _ = world
    checked = Counter()
    normalisation_matters = wrong_minority = 0
    for subset in SUBSETS:
        observed = _observed(root, subset)
        qs = _load(root, f"vqa/v2_OpenEnded_mscoco_{subset}_questions.json")["questions"]
        anns = _load(root, f"vqa/v2_mscoco_{subset}_annotations.json")["annotations"]
        for q, a in zip(qs, anns, strict=True):
            obs = observed[q["image_id"]]
            objects = obs["objects"]
            text = q["question"].lower().rstrip("?")
            mc = a["multiple_choice_answer"]
            raw = [x["answer"] for x in a["answers"]]
            norm = [training_answer(x) for x in raw]
            # The majority (normalised) answer is the multiple-choice answer; <= 3 dissent.
            assert Counter(norm).most_common(1)[0] == (mc, Counter(norm)[mc]), (q, raw)
            wrong = sum(n != mc for n in norm)
            if len(set(raw)) > 1 and len(set(norm)) == 1:
                normalisation_matters += 1
            wrong_minority += 0 < wrong <= 3
            if a["answer_type"] == "number":
                assert mc.isdigit()
            if a["answer_type"] == "yes/no":
                assert mc in ("yes", "no")
            if text in ("how many shapes are there", "how many objects are in the image",
                        "how many shapes are in the picture"):
                assert int(mc) == len(objects)
                checked["count all"] += 1
            elif m := re.fullmatch(r"how many (\w+) (?:shapes|objects) are (?:there|in the "
                                   r"picture)", text):
                assert int(mc) == sum(o["color"] == m.group(1) for o in objects), (q, objects)
                checked["count colour"] += 1
            elif text == "what color is the background":
                assert mc == obs["background"]
                checked["background"] += 1
            elif m := re.fullmatch(r"what color is the (\w+)", text):
                assert [o["color"] for o in objects if o["shape"] == m.group(1)] == [mc]
                checked["colour of"] += 1
            elif m := re.fullmatch(r"is there an? (\w+) in the image", text):
                assert mc == ("yes" if m.group(1) in {o["shape"] for o in objects} else "no")
                checked["exists"] += 1
    assert len(checked) == 5 and min(checked.values()) >= 3, checked
    assert normalisation_matters > 20, "answers should vary in surface form ('2' vs 'two')"
    assert wrong_minority > 20, "some humans should answer wrongly"


# --------------------------------------------------------------------------- determinism, readers


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    cfg = DemoConfig(num_images=12, image_size=64, seed=11)
    generate_demo_world(tmp_path / "a", cfg)
    generate_demo_world(tmp_path / "b", cfg)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    generate_demo_world(tmp_path / "c", DemoConfig(num_images=12, image_size=64, seed=12))
    c = _tree(tmp_path / "c")
    for rel in ("karpathy/dataset_coco.json", "vqa/v2_mscoco_train2014_annotations.json"):
        assert a[rel] != c[rel]


def test_fast_enough(world):
    _, _, seconds = world
    # 3,000 images must take well under a minute (> 50 images/s; ~500/s on one idle core).
    assert CFG.num_images / seconds > 50, f"{CFG.num_images / seconds:.0f} images/s"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_images"):
        DemoConfig(num_images=2)
    with pytest.raises(ValueError, match="fractions"):
        DemoConfig(val_fraction=0.5, test_fraction=0.5)


def test_loads_with_the_data_readers_and_preprocessing(world, tmp_path):
    coco = pytest.importorskip("mia.data.coco")
    karpathy = pytest.importorskip("mia.data.karpathy")
    vqa_v2 = pytest.importorskip("mia.data.vqa_v2")
    preprocess = pytest.importorskip("mia.data.preprocess")
    root, manifest, _ = world
    for subset in SUBSETS:
        caps = coco.read_coco_captions(root / f"annotations/captions_{subset}.json")
        inst = coco.read_coco_instances(root / f"annotations/instances_{subset}.json")
        assert all(len(v) == CFG.captions_per_image for v in caps.by_image().values())
        assert set(inst.by_image()) == set(caps.images)
        examples = vqa_v2.read_vqa(root / f"vqa/v2_OpenEnded_mscoco_{subset}_questions.json",
                                   root / f"vqa/v2_mscoco_{subset}_annotations.json")
        assert len(examples) == manifest.num_questions[subset.removesuffix("2014")]
    images = karpathy.read_karpathy(root / "karpathy/dataset_coco.json")
    assert karpathy.split_sizes(images) == {
        "train": manifest.split_sizes["train"] + manifest.split_sizes["restval"],
        "val": manifest.split_sizes["val"], "test": manifest.split_sizes["test"]}

    h5py = pytest.importorskip("h5py")
    cap_h5 = preprocess.build_caption_store(root / "karpathy/dataset_coco.json",
                                            tmp_path / "captions.h5", tmp_path / "refs",
                                            preprocess.CaptionPreprocessConfig(count_threshold=2))
    with h5py.File(cap_h5) as f:
        assert f["captions"].shape[0] == CFG.num_images * CFG.captions_per_image
        vocab = json.loads(f.attrs["vocab"])
        assert {"red", "circle", "left", "background"} <= set(vocab)
    vqa_h5 = preprocess.build_vqa_store(
        {"train": root / "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
         "val": root / "vqa/v2_OpenEnded_mscoco_val2014_questions.json"},
        {"train": root / "vqa/v2_mscoco_train2014_annotations.json",
         "val": root / "vqa/v2_mscoco_val2014_annotations.json"},
        tmp_path / "vqa.h5", preprocess.VQAPreprocessConfig(min_answer_count=3))
    with h5py.File(vqa_h5) as f:
        answers = set(json.loads(f.attrs["answer_vocab"]))
        assert {"yes", "no", "0", "1", "2"} <= answers
        assert "two" not in answers  # normalised to "2"
        known = (f["answer_labels"][:, 0] >= 0).mean()
        assert known > 0.95, f"only {known:.0%} of questions have an answer in the vocabulary"


def test_cli_writes_a_world(tmp_path):
    from mia.cli import main

    assert main(["demo-world", "--root", str(tmp_path / "w"), "--num-images", "6",
                 "--image-size", "64", "--seed", "5"]) == 0
    manifest = json.loads((tmp_path / "w/demo_manifest.json").read_text())
    assert manifest["config"]["seed"] == 5 and sum(manifest["split_sizes"].values()) == 6
    assert len(list((tmp_path / "w/images").rglob("*.jpg"))) == 6
