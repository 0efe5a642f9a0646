"""Readers of the real raw formats, on real coco-mini annotations and real-format fixtures."""

from __future__ import annotations

import base64
import csv
import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from coco_mini_fixtures import COCO_MINI, write_karpathy, write_vqa

from mia.data.bottomup_tsv import RegionRecord, iter_bottomup_tsv, write_bottomup_tsv
from mia.data.coco import read_coco_captions, read_coco_instances
from mia.data.errors import DataFormatError
from mia.data.karpathy import read_karpathy, split_sizes, tokenize_caption
from mia.data.vqa_v2 import join_vqa, read_vqa, read_vqa_annotations, read_vqa_questions

TSV = Path(__file__).resolve().parent / "data" / "bottomup" / "coco_mini_6.tsv"


def _edit_json(src: Path, dst: Path, edit) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    dst.write_text(json.dumps(data))
    return dst


def _error(fn, *args) -> str:
    with pytest.raises(DataFormatError) as info:
        fn(*args)
    return str(info.value)


# ---------------------------------------------------------------- COCO


def test_coco_captions_real_file():
    caps = read_coco_captions(COCO_MINI / "captions.json")
    assert len(caps.images) == 33 and len(caps.captions) == 165
    assert all(len(v) == 5 for v in caps.by_image().values())
    first = caps.captions[0]
    assert (first.id, first.image_id) == (681330, 522418)
    assert first.caption == "A woman wearing a net on her head cutting a cake. "
    assert caps.images[522418].file_name == "000000522418.jpg"
    assert (caps.images[522418].width, caps.images[522418].height) == (640, 480)


def test_coco_instances_real_file_boxes_in_both_conventions():
    inst = read_coco_instances(COCO_MINI / "instances.json")
    assert len(inst.boxes) == 184 and inst.categories[1] == "person"
    box = inst.boxes[0]
    assert box.bbox_xywh == (382.48, 0.0, 256.8, 474.31)
    assert box.bbox_xyxy == pytest.approx((382.48, 0.0, 639.28, 474.31))
    assert not box.iscrowd and box.category_id == 1
    for b in inst.boxes:  # every real box lies inside its image
        img = inst.images[b.image_id]
        x1, y1, x2, y2 = b.bbox_xyxy
        assert 0 <= x1 <= x2 <= img.width + 1 and 0 <= y1 <= y2 <= img.height + 1


@pytest.mark.parametrize(("edit", "record", "field"), [
    (lambda d: d["annotations"][3].pop("caption"), "annotations[3]", "caption"),
    (lambda d: d["annotations"][2].update(image_id=1), "annotations[2]", "image_id"),
    (lambda d: d["annotations"][1].update(caption=5), "annotations[1]", "caption"),
    (lambda d: d["images"][4].update(id="x"), "images[4]", "id"),
    (lambda d: d["images"].append(dict(d["images"][0])), "images[33]", "id"),
])
def test_coco_captions_malformed(tmp_path, edit, record, field):
    bad = _edit_json(COCO_MINI / "captions.json", tmp_path / "captions_bad.json", edit)
    message = _error(read_coco_captions, bad)
    assert str(bad) in message and record in message and repr(field) in message


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["annotations"][5].update(bbox=[1, 2, 3]), "bbox"),
    (lambda d: d["annotations"][5].update(bbox=[1, 2, -3, 4]), "bbox"),
    (lambda d: d["annotations"][5].update(category_id=999), "category_id"),
    (lambda d: d["annotations"][5].update(iscrowd=True), "iscrowd"),
])
def test_coco_instances_malformed(tmp_path, edit, field):
    bad = _edit_json(COCO_MINI / "instances.json", tmp_path / "instances_bad.json", edit)
    message = _error(read_coco_instances, bad)
    assert str(bad) in message and "annotations[5]" in message and repr(field) in message


def test_invalid_json_names_file_and_line(tmp_path):
    bad = tmp_path / "captions_broken.json"
    bad.write_text('{"images": [\n{"id": 1,\n')
    message = _error(read_coco_captions, bad)
    assert str(bad) in message and "line 3" in message


