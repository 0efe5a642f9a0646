"""Does the MIL concept detector see? Its top words against what the demo world drew.

On real data the detector's quality can only be measured against captions (the concept store's
``val_mAP`` and ``val_precision_at_k``: words some annotator wrote). The demo world knows the
truth of every picture (``annotations/demo_scenes.json``), so the demo measures it directly:

* **object words**: the words the world's captions use to name what is in a picture: shape words
  with their synonyms and plurals, colour words and background words
  (:func:`mia.data.demo_language.object_words`), those of them in the concept vocabulary.
  Function, number and position words are not scored: they say little of what a detector sees;
  nor are size words ("small", "big", ...): nearly every picture holds a small and a large
  shape, so they are true of almost all and tell nothing, and captions seldom say them;
* **true words** of an image: the object words true of it
  (:func:`mia.data.demo_language.true_words`);
* **prediction**: the detector's ``k`` most probable object words for the image (its ranking of
  the whole vocabulary, which is what MIA's concepts are, restricted to object words);
* **precision@k** = share of those k that are true; **recall@k** = share of the image's true
  words among them; both averaged over the images of a split;
* **chance**: a detector that ranks object words at random (precision = |true| / |object words|,
  recall = k / |object words|, per image); **frequency**: one that ranks them by how many
  training pictures they are true of, the same list for every image (what a detector that
  sees nothing but knows the world's statistics would say).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mia.data.demo_language import object_words, true_words
from mia.data.store import open_store, read_attrs

#: The kinds of object word scored (see the module docstring: not sizes).
SCORED_FACTS = ("shape", "shapes", "color", "background")


def load_scene_truth(scenes_json: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """``{image_id: {"split", "background", "objects"}}`` of the world's scenes file."""
    path = Path(scenes_json)
    try:
        images = json.loads(path.read_text())["images"]
        return {int(r["image_id"]): r for r in images}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not the demo world's scenes file (annotations/demo_scenes.json "
                         f"of mia.data.demo; {type(err).__name__}: {err}); regenerate the "
                         f"world") from err


def precision_recall_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[set[str]], k: int
                          ) -> tuple[float, float]:
    """Mean precision@k and recall@k of ranked word lists against true word sets (an image with
    no true word has recall 0; in the demo world every image has at least its background)."""
    precision, recall = [], []
    for words, true in zip(ranked, truth, strict=True):
        hits = len(set(words[:k]) & true)
        precision.append(hits / k)
        recall.append(hits / len(true) if true else 0.0)
    return float(np.mean(precision)), float(np.mean(recall))


def concept_quality(concepts_h5: str | os.PathLike, scenes_json: str | os.PathLike,
                    split: str = "test", k: int = 5) -> dict[str, Any]:
    """Precision@k and recall@k of a concept store's object words on ``split``'s images, beside
    chance and the frequency ranking (see the module docstring)."""
    scenes = load_scene_truth(scenes_json)
    with open_store(concepts_h5, "concepts") as f:
        attrs = read_attrs(f)
        ids = f["image_ids"][()]
        concept_ids = f["concept_ids"][()]
    vocab = list(attrs["concept_words"])
    candidates = {w for fact, words in object_words().items()
                  if fact.split(":")[0] in SCORED_FACTS for w in words}
    scored = [w for w in vocab if w in candidates]
    if len(scored) < k:
        raise ValueError(f"{concepts_h5}: only {len(scored)} object words in the concept "
                         f"vocabulary ({scored}); k = {k} needs more (raise "
                         f"features.concepts.vocab_size)")
    scored_set = set(scored)
    rows = [r for r, i in enumerate(ids) if scenes.get(int(i), {}).get("split") == split]
    if not rows:
        raise ValueError(f"{concepts_h5}: none of its images is in the {split} split of "
                         f"{scenes_json}; concepts and scenes come from different worlds?")
    ranked, truth = [], []
    for r in rows:
        scene = scenes[int(ids[r])]
        stored = [vocab[j] for j in concept_ids[r] if vocab[j] in scored_set]
        # Object words below the store's top-k rank after the stored ones (probability order is
        # all the store keeps; k of them are always among the stored when k <= their number).
        ranked.append(stored + [w for w in scored if w not in stored])
        truth.append(true_words(scene["background"], scene["objects"]) & scored_set)
    precision, recall = precision_recall_at_k(ranked, truth, k)
    train_rows = [i for i, s in scenes.items() if s["split"] in ("train", "restval")]
    frequency = _frequency_ranking(scored, [true_words(scenes[i]["background"],
                                                       scenes[i]["objects"]) for i in train_rows])
    freq_p, freq_r = precision_recall_at_k([frequency] * len(truth), truth, k)
    n = len(scored)
    return {
        "split": split, "images": len(rows), "k": k, "object_words": scored,
        "precision_at_k": precision, "recall_at_k": recall,
        "chance_precision_at_k": float(np.mean([len(t) / n for t in truth])),
        "chance_recall_at_k": float(np.mean([min(k / n, 1.0) if t else 0.0 for t in truth])),
        "frequency_precision_at_k": freq_p, "frequency_recall_at_k": freq_r,
        "mean_true_words": float(np.mean([len(t) for t in truth])),
        "stored_k": int(concept_ids.shape[1]),
    }


def _frequency_ranking(words: Sequence[str], truths: Sequence[set[str]]) -> list[str]:
    """Words by how many training pictures they are true of, most first (ties by name)."""
    counts: Mapping[str, int] = {w: sum(w in t for t in truths) for w in words}
    return sorted(words, key=lambda w: (-counts[w], w))


def summary(quality: Mapping[str, Any]) -> str:
    """One line for a log: the detector's precision/recall@k beside chance and frequency."""
    q = quality
    return (f"concept words on {q['images']} {q['split']} images, top {q['k']} of "
            f"{len(q['object_words'])} object words: precision {q['precision_at_k']:.1%} "
            f"(chance {q['chance_precision_at_k']:.1%}, frequency "
            f"{q['frequency_precision_at_k']:.1%}), recall {q['recall_at_k']:.1%} (chance "
            f"{q['chance_recall_at_k']:.1%}, frequency {q['frequency_recall_at_k']:.1%})")
