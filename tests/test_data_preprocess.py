"""Vocabularies, encodings, soft scores and the captions.h5 / vqa.h5 stores, on coco-mini."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from coco_mini_fixtures import count_tokens, write_karpathy, write_vqa

from mia.data.answers import training_answer
from mia.data.preprocess import (
    CaptionPreprocessConfig,
    VQAPreprocessConfig,
    build_caption_store,
    build_vqa_store,
    soft_score,
    tokenize_question,
)
from mia.data.store import load_store
from mia.data.vocab import CAPTION_SPECIALS, Vocabulary, build_vocabulary

# ---------------------------------------------------------------- vocabularies


def test_vocabulary_threshold_specials_and_order():
    tokens = [["b", "a", "c"], ["a", "b", "zz"], ["a", "d", "zz"], ["d"]]
    vocab, counts = build_vocabulary(tokens, count_threshold=2)
    # specials first, then count desc (a: 3), ties by word (b, d, zz: 2); c (1) dropped
    assert vocab.words == ("<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "d", "zz")
    assert counts["c"] == 1
    assert vocab.encode(["a", "c", "zz"]) == [4, 3, 7]
    assert vocab.decode([1, 4, 3, 2, 5, 0]) == ["a", "<unk>"]
    shuffled, _ = build_vocabulary(reversed(tokens), count_threshold=2)
    assert shuffled == vocab  # order does not depend on input order


def test_vocabulary_rejects_duplicates_and_missing_unk():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(("<pad>", "<unk>", "a", "a"))
    with pytest.raises(ValueError, match="<unk>"):
        Vocabulary(("<pad>", "a"))


# ---------------------------------------------------------------- captions.h5


@pytest.fixture(scope="module")
def caption_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    karpathy = write_karpathy(root / "dataset_coco.json")
    cfg = CaptionPreprocessConfig(count_threshold=2, max_length=8)
    out = build_caption_store(karpathy, root / "captions.h5", root / "refs", cfg)
    return json.loads(karpathy.read_text()), load_store(out, "captions"), root / "refs"


def test_caption_vocab_from_train_tokens_only(caption_store):
    karpathy, store, _ = caption_store
    train_counts = count_tokens(karpathy, ("train", "restval"))
    expected = sorted((w for w, c in train_counts.items() if c >= 2),
                      key=lambda w: (-train_counts[w], w))
    assert store["attrs"]["vocab"] == list(CAPTION_SPECIALS) + expected
    held_out = count_tokens(karpathy, ("val", "test"))
    only_held_out = {w for w, c in held_out.items() if c >= 2 and train_counts[w] < 2}
    assert only_held_out and not only_held_out & set(store["attrs"]["vocab"])


def test_caption_store_layout_and_encoding(caption_store):
    karpathy, store, _ = caption_store
    images = karpathy["images"]
    codes = {"train": 0, "restval": 0, "val": 1, "test": 2}
    np.testing.assert_array_equal(store["image_ids"], [i["cocoid"] for i in images])
    np.testing.assert_array_equal(store["split"], [codes[i["split"]] for i in images])
    assert store["captions"].shape == (165, 10) and store["captions"].dtype == np.int32
    vocab = {w: i for i, w in enumerate(store["attrs"]["vocab"])}
    sentences = [(n, s) for n, img in enumerate(images) for s in img["sentences"]]
    for row, (n, sent) in enumerate(sentences):
        words = sent["tokens"][:8]
        expected = [1] + [vocab.get(w, 3) for w in words] + [2]
        expected += [0] * (10 - len(expected))
        assert store["captions"][row].tolist() == expected
        assert store["caption_lengths"][row] == len(words) + 2
        assert store["caption_image_index"][row] == n
    assert (store["caption_lengths"] == 10).any()  # some captions were truncated to max_length
    attrs = store["attrs"]
    assert (attrs["max_length"], attrs["count_threshold"]) == (8, 2)
    assert attrs["config"]["count_threshold"] == 2 and attrs["kind"] == "captions"


def test_references_load_in_pycocotools(caption_store):
    from pycocotools.coco import COCO

    karpathy, _, refs = caption_store
    for split, names in {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}.items():
        coco = COCO(str(refs / f"references_{split}.json"))
        images = [i for i in karpathy["images"] if i["split"] in names]
        assert sorted(coco.getImgIds()) == sorted(i["cocoid"] for i in images)
        img = images[0]
        got = [a["caption"] for a in coco.imgToAnns[img["cocoid"]]]
        assert got == [s["raw"] for s in img["sentences"]]  # raw, untokenised captions


def test_caption_text_keeps_every_word_of_every_caption(caption_store):
    """``caption_text``: the caption's own tokens, never <unk>-ed, never cut at max_length."""
    karpathy, store, _ = caption_store
    sentences = [s for img in karpathy["images"] for s in img["sentences"]]
    text = [t.decode() if isinstance(t, bytes) else t for t in store["caption_text"]]
    assert text == [" ".join(s["tokens"]) for s in sentences]
    assert any(len(s["tokens"]) > 8 for s in sentences)  # some are longer than max_length = 8


