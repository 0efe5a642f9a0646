"""Where the VQA references differ from a masked reimplementation: each a switch, each worked by
hand here (issue 21, item 5). The references: hengyuan-hu/bottom-up-attention-vqa (Up-Down) and
jnhwkim/ban-vqa (BAN); docs/RECIPE.md ("VQA") says which form the paper config uses and why.

* the tokenizer (``Dictionary.tokenize``) and the question vocabulary over train, val, test2015
  and test-dev2015 (``tools/create_dictionary.py``);
* BAN's tf-idf question embedding (``--op c``, ``tfidf_from_questions``), its quirk included;
* Up-Down's front padding and last GRU step, BAN's unmasked pad words (``question_pads``);
* region stores with a per-image box count (BAN's adaptive 10-100 boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mia.data.loaders import VQAData
from mia.data.preprocess import (
    VQAPreprocessConfig,
    build_vqa_store,
    build_vqa_test_store,
    reference_tokenize,
)
from mia.data.store import open_store, read_attrs, write_store
from mia.data.tfidf import first_appearance_ids, reference_cooccurrence
from mia.vqa import VQAModelConfig, build_vqa_model
from mia.vqa.question import QuestionEncoder, front_padded

pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


# ---------------------------------------------------------------- tokenizer and vocabulary


def test_reference_tokenizer_by_hand():
    """lower; drop ',' and '?'; "'s" -> " 's"; split on whitespace: nothing else is split."""
    assert reference_tokenize("What's the man's T-shirt color, at 1:00?") == [
        "what", "'s", "the", "man", "'s", "t-shirt", "color", "at", "1:00"]
    assert reference_tokenize("Don't they play?  Is the sign red.") == [
        "don't", "they", "play", "is", "the", "sign", "red."]
    with pytest.raises(ValueError, match="tokenizer"):
        VQAPreprocessConfig(tokenizer="nltk")


def _write_vqa(root: Path) -> tuple[dict, dict, dict]:
    """train/val with answers; test2015 (with test-dev2015 a subset) questions only. 'zebra'
    occurs in val only, 'kite' in test only."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {"train": ["What color is the cat?", "How many cats are there?",
                       "Is the man's shirt red?", "What is on the table?"],
             "val": ["What color is the zebra?", "How many cats?"],
             "test2015": ["Is the kite red?", "What color is the cat?", "How many kites?"]}
    questions, annotations, qid = {}, {}, 0
    for split, items in texts.items():
        qs, anns = [], []
        for i, text in enumerate(items):
            qs.append({"question_id": qid, "image_id": 10 + i, "question": text})
            answer = "red" if "color" in text else "2"
            anns.append({"question_id": qid, "image_id": 10 + i, "question_type": "what",
                         "answer_type": "other", "multiple_choice_answer": answer,
                         "answers": [{"answer": answer, "answer_id": j + 1} for j in range(10)]})
            qid += 1
        stem = split if split.startswith("test") else f"{split}2014"
        path = root / f"v2_OpenEnded_mscoco_{stem}_questions.json"
        path.write_text(json.dumps({"questions": qs}))
        questions[split] = path
        if not split.startswith("test"):
            annotations[split] = root / f"v2_mscoco_{split}2014_annotations.json"
            annotations[split].write_text(json.dumps({"annotations": anns}))
    dev = json.loads(questions["test2015"].read_text())["questions"][:2]
    questions["test-dev2015"] = root / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    questions["test-dev2015"].write_text(json.dumps({"questions": dev}))
    extra = {k: questions.pop(k) for k in ("test2015", "test-dev2015")}
    return questions, annotations, extra


