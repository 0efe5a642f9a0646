"""The fast CIDEr-D equals coco-caption's (pycocoevalcap) to 1e-9, per image and in the mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from mia.evaluation.cider import CiderD, CiderDConfig, DocumentFrequency
from mia.evaluation.cider_reference import pycocoevalcap_cider_d, pycocoevalcap_document_frequency

TOL = 1e-9


def _random_corpus(seed: int, images: int, vocab: int = 200, max_refs: int = 5
                   ) -> dict[int, list[str]]:
    """Zipf-distributed words, sentence lengths 0..15 (empty sentences included on purpose)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()

    def sentence() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(0, 16)), p=p))

    return {i: [sentence() for _ in range(int(rng.integers(1, max_refs + 1)))]
            for i in range(images)}


def _pycoco(refs: dict, cands: dict) -> tuple[float, np.ndarray]:
    mean, scores = Cider().compute_score(refs, {k: [cands[k]] for k in refs})
    return float(mean), np.asarray(scores)


@pytest.fixture(scope="module")
def coco_mini(data_dir):
    """Real COCO captions, crudely tokenised (lowercased, '.' and ',' split off): one caption per
    image is the candidate, the other four the references."""
    data = json.loads((data_dir / "coco-mini" / "captions.json").read_text())
    by_image: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        text = ann["caption"].lower().replace(".", " ").replace(",", " ")
        by_image.setdefault(ann["image_id"], []).append(" ".join(text.split()))
    cands = {k: v[0] for k, v in by_image.items()}
    refs = {k: v[1:] for k, v in by_image.items()}
    return refs, cands


def test_coco_mini_equals_pycocoevalcap(coco_mini):
    refs, cands = coco_mini
    mean_ref, per_ref = _pycoco(refs, cands)
    mean, per_key = CiderD(refs).score(cands)
    assert mean_ref > 0.1  # real captions share n-grams: a non-trivial value is compared
    assert abs(mean - mean_ref) < TOL
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpus_equals_pycocoevalcap(seed):
    refs = _random_corpus(seed, images=150)
    cands = _random_corpus(seed + 100, images=150, max_refs=1)
    cands = {k: v[0] for k, v in cands.items()}
    # Some candidates copy a reference, so clipping and full matches are exercised.
    for k in list(cands)[::7]:
        cands[k] = refs[k][0]
    mean_ref, per_ref = _pycoco(refs, cands)
    mean, per_key = CiderD(refs).score(cands)
    assert abs(mean - mean_ref) < TOL
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)


def test_unknown_words_and_repeated_ngrams():
    refs = {"a": ["the cat sat on the mat", "a cat on a mat"], "b": ["dogs run", "a dog runs fast"],
            "c": ["x"]}
    cands = {"a": "the the the cat cat zebra zebra zebra", "b": "", "c": "x x x x"}
    mean_ref, per_ref = _pycoco(refs, cands)
    mean, per_key = CiderD(refs).score(cands)
    assert abs(mean - mean_ref) < TOL
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)


def test_precomputed_document_frequency_and_several_samples():
    """SCST: df from a different (larger) reference set, 5 samples per image."""
    df_set = _random_corpus(7, images=400)
    batch_refs = {k: df_set[k] for k in range(0, 400, 20)}
    # Plus images outside the df set, so reference n-grams unseen by the df occur.
    extra = _random_corpus(8, images=5, vocab=260)
    batch_refs.update({1000 + k: v for k, v in extra.items()})
    rng = np.random.default_rng(9)
    samples = _random_corpus(10, images=len(batch_refs) * 5, vocab=260, max_refs=1)
    keys = [k for k in batch_refs for _ in range(5)]
    cands = [samples[i][0] for i in range(len(keys))]
    for i in rng.choice(len(keys), size=10, replace=False):
        cands[i] = batch_refs[keys[i]][0]

    df, log_docs = pycocoevalcap_document_frequency(df_set)
    pairs = [(c, batch_refs[k]) for k, c in zip(keys, cands, strict=True)]
    expected = pycocoevalcap_cider_d(pairs, df, log_docs)
    ours = CiderD(batch_refs, document_frequency=DocumentFrequency(df_set)).score_batch(keys,
                                                                                       cands)
    assert ours.shape == (len(keys),)
    assert expected.max() > 1.0
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)


