"""MIL concept detector (mia.features.concepts), after Fang et al. (2015).

References: the noisy-OR in float64 straight from its definition, AP as the mean over positives
of precision at their ranks, word presence counted by hand; end to end on the demo world, where
the detector must beat the frequency-only baseline on the val split.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mia.data.store import load_store, write_store
from mia.features.concepts import (
    STOPWORDS,
    CaptionWords,
    ConceptConfig,
    MILConceptDetector,
    average_precision,
    build_concept_store,
    build_concept_vocabulary,
    caption_words_from_karpathy,
    caption_words_from_store,
    concepts_from_detector,
    load_caption_words,
    mean_average_precision,
    noisy_or_bce,
    precision_at_k,
    save_concept_detector,
    train_concept_detector,
    word_presence,
)
from mia.features.grid import GridFeatureConfig, extract_grid_features_from_karpathy


def test_average_precision_matches_definition():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.random(30)  # distinct scores: AP = mean over positives of precision@rank
        labels = rng.random(30) < 0.3
        if not labels.any():
            continue
        order = np.argsort(-scores)
        hits = labels[order]
        ranks = np.flatnonzero(hits) + 1
        expected = np.mean([hits[:r].sum() / r for r in ranks])
        assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)
    labels = np.array([1, 0, 0, 1, 0], dtype=float)
    assert average_precision(np.full(5, 0.3), labels) == pytest.approx(0.4)  # ties: prevalence
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    truth = np.array([[1, 0], [0, 0], [1, 0]], dtype=float)  # word 1 has no positive: left out
    assert mean_average_precision(scores, truth) == pytest.approx((1 + 2 / 3) / 2)
    assert precision_at_k(scores, truth, 1) == pytest.approx(1 / 3)  # only image 0 hits
    assert precision_at_k(scores, truth, 2) == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)


def test_noisy_or_and_loss_match_float64_definition():
    torch.manual_seed(0)
    n, c, k = 49, 6, 4
    model = MILConceptDetector(c, k, 0, torch.zeros(c), torch.ones(c), torch.full((k,), 0.2), n)
    with torch.no_grad():
        model.words.weight.normal_()
    x = torch.randn(3, n, c)
    logits = model(x).double()
    p_cell = torch.sigmoid(logits)
    expected = 1 - torch.prod(1 - p_cell, dim=1)  # p_w = 1 - prod_j (1 - sigmoid(f_j v_w + b_w))
    got = model.probabilities(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    y = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.float64)
    bce = -(y * expected.log() + (1 - y) * (1 - expected).log()).mean()
    loss = noisy_or_bce(model.log_not_present(model(x)), y.float())
    assert loss.item() == pytest.approx(bce.item(), rel=1e-4)
    # initial bias puts every image at the word prior (0.2) before training
    fresh = MILConceptDetector(c, k, 0, torch.zeros(c), torch.ones(c), torch.full((k,), 0.2), n)
    with torch.no_grad():
        fresh.words.weight.zero_()
    torch.testing.assert_close(fresh.probabilities(x), torch.full((3, k), 0.2))


def test_vocabulary_and_word_presence():
    words = CaptionWords(
        tokens={1: [["a", "red", "circle", "on", "the", "left"], ["red", "disc"]],
                2: [["a", "blue", "square"], ["the", "blue", "block"], ["a", "red", "block"]],
                3: [["a", "zebra", "zebra", "zebra"]]},
        split={1: "train", 2: "train", 3: "val"})
    # Fang et al.: the most frequent words, function words included; by count, ties alphabetical
    # (a: 3, red: 3, then block, blue, the: 2).
    assert build_concept_vocabulary(words, 4) == ["a", "red", "block", "blue"]
    assert build_concept_vocabulary(words, 5) == ["a", "red", "block", "blue", "the"]
    vocab = build_concept_vocabulary(words, 4, STOPWORDS)  # the option: function words out
    assert vocab == ["red", "block", "blue", "circle"]
    assert not set(vocab) & set(STOPWORDS) and "zebra" not in vocab  # val words never count
    presence = word_presence(words, [1, 2, 3], vocab)
    np.testing.assert_array_equal(presence, [[1, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]])


def test_stopwords_option():
    assert ConceptConfig().stopwords == ()  # the default keeps every word (Fang et al.)
    assert ConceptConfig(stopwords="function_words").stopwords == STOPWORDS
    assert ConceptConfig(stopwords=["a", "the"]).stopwords == ("a", "the")  # YAML gives lists
    with pytest.raises(ValueError, match="features.concepts.stopwords"):
        ConceptConfig(stopwords="english")


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory) -> tuple[Path, Path]:
    """A small demo world and resnet18 (random, seeded) grid features of it."""
    demo = pytest.importorskip("mia.data.demo", reason="mia.data.demo not written yet")
    root = tmp_path_factory.mktemp("demo")
    demo.generate_demo_world(root, demo.DemoConfig(num_images=200, image_size=64, seed=3,
                                                   val_fraction=0.25, test_fraction=0.05,
                                                   restval_fraction=0.05))
    karpathy = root / "karpathy" / "dataset_coco.json"
    grid = extract_grid_features_from_karpathy(
        karpathy, root, root / "grid_resnet18.h5",
        GridFeatureConfig(backbone="resnet18", pretrained=False, image_size=64, batch_size=50,
                          num_workers=0, device="cpu", progress=False))
    return karpathy, grid


def concept_cfg(**kw) -> ConceptConfig:
    base = dict(vocab_size=30, k=5, epochs=10, batch_size=32, lr=1e-2, seed=11, device="cpu",
                progress=False)
    return ConceptConfig(**{**base, **kw})


def test_detector_beats_frequency_baseline_on_demo_val(tmp_path, demo_world):
    karpathy, grid = demo_world
    out = build_concept_store(karpathy, grid, tmp_path / "concepts_grid.h5", concept_cfg())
    store = load_store(out, "concepts")
    attrs = store["attrs"]
    n = len(load_store(grid)["image_ids"])
    assert list(store["image_ids"]) == list(load_store(grid)["image_ids"])
    assert store["concept_ids"].shape == store["concept_probs"].shape == (n, 5)
    assert store["concept_ids"].dtype == np.int32 and store["concept_probs"].dtype == np.float32
    assert (np.diff(store["concept_probs"], axis=1) <= 0).all()
    assert ((store["concept_ids"] >= 0) & (store["concept_ids"] < 30)).all()
    assert len(attrs["concept_words"]) == 30 and attrs["k"] == 5
    assert attrs["num_val_images"] == 50
    assert attrs["val_mAP"] > attrs["baseline_val_mAP"] + 0.05, attrs
    assert attrs["val_precision_at_k"] > attrs["baseline_val_precision_at_k"], attrs

    # the baseline's numbers, recomputed from the captions alone
    words = caption_words_from_karpathy(karpathy)
    vocab = attrs["concept_words"]
    train = [i for i, s in words.split.items() if s == "train"]
    val = [i for i in store["image_ids"] if words.split[int(i)] == "val"]
    freq = word_presence(words, train, vocab).mean(0)
    truth = word_presence(words, val, vocab)
    top = np.argsort(-freq, kind="stable")[:5]
    assert attrs["baseline_val_precision_at_k"] == pytest.approx(truth[:, top].mean())
    positive = truth.any(0)
    assert attrs["baseline_val_mAP"] == pytest.approx(truth[:, positive].mean(0).mean())


def test_concepts_are_deterministic(tmp_path, demo_world):
    karpathy, grid = demo_world
    a = build_concept_store(karpathy, grid, tmp_path / "a.h5", concept_cfg(epochs=2))
    b = build_concept_store(karpathy, grid, tmp_path / "b.h5", concept_cfg(epochs=2))
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa["concept_probs"][()].tobytes() == fb["concept_probs"][()].tobytes()
        assert (fa["concept_ids"][()] == fb["concept_ids"][()]).all()


def test_caption_store_input_gives_same_words(tmp_path, demo_world):
    """A captions store (untruncated, every word kept) decodes to the Karpathy tokens."""
    preprocess = pytest.importorskip("mia.data.preprocess", reason="captions store not written")
    karpathy, _ = demo_world
    captions = preprocess.build_caption_store(
        karpathy, tmp_path / "captions.h5", tmp_path,
        preprocess.CaptionPreprocessConfig(count_threshold=1, max_length=60))
    from_store = caption_words_from_store(captions)
    from_json = caption_words_from_karpathy(karpathy)
    assert from_store.split == from_json.split
    assert {i: [list(c) for c in caps] for i, caps in from_store.tokens.items()} == \
        {i: [list(c) for c in caps] for i, caps in from_json.tokens.items()}
    vocab = build_concept_vocabulary(from_json, 30)
    assert build_concept_vocabulary(from_store, 30) == vocab


def test_real_coco_mini_concepts(tmp_path, data_dir):
    """The whole path on real JPEGs and real captions (no quality claim on 33 images)."""
    fixtures = pytest.importorskip("coco_mini_fixtures", reason="tests/coco_mini_fixtures.py")
    coco = data_dir / "coco-mini"
    if not (coco / "captions.json").exists():
        pytest.fail(f"{coco}: the coco-mini fixture (33 real COCO images) is missing from "
                    "the checkout; restore tests/data/coco-mini from git")
    karpathy = fixtures.write_karpathy(tmp_path / "dataset_coco.json")
    images = json.loads(karpathy.read_text())["images"]
    from mia.features.grid import extract_grid_features

    grid = extract_grid_features(
        [(im["cocoid"], coco / "images" / im["filename"]) for im in images], tmp_path / "g.h5",
        GridFeatureConfig(backbone="resnet18", pretrained=False, image_size=64, num_workers=0,
                          device="cpu", progress=False))
    store = load_store(build_concept_store(karpathy, grid, tmp_path / "c.h5",
                                           concept_cfg(vocab_size=60, k=49, epochs=2)))
    assert store["concept_ids"].shape == (33, 49)
    words = store["attrs"]["concept_words"]
    assert {"man", "sitting"} & set(words) and {"a", "of"} <= set(words)  # function words kept
    assert 0 <= store["attrs"]["val_mAP"] <= 1


def test_k_larger_than_vocabulary_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="features.concepts.k"):
        ConceptConfig(vocab_size=10, k=49)
    grid = write_store(tmp_path / "g.h5", kind="grid_features", image_ids=np.array([1, 2]),
                       datasets={"features": np.zeros((2, 49, 4), np.float16)})
    words = CaptionWords({1: [["red", "circle"]], 2: [["blue"]]}, {1: "train", 2: "val"})
    with pytest.raises(ValueError, match="only 2 concept words"):
        build_concept_store(words, grid, tmp_path / "c.h5", concept_cfg(vocab_size=5, k=3))


def test_one_saved_detector_labels_every_store_as_a_retrained_one_would(tmp_path, demo_world):
    """The workflow trains the detector once (train_concept_detector) and labels the grid,
    regions (k = 36) and test2015 stores with it: each store equals the one a detector trained
    for it alone gives (the old rules trained three identical detectors), with its own k's
    precision@k."""
    karpathy, grid = demo_world
    words = load_caption_words(karpathy)
    detector = train_concept_detector(words, grid, concept_cfg(k=7), ks=[3, 7])
    saved = save_concept_detector(detector, tmp_path / "detector.pt", concept_cfg(k=7))
    for k in (3, 7):
        ours = load_store(concepts_from_detector(saved, grid, tmp_path / f"c{k}.h5",
                                                 concept_cfg(k=k)), "concepts")
        alone = load_store(build_concept_store(karpathy, grid, tmp_path / f"alone{k}.h5",
                                               concept_cfg(k=k)), "concepts")
        assert ours["concept_ids"].tobytes() == alone["concept_ids"].tobytes()
        assert np.array_equal(ours["concept_probs"], alone["concept_probs"])
        for key in ("val_mAP", "val_precision_at_k", "baseline_val_precision_at_k",
                    "concept_words", "k"):
            assert ours["attrs"][key] == alone["attrs"][key], (k, key)


def test_workflow_trains_the_detector_once(repo_root, tmp_path):
    """One train_concept_detector job feeds the grid, regions and test2015 concept stores."""
    from workflow_support import TEST_CONFIGS, job_counts, snakemake

    out = snakemake(tmp_path, "-n", configfiles=TEST_CONFIGS, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    counts = job_counts(text)
    assert counts["train_concept_detector"] == 1
    assert counts["build_concept_store"] == 2 and counts["build_test_concept_store"] == 1
    for rule in ("build_concept_store", "build_test_concept_store"):
        for block in re.findall(rf"^rule {rule}:\n((?:    .*\n)+)", text, flags=re.M):
            inputs = re.search(r"^    input: (.*)$", block, flags=re.M).group(1)
            assert "features/concept_detector.pt" in inputs, (rule, inputs)
            assert "captions.h5" not in inputs  # nothing to train on: it only labels