def test_vocabulary_over_every_question_file_keeps_unseen_words(tmp_path):
    questions, annotations, extra = _write_vqa(tmp_path / "raw")
    ours = build_vqa_store(questions, annotations, tmp_path / "ours.h5",
                           VQAPreprocessConfig(min_answer_count=1))
    ref_cfg = VQAPreprocessConfig(min_answer_count=1, tokenizer="reference",
                                  vocabulary_questions=("train", "val", "test2015",
                                                        "test-dev2015"))
    ref = build_vqa_store(questions, annotations, tmp_path / "ref.h5", ref_cfg, extra)
    with open_store(ours, "vqa") as f:
        ours_vocab = read_attrs(f)["question_vocab"]
    with open_store(ref, "vqa") as f:
        ref_vocab = read_attrs(f)["question_vocab"]
        val_rows = f["questions"][()][f["split"][()] == 1]
    assert "zebra" not in ours_vocab and {"zebra", "kite", "kites", "man", "'s"} <= set(ref_vocab)
    assert ref_vocab.index("zebra") in val_rows  # encoded as itself, not as <unk> (id 1)
    test = build_vqa_test_store(extra["test2015"], ref, tmp_path / "test.h5")
    with open_store(test, "vqa") as f:
        assert read_attrs(f)["tokenizer"] == "reference"
        assert ref_vocab.index("kite") in f["questions"][()] and 1 not in f["questions"][()]
    with pytest.raises(ValueError, match="test2015.*was not given"):
        build_vqa_store(questions, annotations, tmp_path / "x.h5", ref_cfg)


def test_words_without_a_training_example_keep_their_glove_vector():
    """With the references' vocabulary a val/test word has its own row, which no training
    question reaches: Adamax leaves it exactly at its (GloVe) initialisation."""
    torch.manual_seed(0)
    cfg = VQAModelConfig(baseline="updown", feature_dim=8, embed_dim=8, hidden=16)
    model = build_vqa_model(cfg, 12, 5)
    unseen = 11  # no training question uses word 11
    before = model.question.embedding.weight[unseen].clone()
    optimizer = torch.optim.Adamax(model.parameters(), lr=2e-3)
    for _ in range(3):
        questions = torch.randint(2, 11, (4, 6))
        batch = {"questions": questions, "features": torch.randn(4, 5, 8),
                 "feature_mask": torch.ones(4, 5, dtype=torch.bool),
                 "target": torch.rand(4, 5)}
        optimizer.zero_grad()
        model.loss(model(batch), batch["target"]).backward()
        optimizer.step()
    assert torch.equal(model.question.embedding.weight[unseen], before)
    assert not torch.equal(model.question.embedding.weight[2], before)


# ---------------------------------------------------------------- BAN's tf-idf embedding


def test_cooccurrence_matrix_by_hand_with_the_reference_quirk():
    """Questions [a b c], [a b] (ids 2, 3, 4; reference dictionary ids 0, 1, 2). Entries, in
    order: (a,b) (b,a) (a,c) (c,a) (b,c) (c,b) (a,b) (b,a). The reference's
    ``vals[col] /= df[col]`` divides ENTRY k by df of WORD k once per entry whose column is
    word k: entry 0 by df[a]^3 = 8, entry 1 by df[b]^3 = 8, entry 2 by df[c]^2 = 1. Rows then
    sum to 1 and duplicates are added."""
    matrix = reference_cooccurrence([[2, 3, 4], [2, 3]], 5, np.array([-1, -1, 0, 1, 2]))
    t = matrix.dense()
    z = 0.125 + 1 + 1  # row a: (a,b) 1/8, (a,c) 1, (a,b) 1
    expected = np.zeros((5, 5))
    expected[2, 3], expected[2, 4] = 1.125 / z, 1 / z
    expected[3, 2], expected[3, 4] = 1.125 / z, 1 / z  # row b: (b,a) 1/8, (b,c) 1, (b,a) 1
    expected[4, 2] = expected[4, 3] = 0.5
    np.testing.assert_allclose(t, expected, rtol=0, atol=1e-15)
    # Without the quirk (no reference ids): plain row-normalised co-occurrence counts.
    plain = reference_cooccurrence([[2, 3, 4], [2, 3]], 5, np.full(5, -1)).dense()
    np.testing.assert_allclose(plain[2, 3:], [2 / 3, 1 / 3])
    assert first_appearance_ids([[[4, 2]], [[3, 2, 5]]], 6).tolist() == [-1, -1, 1, 2, 0, 3]