def test_default_keeps_whole_captions(tmp_path):
    """``max_length: null`` (the default, as the released loader): nothing is cut."""
    assert CaptionPreprocessConfig().max_length is None
    karpathy = write_karpathy(tmp_path / "dataset_coco.json")
    out = build_caption_store(karpathy, tmp_path / "captions.h5", tmp_path / "refs",
                              CaptionPreprocessConfig(count_threshold=2))
    store = load_store(out, "captions")
    sentences = [s for img in json.loads(karpathy.read_text())["images"]
                 for s in img["sentences"]]
    longest = max(len(s["tokens"]) for s in sentences)
    assert store["captions"].shape == (len(sentences), longest + 2)
    assert store["attrs"]["max_length"] == longest
    assert store["caption_lengths"].tolist() == [len(s["tokens"]) + 2 for s in sentences]
    with pytest.raises(ValueError, match="max_length"):
        build_caption_store(karpathy, tmp_path / "bad.h5", tmp_path / "refs",
                            CaptionPreprocessConfig(max_length=0))


def test_validation_references_are_the_raw_tokens(caption_store, tmp_path):
    """What validation CIDEr-D scores against: whole captions in their own words, even when the
    encoded captions are cut (max_length 8) and have words below the threshold."""
    from mia.data.loaders import CaptionData

    karpathy, _, _ = caption_store
    out = build_caption_store(write_karpathy(tmp_path / "dataset_coco.json"),
                              tmp_path / "captions.h5", tmp_path / "refs",
                              CaptionPreprocessConfig(count_threshold=2, max_length=8))
    data = CaptionData.from_stores(out)
    refs = data.references("val")
    vocab = set(data.vocab.words)
    val = [img for img in karpathy["images"] if img["split"] == "val"]
    assert sorted(refs) == sorted(img["cocoid"] for img in val)
    for img in val:
        assert refs[img["cocoid"]] == [" ".join(s["tokens"]) for s in img["sentences"]]
    words = [w for img in val for s in img["sentences"] for w in s["tokens"]]
    assert any(w not in vocab for w in words)  # the store's ids would have said <unk> here


def test_references_of_an_older_store_fall_back_with_a_warning(tmp_path):
    from mia.data.loaders import CaptionData
    from mia.data.store import write_store

    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog"]
    write_store(tmp_path / "old.h5", kind="captions", image_ids=np.array([7, 8]), datasets={
        "split": np.array([1, 1], np.uint8),
        "captions": np.array([[1, 4, 5, 2], [1, 4, 3, 2]], np.int32),
        "caption_image_index": np.array([0, 1]), "caption_lengths": np.array([4, 4], np.int32)},
        attrs={"vocab": vocab, "max_length": 2, "count_threshold": 1})
    with pytest.warns(UserWarning, match="caption_text"):
        refs = CaptionData.from_stores(tmp_path / "old.h5").references("val")
    assert refs == {7: ["a dog"], 8: ["a <unk>"]}


# ---------------------------------------------------------------- VQA preprocessing


