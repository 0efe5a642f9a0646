"""Loaders: alignment by image id, order per (seed, epoch), exact resume, concepts, masks, targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from coco_mini_fixtures import write_karpathy, write_vqa
from torch.utils.data import DataLoader

from mia.data.loaders import (
    CaptionData,
    CaptionDataset,
    CaptionImageDataset,
    LoaderConfig,
    VQAData,
    VQADataset,
    prefetch,
)
from mia.data.preprocess import (
    CaptionPreprocessConfig,
    VQAPreprocessConfig,
    build_caption_store,
    build_vqa_store,
)
from mia.data.store import StoreError, load_store, write_store

C = 8  # feature channels: tiny stores


def _features_for(image_ids: np.ndarray, n: int) -> np.ndarray:
    """Features whose values encode the image id, so misalignment shows."""
    base = (image_ids % 997).astype(np.float32)[:, None, None]
    return (base + np.arange(n * C, dtype=np.float32).reshape(1, n, C) / 64).astype(np.float16)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    captions = build_caption_store(write_karpathy(root / "dataset_coco.json"), root / "captions.h5",
                                   root / "refs", CaptionPreprocessConfig(2, 8))
    image_ids = load_store(captions)["image_ids"]
    shuffled = np.random.default_rng(1).permutation(image_ids)  # a different row order
    write_store(root / "grid.h5", kind="grid_features", image_ids=shuffled,
                datasets={"features": _features_for(shuffled, 49)})
    num_boxes = (3 + np.arange(len(shuffled)) % 4).astype(np.int32)
    write_store(root / "regions.h5", kind="region_features", image_ids=shuffled,
                datasets={"features": _features_for(shuffled, 6), "num_boxes": num_boxes,
                          "boxes": np.zeros((len(shuffled), 6, 4), np.float32)})
    vocab = load_store(captions)["attrs"]["vocab"]
    words = ["xyzzy", vocab[4], vocab[5], vocab[9], "plugh"]
    concept_ids = np.tile(np.array([1, 0, 2, 3, -1], np.int32), (len(shuffled), 1))
    concept_ids[:, 0] = np.arange(len(shuffled)) % 5 % 4  # vary per image
    write_store(root / "concepts.h5", kind="concepts", image_ids=shuffled,
                datasets={"concept_ids": concept_ids,
                          "concept_probs": np.linspace(1, 0.1, 5, dtype=np.float32)[None]
                          .repeat(len(shuffled), 0)},
                attrs={"concept_words": words, "k": 5})
    q, a = write_vqa(root)
    vqa = build_vqa_store(q, a, root / "vqa.h5", VQAPreprocessConfig(min_answer_count=2))
    return {"root": root, "captions": captions, "grid": root / "grid.h5",
            "regions": root / "regions.h5", "concepts": root / "concepts.h5", "vqa": vqa,
            "karpathy": json.loads((root / "dataset_coco.json").read_text())}


@pytest.fixture(scope="module")
def data(stores) -> CaptionData:
    return CaptionData.from_stores(stores["captions"], stores["grid"], stores["concepts"])


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_batches_align_features_by_image_id(data):
    batch = next(data.train_batches(epoch=0, batch_size=16, seed=3))
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (16, 49, C)
    expected = _features_for(batch["image_ids"].numpy(), 49).astype(np.float32)
    np.testing.assert_array_equal(batch["features"].numpy(), expected)
    assert batch["feature_mask"].all() and batch["feature_mask"].shape == (16, 49)
    for key, dtype in [("captions", torch.int64), ("caption_lengths", torch.int64),
                       ("concepts", torch.int64), ("image_ids", torch.int64)]:
        assert batch[key].dtype == dtype


def test_caption_rows_belong_to_their_image(data, stores):
    store = load_store(stores["captions"])
    for batch in data.train_batches(epoch=1, batch_size=40, seed=0):
        for image_id, caption in zip(batch["image_ids"], batch["captions"], strict=True):
            row = np.flatnonzero((store["captions"] == caption.numpy()).all(1))
            owners = store["image_ids"][store["caption_image_index"][row]]
            assert int(image_id) in owners


def test_missing_image_names_id_and_store(stores, tmp_path):
    ids = load_store(stores["captions"])["image_ids"]
    partial = write_store(tmp_path / "grid_partial.h5", kind="grid_features", image_ids=ids[1:],
                          datasets={"features": _features_for(ids[1:], 49)})
    with pytest.raises(StoreError) as info:
        CaptionData.from_stores(stores["captions"], partial)
    assert f"image id {ids[0]}" in str(info.value) and str(partial) in str(info.value)


def test_train_order_fixed_by_seed_and_epoch(data):
    def order(epoch, seed):
        return torch.cat([b["captions"] for b in data.train_batches(epoch, 32, seed)])

    assert torch.equal(order(2, 7), order(2, 7))
    assert not torch.equal(order(2, 7), order(3, 7))
    assert not torch.equal(order(2, 7), order(2, 8))
    batches = list(data.train_batches(0, 32, 7))
    n_train = 25 * 5  # 25 train+restval images x 5 captions
    assert data.num_train_captions == n_train == sum(len(b["captions"]) for b in batches)
    assert len(batches) == data.num_train_batches(32) == 4 and len(batches[-1]["captions"]) == 29
    # every training caption exactly once: compare the multiset with the store's train rows
    store = load_store(data.path)
    train_rows = store["split"][store["caption_image_index"]] == 0
    expected = sorted(map(tuple, store["captions"][train_rows].tolist()))
    assert sorted(map(tuple, order(0, 7).tolist())) == expected


@pytest.mark.parametrize("start", [0, 1, 3, 4])
def test_resume_gives_exactly_the_remaining_batches(data, start):
    full = list(data.train_batches(epoch=5, batch_size=32, seed=11))
    resumed = list(data.train_batches(epoch=5, batch_size=32, seed=11, start=start))
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed, strict=True):
        _same(a, b)


def test_concepts_mapped_to_caption_vocab(data, stores):
    vocab = data.vocab
    concepts = load_store(stores["concepts"])
    words = concepts["attrs"]["concept_words"]
    batch = next(data.eval_batches("val", 8))
    for image_id, ids, mask in zip(batch["image_ids"], batch["concepts"], batch["concept_mask"],
                                   strict=True):
        raw = concepts["concept_ids"][np.flatnonzero(concepts["image_ids"] == int(image_id))[0]]
        expected = [vocab.id(words[c]) if c >= 0 else 0 for c in raw]
        assert ids.tolist() == expected and mask.tolist() == [c >= 0 for c in raw]
    assert vocab.id("xyzzy") == vocab.unk_id  # an absent concept word becomes <unk>


def test_eval_batches_one_item_per_image_in_order(data, stores):
    images = stores["karpathy"]["images"]
    for split, names in {"val": ("val",), "test": ("test",), "train": ("train", "restval")}.items():
        batches = list(data.eval_batches(split, 3))
        got = torch.cat([b["image_ids"] for b in batches]).tolist()
        assert got == [i["cocoid"] for i in images if i["split"] in names]
        assert "captions" not in batches[0]


def test_references_are_the_whole_karpathy_tokens(data, stores):
    """Validation references are each caption's own tokens (``caption_text``): never cut at
    the store's max_length (8 here) and never ``<unk>``-ed below the count threshold."""
    refs = data.references("val")
    images = [i for i in stores["karpathy"]["images"] if i["split"] == "val"]
    assert sorted(refs) == sorted(i["cocoid"] for i in images)
    for img in images:
        assert refs[img["cocoid"]] == [" ".join(s["tokens"]) for s in img["sentences"]]
    assert any(len(r.split()) > 8 for v in refs.values() for r in v)  # longer than max_length