def test_score_batch_equals_pycocoevalcap_with_own_references():
    refs = _random_corpus(3, images=60)
    keys = [k for k in refs for _ in range(3)]
    cands = [s[0] for s in _random_corpus(4, images=len(keys), max_refs=1).values()]
    df, log_docs = pycocoevalcap_document_frequency(refs)
    pairs = [(c, refs[k]) for k, c in zip(keys, cands, strict=True)]
    expected = pycocoevalcap_cider_d(pairs, df, log_docs)
    np.testing.assert_allclose(CiderD(refs).score_batch(keys, cands), expected, rtol=0, atol=TOL)


def test_reference_helper_agrees_with_cider_class(coco_mini):
    """The fixed-df reference reproduces pycocoevalcap's Cider when df is the scored set's."""
    refs, cands = coco_mini
    df, log_docs = pycocoevalcap_document_frequency(refs)
    expected = pycocoevalcap_cider_d([(cands[k], refs[k]) for k in refs], df, log_docs)
    np.testing.assert_allclose(expected, _pycoco(refs, cands)[1], rtol=0, atol=1e-12)


def test_token_ids_with_vocabulary_equal_strings():
    refs = _random_corpus(5, images=40)
    cands = {k: v[0] for k, v in _random_corpus(6, images=40, max_refs=1).items()}
    vocab = sorted({w for r in list(refs.values()) + [[c] for c in cands.values()]
                    for s in r for w in s.split()})
    index = {w: i for i, w in enumerate(vocab)}
    ids_refs = {k: [[index[w] for w in s.split()] for s in v] for k, v in refs.items()}
    ids_cands = {k: np.array([index[w] for w in c.split()], dtype=np.int64)
                 for k, c in cands.items()}
    by_words = CiderD(refs).score(cands)
    by_ids = CiderD(ids_refs, vocab=vocab).score(ids_cands)
    by_raw_ids = CiderD(ids_refs).score(ids_cands)  # ids are words of their own
    assert abs(by_words[0] - by_ids[0]) < TOL and abs(by_words[0] - by_raw_ids[0]) < TOL
    np.testing.assert_allclose(list(by_ids[1].values()), list(by_words[1].values()), atol=TOL)


def test_wide_word_ids_when_vocabulary_is_large():
    """Over 2**15 distinct words switches to 32-bit word ids; scores unchanged."""
    rng = np.random.default_rng(11)
    refs = {i: [" ".join(f"v{20 * i + 10 * r + j}" for j in range(10)) for r in range(2)]
            for i in range(1700)}  # 34,000 distinct words
    refs[0] = ["a b c d e", "a b c d"]
    cands = {k: " ".join(v[0].split()[:6] + [f"v{rng.integers(34000)}"]) for k, v in refs.items()}
    cands[0] = "a b c d e"
    scorer = CiderD(refs)
    assert scorer.codec.bits == 32
    mean_ref, per_ref = _pycoco(refs, cands)
    mean, per_key = scorer.score(cands)
    assert abs(mean - mean_ref) < TOL and per_key[0] > 1.0
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)


def test_sigma_follows_the_config():
    """(pycocoevalcap's scorer cooks 4-grams whatever its ``n``, so only n=4 is comparable.)"""
    refs = _random_corpus(12, images=30)
    cands = {k: v[0] for k, v in _random_corpus(13, images=30, max_refs=1).items()}
    mean_ref, per_ref = Cider(sigma=2.0).compute_score(refs, {k: [cands[k]] for k in refs})
    mean, per_key = CiderD(refs, config=CiderDConfig(sigma=2.0)).score(cands)
    assert abs(mean - mean_ref) < TOL
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)
    assert abs(CiderD(refs).score(cands)[0] - mean) > 1e-3  # sigma 6 differs: sigma is used


