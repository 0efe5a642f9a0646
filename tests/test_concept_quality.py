"""The demo's concept-quality measure: the detector's top object words against the words true of
each picture (what the generator drew), with chance and frequency references, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mia.data.demo_language import object_words, true_words
from mia.data.store import write_store
from mia.features.concept_quality import concept_quality, precision_recall_at_k, summary


def test_true_words_of_a_picture() -> None:
    objects = [{"shape": "circle", "color": "gray", "size": "small"},
               {"shape": "circle", "color": "red", "size": "small"},
               {"shape": "star", "color": "red", "size": "large"}]
    assert true_words("white", objects) == {
        "circle", "disc", "circles", "discs", "star", "gray", "grey", "red", "small", "little",
        "tiny", "large", "big", "white"}
    # One star: no plural; the other background is not true.
    assert "stars" not in true_words("white", objects) and "black" not in true_words(
        "white", objects)
    every = {w for words in object_words().values() for w in words}
    assert {"triangle", "triangles", "rhombus", "rhombuses", "block", "orange"} <= every
    assert not every & {"a", "on", "two", "left", "shapes", "background"}


def test_precision_and_recall_at_k_by_hand() -> None:
    ranked = [["red", "circle", "blue", "star"], ["black", "star", "red", "big"]]
    truth = [{"red", "circle", "white"}, {"star"}]
    # image 1: top 2 both true -> P 1, R 2/3; image 2: "star" -> P 1/2, R 1
    assert precision_recall_at_k(ranked, truth, 2) == pytest.approx((0.75, (2 / 3 + 1) / 2))


def test_concept_quality_of_a_store(tmp_path: Path) -> None:
    """Two test images and one train image. The vocabulary has 6 scored object words among
    function words and a size word (not scored: true of nearly every picture); the store keeps
    each image's top 4 words."""
    vocab = ["a", "red", "circle", "on", "blue", "square", "black", "white", "small"]
    scenes = {"images": [
        {"image_id": 1, "split": "test", "background": "black",
         "objects": [{"shape": "circle", "color": "red", "size": "large"}]},
        {"image_id": 2, "split": "test", "background": "white",
         "objects": [{"shape": "square", "color": "blue", "size": "small"}]},
        {"image_id": 3, "split": "train", "background": "black",
         "objects": [{"shape": "circle", "color": "blue", "size": "small"}]}]}
    (tmp_path / "scenes.json").write_text(json.dumps(scenes))
    top = np.array([[8, 1, 4, 2],   # small, red, blue, circle -> object words: red, blue, circle
                    [3, 5, 6, 0],   # on, square, black, a -> square, black
                    [0, 1, 2, 3]])
    write_store(tmp_path / "concepts.h5", kind="concepts", image_ids=np.array([1, 2, 3]),
                datasets={"concept_ids": top.astype(np.int32),
                          "concept_probs": np.tile([0.9, 0.8, 0.7, 0.6], (3, 1)).astype(
                              np.float32)},
                attrs={"concept_words": vocab, "k": 4})
    q = concept_quality(tmp_path / "concepts.h5", tmp_path / "scenes.json", "test", k=2)
    assert q["object_words"] == ["red", "circle", "blue", "square", "black", "white"]
    assert q["images"] == 2 and q["k"] == 2
    # image 1: top-2 object words red, blue (true: red, circle, black) -> P 1/2, R 1/3
    # image 2: square, black (true: blue, square, white)              -> P 1/2, R 1/3
    assert q["precision_at_k"] == pytest.approx(0.5)
    assert q["recall_at_k"] == pytest.approx(1 / 3)
    assert q["chance_precision_at_k"] == pytest.approx(3 / 6)
    assert q["chance_recall_at_k"] == pytest.approx(2 / 6)
    # frequency over the train picture: blue, black, circle true (1 each), ties by name ->
    # black, blue: image 1 P 1/2 R 1/3; image 2 P 1/2 R 1/3
    assert q["frequency_precision_at_k"] == pytest.approx(0.5)
    assert "precision 50.0%" in summary(q)
    with pytest.raises(ValueError, match="none of its images is in the val split"):
        concept_quality(tmp_path / "concepts.h5", tmp_path / "scenes.json", "val", k=2)
    with pytest.raises(ValueError, match="k = 7 needs more"):
        concept_quality(tmp_path / "concepts.h5", tmp_path / "scenes.json", "test", k=7)
