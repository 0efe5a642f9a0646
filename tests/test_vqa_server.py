"""The evaluation-server path: the demo test set, the test store in the training vocabularies,
answers in the official results format, and test-dev / test-std files validated against their
questions files (every question answered exactly once, nothing else).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from vqa_fixtures import FEATURE_DIM, build_vqa_world

from mia.data.demo import (
    TEST_IMAGE_IDS_FROM,
    DemoConfig,
    generate_demo_test_set,
    generate_demo_world,
)
from mia.data.loaders import VQAData
from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store, build_vqa_test_store
from mia.data.store import load_store
from mia.evaluation.vqa import VQAEvalError
from mia.vqa.predict import answer_split
from mia.vqa.server import write_server_files
from mia.vqa.train import VQATrainConfig, train_vqa


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_vqa_world(tmp_path_factory.mktemp("vqa_server"))


@pytest.fixture(scope="module")
def trainval_model(world, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = VQATrainConfig.from_dict({
        "model": {"baseline": "ban", "variant": "mia", "feature_dim": FEATURE_DIM, "hidden": 16,
                  "embed_dim": 8, "concept_embed_dim": 8, "mia_d_model": 8, "mia_heads": 2,
                  "mia_d_ff": 16, "glimpses": 1},
        "epochs": 2, "batch_size": 32, "train_splits": ["train", "val"], "log_every": 0,
        "progress": False, "device": "cpu"})
    data = VQAData.from_stores(world.vqa, world.regions, concepts_h5=world.concepts)
    return train_vqa(cfg, data, tmp_path_factory.mktemp("trainval")).best_path


def _questions(path) -> list[dict]:
    return json.loads(path.read_text())["questions"]


# ---------------------------------------------------------------- demo test set


def test_demo_test_set_leaves_the_world_unchanged_and_asks_about_new_images(tmp_path):
    cfg = DemoConfig(num_images=20, image_size=48, seed=1)
    plain, with_test = tmp_path / "plain", tmp_path / "with_test"
    generate_demo_world(plain, cfg)
    generate_demo_world(with_test, cfg)
    manifest = generate_demo_test_set(with_test, cfg, num_images=6)

    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file()}

    before, after = digests(plain), digests(with_test)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {
        *(f"test2015/COCO_test2015_{i:012d}.jpg" for i in manifest.image_ids),
        "vqa/v2_OpenEnded_mscoco_test2015_questions.json",
        "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json",
        "annotations/instances_test2015.json"}

    world_images = {q["image_id"] for s in ("train", "val") for q in _questions(
        with_test / f"vqa/v2_OpenEnded_mscoco_{s}2014_questions.json")}
    std = json.loads((with_test / "vqa/v2_OpenEnded_mscoco_test2015_questions.json").read_text())
    dev = json.loads((with_test / "vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json")
                     .read_text())
    real_keys = {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
    assert std.keys() == dev.keys() == real_keys
    assert (std["data_subtype"], dev["data_subtype"]) == ("test2015", "test-dev2015")
    test_images = {q["image_id"] for q in std["questions"]}
    assert test_images == set(manifest.image_ids) and not test_images & world_images
    assert min(test_images) >= TEST_IMAGE_IDS_FROM
    assert dev["questions"] == [q for q in std["questions"]
                                if q["image_id"] in set(manifest.test_dev_image_ids)]
    assert 0 < len(dev["questions"]) < len(std["questions"])
    assert all(q.keys() == {"image_id", "question", "question_id"} for q in std["questions"])
    again = generate_demo_test_set(tmp_path / "again", cfg, num_images=6)
    assert digests(tmp_path / "again") == {k: v for k, v in after.items()
                                           if k in set(after) - set(before)}
    assert again.image_ids == manifest.image_ids


# ---------------------------------------------------------------- test store


def test_test_store_uses_the_training_vocabularies(world, tmp_path):
    train = load_store(world.vqa)
    test = load_store(world.test_vqa)
    assert test["attrs"]["question_vocab"] == train["attrs"]["question_vocab"]
    assert test["attrs"]["answer_vocab"] == train["attrs"]["answer_vocab"]
    questions = _questions(world.questions["test-std"])
    assert test["question_ids"].tolist() == [q["question_id"] for q in questions]
    assert (test["split"] == 2).all() and (test["answer_labels"] == -1).all()
    vocab = train["attrs"]["question_vocab"]
    first = [vocab[i] for i in test["questions"][0] if i]
    assert first == [w if w in vocab else "<unk>"
                     for w in questions[0]["question"].lower().rstrip("?").split()]
    # A test-dev file that is not part of test2015 is refused, naming the file.
    stray = tmp_path / "dev.json"
    stray.write_text(json.dumps({"questions": [{"image_id": 1, "question": "why?",
                                                "question_id": 7}]}))
    with pytest.raises(ValueError, match=r"dev\.json: test-dev question 7 .* is not in"):
        build_vqa_test_store(world.questions["test-std"], world.vqa, tmp_path / "t.h5",
                             subsets={"test-dev": stray})
    assert not (tmp_path / "t.h5").exists()


# ---------------------------------------------------------------- answers and server files


def test_server_files_answer_every_question_once_in_file_order(world, trainval_model, tmp_path):
    data = VQAData.from_stores(world.test_vqa, world.test_regions,
                               concepts_h5=world.test_concepts)
    answers = answer_split(trainval_model, data, "test", tmp_path / "answers.json",
                           batch_size=5)
    assert json.loads((tmp_path / "answers.json").read_text()) == answers
    assert {a["answer"] for a in answers} <= set(data.answer_vocab)
    outs = {"test-dev": tmp_path / "server_test-dev.json",
            "test-std": tmp_path / "server_test-std.json"}
    questions = {s: world.questions[s] for s in outs}
    write_server_files(tmp_path / "answers.json", questions, outs)
    by_id = {a["question_id"]: a["answer"] for a in answers}
    for split, path in outs.items():
        written = json.loads(path.read_text())
        ids = [q["question_id"] for q in _questions(questions[split])]
        assert [r["question_id"] for r in written] == ids  # each once, in the file's order
        assert all(r.keys() == {"question_id", "answer"} and r["answer"] == by_id[
            r["question_id"]] for r in written)
    assert len(json.loads(outs["test-dev"].read_text())) < len(answers)


@pytest.mark.parametrize("damage", ["missing", "duplicate", "extra"])
def test_server_files_refuse_a_missing_duplicate_or_foreign_answer(world, tmp_path, damage):
    ids = [q["question_id"] for q in _questions(world.questions["test-std"])]
    answers = [{"question_id": q, "answer": "yes"} for q in ids]
    if damage == "missing":
        dev_ids = {q["question_id"] for q in _questions(world.questions["test-dev"])}
        answers = [a for a in answers if a["question_id"] != min(dev_ids)]
        expected = rf"no answer for question {min(dev_ids)} of .*test-dev2015"
    elif damage == "duplicate":
        answers.append({"question_id": ids[3], "answer": "no"})
        expected = rf"question {ids[3]} has more than one answer"
    else:
        answers.append({"question_id": 12345, "answer": "no"})
        expected = "question 12345 is in none of"
    outs = {s: tmp_path / f"server_{s}.json" for s in ("test-dev", "test-std")}
    with pytest.raises(VQAEvalError, match=expected):
        write_server_files(answers, {s: world.questions[s] for s in outs}, outs)
    assert not list(tmp_path.iterdir()), "nothing is written when a file would be invalid"


def test_answering_a_store_of_other_vocabularies_is_refused(world, trainval_model, tmp_path):
    other = build_vqa_store({s: world.questions[s] for s in ("train", "val")},
                            {s: world.annotations[s] for s in ("train", "val")},
                            tmp_path / "other.h5", VQAPreprocessConfig(min_answer_count=3))
    data = VQAData.from_stores(other, world.regions, concepts_h5=world.concepts)
    assert data.answer_vocab != VQAData.from_stores(world.vqa, world.regions).answer_vocab
    with pytest.raises(ValueError, match="another answer_vocab"):
        answer_split(trainval_model, data, "val")
    plain = VQAData.from_stores(world.vqa, world.regions)  # MIA without its concepts
    with pytest.raises(ValueError, match="reads concepts"):
        answer_split(trainval_model, plain, "val")
