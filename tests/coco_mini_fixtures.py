"""Real-format raw files built from tests/data/coco-mini for the data-layer tests.

coco-mini has real COCO captions and instance boxes but no Karpathy split and no VQA files, so
these helpers write both, in the exact real formats, from its annotations.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mia.data.coco import read_coco_captions, read_coco_instances
from mia.data.karpathy import tokenize_caption

COCO_MINI = Path(__file__).resolve().parent / "data" / "coco-mini"
#: Position in sorted image ids -> Karpathy split (cycled): 5 train, 1 restval, 1 val, 1 test.
SPLIT_CYCLE = ("train", "train", "train", "train", "train", "restval", "val", "test")


def write_karpathy(path: Path) -> Path:
    """A ``dataset_coco.json`` over coco-mini's 33 images, tokenised as Karpathy did."""
    captions = read_coco_captions(COCO_MINI / "captions.json")
    by_image = captions.by_image()
    images, sentid = [], 0
    for imgid, image_id in enumerate(sorted(captions.images)):
        sentences = []
        for cap in by_image[image_id]:
            sentences.append({"tokens": tokenize_caption(cap.caption), "raw": cap.caption.strip(),
                              "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({
            "filepath": "images", "filename": captions.images[image_id].file_name,
            "imgid": imgid, "split": SPLIT_CYCLE[imgid % len(SPLIT_CYCLE)], "cocoid": image_id,
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
        })
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def _answers(correct: str, variants: list[str], n_correct: int) -> list[dict]:
    texts = [correct] * n_correct + variants
    texts = (texts + [correct] * 10)[:10]
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


def write_vqa(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """VQA v2 questions/annotations over coco-mini, answers derived from its instance boxes.

    Per image: "How many people ...?" (the person count, some humans say it in words), "Is
    there a person ...?" (yes/no) and "What is the biggest object?" (largest box's category).
    Images split by position: 3 of every 5 train, 1 val, 1 test (questions only).
    """
    instances = read_coco_instances(COCO_MINI / "instances.json")
    by_image = instances.by_image()
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    split_of = ("train", "train", "train", "val", "test")
    questions: dict[str, list] = {s: [] for s in ("train", "val", "test")}
    annotations: dict[str, list] = {s: [] for s in ("train", "val")}
    for pos, image_id in enumerate(sorted(instances.images)):
        split = split_of[pos % len(split_of)]
        boxes = by_image.get(image_id, [])
        people = sum(instances.categories[b.category_id] == "person" for b in boxes)
        biggest = max(boxes, key=lambda b: b.area) if boxes else None
        biggest_name = instances.categories[biggest.category_id] if biggest else "nothing"
        items = [
            ("How many people are in the picture?", "how many", "number", str(min(people, 10)),
             [words[min(people, 10)], str(people + 1)], 7),
            ("Is there a person in the image?", "is there a", "yes/no",
             "yes" if people else "no", ["yes." if people else "no."], 8),
            ("What is the biggest object?", "what is the", "other", biggest_name,
             [f"the {biggest_name}", f"a {biggest_name}!", "thing"], 6),
        ]
        for k, (text, qtype, atype, answer, variants, n_correct) in enumerate(items):
            qid = image_id * 1000 + k
            questions[split].append({"image_id": image_id, "question": text, "question_id": qid})
            if split in annotations:
                annotations[split].append({
                    "question_type": qtype, "multiple_choice_answer": answer,
                    "answers": _answers(answer, variants, n_correct), "image_id": image_id,
                    "answer_type": atype, "question_id": qid,
                })
    q_paths, a_paths = {}, {}
    for split, qs in questions.items():
        q_paths[split] = root / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
        q_paths[split].write_text(json.dumps({
            "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
            "data_subtype": f"{split}2014", "license": {}, "questions": qs}))
    for split, anns in annotations.items():
        a_paths[split] = root / f"v2_mscoco_{split}2014_annotations.json"
        a_paths[split].write_text(json.dumps({
            "info": {}, "license": {}, "data_subtype": f"{split}2014", "annotations": anns}))
    return q_paths, a_paths


def count_tokens(karpathy: dict, splits: tuple[str, ...]) -> Counter:
    """Token counts over the sentences of ``splits`` (an independent re-count for tests)."""
    return Counter(t for img in karpathy["images"] if img["split"] in splits
                   for s in img["sentences"] for t in s["tokens"])