def test_region_masks_and_lazy_reading_agree(stores):
    eager = CaptionData.from_stores(stores["captions"], stores["regions"])
    lazy = CaptionData.from_stores(stores["captions"], stores["regions"],
                                   cfg=LoaderConfig(in_memory=False))
    regions = load_store(stores["regions"])
    for a, b in zip(eager.train_batches(0, 50, 1), lazy.train_batches(0, 50, 1), strict=True):
        _same(a, b)
        rows = [int(np.flatnonzero(regions["image_ids"] == int(i))[0]) for i in a["image_ids"]]
        expected = np.arange(6)[None] < regions["num_boxes"][rows][:, None]
        np.testing.assert_array_equal(a["feature_mask"].numpy(), expected)


def test_grid_cell_padding_stays_visible(stores, tmp_path):
    """A `boxes`-source store pads with real whole-image/grid-cell features: no row is masked."""
    regions = load_store(stores["regions"])
    padded = tmp_path / "regions_boxes.h5"
    write_store(padded, kind="region_features", image_ids=regions["image_ids"],
                datasets={k: regions[k] for k in ("features", "num_boxes", "boxes")},
                attrs={"padding": "whole_image_and_grid"})
    data = CaptionData.from_stores(stores["captions"], padded)
    batch = next(data.train_batches(0, 50, 1))
    assert batch["feature_mask"].all()
    zero_padded = CaptionData.from_stores(stores["captions"], stores["regions"])
    assert not next(zero_padded.train_batches(0, 50, 1))["feature_mask"].all()


