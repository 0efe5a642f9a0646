"""HDF5 stores: the one on-disk format between pipeline stages.

Every store is a flat HDF5 file with:

* ``image_ids`` (int64, ``(N,)``): the row index. Row ``i`` of every per-image dataset belongs to
  image ``image_ids[i]``; ids are unique (refused when writing and when opening).
* per-image datasets whose first axis is ``N`` (features, boxes, concepts, ...), and optionally
  other datasets (captions, questions) that document their own index in their attributes;
* file attributes: ``kind`` (what the store holds, e.g. ``"grid_features"``), ``schema_version``,
  ``created_by`` and ``config`` (the JSON of the configuration that made it), plus any
  kind-specific metadata (JSON-encoded when not a scalar), and ``dataset_sha256``: the checksum
  of every dataset, recorded when the store was finished (see *Integrity* below).

Files are written atomically: to ``<name>.tmp-<pid>`` beside the target, flushed, then renamed.
A crash, a preemption or a full disk never leaves a file at the target path that a later rule could
mistake for a finished output.

Integrity. A store damaged after it was written (a bad disk block, a partial copy between
clusters, a file overwritten by mistake) used to train with ``loss=nan`` or, worse, silently on
wrong values. So:

* when a store is finished, every dataset is read back once: float datasets must be finite, and
  the SHA-256 of each dataset (:func:`dataset_digest`) is recorded in ``dataset_sha256``;
* :func:`open_store` checks the ids are unique, the datasets the kind needs exist, every dataset
  up to ``VERIFY_ON_OPEN_BYTES`` against its checksum, and, in larger float datasets, that
  ``FINITE_SAMPLE_ROWS`` evenly spaced rows (first and last included) are finite: opening a
  25 GB feature store reads ~16 rows, not the file;
* :func:`verify_dataset` checks one large dataset in full (loaders call it on the arrays they
  read whole anyway), and :func:`verify_store` (``mia data verify STORE``) checks everything.

Every failure is a :class:`StoreError` that names the file, the dataset (and the row when one is
to blame) and how to rebuild the store: delete the file and rerun the rule that makes it. Stores
written before checksums existed still open, with a logged warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mia.io import atomic_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: File attribute holding ``{dataset: sha256 hex}`` (JSON), written when the store is finished.
HASH_ATTR = "dataset_sha256"
#: Datasets up to this size are checked against their checksum on every open (~40 ms per 64 MB).
VERIFY_ON_OPEN_BYTES = 64 * 2**20
#: Evenly spaced rows of each larger float dataset checked for NaN/inf on open.
FINITE_SAMPLE_ROWS = 16
#: Bytes read per step when hashing or scanning a dataset (never the whole of a 25 GB dataset).
_BLOCK_BYTES = 16 * 2**20

#: The rule of the workflow that makes each kind of store: what the user reruns to rebuild one.
PRODUCED_BY: dict[str, str] = {
    "captions": "build_caption_store",
    "vqa": "build_vqa_store",
    "grid_features": "extract_grid_features",
    "region_features": "extract_region_features",
    "concepts": "build_concept_store",
    "caption_images": "caption_image_store",
}
#: The same for the stores of the VQA evaluation server's test2015 images (``*_test2015.h5``).
PRODUCED_BY_TEST2015: dict[str, str] = {
    "vqa": "build_vqa_test_store",
    "grid_features": "extract_test_grid_features",
    "region_features": "extract_test_region_features",
    "concepts": "build_test_concept_store",
}
#: Datasets the readers of each kind cannot do without (docs/CONTRACTS.md, "Stores").
REQUIRED_DATASETS: dict[str, tuple[str, ...]] = {
    "captions": ("split", "captions", "caption_image_index", "caption_lengths"),
    "vqa": ("question_ids", "question_image_index", "questions", "split", "answer_labels",
            "answer_scores"),
    "grid_features": ("features",),
    "region_features": ("features",),
    "concepts": ("concept_ids",),
}
#: Datasets indexed by image row (first axis N), where present.
_PER_IMAGE: dict[str, tuple[str, ...]] = {
    "captions": ("split",),
    "grid_features": ("features",),
    "region_features": ("features", "boxes", "num_boxes", "image_w", "image_h", "class_ids",
                        "class_scores", "attribute_ids", "attribute_scores"),
    "concepts": ("concept_ids", "concept_probs"),
}

_warned_unverified: set[str] = set()


class StoreError(ValueError):
    """A store is missing, malformed, damaged, or not the kind the caller expected."""


#: File-name prefixes of the stores (docs/CONTRACTS.md), for files too damaged to say their kind.
_KIND_BY_NAME = (("caption", "captions"), ("vqa", "vqa"), ("grid", "grid_features"),
                 ("region", "region_features"), ("concept", "concepts"),
                ("images_", "caption_images"))


def rebuild_hint(path: str | os.PathLike, kind: object = None) -> str:
    """How to get a good store back: delete it, rerun the rule that makes it."""
    if kind is None:  # unreadable: go by the file name
        kind = next((k for prefix, k in _KIND_BY_NAME if Path(path).name.startswith(prefix)),
                    None)
    rules = PRODUCED_BY_TEST2015 if "_test2015" in Path(path).name else PRODUCED_BY
    rule = rules.get(str(kind)) if kind is not None else None
    how = (f"the rule `{rule}` (Snakemake reruns it for the missing file)" if rule
           else "the rule that makes it")
    return f"rebuild it: delete {path} and rerun {how}"


def _damaged(path: str | os.PathLike, kind: object, problem: str) -> StoreError:
    return StoreError(f"{path}: {problem}; the file is damaged or incomplete: "
                      f"{rebuild_hint(path, kind)}")


def _encode_attr(value: Any) -> Any:
    if isinstance(value, str | int | float | bool | np.integer | np.floating):
        return value
    return json.dumps(value, sort_keys=True)


def decode_attr(value: Any) -> Any:
    """Inverse of the writer's encoding: JSON strings come back as Python objects."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- checksums