@pytest.mark.parametrize(("raw", "normalised"), [
    ("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("a person!", "person"),
    ("1,000", "1000"), ("dont", "don't"), ("3.5", "3.5"), ("red, white", "red white"),
    ("  Ten  apples\n", "10 apples"), ("couldnt've", "couldn't've"), ("an orange", "orange"),
])
def test_training_answer_rules(raw, normalised):
    # compute_softscore's preprocess_answer: both steps, every answer
    assert training_answer(raw) == normalised


def test_soft_score_table():
    assert [soft_score(c) for c in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_tokenize_question():
    assert tokenize_question("What's the man's name?") == ["what", "'s", "the", "man", "'s", "name"]
    assert tokenize_question("Don't they, 2 DOGS, play?") == ["do", "n't", "they", "2", "dogs",
                                                                "play"]


@pytest.fixture(scope="module")
def vqa_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    questions, annotations = write_vqa(root)
    cfg = VQAPreprocessConfig(min_answer_count=2, max_question_length=5)
    out = build_vqa_store(questions, annotations, root / "vqa.h5", cfg)
    return questions, annotations, load_store(out, "vqa")


def test_vqa_answer_vocab_recipe(vqa_store):
    _, annotations, store = vqa_store
    counts = Counter(training_answer(a["multiple_choice_answer"]) for split in ("train", "val")
                     for a in json.loads(annotations[split].read_text())["annotations"])
    expected = sorted((a for a, c in counts.items() if c >= 2), key=lambda a: (-counts[a], a))
    assert store["attrs"]["answer_vocab"] == expected
    assert "yes" in expected and "no" in expected


def test_vqa_soft_targets_match_human_counts(vqa_store):
    questions, annotations, store = vqa_store
    answer_vocab = store["attrs"]["answer_vocab"]
    row_of = {int(q): i for i, q in enumerate(store["question_ids"])}
    checked = 0
    for split in ("train", "val"):
        for ann in json.loads(annotations[split].read_text())["annotations"]:
            row = row_of[ann["question_id"]]
            humans = Counter(training_answer(a["answer"]) for a in ann["answers"])
            # reference: min(1, 0.3 * count) below 4 humans, 1 from 4 on (bottom-up-attention-vqa)
            expected = {answer_vocab.index(a): (1.0 if c >= 4 else 0.3 * c)
                        for a, c in humans.items() if a in answer_vocab}
            labels, scores = store["answer_labels"][row], store["answer_scores"][row]
            got = {int(lab): float(s) for lab, s in zip(labels, scores, strict=True) if lab >= 0}
            assert got.keys() == expected.keys()
            for k, v in expected.items():
                assert got[k] == pytest.approx(v, abs=1e-6)
            assert (labels[len(got):] == -1).all() and (scores[len(got):] == 0).all()
            checked += 1
    assert checked == len(store["question_ids"][store["split"] < 2])
    # the number question: 7 say "N", one says it in words (normalised to N): all 8 agree
    ann = json.loads(annotations["train"].read_text())["annotations"][0]
    assert ann["answer_type"] == "number"
    row = row_of[ann["question_id"]]
    assert store["answer_scores"][row][0] == pytest.approx(1.0)


def test_vqa_store_questions_splits_and_images(vqa_store):
    questions, _, store = vqa_store
    qvocab = store["attrs"]["question_vocab"]
    assert qvocab[:2] == ["<pad>", "<unk>"]
    rows = []
    for code, split in enumerate(("train", "val", "test")):
        rows += [(code, q) for q in json.loads(questions[split].read_text())["questions"]]
    np.testing.assert_array_equal(store["question_ids"], [q["question_id"] for _, q in rows])
    np.testing.assert_array_equal(store["split"], [c for c, _ in rows])
    assert store["questions"].shape == (len(rows), 5)
    for row, (_, q) in enumerate(rows):
        assert store["image_ids"][store["question_image_index"][row]] == q["image_id"]
        tokens = tokenize_question(q["question"])[:5]
        ids = [qvocab.index(t) if t in qvocab else 1 for t in tokens]
        assert store["questions"][row].tolist() == ids + [0] * (5 - len(ids))
    test_rows = store["split"] == 2
    assert test_rows.any() and (store["answer_labels"][test_rows] == -1).all()
    assert store["attrs"]["config"]["min_answer_count"] == 2


def test_vqa_store_rejects_unknown_split(tmp_path):
    questions, annotations = write_vqa(tmp_path)
    with pytest.raises(ValueError, match="test-dev"):
        build_vqa_store({**questions, "test-dev": questions["test"]}, annotations,
                        tmp_path / "vqa.h5")
    assert not (tmp_path / "vqa.h5").exists()


def test_question_vocab_from_train_only(tmp_path):
    questions, annotations = write_vqa(tmp_path)
    data = json.loads(questions["val"].read_text())
    data["questions"][0]["question"] = "Is the zebra grazing?"
    questions["val"].write_text(json.dumps(data))
    store = load_store(build_vqa_store(questions, annotations, tmp_path / "vqa.h5"), "vqa")
    qvocab = store["attrs"]["question_vocab"]
    assert "zebra" not in qvocab and "grazing" not in qvocab
    row = int(np.flatnonzero(store["question_ids"] == data["questions"][0]["question_id"])[0])
    assert store["questions"][row, :4].tolist() == [qvocab.index("is"), qvocab.index("the"), 1, 1]


def test_cli_builds_both_stores(tmp_path):
    from mia.cli import main

    karpathy = write_karpathy(tmp_path / "dataset_coco.json")
    assert main(["data", "captions", "--karpathy", str(karpathy), "--out",
                 str(tmp_path / "captions.h5"), "--references-dir", str(tmp_path / "refs"),
                 "--count-threshold", "3"]) == 0
    assert load_store(tmp_path / "captions.h5")["attrs"]["count_threshold"] == 3
    questions, annotations = write_vqa(tmp_path)
    argv = ["data", "vqa", "--out", str(tmp_path / "vqa.h5"), "--min-answer-count", "2"]
    argv += [a for s, p in questions.items() for a in ("--questions", f"{s}={p}")]
    argv += [a for s, p in annotations.items() for a in ("--annotations", f"{s}={p}")]
    assert main(argv) == 0
    assert load_store(tmp_path / "vqa.h5")["attrs"]["min_answer_count"] == 2