# ---------------------------------------------------------------- Karpathy


def test_tokenize_caption_like_karpathy():
    assert tokenize_caption("A woman wearing a net on her head cutting a cake. ") == \
        ["a", "woman", "wearing", "a", "net", "on", "her", "head", "cutting", "a", "cake"]
    assert tokenize_caption("Two dogs, one brown; it's 3-D!") == \
        ["two", "dogs", "one", "brown", "its", "3", "d"]


def test_karpathy_reader(tmp_path):
    images = read_karpathy(write_karpathy(tmp_path / "dataset_coco.json"))
    assert len(images) == 33
    assert [i.cocoid for i in images] == sorted(i.cocoid for i in images)  # file order kept
    # positions 0..4 of every 8 are train, 5 restval (counted as train), 6 val, 7 test
    assert split_sizes(images) == {"train": 25, "val": 4, "test": 4}
    restval = [i for i in images if i.split == "restval"]
    assert restval and all(i.store_split == "train" for i in restval)
    assert images[0].relative_path == "images/000000006818.jpg"
    assert all(len(i.sentences) == 5 for i in images)
    assert images[0].sentences[0].tokens == tuple(tokenize_caption(images[0].sentences[0].raw))


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["images"][2].update(split="dev"), "split"),
    (lambda d: d["images"][2]["sentences"][1].pop("tokens"), "tokens"),
    (lambda d: d["images"][2]["sentences"][1].update(tokens=["a", 3]), "tokens"),
    (lambda d: d["images"][2].update(sentences=[]), "sentences"),
    (lambda d: d["images"][2].update(cocoid=d["images"][0]["cocoid"]), "cocoid"),
])
def test_karpathy_malformed(tmp_path, edit, field):
    good = write_karpathy(tmp_path / "dataset_coco.json")
    bad = _edit_json(good, tmp_path / "dataset_bad.json", edit)
    message = _error(read_karpathy, bad)
    assert str(bad) in message and "images[2]" in message and repr(field) in message


# ---------------------------------------------------------------- VQA v2


def test_vqa_reader_joins_questions_and_annotations(tmp_path):
    q, a = write_vqa(tmp_path)
    train = read_vqa(q["train"], a["train"])
    raw_q = json.loads(q["train"].read_text())["questions"]
    assert [ex.question_id for ex in train] == [r["question_id"] for r in raw_q]
    for ex in train:
        assert ex.annotation.question_id == ex.question_id
        assert ex.annotation.image_id == ex.image_id
        assert len(ex.annotation.answers) == 10
    assert {ex.annotation.answer_type for ex in train} == {"yes/no", "number", "other"}
    test = read_vqa(q["test"])
    assert test and all(ex.annotation is None for ex in test)


def test_vqa_join_rejects_disagreeing_files(tmp_path):
    q, a = write_vqa(tmp_path)
    questions = read_vqa_questions(q["train"])
    annotations = read_vqa_annotations(a["train"])
    # val annotations for train questions: no annotation for the first question
    message = _error(join_vqa, questions, read_vqa_annotations(a["val"]), a["val"])
    assert str(a["val"]) in message and f"question_id {questions[0].question_id}" in message
    # an annotation whose image disagrees with its question
    moved = _edit_json(a["train"], tmp_path / "moved.json",
                       lambda d: d["annotations"][0].update(image_id=1))
    message = _error(join_vqa, questions, read_vqa_annotations(moved), moved)
    assert "'image_id'" in message and f"question_id {questions[0].question_id}" in message
    # an annotation without a question
    message = _error(join_vqa, questions[1:], annotations, a["train"])
    assert "have no question" in message


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["annotations"][1]["answers"].pop(), "answers"),
    (lambda d: d["annotations"][1].update(answer_type="colour"), "answer_type"),
    (lambda d: d["annotations"][1].pop("multiple_choice_answer"), "multiple_choice_answer"),
    (lambda d: d["annotations"][1]["answers"][4].update(answer=None), "answer"),
])
def test_vqa_annotations_malformed(tmp_path, edit, field):
    _, a = write_vqa(tmp_path)
    bad = _edit_json(a["train"], tmp_path / "ann_bad.json", edit)
    message = _error(read_vqa_annotations, bad)
    assert str(bad) in message and "annotations[1]" in message and repr(field) in message


