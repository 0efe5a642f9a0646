"""Damaged, incomplete and malformed HDF5 stores: each is refused with an error that names the
file, the dataset (the row where one is to blame) and how to rebuild it.

Faults are injected into real stores written by ``mia.data.store``: bytes overwritten with 0xFF
(what a bad disk block or a clobbered copy looks like), single bit flips at a known value
(found through HDF5's chunk index), truncation, NaN written through h5py, edits after the
store was built, duplicate image ids. Every case is one row of docs/RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mia.data.store as store_mod
from mia.data.loaders import ConceptTable, FeatureTable
from mia.data.store import (
    HASH_ATTR,
    StoreError,
    array_digest,
    atomic_h5,
    dataset_digest,
    load_store,
    open_store,
    verify_store,
    write_store,
)
from mia.data.vocab import Vocabulary
from mia.features.region_store import PADDING_ZEROS, RegionStoreWriter

N, CELLS, C = 200, 49, 64  # 6,272 bytes per row, 1.25 MB in all: room for a 400 KB overwrite


def _features(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, CELLS, C)).astype(np.float16)


def _ids(n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7 + 100  # ids differ from rows: messages show both


def _grid(path: Path, legacy: bool = False, n: int = N) -> Path:
    write_store(path, kind="grid_features", image_ids=_ids(n), datasets={"features": _features(n)},
                attrs={"backbone": "test"})
    if legacy:  # a store from before checksums: the same file without the attribute
        with h5py.File(path, "a") as f:
            del f.attrs[HASH_ATTR]
    return path


def _value_offset(path: Path, row: int, name: str = "features") -> int:
    """File offset of the first value of ``row`` (chunks are one row each)."""
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info_by_coord((row, 0, 0)).byte_offset


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _ff(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        size = path.stat().st_size
        offset = int(size * fraction)
        _overwrite(path, offset, b"\xff" * min(400_000, size - offset))
    return damage


def _flip_bit(row: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        offset = _value_offset(path, row)
        raw = bytearray(path.read_bytes()[offset:offset + 1])
        raw[0] ^= 0x01  # lowest mantissa bit of a float16: the value stays finite
        _overwrite(path, offset, bytes(raw))
    return damage


def _truncate(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:keep(len(data))])
    return damage


def _h5_edit(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with h5py.File(path, "a") as f:
            edit(f)
    return damage


def _set_row(row: int, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        block = f["features"][row]
        block[3, 5] = value
        f["features"][row] = block
    return edit


def _rebuild_message(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert str(path) in message
    assert "delete" in message and "extract_grid_features" in message, message
    return message


# --------------------------------------------------------------------------- damage on disk

# (fault, what must appear in the message besides the file and the rebuild hint)
DAMAGE = {
    "0xff_400KB_at_10pct": (_ff(0.10), ""),
    "0xff_400KB_at_40pct": (_ff(0.40), ""),
    "0xff_400KB_at_70pct": (_ff(0.70), ""),
    "0xff_tail": (_ff(0.95), ""),
    "bit_flip_in_value": (_flip_bit(57), "checksum"),
    "nan_written_with_h5py": (_h5_edit(_set_row(57, np.nan)), "'features'"),
    "inf_written_with_h5py": (_h5_edit(_set_row(57, np.inf)), "'features'"),
    "image_ids_rewritten": (_h5_edit(lambda f: f["image_ids"].write_direct(
        np.arange(N, dtype=np.int64) + 5000)), "'image_ids'"),
    "truncated_to_half": (_truncate(lambda n: n // 2), "not a readable HDF5 file"),
    "truncated_last_1KB": (_truncate(lambda n: n - 1024), "not a readable HDF5 file"),
    "truncated_to_100_bytes": (_truncate(lambda n: 100), "not a readable HDF5 file"),
    "zero_bytes": (_truncate(lambda n: 0), "not a readable HDF5 file"),
    "replaced_by_text": (lambda p: p.write_text("<html>quota exceeded</html>"),
                         "not a readable HDF5 file"),
    "dataset_added_after_build": (_h5_edit(lambda f: f.create_dataset("extra", data=[1, 2])),
                                  "added after the store was built"),
    "checksum_attribute_garbled": (_h5_edit(lambda f: f.attrs.modify(HASH_ATTR, "{not json")),
                                   HASH_ATTR),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
def test_damaged_store_refused_on_open(tmp_path, fault):
    """The store of the issue (0xFF over 400 KB trained with loss=nan) and its relatives."""
    path = _grid(tmp_path / "grid.h5")
    damage, expected = DAMAGE[fault]
    damage(path)
    with pytest.raises(StoreError) as err:
        FeatureTable(path)
    assert expected in _rebuild_message(err, path)


@pytest.mark.parametrize("fault", ["nan_written_with_h5py", "inf_written_with_h5py"])
def test_nonfinite_value_error_names_row_and_image(tmp_path, fault):
    path = _grid(tmp_path / "grid.h5", legacy=True)  # no checksum: the value check speaks
    DAMAGE[fault][0](path)
    with pytest.raises(StoreError) as err:
        FeatureTable(path)
    message = _rebuild_message(err, path)
    assert "row 57 (image_id 499)" in message and ("NaN" in message or "inf" in message)


@pytest.fixture
def large(monkeypatch):
    """Every dataset counts as large: opening samples rows instead of hashing (as for 25 GB)."""
    monkeypatch.setattr(store_mod, "VERIFY_ON_OPEN_BYTES", 0)


def test_sampled_rows_on_open(monkeypatch):
    rows = store_mod._sample_rows(123_287, 16)
    assert len(rows) == 16 and rows[0] == 0 and rows[-1] == 123_286
    assert list(store_mod._sample_rows(5, 16)) == [0, 1, 2, 3, 4]


def test_large_store_bit_flip_passes_open_but_not_loaders_or_verify(tmp_path, large):
    """What sampling cannot see (a finite wrong value in an unsampled row) is caught by the
    checksum wherever the rows are read whole: in-memory loaders, load_store, mia data verify."""
    path = _grid(tmp_path / "grid.h5")
    _flip_bit(57)(path)
    open_store(path).close()  # cheap open: 16 sampled rows, row 57 is not one of them
    for check in (lambda: FeatureTable(path, in_memory=True), lambda: load_store(path),
                  lambda: verify_store(path)):
        with pytest.raises(StoreError, match="does not match the checksum") as err:
            check()
        _rebuild_message(err, path)
    lazy = FeatureTable(path, in_memory=False)  # out of core: finite values cannot be judged
    assert lazy.gather(np.array([57]))[0].shape == (1, CELLS, C)


def test_large_legacy_store_nan_in_unsampled_row(tmp_path, large, caplog):
    path = _grid(tmp_path / "grid.h5", legacy=True)
    _h5_edit(_set_row(57, np.nan))(path)
    with caplog.at_level(logging.WARNING, logger="mia.data.store"):
        open_store(path).close()  # sampled rows are fine; the warning says it is unverified
    assert "checksums" in caplog.text and str(path) in caplog.text
    with pytest.raises(StoreError, match=r"row 57 \(image_id 499\) holds NaN"):
        FeatureTable(path, in_memory=True)  # no checksum: every row is scanned once in RAM
    lazy = FeatureTable(path, in_memory=False)
    lazy.gather(np.arange(50))  # rows before the damage come out
    with pytest.raises(StoreError, match=r"row 57 \(image_id 499\) holds NaN") as err:
        lazy.gather(np.array([3, 57, 9]))
    _rebuild_message(err, path)
    with pytest.raises(StoreError, match="row 57"):
        verify_store(path)


def test_large_legacy_store_nan_in_sampled_row_refused_on_open(tmp_path, large):
    path = _grid(tmp_path / "grid.h5", legacy=True)
    _h5_edit(_set_row(N - 1, np.nan))(path)  # the last row is always sampled
    with pytest.raises(StoreError, match=rf"row {N - 1} \(image_id {_ids()[-1]}\)"):
        open_store(path)


@pytest.mark.parametrize("fraction", [0.1, 0.4, 0.7])
def test_large_store_0xff_refused_by_in_memory_and_lazy_loaders(tmp_path, large, fraction):
    path = _grid(tmp_path / "grid.h5")
    _ff(fraction)(path)
    with pytest.raises(StoreError) as err:
        FeatureTable(path, in_memory=True)
    _rebuild_message(err, path)
    with pytest.raises(StoreError) as err:  # on open, or at the first damaged batch
        lazy = FeatureTable(path, in_memory=False)
        for start in range(0, N, 50):
            lazy.gather(np.arange(start, start + 50))
    _rebuild_message(err, path)


def test_legacy_store_opens_with_warning_and_same_values(tmp_path, caplog):
    path = _grid(tmp_path / "grid.h5", legacy=True)
    store_mod._warned_unverified.discard(str(path))
    with caplog.at_level(logging.WARNING, logger="mia.data.store"):
        table = FeatureTable(path)
        FeatureTable(path)  # warned once per file, not per open
    assert caplog.text.count(str(path)) == 1 and "before stores recorded checksums" in caplog.text
    feats, _ = table.gather(np.arange(N))
    torch.testing.assert_close(feats, torch.from_numpy(_features()).float(), rtol=0, atol=0)
    assert verify_store(path)["checksums"] is False


def test_good_store_verifies(tmp_path):
    path = _grid(tmp_path / "grid.h5")
    report = verify_store(path)
    assert report == {"path": str(path), "kind": "grid_features", "images": N,
                      "datasets": ["features", "image_ids"], "checksums": True}


# --------------------------------------------------------------------------- checksum definition


def test_digest_is_sha256_of_header_and_c_order_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_BLOCK_BYTES", 10_000)  # several blocks per dataset
    feats = _features(30)
    expected = hashlib.sha256(f"{feats.dtype.str} {feats.shape}\n".encode() + feats.tobytes())
    path = write_store(tmp_path / "g.h5", kind="grid_features", image_ids=_ids(30),
                       datasets={"features": feats})
    with h5py.File(path, "r") as f:
        recorded = json.loads(f.attrs[HASH_ATTR])["features"]
        assert dataset_digest(f["features"]) == recorded
    assert recorded == expected.hexdigest() == array_digest(feats)
    # shape is part of it: the same bytes reshaped are another dataset
    assert array_digest(feats.reshape(30, -1)) != recorded


# --------------------------------------------------------------------------- refused when writing


def _nothing_left(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("ids", [[5, 6, 5], [1, 1]])
def test_duplicate_image_ids_refused_at_write(tmp_path, ids):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StoreError, match=f"image id {ids[0]} appears twice"):
        write_store(out / "g.h5", kind="grid_features", image_ids=np.array(ids),
                    datasets={"features": np.zeros((len(ids), 2, 2), np.float16)})
    _nothing_left(out)


def test_duplicate_image_ids_refused_when_streamed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StoreError, match=r"image id 9 appears twice \(rows 1 and 3"), \
            atomic_h5(out / "g.h5", kind="grid_features") as f:
        f.create_dataset("image_ids", data=np.array([4, 9, 2, 9]))
        f.create_dataset("features", data=np.zeros((4, 2, 2), np.float16))
    _nothing_left(out)


def test_store_written_with_duplicate_ids_refused_on_open(tmp_path):
    """A store from another tool (or an old writer) holding an image twice: alignment by id
    would silently pick one of its rows."""
    path = tmp_path / "dup.h5"
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "grid_features"
        f["image_ids"] = np.array([10, 11, 12, 11])
        f["features"] = np.zeros((4, 2, 2), np.float16)
    with pytest.raises(StoreError, match=r"image id 11 appears twice \(rows 1 and 3") as err:
        FeatureTable(path)
    _rebuild_message(err, path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_refused_at_write(tmp_path, value):
    out = tmp_path / "out"
    out.mkdir()
    feats = _features(20)
    feats[13, 0, 2] = value
    with pytest.raises(StoreError, match=r"'features' row 13 \(image_id 191\) holds") as err:
        write_store(out / "g.h5", kind="grid_features", image_ids=_ids(20),
                    datasets={"features": feats})
    assert "loss=nan" in str(err.value)
    _nothing_left(out)


def test_store_without_image_ids_refused_at_write(tmp_path):
    with pytest.raises(StoreError, match="no 'image_ids'"), \
            atomic_h5(tmp_path / "g.h5", kind="grid_features") as f:
        f.create_dataset("features", data=np.zeros((2, 2, 2), np.float16))
    _nothing_left(tmp_path)


def _region_writer(f: h5py.File) -> RegionStoreWriter:
    return RegionStoreWriter(f, 4, None, source="test", padding=PADDING_ZEROS)


def test_region_writer_refuses_duplicate_image(tmp_path):
    with pytest.raises(ValueError, match="image_id 7 is written to the region store twice"), \
            atomic_h5(tmp_path / "r.h5", kind="region_features") as f:
        writer = _region_writer(f)
        for _ in range(2):
            writer.put(7, np.ones((2, 8)), np.zeros((2, 4)), 2, 10, 10)
    _nothing_left(tmp_path)


@pytest.mark.parametrize("value, why", [(1e6, "overflow float16"), (np.nan, "hold NaN or inf")])
def test_region_writer_refuses_nonfinite_features(tmp_path, value, why):
    feats = np.ones((2, 8), np.float32)
    feats[1, 3] = value
    with pytest.raises(ValueError, match=f"image_id 3: features {why}"), \
            atomic_h5(tmp_path / "r.h5", kind="region_features") as f:
        _region_writer(f).put(3, feats, np.zeros((2, 4)), 2, 10, 10)
    _nothing_left(tmp_path)


# --------------------------------------------------------------------------- malformed on open


def _legacy_file(path: Path, kind: str, datasets: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = kind
        for name, value in datasets.items():
            f[name] = value
    return path


def test_missing_features_dataset_named_with_what_exists_and_rule(tmp_path):
    path = write_store(tmp_path / "grid.h5", kind="grid_features", image_ids=[1, 2],
                       datasets={"feats": np.zeros((2, 3, 4), np.float16)})
    with pytest.raises(StoreError) as err:
        FeatureTable(path)
    message = _rebuild_message(err, path)
    assert "no dataset 'features'" in message and "(it has: feats, image_ids)" in message


def test_missing_caption_dataset_named_with_its_rule(tmp_path):
    path = _legacy_file(tmp_path / "captions.h5", "captions",
                        {"image_ids": [1, 2], "split": np.zeros(2, np.uint8),
                         "captions": np.zeros((3, 5), np.int32),
                         "caption_image_index": [0, 1, 1]})
    with pytest.raises(StoreError, match=r"no dataset 'caption_lengths'.*build_caption_store"):
        open_store(path, "captions")


def test_dataset_deleted_after_build_refused(tmp_path):
    path = write_store(tmp_path / "regions.h5", kind="region_features", image_ids=[1, 2],
                       datasets={"features": np.zeros((2, 3, 4), np.float16),
                                 "boxes": np.zeros((2, 3, 4), np.float32)})
    _h5_edit(lambda f: f.__delitem__("boxes"))(path)
    with pytest.raises(StoreError, match="'boxes' recorded at build time is missing"):
        open_store(path)


@pytest.mark.parametrize("datasets, match", [
    ({"image_ids": np.array([1.0, 2.0]), "features": np.zeros((2, 2, 2), np.float16)},
     "1-D integer array"),
    ({"image_ids": np.array([[1, 2]]), "features": np.zeros((1, 2, 2), np.float16)},
     "1-D integer array"),
    ({"image_ids": np.array([1, 2, 3]), "features": np.zeros((2, 2, 2), np.float16)},
     r"'features' has shape \(2, 2, 2\), but the store has 3 image_ids"),
    ({"image_ids": np.array([1, 2]), "features": np.zeros((2, 8), np.float16)},
     r"'features' has shape \(2, 8\), expected \(N, n, C\)"),
    ({"features": np.zeros((2, 2, 2), np.float16)}, "no 'image_ids' dataset"),
], ids=["float_ids", "2d_ids", "rows_disagree", "features_2d", "no_image_ids"])
def test_malformed_feature_store_refused(tmp_path, datasets, match):
    path = _legacy_file(tmp_path / "grid.h5", "grid_features", datasets)
    with pytest.raises(StoreError, match=match) as err:
        FeatureTable(path)
    assert str(path) in str(err.value)


def test_wrong_kind_missing_file_and_folder(tmp_path):
    captions = _legacy_file(tmp_path / "captions.h5", "captions",
                            {"image_ids": [1], "split": [0], "captions": np.zeros((1, 3)),
                             "caption_image_index": [0], "caption_lengths": [3]})
    with pytest.raises(StoreError, match="store kind is 'captions', expected one of"):
        FeatureTable(captions)
    with pytest.raises(StoreError, match=r"not found; .*\(`extract_grid_features`\)"):
        open_store(tmp_path / "nope.h5", "grid_features")
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        open_store(tmp_path / "folder.h5")


def test_concept_store_with_duplicate_ids_refused(tmp_path):
    path = _legacy_file(tmp_path / "concepts.h5", "concepts",
                        {"image_ids": [3, 3], "concept_ids": np.zeros((2, 2), np.int32)})
    with pytest.raises(StoreError, match="image id 3 appears twice.*build_concept_store"):
        ConceptTable(path, Vocabulary(("<pad>", "<bos>", "<eos>", "<unk>")))