def test_errors_name_the_key():
    scorer = CiderD({"a": ["x y"]})
    with pytest.raises(KeyError, match="'missing'"):
        scorer.score({"missing": "x"})
    with pytest.raises(ValueError, match="2 keys but 1"):
        scorer.score_batch(["a", "a"], ["x"])
    with pytest.raises(ValueError, match=r"references\['b'\]"):
        CiderD({"b": []})


# Empty sentences (RELIABILITY.md): a model that emits <eos> first gives an empty candidate; a
# reference can be empty after tokenisation (punctuation only). Expected values are
# pycocoevalcap's, computed in the test.
EMPTY_CASES = {
    "empty_candidate": ({"a": ["a cat sat", "the cat"], "b": ["dog runs"]},
                        {"a": "", "b": "dog runs"}),
    "one_empty_reference": ({"a": ["", "the cat sat"], "b": ["dog runs"]},
                            {"a": "the cat sat", "b": "dog"}),
    "all_references_of_an_image_empty": ({"a": ["", ""], "b": ["dog runs"]},
                                         {"a": "the cat", "b": "dog runs"}),
    "empty_candidate_and_empty_reference": ({"a": [""], "b": ["dog runs"]},
                                            {"a": "", "b": "dog runs"}),
    "whitespace_only": ({"a": ["   ", "a b"], "b": ["dog runs"]}, {"a": "  ", "b": "dog runs"}),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_empty_sentences_equal_pycocoevalcap(case):
    refs, cands = EMPTY_CASES[case]
    mean_ref, per_ref = _pycoco(refs, cands)
    mean, per_key = CiderD(refs).score(cands)
    assert abs(mean - mean_ref) < TOL
    np.testing.assert_allclose([per_key[k] for k in refs], per_ref, rtol=0, atol=TOL)
    assert per_key["a"] == 0.0 if case != "one_empty_reference" else per_key["a"] > 1.0


def test_empty_candidate_in_scst_batch_equals_reference():
    refs = {"a": ["a cat sat", "the cat"], "b": ["dog runs", ""]}
    keys, cands = ["a", "a", "b", "b"], ["", "a cat", "", "dog runs"]
    df, log_docs = pycocoevalcap_document_frequency(refs)
    expected = pycocoevalcap_cider_d(list(zip(cands, [refs[k] for k in keys], strict=True)), df,
                                     log_docs)
    ours = CiderD(refs).score_batch(keys, cands)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    assert ours[0] == ours[2] == 0.0 and ours[3] > 0


def test_corpus_without_any_reference_word_scores_zero_where_pycocoevalcap_crashes():
    """Known disagreement, kept on purpose: when no reference of the whole corpus has a word,
    pycocoevalcap's CiderScorer fails (``max()`` of its empty document-frequency table in
    compute_score); CiderD scores the (empty) candidates 0."""
    refs, cands = {"a": [""], "b": ["  "]}, {"a": "", "b": ""}
    with pytest.raises(ValueError, match="empty"):
        _pycoco(refs, cands)
    mean, per_key = CiderD(refs).score(cands)
    assert mean == 0.0 and per_key == {"a": 0.0, "b": 0.0}


def test_word_candidate_against_corpus_without_reference_words():
    # Used to raise IndexError in DocumentFrequency.idf (an empty count table was indexed).
    refs, cands = {"a": [""], "b": ["  "]}, {"a": "", "b": "dog"}
    mean, per_key = CiderD(refs).score(cands)
    assert mean == 0.0 and per_key == {"a": 0.0, "b": 0.0}