def test_vqa_questions_malformed(tmp_path):
    q, _ = write_vqa(tmp_path)
    bad = _edit_json(q["train"], tmp_path / "q_bad.json",
                     lambda d: d["questions"][2].update(question_id=d["questions"][0]["question_id"]))
    message = _error(read_vqa_questions, bad)
    assert str(bad) in message and "questions[2]" in message and "'question_id'" in message


# ---------------------------------------------------------------- bottom-up TSV


def _fixture_module():
    path = TSV.parent / "make_fixture.py"
    spec = importlib.util.spec_from_file_location("make_bottomup_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bottomup_tsv_fixture_round_trips():
    expected = _fixture_module().fixture_records()
    stream = iter_bottomup_tsv(TSV)
    assert inspect.isgenerator(stream)  # streamed, one row at a time
    got = list(stream)
    assert [r.image_id for r in got] == [r.image_id for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert (g.image_w, g.image_h, g.num_boxes) == (e.image_w, e.image_h, e.num_boxes)
        assert g.boxes.dtype == np.float32 and g.features.shape == (6, 2048)
        np.testing.assert_array_equal(g.boxes, e.boxes)
        np.testing.assert_array_equal(g.features, e.features)


def test_bottomup_tsv_boxes_are_the_real_instance_boxes():
    inst = read_coco_instances(COCO_MINI / "instances.json")
    first = next(iter_bottomup_tsv(TSV))
    real = sorted(inst.by_image()[first.image_id], key=lambda b: (-b.area, b.id))[0]
    np.testing.assert_allclose(first.boxes[0], real.bbox_xyxy, rtol=1e-6)
    # raw decoding, independent of the reader: base64 of float32 (num_boxes, 4)
    row = TSV.read_bytes().decode().split("\r\n")[0].split("\t")
    raw = np.frombuffer(base64.b64decode(row[4]), dtype=np.float32).reshape(int(row[3]), 4)
    np.testing.assert_array_equal(raw, first.boxes)


def test_bottomup_tsv_real_size_rows_exceed_default_csv_limit(tmp_path):
    rng = np.random.default_rng(0)
    record = RegionRecord(7, 640, 480, 36, rng.random((36, 4), dtype=np.float32) * 400,
                          rng.random((36, 2048), dtype=np.float32))
    path = write_bottomup_tsv(tmp_path / "real36.tsv", [record])
    previous = csv.field_size_limit(131072)  # the csv default, which a 36-box row exceeds
    try:
        (got,) = list(iter_bottomup_tsv(path))
    finally:
        csv.field_size_limit(max(previous, csv.field_size_limit()))
    np.testing.assert_array_equal(got.features, record.features)


def _corrupt_line(tmp_path: Path, column: int, value: str | None) -> Path:
    lines = TSV.read_bytes().decode().split("\r\n")[:3]
    fields = lines[1].split("\t")
    if value is None:
        fields.pop(column)
    else:
        fields[column] = value
    lines[1] = "\t".join(fields)
    path = tmp_path / "bad.tsv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


@pytest.mark.parametrize(("column", "value", "field"), [
    (5, None, "<row>"),
    (2, "4x8", "image_h"),
    (3, "7", "boxes"),       # num_boxes disagrees with the decoded arrays
    (4, "!!notbase64", "boxes"),
    (5, base64.b64encode(np.zeros((6, 100), np.float32).tobytes()).decode(), "features"),
    (3, "0", "num_boxes"),
])
def test_bottomup_tsv_malformed_rows(tmp_path, column, value, field):
    path = _corrupt_line(tmp_path, column, value)
    stream = iter_bottomup_tsv(path)
    assert next(stream).image_id == 6818  # the good first row streams before the bad one
    with pytest.raises(DataFormatError) as info:
        next(stream)
    message = str(info.value)
    assert str(path) in message and "line 2" in message and repr(field) in message
