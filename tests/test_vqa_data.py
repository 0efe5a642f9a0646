"""VQAData batches for the VQA models: normalised boxes for BAN's counter and concept ids for MIA,
aligned by image id, on top of the existing keys (tests/test_data_loaders.py covers those)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coco_mini_fixtures import write_vqa

from mia.data.loaders import BoxTable, ConceptIdTable, VQAData
from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store
from mia.data.store import StoreError, load_store, write_store

N_BOXES, C = 6, 4


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_data")
    q, a = write_vqa(root)
    vqa = build_vqa_store(q, a, root / "vqa.h5", VQAPreprocessConfig(min_answer_count=2))
    ids = load_store(vqa)["image_ids"]
    rng = np.random.default_rng(0)
    region_ids = rng.permutation(ids)  # other row orders than vqa.h5
    concept_ids_order = rng.permutation(ids)
    width = rng.integers(200, 640, len(ids)).astype(np.int32)
    height = rng.integers(200, 480, len(ids)).astype(np.int32)
    num = (2 + np.arange(len(ids)) % 4).astype(np.int32)
    corner = rng.uniform(0, 0.5, (len(ids), N_BOXES, 2))
    frac = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, corner.shape)], axis=2)
    pixels = (frac * np.stack([width, height, width, height], 1)[:, None, :]).astype(np.float32)
    pixels[np.arange(N_BOXES)[None, :] >= num[:, None]] = 0  # zero padding, as TSV stores
    features = np.where(np.arange(N_BOXES)[None, :, None] < num[:, None, None],
                        rng.standard_normal((len(ids), N_BOXES, C)), 0).astype(np.float16)
    common = {"features": features, "boxes": pixels, "num_boxes": num}
    write_store(root / "regions.h5", kind="region_features", image_ids=region_ids,
                datasets={**common, "image_w": width, "image_h": height},
                attrs={"padding": "zeros"})
    write_store(root / "regions_no_size.h5", kind="region_features", image_ids=region_ids,
                datasets=common)
    write_store(root / "regions_zero_size.h5", kind="region_features", image_ids=region_ids,
                datasets={**common, "image_w": np.where(np.arange(len(ids)) == 3, 0, width)
                          .astype(np.int32), "image_h": height})
    k = 8
    concept_ids = rng.integers(0, 5, (len(ids), k)).astype(np.int32)
    concept_ids[::2, -3:] = -1
    write_store(root / "concepts.h5", kind="concepts", image_ids=concept_ids_order,
                datasets={"concept_ids": concept_ids,
                          "concept_probs": np.linspace(1, 0.1, k, dtype=np.float32)[None]
                          .repeat(len(ids), 0)},
                attrs={"concept_words": ["red", "circle", "two", "big", "blue"], "k": k})
    return {"vqa": vqa, "root": root, "region_ids": region_ids, "pixels": pixels,
            "width": width, "height": height, "concept_order": concept_ids_order,
            "concept_ids": concept_ids}


def test_batches_carry_normalised_boxes_and_concept_ids_of_their_image(stores):
    data = VQAData.from_stores(stores["vqa"], stores["root"] / "regions.h5",
                               concepts_h5=stores["root"] / "concepts.h5")
    assert data.concept_words == ["red", "circle", "two", "big", "blue"]
    plain = VQAData.from_stores(stores["vqa"], stores["root"] / "regions_no_size.h5")
    for batch in data.train_batches(0, 7, seed=1, splits=("train", "val")):
        rows = [int(np.flatnonzero(data.question_ids == q)[0]) for q in batch["question_ids"]]
        same = plain.question_batch(np.array(rows))
        assert set(batch) == set(same) | {"boxes", "concepts", "concept_mask"}
        for key in same:  # every existing key unchanged
            torch.testing.assert_close(batch[key], same[key], rtol=0, atol=0)
        for i, image_id in enumerate(batch["image_ids"].tolist()):
            r = int(np.flatnonzero(stores["region_ids"] == image_id)[0])
            w, h = stores["width"][r], stores["height"][r]
            expected = stores["pixels"][r] / np.array([w, h, w, h], np.float32)
            np.testing.assert_allclose(batch["boxes"][i].numpy(), expected, rtol=1e-6)
            c = int(np.flatnonzero(stores["concept_order"] == image_id)[0])
            raw = stores["concept_ids"][c]
            assert batch["concept_mask"][i].tolist() == (raw >= 0).tolist()
            assert batch["concepts"][i].tolist() == np.where(raw >= 0, raw, 0).tolist()
        real = batch["boxes"][batch["feature_mask"]]
        assert real.min() >= 0 and real.max() <= 1
        assert batch["boxes"].dtype == torch.float32 and batch["concepts"].dtype == torch.int64


def test_stores_without_image_sizes_give_no_boxes_and_bad_sizes_are_named(stores):
    root = stores["root"]
    assert BoxTable.load(root / "regions_no_size.h5") is None
    with pytest.raises(StoreError, match=r"lacks \['image_w', 'image_h'\]"):
        BoxTable(root / "regions_no_size.h5")
    bad = int(stores["region_ids"][3])
    with pytest.raises(StoreError, match=f"image {bad} has size 0 x"):
        BoxTable(root / "regions_zero_size.h5")
    batch = next(VQAData.from_stores(stores["vqa"], root / "regions_no_size.h5")
                 .eval_batches("val", 4))
    assert "boxes" not in batch and "concepts" not in batch


def test_concept_ids_out_of_range_are_refused(stores, tmp_path):
    ids = stores["region_ids"]
    write_store(tmp_path / "c.h5", kind="concepts", image_ids=ids,
                datasets={"concept_ids": np.full((len(ids), 2), 5, np.int32),
                          "concept_probs": np.ones((len(ids), 2), np.float32)},
                attrs={"concept_words": ["a", "b"], "k": 2})
    with pytest.raises(StoreError, match="concept id 5 is out of range for 2 concept_words"):
        ConceptIdTable(tmp_path / "c.h5")