def test_tfidf_embedding_is_t_times_the_first_and_feeds_a_600d_gru(tmp_path):
    questions, annotations, extra = _write_vqa(tmp_path / "raw")
    cfg = VQAPreprocessConfig(min_answer_count=1, tokenizer="reference",
                              vocabulary_questions=("train", "val", "test2015", "test-dev2015"),
                              tfidf_questions=("train", "val", "test2015"))
    vqa = build_vqa_store(questions, annotations, tmp_path / "vqa.h5", cfg, extra)
    regions = _regions(tmp_path / "regions.h5", np.arange(10, 14), np.full(4, 3), m=3)
    data = VQAData.from_stores(vqa, regions)
    assert data.tfidf is not None
    t = data.tfidf.dense()
    assert np.allclose(t.sum(1)[t.sum(1) > 0], 1) and not t[0].any()  # <pad> never co-occurs
    torch.manual_seed(0)
    model = build_vqa_model(VQAModelConfig(baseline="ban", feature_dim=8, embed_dim=300,
                                           hidden=16, glimpses=1, tfidf_embedding=True),
                            len(data.question_vocab), data.n_answers)
    assert model.question.gru.input_size == 600  # --op c: GloVe 300 + tf-idf 300
    model.question.init_tfidf(data.tfidf)
    first = model.question.embedding.weight.detach().double().numpy()
    second = model.question.tfidf_embedding.weight.detach().double().numpy()
    np.testing.assert_allclose(second, t @ first, rtol=1e-6, atol=1e-6)
    assert model.question.tfidf_embedding.weight.requires_grad  # trained, as the reference's
    batch = data.question_batch(np.arange(3))
    assert model(batch).shape == (3, data.n_answers)
    with pytest.raises(ValueError, match="tf-idf"):
        build_vqa_model(VQAModelConfig(baseline="ban", feature_dim=8, embed_dim=8, hidden=16),
                        len(data.question_vocab), data.n_answers).question.init_tfidf(data.tfidf)


# ---------------------------------------------------------------- question pads


def test_front_padding_by_hand():
    q = torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [2, 3, 4, 5, 6]])
    assert front_padded(q).tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 8], [2, 3, 4, 5, 6]]


def test_updown_reference_reads_the_gru_after_the_front_pads():
    """bottom-up-attention-vqa: ``tokens = padding + tokens`` and ``output[:, -1]``; the GRU runs
    over the zero pad embeddings first, so the question vector depends on the pad count."""
    torch.manual_seed(0)
    enc = QuestionEncoder(10, 4, 6, front=True)
    q = torch.tensor([[5, 6, 7, 0, 0, 0]])
    states = enc(q)
    h = torch.zeros(1, 1, 6)
    emb = enc.embedding(torch.tensor([[0, 0, 0, 5, 6, 7]]))
    by_hand, _ = enc.gru(emb, h)
    torch.testing.assert_close(states.last, by_hand[:, -1], rtol=0, atol=0)
    masked = QuestionEncoder(10, 4, 6)
    masked.load_state_dict(enc.state_dict())
    torch.testing.assert_close(masked(q).last, masked.gru(enc.embedding(q[:, :3]))[0][:, -1])
    assert not torch.allclose(states.last, masked(q).last)  # the pads moved the state
    longer = enc(torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])).last
    assert not torch.allclose(longer, states.last)
    assert torch.allclose(masked(torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])).last,
                          masked(q).last, atol=1e-6)