def _rows_per_block(ds: h5py.Dataset) -> int:
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    return max(1, _BLOCK_BYTES // max(1, row_bytes))


def _blocks(ds: h5py.Dataset, path: str | os.PathLike, kind: object
            ) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, rows)`` of ``ds`` in order, ~16 MB at a time; unreadable rows are named."""
    if ds.ndim == 0 or ds.shape[0] == 0:
        yield 0, _read(ds, (), path, kind, "")
        return
    step = _rows_per_block(ds)
    for start in range(0, ds.shape[0], step):
        stop = min(start + step, ds.shape[0])
        yield start, _read(ds, np.s_[start:stop], path, kind, f" rows {start}..{stop - 1}")


def _read(ds: h5py.Dataset, where: Any, path: str | os.PathLike, kind: object, rows: str
          ) -> np.ndarray:
    try:
        return np.asarray(ds[where])
    except (OSError, RuntimeError, KeyError) as err:
        raise _damaged(path, kind, f"dataset {ds.name.lstrip('/')!r}{rows} cannot be read "
                                   f"({err})") from err


def _hasher(dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    h = hashlib.sha256()
    h.update(f"{dtype.str} {tuple(shape)}\n".encode())
    return h


def _update(h: Any, block: np.ndarray) -> None:
    if block.dtype.kind == "O":  # variable-length strings: length-prefixed UTF-8
        for item in block.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            h.update(len(raw).to_bytes(8, "little") + raw)
    else:
        h.update(np.ascontiguousarray(block).tobytes())


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of ``"<dtype.str> <shape>\\n"`` then the values in C order: the digest
    :func:`dataset_digest` gives for a dataset holding ``array``."""
    array = np.asarray(array)
    h = _hasher(array.dtype, array.shape)
    step = max(1, _BLOCK_BYTES // max(1, array[:1].nbytes)) if array.ndim else 1
    if array.ndim == 0:
        _update(h, array)
    else:
        for start in range(0, len(array), step):
            _update(h, array[start:start + step])
    return h.hexdigest()


def dataset_digest(ds: h5py.Dataset, path: str | os.PathLike = "<store>",
                   kind: object = None) -> str:
    """SHA-256 of a dataset's values, read block by block (see :func:`array_digest`)."""
    h = _hasher(ds.dtype, ds.shape)
    for _, block in _blocks(ds, path, kind):
        _update(h, block)
    return h.hexdigest()


# --------------------------------------------------------------------------- value checks


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind in "fc"


def _check_finite(block: np.ndarray, start: int, name: str, path: str | os.PathLike,
                  kind: object, image_ids: np.ndarray | None, writing: bool = False) -> None:
    """Raise naming the first row of ``block`` (rows ``start..``) holding NaN or inf."""
    if not _is_float(block.dtype) or block.size == 0:
        return
    finite = np.isfinite(block)
    if finite.all():
        return
    if block.ndim == 0:
        row_text, bad = "", block
    else:
        row = int(np.argmin(finite.reshape(len(block), -1).all(axis=1)))
        bad = block[row]
        row_text = f" row {start + row}"
        if image_ids is not None and name != "image_ids" and start + row < len(image_ids) \
                and block.ndim >= 1 and name in _per_image_names(kind):
            row_text += f" (image_id {int(image_ids[start + row])})"
    what = "NaN" if np.isnan(bad).any() else "inf"
    problem = f"dataset {name!r}{row_text} holds {what} values"
    if writing:
        raise StoreError(f"{path}: {problem}; refusing to write a store that would train with "
                         f"loss=nan. Fix what produced the values (a float16 overflow, a broken "
                         f"input file) and run again")
    raise _damaged(path, kind, problem)


def _per_image_names(kind: object) -> tuple[str, ...]:
    return _PER_IMAGE.get(str(kind), ())


def _check_ids(ids: np.ndarray, path: str | os.PathLike, kind: object, writing: bool) -> None:
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise StoreError(f"{path}: 'image_ids' must be a 1-D integer array, got {ids.dtype} "
                         f"{ids.shape}; {rebuild_hint(path, kind)}")
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        problem = (f"image id {int(ids[first])} appears twice (rows {first} and {second}; "
                   f"{len(dup)} duplicate(s) in all); every image must have exactly one row")
        if writing:
            raise StoreError(f"{path}: {problem}. Refusing to write it: deduplicate the image "
                             f"list that made it")
        raise StoreError(f"{path}: {problem}; {rebuild_hint(path, kind)}")


def _sample_rows(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced rows of ``n`` (first and last included), each once."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(np.int64))


# --------------------------------------------------------------------------- writing


def _seal(f: h5py.File, path: Path) -> None:
    """Read a finished store back: ids unique, floats finite; record every dataset's digest."""
    kind = f.attrs.get("kind")
    if "image_ids" not in f:
        raise StoreError(f"{path}: the writer made no 'image_ids' dataset; every store needs one")
    ids = np.asarray(f["image_ids"][()])
    _check_ids(ids, path, kind, writing=True)
    digests: dict[str, str] = {}
    for name, ds in f.items():
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"{path}: {name!r} is a group; stores are flat (datasets only)")
        h = _hasher(ds.dtype, ds.shape)
        for start, block in _blocks(ds, path, kind):
            _check_finite(block, start, name, path, kind, ids, writing=True)
            _update(h, block)
        digests[name] = h.hexdigest()
    f.attrs[HASH_ATTR] = json.dumps(digests, sort_keys=True)


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, *, kind: str, config: Mapping[str, Any] | None = None,
              attrs: Mapping[str, Any] | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file for writing; rename it to ``path`` only if the block succeeds.

    The caller writes datasets into the yielded file (stream large ones chunk by chunk); ``kind``,
    ``schema_version``, ``config`` and ``attrs`` are written as file attributes. When the block
    ends, the store is read back once: duplicate image ids or NaN/inf floats refuse it (nothing
    appears at ``path``), and each dataset's SHA-256 is recorded for :func:`open_store`.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["kind"] = kind
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created_by"] = "mia-repro"
        f.attrs["config"] = json.dumps(dict(config or {}), sort_keys=True, default=str)
        for key, value in (attrs or {}).items():
            f.attrs[key] = _encode_attr(value)
        yield f
        _seal(f, Path(path))


def write_store(path: str | os.PathLike, *, kind: str, image_ids: np.ndarray,
                datasets: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None,
                attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a whole store at once (small stores; stream big ones through :func:`atomic_h5`)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    _check_ids(image_ids, path, kind, writing=True)  # before any byte is written
    with atomic_h5(path, kind=kind, config=config, attrs=attrs) as f:
        f.create_dataset("image_ids", data=image_ids)
        for name, array in datasets.items():
            array = np.asarray(array)
            chunks = (1, *array.shape[1:]) if array.ndim >= 2 and array.shape[0] > 0 else None
            f.create_dataset(name, data=array, chunks=chunks)
    return Path(path)


# --------------------------------------------------------------------------- reading


def recorded_digests(f: h5py.File) -> dict[str, str] | None:
    """The ``{dataset: sha256}`` recorded at build time, or ``None`` for older stores."""
    raw = f.attrs.get(HASH_ATTR)
    if raw is None:
        return None
    value = decode_attr(raw)
    if not isinstance(value, dict):
        raise _damaged(f.filename, f.attrs.get("kind"),
                       f"attribute {HASH_ATTR!r} is not a JSON object")
    return value


def _warn_unverified(path: str) -> None:
    if path not in _warned_unverified:
        _warned_unverified.add(path)
        log.warning("%s: written before stores recorded checksums; its values cannot be checked "
                    "against them (only sampled rows for NaN/inf). Rebuild it to add them: "
                    "delete it and rerun the rule that makes it", path)


def _compare(path: str | os.PathLike, kind: object, name: str, expected: str, actual: str
             ) -> None:
    if actual != expected:
        raise _damaged(path, kind, f"dataset {name!r} does not match the checksum recorded when "
                                   f"the store was built (sha256 {expected[:16]}..., now "
                                   f"{actual[:16]}...)")


def _check_open(f: h5py.File, path: Path, kind: str | None, hash_limit: int) -> None:
    found = f.attrs.get("kind")
    if isinstance(found, bytes):
        found = found.decode()
    if "image_ids" not in f:
        raise StoreError(f"{path}: no 'image_ids' dataset (it has: {_listing(f)}); not a mia "
                         f"store, or a damaged one: {rebuild_hint(path, found)}")
    if kind is not None and found != kind:
        raise StoreError(f"{path}: store kind is {found!r}, expected {kind!r}; check which file "
                         f"the config points to")
    for name in REQUIRED_DATASETS.get(str(found), ()):
        require_dataset(f, name, path)
    ids = _read(f["image_ids"], (), path, found, "")
    _check_ids(ids, path, found, writing=False)
    for name in _per_image_names(found):
        if name in f and (f[name].ndim == 0 or f[name].shape[0] != len(ids)):
            raise _damaged(path, found, f"dataset {name!r} has shape {f[name].shape}, but the "
                                        f"store has {len(ids)} image_ids")
    digests = recorded_digests(f)
    if digests is None:
        _warn_unverified(str(path))
    else:
        for name in digests:
            if name not in f:
                raise _damaged(path, found, f"dataset {name!r} recorded at build time is missing")
    for name, ds in f.items():
        if not isinstance(ds, h5py.Dataset):
            continue
        if digests is not None and name not in digests:
            raise _damaged(path, found, f"dataset {name!r} was added after the store was built "
                                        f"(it has no recorded checksum)")
        if ds.nbytes <= hash_limit:
            values = ids if name == "image_ids" else _read(ds, (), path, found, "")
            if digests is not None:
                _compare(path, found, name, digests[name], array_digest(values))
            _check_finite(values, 0, name, path, found, ids)
        elif _is_float(ds.dtype) and ds.ndim > 0:
            for row in _sample_rows(ds.shape[0], FINITE_SAMPLE_ROWS):
                block = _read(ds, np.s_[row:row + 1], path, found, f" row {row}")
                _check_finite(block, int(row), name, path, found, ids)


def _listing(f: h5py.File) -> str:
    names = sorted(f.keys())
    return ", ".join(names) if names else "no datasets"


def require_dataset(f: h5py.File, name: str, path: str | os.PathLike | None = None
                    ) -> h5py.Dataset:
    """``f[name]``, or a :class:`StoreError` naming the file, what it does hold and the rule."""
    path = path if path is not None else f.filename
    if name not in f:
        kind = f.attrs.get("kind")
        raise StoreError(f"{path}: no dataset {name!r} in this {kind!r} store (it has: "
                         f"{_listing(f)}); {rebuild_hint(path, kind)}")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise StoreError(f"{path}: {name!r} is a group, not a dataset")
    return ds


def _open(path: str | os.PathLike, kind: str | None, hash_limit: int) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: store not found; run the rule that produces it first"
                         + (f" (`{PRODUCED_BY[kind]}`)" if kind in PRODUCED_BY else ""))
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not an HDF5 store; check the path in the config")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise _damaged(path, kind, f"not a readable HDF5 file ({err})") from err
    try:
        _check_open(f, path, kind, hash_limit)
    except (KeyError, OSError, RuntimeError) as err:
        # h5py's own errors of a damaged file (a bad object header reads as a bare KeyError)
        f.close()
        raise _damaged(path, kind, f"damaged HDF5 structure ({err})") from err
    except BaseException:
        f.close()
        raise
    return f


def open_store(path: str | os.PathLike, kind: str | None = None) -> h5py.File:
    """Open a store read-only, checking that it exists, is complete, undamaged and of ``kind``.

    Cheap for any size: datasets up to ``VERIFY_ON_OPEN_BYTES`` are checked against their
    recorded SHA-256 (and for NaN/inf), larger float datasets at ``FINITE_SAMPLE_ROWS`` rows.
    """
    return _open(path, kind, VERIFY_ON_OPEN_BYTES)


def verify_dataset(f: h5py.File, name: str, values: np.ndarray | None = None) -> None:
    """Check one dataset of an open store in full: its recorded SHA-256, or, in stores written
    before checksums, that every float is finite (the row is named).

    ``values`` is the dataset already read whole by the caller (a loader holding features in
    RAM): it is hashed instead of reading the file again.
    """
    path, kind = f.filename, f.attrs.get("kind")
    ds = require_dataset(f, name)
    digests = recorded_digests(f)
    ids = np.asarray(f["image_ids"][()]) if "image_ids" in f else None
    if values is not None:
        values = np.asarray(values)
        if values.shape != ds.shape or values.dtype != ds.dtype:
            raise StoreError(f"{path}: values given for {name!r} are {values.dtype} "
                             f"{values.shape}, the dataset is {ds.dtype} {ds.shape}")
        if digests is not None and name in digests:
            _compare(path, kind, name, digests[name], array_digest(values))
            return
        step = max(1, _BLOCK_BYTES // max(1, values[:1].nbytes)) if values.ndim else 1
        blocks = ((s, values[s:s + step]) for s in range(0, max(1, len(values)), step)) \
            if values.ndim else iter([(0, values)])
    else:
        if digests is not None and name in digests:
            _compare(path, kind, name, digests[name], dataset_digest(ds, path, kind))
            return
        blocks = _blocks(ds, path, kind)
    if digests is not None:
        raise _damaged(path, kind, f"dataset {name!r} has no recorded checksum")
    _warn_unverified(str(path))
    for start, block in blocks:
        _check_finite(block, start, name, path, kind, ids)


def verify_store(path: str | os.PathLike) -> dict[str, Any]:
    """Check a whole store (every dataset, every row); raise :class:`StoreError` on damage.

    Returns what was checked: ``{"path", "kind", "images", "datasets", "checksums"}`` where
    ``checksums`` is ``False`` for stores written before checksums (then only NaN/inf and ids
    are checked).
    """
    with _open(path, None, hash_limit=-1) as f:
        names = [name for name, ds in f.items() if isinstance(ds, h5py.Dataset)]
        for name in names:
            verify_dataset(f, name)
        return {"path": str(path), "kind": decode_attr(f.attrs.get("kind")),
                "images": len(f["image_ids"]), "datasets": names,
                "checksums": recorded_digests(f) is not None}


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """All file attributes, JSON ones decoded."""
    return {key: decode_attr(value) for key, value in f.attrs.items()}


def load_store(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read a whole store into memory: ``{"image_ids": ..., <datasets>..., "attrs": {...}}``.

    Every dataset is checked in full against its recorded checksum while it is in memory.
    """
    with _open(path, kind, hash_limit=-1) as f:
        out: dict[str, Any] = {}
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset):
                out[name] = _read(ds, (), path, f.attrs.get("kind"), "")
                verify_dataset(f, name, out[name])
        out["attrs"] = read_attrs(f)
    return out


def read_dataset(f: h5py.File, name: str, where: Any = ()) -> np.ndarray:
    """``f[name][where]``; a missing dataset or unreadable bytes raise a :class:`StoreError`
    naming the file, the dataset and how to rebuild it (not h5py's bare KeyError/OSError)."""
    ds = require_dataset(f, name)
    return _read(ds, where, f.filename, f.attrs.get("kind"), "" if where == () else f" {where}")
