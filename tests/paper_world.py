"""A miniature of the paper's real world: every download, with its real file name and internal
layout, built from the real COCO images and captions of tests/data/coco-mini, served on 127.0.0.1.

The paper path (``data.source: download``) is then run as a user would: Snakemake downloads each
archive from the server (which honours ``Range``, and can cut a transfer midway or answer 404),
verifies it against the pins of an overlay config, extracts it, and runs the whole paper DAG.

What each archive holds (as the real ones):

* ``train2014.zip`` / ``val2014.zip``: ``train2014/COCO_train2014_<id:012d>.jpg`` (resp. val): the
  coco-mini JPEGs, the Karpathy train images in train2014, the others in val2014;
* ``annotations_trainval2014.zip``: ``annotations/{captions,instances}_{train,val}2014.json``;
* ``caption_datasets.zip``: ``dataset_coco.json`` (Karpathy's format, filepath/filename as in
  the real file), ``dataset_flickr8k.json``, ``dataset_flickr30k.json``;
* ``trainval_36.zip``: ``trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv``, the
  bottom-up TSV format (36 boxes of 2048-d, base64 float32), boxes from the real COCO instances;
* ``test2015_36.zip``: ``test2015_36/test2015_resnet101_faster_rcnn_genome_36.tsv``;
* ``v2_{Questions,Annotations}_{Train,Val}_mscoco.zip`` and ``v2_Questions_Test_mscoco.zip``: the
  VQA v2 JSON files at the top level (test: test2015 and test-dev2015 questions);
* ``test2015.zip``: ``test2015/COCO_test2015_<id:012d>.jpg``;
* ``glove.6B.zip``: ``glove.6B.{50,100,200,300}d.txt`` over the questions' words.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from mia.data.bottomup_tsv import RegionRecord, write_bottomup_tsv
from mia.data.karpathy import tokenize_caption

COCO_MINI = Path(__file__).resolve().parent / "data" / "coco-mini"
#: Position in sorted image ids -> Karpathy split: 5 train, 1 restval, 1 val, 1 test, cycled.
SPLIT_CYCLE = ("train", "train", "train", "train", "train", "restval", "val", "test")
#: How many coco-mini images also play test2015 images (the VQA evaluation server's set).
TEST2015_IMAGES = 6
NUM_BOXES, FEATURE_DIM, GLOVE_DIM = 36, 2048, 300

#: downloads key -> archive file name (the real names).
ARCHIVES = {
    "coco_train2014_images": "train2014.zip",
    "coco_val2014_images": "val2014.zip",
    "coco_annotations_2014": "annotations_trainval2014.zip",
    "karpathy_split": "caption_datasets.zip",
    "bottom_up_features": "trainval_36.zip",
    "vqa_train_questions": "v2_Questions_Train_mscoco.zip",
    "vqa_val_questions": "v2_Questions_Val_mscoco.zip",
    "vqa_train_annotations": "v2_Annotations_Train_mscoco.zip",
    "vqa_val_annotations": "v2_Annotations_Val_mscoco.zip",
    "glove_6b": "glove.6B.zip",
    "vqa_test_questions": "v2_Questions_Test_mscoco.zip",
    "coco_test2015_images": "test2015.zip",
    "bottom_up_test2015_features": "test2015_36.zip",
}


@dataclass(frozen=True)
class Archive:
    path: Path
    sha256: str
    md5: str
    size: int


@dataclass(frozen=True)
class World:
    root: Path
    archives: dict[str, Archive]
    karpathy: dict
    test2015_ids: list[int]


def _digests(path: Path) -> Archive:
    data = path.read_bytes()
    return Archive(path, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(),
                   len(data))


def _zip(path: Path, members: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if isinstance(data, Path):
                z.write(data, name)
            else:
                z.writestr(name, data)
    return path


def _split_of(position: int) -> str:
    return SPLIT_CYCLE[position % len(SPLIT_CYCLE)]


def build_world(root: Path) -> World:
    """Write every archive of the miniature under ``root``; their digests and sizes."""
    root.mkdir(parents=True, exist_ok=True)
    captions = json.loads((COCO_MINI / "captions.json").read_text())
    instances = json.loads((COCO_MINI / "instances.json").read_text())
    images = {im["id"]: im for im in captions["images"]}
    ids = sorted(images)
    folder = {i: "train2014" if _split_of(p) == "train" else "val2014" for p, i in enumerate(ids)}
    name = {i: f"COCO_{folder[i]}_{i:012d}.jpg" for i in ids}
    out: dict[str, Path] = {}

    for key, sub in (("coco_train2014_images", "train2014"), ("coco_val2014_images", "val2014")):
        out[key] = _zip(root / ARCHIVES[key], {
            f"{sub}/{name[i]}": COCO_MINI / "images" / images[i]["file_name"]
            for i in ids if folder[i] == sub})

    members = {}
    for sub in ("train2014", "val2014"):
        keep = {i for i in ids if folder[i] == sub}
        ims = [{**images[i], "file_name": name[i]} for i in ids if i in keep]
        for kind, src in (("captions", captions), ("instances", instances)):
            doc = {k: v for k, v in src.items() if k not in ("images", "annotations")}
            doc["images"] = ims
            doc["annotations"] = [a for a in src["annotations"] if a["image_id"] in keep]
            members[f"annotations/{kind}_{sub}.json"] = json.dumps(doc).encode()
    out["coco_annotations_2014"] = _zip(root / ARCHIVES["coco_annotations_2014"], members)

    karpathy = _karpathy(captions, ids, folder, name)
    out["karpathy_split"] = _zip(root / ARCHIVES["karpathy_split"], {
        "dataset_coco.json": json.dumps(karpathy).encode(),
        "dataset_flickr8k.json": b'{"images": [], "dataset": "flickr8k"}',
        "dataset_flickr30k.json": b'{"images": [], "dataset": "flickr30k"}'})

    test_ids = ids[:TEST2015_IMAGES]
    tsv_dir = root / "tsv"
    tsv_dir.mkdir(exist_ok=True)
    for key, sub, chosen in (("bottom_up_features", "trainval_36", ids),
                             ("bottom_up_test2015_features", "test2015_36", test_ids)):
        stem = "trainval" if sub == "trainval_36" else "test2015"
        tsv = write_bottomup_tsv(tsv_dir / f"{stem}_resnet101_faster_rcnn_genome_36.tsv",
                                 _regions(instances, images, chosen))
        out[key] = _zip(root / ARCHIVES[key], {f"{sub}/{tsv.name}": tsv})
    shutil.rmtree(tsv_dir)

    vqa = _vqa(instances, ids, folder, test_ids)
    for key, member in (("vqa_train_questions", "v2_OpenEnded_mscoco_train2014_questions.json"),
                        ("vqa_val_questions", "v2_OpenEnded_mscoco_val2014_questions.json"),
                        ("vqa_train_annotations", "v2_mscoco_train2014_annotations.json"),
                        ("vqa_val_annotations", "v2_mscoco_val2014_annotations.json")):
        out[key] = _zip(root / ARCHIVES[key], {member: json.dumps(vqa[member]).encode()})
    out["vqa_test_questions"] = _zip(root / ARCHIVES["vqa_test_questions"], {
        m: json.dumps(vqa[m]).encode() for m in ("v2_OpenEnded_mscoco_test2015_questions.json",
                                                 "v2_OpenEnded_mscoco_test-dev2015_questions.json")})
    out["coco_test2015_images"] = _zip(root / ARCHIVES["coco_test2015_images"], {
        f"test2015/COCO_test2015_{i:012d}.jpg": COCO_MINI / "images" / images[i]["file_name"]
        for i in test_ids})
    out["glove_6b"] = _zip(root / ARCHIVES["glove_6b"], _glove(vqa))
    return World(root, {k: _digests(p) for k, p in out.items()}, karpathy, test_ids)


def _karpathy(captions: dict, ids: list[int], folder: dict[int, str], name: dict[int, str]
              ) -> dict:
    by_image: dict[int, list[str]] = {}
    for a in sorted(captions["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    entries, sentid = [], 0
    for imgid, i in enumerate(ids):
        sentences = []
        for raw in by_image[i]:
            sentences.append({"tokens": tokenize_caption(raw), "raw": raw.strip(),
                              "imgid": imgid, "sentid": sentid})
            sentid += 1
        entries.append({"filepath": folder[i], "sentids": [s["sentid"] for s in sentences],
                        "filename": name[i], "imgid": imgid, "split": _split_of(imgid),
                        "sentences": sentences, "cocoid": i})
    return {"images": entries, "dataset": "coco"}


def _regions(instances: dict, images: dict, chosen: list[int]) -> list[RegionRecord]:
    """36 boxes per image: the real instance boxes, largest first, then a grid of tiles."""
    boxes_of: dict[int, list[tuple[float, float, float, float]]] = {}
    for a in sorted(instances["annotations"], key=lambda a: -a["area"]):
        x, y, w, h = a["bbox"]
        boxes_of.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    records = []
    for i in chosen:
        w, h = float(images[i]["width"]), float(images[i]["height"])
        tiles = [(c * w / 6, r * h / 6, (c + 1) * w / 6, (r + 1) * h / 6)
                 for r in range(6) for c in range(6)]
        boxes = (boxes_of.get(i, []) + tiles)[:NUM_BOXES]
        rng = np.random.default_rng(i)
        records.append(RegionRecord(
            image_id=i, image_w=int(w), image_h=int(h), num_boxes=NUM_BOXES,
            boxes=np.array(boxes, dtype=np.float32),
            features=rng.gamma(1.0, 0.5, size=(NUM_BOXES, FEATURE_DIM)).astype(np.float32)))
    return records


def _answers(correct: str, variants: list[str], n_correct: int) -> list[dict]:
    texts = ([correct] * n_correct + variants + [correct] * 10)[:10]
    return [{"answer": t, "answer_confidence": "yes", "answer_id": k + 1}
            for k, t in enumerate(texts)]


def _vqa(instances: dict, ids: list[int], folder: dict[int, str], test_ids: list[int]
         ) -> dict[str, dict]:
    """VQA v2 files over the miniature: per image a count, a yes/no and an "other" question,
    answered from its real COCO instance boxes (train2014 images: train; val2014: val)."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    boxes: dict[int, list[dict]] = {}
    for a in instances["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    questions: dict[str, list] = {"train2014": [], "val2014": [], "test2015": []}
    annotations: dict[str, list] = {"train2014": [], "val2014": []}
    for i in ids:
        own = boxes.get(i, [])
        people = min(10, sum(names[b["category_id"]] == "person" for b in own))
        biggest = names[max(own, key=lambda b: b["area"])["category_id"]] if own else "nothing"
        items = [("How many people are in the picture?", "how many", "number", str(people),
                  [words[people], str(people + 1)], 7),
                 ("Is there a person in the image?", "is there a", "yes/no",
                  "yes" if people else "no", ["yes." if people else "no."], 8),
                 ("What is the biggest object?", "what is the", "other", biggest,
                  [f"the {biggest}", "thing"], 6)]
        for k, (text, qtype, atype, answer, variants, n) in enumerate(items):
            qid = i * 10 + k
            questions[folder[i]].append({"image_id": i, "question": text, "question_id": qid})
            annotations[folder[i]].append({
                "question_type": qtype, "multiple_choice_answer": answer,
                "answers": _answers(answer, variants, n), "image_id": i, "answer_type": atype,
                "question_id": qid})
    for i in test_ids:
        for k, text in enumerate(("How many people are in the picture?",
                                  "What is the biggest object?")):
            questions["test2015"].append({"image_id": i, "question": text,
                                          "question_id": 9_000_000 + i * 10 + k})
    out: dict[str, dict] = {}
    for sub, qs in questions.items():
        out[f"v2_OpenEnded_mscoco_{sub}_questions.json"] = {
            "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
            "data_subtype": sub, "license": {}, "questions": qs}
    dev = [q for q in questions["test2015"] if q["image_id"] in test_ids[: len(test_ids) // 2]]
    out["v2_OpenEnded_mscoco_test-dev2015_questions.json"] = {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
        "data_subtype": "test-dev2015", "license": {}, "questions": dev}
    for sub, anns in annotations.items():
        out[f"v2_mscoco_{sub}_annotations.json"] = {
            "info": {}, "license": {}, "data_type": "mscoco", "data_subtype": sub,
            "annotations": anns}
    return out


def _glove(vqa: dict[str, dict]) -> dict[str, bytes]:
    """GloVe 6B's four files, over the questions' words (plus a few): ``word v1 ... vd``."""
    words = Counter(w.strip("?.,").lower() for doc in vqa.values() for q in doc.get("questions", [])
                    for w in q["question"].split())
    vocab = sorted(words) + ["the", "of", "and"]
    rng = np.random.default_rng(6)
    members = {}
    for dim in (50, 100, 200, 300):
        rows = [w + " " + " ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, dim)) for w in vocab]
        members[f"glove.6B.{dim}d.txt"] = ("\n".join(rows) + "\n").encode()
    return members


def write_backbone_weights(path: Path, backbone: str = "resnet152") -> Path:
    """A stand-in for torchvision's ImageNet ResNet-152 file (``features.grid.weights_path``):
    seeded random weights with each residual branch's last BatchNorm scaled by 0.2. Plain random
    ResNet-152 weights are no stand-in: with BatchNorm's initial running statistics nothing
    normalises the 50 blocks, and the features reach 3e7, past float16 (the store refuses them).
    Saved in float16 (half the 240 MB)."""
    import torch

    from mia.vision import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(torchvision.models, backbone)(weights=None)
    for name, module in model.named_modules():
        if name.endswith("bn3"):
            module.weight.data.mul_(0.2)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- the server


@dataclass
class ServerState:
    files: dict[str, Path] = field(default_factory=dict)
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, status
    cut: dict[str, list[int]] = field(default_factory=dict)  # path -> [bytes to send, times]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self, path: str) -> list[tuple[str | None, int]]:
        return [(r, s) for p, r, s in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        path, range_header = self.path, self.headers.get("Range")
        file = state.files.get(path)
        if file is None:
            with state.lock:
                state.requests.append((path, range_header, 404))
            self.send_error(404)
            return
        data = file.read_bytes()
        start = int(range_header.removeprefix("bytes=").split("-")[0]) if range_header else 0
        if start >= len(data) and range_header:
            with state.lock:
                state.requests.append((path, range_header, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        probe = range_header == "bytes=0-0"
        end = 1 if probe else len(data)
        status = 206 if range_header else 200
        with state.lock:
            state.requests.append((path, range_header, status))
            cut = state.cut.get(path)
            send = None
            if cut and cut[1] > 0 and not probe:
                cut[1] -= 1
                send = cut[0]
        body = data[start:end]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if send is not None:  # the connection drops midway
            self.wfile.write(body[:send])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class WorldServer:
    """The miniature's archives on ``http://127.0.0.1:<port>/<name>`` (Range honoured)."""

    def __init__(self, world: World) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.state = ServerState({f"/{a.path.name}": a.path for a in world.archives.values()})
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> WorldServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