def test_ban_reference_lets_pad_words_into_attention_and_the_sum():
    """ban-vqa masks no word: the answer depends on how many pads follow the question."""
    cfg = dict(baseline="ban", feature_dim=8, embed_dim=8, hidden=16, glimpses=2)
    g = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(2, 4, 8, generator=g),
             "feature_mask": torch.ones(2, 4, dtype=torch.bool),
             "boxes": torch.rand(2, 4, 4, generator=g).sort(-1).values}
    short = {**batch, "questions": torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])}
    long = {**batch, "questions": torch.nn.functional.pad(short["questions"], (0, 4))}
    outs = {}
    for pads in ("masked", "reference"):
        torch.manual_seed(0)
        model = build_vqa_model(VQAModelConfig(**cfg, question_pads=pads), 10, 5).eval()
        with torch.no_grad():
            run = model.run(short)
            outs[pads] = (run.logits, model(long))
        assert bool(run.question.mask.all()) == (pads == "reference")
    torch.testing.assert_close(*outs["masked"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(*outs["reference"], atol=1e-4)


# ---------------------------------------------------------------- per-image box counts


def _regions(path: Path, ids: np.ndarray, counts: np.ndarray, m: int = 100,
             c: int = 8, seed: int = 0) -> Path:
    """A region store of ``m`` rows per image, ``counts`` real (zero-padded), as an adaptive
    10-100 extraction writes it."""
    rng = np.random.default_rng(seed)
    real = np.arange(m)[None, :] < counts[:, None]
    feats = (rng.standard_normal((len(ids), m, c)) * real[..., None]).astype(np.float16)
    corner = rng.uniform(0, 50, (len(ids), m, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 40, (len(ids), m, 2))], 2)
    return write_store(path, kind="region_features", image_ids=ids.astype(np.int64),
                       datasets={"features": feats,
                                 "boxes": (boxes * real[..., None]).astype(np.float32),
                                 "num_boxes": counts.astype(np.int32),
                                 "image_w": np.full(len(ids), 100, np.int32),
                                 "image_h": np.full(len(ids), 100, np.int32)},
                       attrs={"padding": "zeros", "max_boxes": m})


@pytest.mark.parametrize("variant", ["base", "mia"])
@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_adaptive_box_counts_from_a_hand_built_store(tmp_path, baseline, variant):
    """10..100 real boxes per image: the loaders mask the rest, every model ignores what padded
    rows hold, and MIA keeps one top concept per real box (the paper's n concepts for n
    features), so concepts past an image's box count change nothing."""
    questions, annotations, _ = _write_vqa(tmp_path / "raw")
    vqa = build_vqa_store(questions, annotations, tmp_path / "vqa.h5",
                          VQAPreprocessConfig(min_answer_count=1))
    ids, counts = np.arange(10, 14), np.array([10, 100, 37, 64])
    regions = _regions(tmp_path / "regions.h5", ids, counts)
    rng = np.random.default_rng(1)
    concepts = write_store(tmp_path / "concepts.h5", kind="concepts", image_ids=ids,
                           datasets={"concept_ids": rng.integers(0, 30, (4, 100)).astype(np.int32),
                                     "concept_probs": np.sort(rng.random((4, 100)))[:, ::-1]
                                     .astype(np.float32)},
                           attrs={"concept_words": [f"w{i}" for i in range(30)], "k": 100})
    data = VQAData.from_stores(vqa, regions, concepts_h5=concepts)
    rows = np.flatnonzero(data.split == 0)
    batch = data.question_batch(rows)
    per_image = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
    assert batch["feature_mask"].sum(1).tolist() == [per_image[int(i)]
                                                      for i in batch["image_ids"]]
    torch.manual_seed(0)
    model = build_vqa_model(VQAModelConfig(baseline=baseline, variant=variant, feature_dim=8,
                                           embed_dim=8, hidden=16, glimpses=2,
                                           concept_embed_dim=8, mia_d_model=16, mia_heads=2,
                                           mia_d_ff=16), len(data.question_vocab),
                            data.n_answers, 30).eval()
    with torch.no_grad():
        logits = model(batch)
        noisy = {k: v.clone() for k, v in batch.items()}
        pad = ~noisy["feature_mask"]
        noisy["features"][pad] = torch.randn(int(pad.sum()), 8)  # whatever the padding holds
        noisy["boxes"][pad] = torch.rand(int(pad.sum()), 4)
        noisy["concepts"][pad] = (noisy["concepts"][pad] + 7) % 30  # concepts past the count
        torch.testing.assert_close(model(noisy), logits, rtol=1e-5, atol=1e-5)
    if variant == "mia":
        few = write_store(tmp_path / "few.h5", kind="concepts", image_ids=ids,
                          datasets={"concept_ids": np.zeros((4, 36), np.int32),
                                    "concept_probs": np.ones((4, 36), np.float32)},
                          attrs={"concept_words": ["w"], "k": 36})
        with pytest.raises(ValueError, match="at least k=100"):
            model(VQAData.from_stores(vqa, regions, concepts_h5=few).question_batch(rows))
