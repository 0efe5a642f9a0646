"""HDF5 stores: the one on-disk format between pipeline stages.

Every store is a flat HDF5 file with:

* ``image_ids`` (int64, ``(N,)``): the row index. Row ``i`` of every per-image dataset belongs to
  image ``image_ids[i]``; ids are unique.
* per-image datasets whose first axis is ``N`` (features, boxes, concepts, ...), and optionally
  other datasets (captions, questions) that document their own index in their attributes;
* file attributes: ``kind`` (what the store holds, e.g. ``"grid_features"``), ``schema_version``,
  ``created_by`` and ``config`` (the JSON of the configuration that made it), plus any
  kind-specific metadata (JSON-encoded when not a scalar).

Files are written atomically: to ``<name>.tmp-<pid>`` beside the target, flushed, then renamed.
A crash, a preemption or a full disk never leaves a file at the target path that a later rule could
mistake for a finished output.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mia.io import atomic_path

SCHEMA_VERSION = 1


class StoreError(ValueError):
    """A store is missing, malformed, or not the kind the caller expected."""


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


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, *, kind: str, config: Mapping[str, Any] | None = None,
              attrs: Mapping[str, Any] | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file for writing; rename it to ``path`` only if the block succeeds.

    The caller writes datasets into the yielded file (stream large ones chunk by chunk); ``kind``,
    ``schema_version``, ``config`` and ``attrs`` are written as file attributes.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["kind"] = kind
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created_by"] = "mia-repro"
        f.attrs["config"] = json.dumps(dict(config or {}), sort_keys=True, default=str)
        for key, value in (attrs or {}).items():
            f.attrs[key] = _encode_attr(value)
        yield f


def write_store(path: str | os.PathLike, *, kind: str, image_ids: np.ndarray,
                datasets: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None,
                attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a whole store at once (small stores; stream big ones through :func:`atomic_h5`)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise StoreError(f"{path}: image_ids are not unique")
    with atomic_h5(path, kind=kind, config=config, attrs=attrs) as f:
        f.create_dataset("image_ids", data=image_ids)
        for name, array in datasets.items():
            array = np.asarray(array)
            chunks = (1, *array.shape[1:]) if array.ndim >= 2 and array.shape[0] > 0 else None
            f.create_dataset(name, data=array, chunks=chunks)
    return Path(path)


def open_store(path: str | os.PathLike, kind: str | None = None) -> h5py.File:
    """Open a store read-only, checking that it exists, is complete, and is of ``kind``."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: store not found; run the rule that produces it first")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err}); delete it and rerun") from err
    if "image_ids" not in f:
        f.close()
        raise StoreError(f"{path}: no 'image_ids' dataset; not a mia store")
    found = f.attrs.get("kind")
    if kind is not None and found != kind:
        f.close()
        raise StoreError(f"{path}: store kind is {found!r}, expected {kind!r}")
    return f


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """All file attributes, JSON ones decoded."""
    return {key: decode_attr(value) for key, value in f.attrs.items()}


def load_store(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read a whole store into memory: ``{"image_ids": ..., <datasets>..., "attrs": {...}}``."""
    with open_store(path, kind) as f:
        out: dict[str, Any] = {name: f[name][()] for name in f}
        out["attrs"] = read_attrs(f)
    return out