def test_dataset_wrappers_collate_like_batches(data):
    loader = DataLoader(CaptionDataset(data, "train"), batch_size=10, shuffle=False)
    first = next(iter(loader))
    _same(first, data.caption_batch(CaptionDataset(data, "train").rows[:10]))
    images = next(iter(DataLoader(CaptionImageDataset(data, "test"), batch_size=4)))
    _same(images, next(data.eval_batches("test", 4)))


# ---------------------------------------------------------------- VQA


@pytest.fixture(scope="module")
def vqa(stores) -> VQAData:
    return VQAData.from_stores(stores["vqa"], stores["regions"])


def test_vqa_dense_targets_from_sparse_labels(vqa, stores):
    store = load_store(stores["vqa"])
    rows = {int(q): i for i, q in enumerate(store["question_ids"])}
    seen = 0
    for batch in vqa.train_batches(0, 16, seed=2):
        assert batch["target"].shape == (len(batch["question_ids"]), len(vqa.answer_vocab))
        for qid, target, question, image_id in zip(batch["question_ids"], batch["target"],
                                                   batch["questions"], batch["image_ids"],
                                                   strict=True):
            row = rows[int(qid)]
            expected = np.zeros(vqa.n_answers, np.float32)
            for lab, score in zip(store["answer_labels"][row], store["answer_scores"][row],
                                  strict=True):
                if lab >= 0:
                    expected[lab] = score
            np.testing.assert_array_equal(target.numpy(), expected)
            assert question.tolist() == store["questions"][row].tolist()
            assert int(image_id) == store["image_ids"][store["question_image_index"][row]]
            seen += 1
    assert seen == int((store["split"] == 0).sum())


def test_vqa_features_masks_order_and_resume(vqa, stores):
    regions = load_store(stores["regions"])
    full = list(vqa.train_batches(3, 8, seed=5))
    for a, b in zip(full[2:], vqa.train_batches(3, 8, seed=5, start=2), strict=True):
        _same(a, b)
    assert not torch.equal(full[0]["question_ids"], next(vqa.train_batches(4, 8, 5))["question_ids"])
    batch = full[0]
    np.testing.assert_array_equal(batch["features"].numpy(),
                                  _features_for(batch["image_ids"].numpy(), 6).astype(np.float32))
    rows = [int(np.flatnonzero(regions["image_ids"] == int(i))[0]) for i in batch["image_ids"]]
    np.testing.assert_array_equal(batch["feature_mask"].numpy(),
                                  np.arange(6)[None] < regions["num_boxes"][rows][:, None])
    store = load_store(stores["vqa"])
    test = torch.cat([b["question_ids"] for b in vqa.eval_batches("test", 7)])
    assert test.tolist() == store["question_ids"][store["split"] == 2].tolist()
    assert all(not b["target"].any() for b in vqa.eval_batches("test", 7))  # no annotations


def test_vqa_dataset_wrapper(vqa):
    dataset = VQADataset(vqa, ["train", "val"])
    assert len(dataset) == len(vqa.split_rows(("train", "val")))
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    _same(batch, vqa.question_batch(dataset.rows[:5]))


def test_prefetch_keeps_order_and_reraises(data):
    direct = list(data.train_batches(2, 16, seed=4))
    fetched = list(prefetch(data.train_batches(2, 16, seed=4), depth=3))
    assert len(fetched) == len(direct)
    for a, b in zip(direct, fetched, strict=True):
        _same(a, b)

    def failing():
        yield direct[0]
        raise RuntimeError("producer broke")

    stream = prefetch(failing())
    _same(next(stream), direct[0])
    with pytest.raises(RuntimeError, match="producer broke"):
        next(stream)
    early = prefetch(data.train_batches(2, 16, seed=4), depth=1)
    next(early)
    early.close()  # abandoning the stream stops the producer thread
