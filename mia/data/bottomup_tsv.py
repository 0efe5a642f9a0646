"""Streaming reader (and writer) of the bottom-up-attention feature TSV files.

Anderson et al.'s ``trainval_36.zip`` holds headerless, tab-separated rows with the columns
``image_id, image_w, image_h, num_boxes, boxes, features``; ``boxes`` and ``features`` are base64
of little-endian float32 arrays of shape ``(num_boxes, 4)`` (``x1, y1, x2, y2`` in pixels) and
``(num_boxes, 2048)``. The files total ~25 GB, so they are read one row at a time and never held
whole. A single ``features`` field is ~390 kB of base64, far above the csv module's default
128 kB field limit, hence the raised limit.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mia.data.errors import DataFormatError
from mia.io import atomic_open

FIELDNAMES = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
FEATURE_DIM = 2048
#: Large enough for num_boxes=100 x 2048 float32 in base64 (~1.1 MB), with headroom.
_FIELD_SIZE_LIMIT = min(sys.maxsize, 2**31 - 1)


@dataclass(frozen=True)
class RegionRecord:
    """One image's detections: ``boxes`` (n, 4) float32 x1,y1,x2,y2; ``features`` (n, D) float32."""

    image_id: int
    image_w: int
    image_h: int
    num_boxes: int
    boxes: np.ndarray
    features: np.ndarray


def _ensure_field_size_limit() -> None:
    # csv's limit is process-wide; only ever raise it, so other csv users are not constrained.
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(_FIELD_SIZE_LIMIT)


def _decode(value: str, shape: tuple[int, int], path: Path, rec: str, field: str) -> np.ndarray:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataFormatError(path, rec, field, f"not valid base64 ({err})") from err
    expected = shape[0] * shape[1] * 4
    if len(raw) != expected:
        raise DataFormatError(path, rec, field,
                              f"decodes to {len(raw)} bytes, expected {expected} "
                              f"(float32 {shape[0]} x {shape[1]} for num_boxes={shape[0]})")
    values = np.frombuffer(raw, dtype="<f4").reshape(shape)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise DataFormatError(path, rec, field, f"box {int(np.argmin(finite))} holds NaN or inf")
    return values


def _int(value: str, path: Path, rec: str, field: str) -> int:
    try:
        return int(value)
    except ValueError as err:
        raise DataFormatError(path, rec, field, f"expected an integer, got {value[:40]!r}") from err


def iter_bottomup_tsv(path: str | os.PathLike, feature_dim: int = FEATURE_DIM
                      ) -> Iterator[RegionRecord]:
    """Yield one :class:`RegionRecord` per row, streaming; errors name the file, line and field.

    The files are ASCII (numbers and base64). Other bytes are kept as surrogate escapes, so they
    end up inside a field and are reported as that field's error (bad base64, not an integer)
    at their line, instead of a bare UnicodeDecodeError somewhere in the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found; run the download rule that fetches "
                                f"the bottom-up features")
    _ensure_field_size_limit()
    with path.open(newline="", encoding="ascii", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in _rows(reader, path):
            rec = f"line {reader.line_num}"
            if len(row) != len(FIELDNAMES):
                raise DataFormatError(path, rec, "<row>",
                                      f"expected {len(FIELDNAMES)} tab-separated columns "
                                      f"{FIELDNAMES}, got {len(row)}")
            image_id = _int(row[0], path, rec, "image_id")
            rec = f"line {reader.line_num} (image_id {image_id})"
            image_w = _int(row[1], path, rec, "image_w")
            image_h = _int(row[2], path, rec, "image_h")
            if image_w <= 0 or image_h <= 0:
                raise DataFormatError(path, rec, "image_w" if image_w <= 0 else "image_h",
                                      f"image size must be positive, got {image_w} x {image_h}")
            num_boxes = _int(row[3], path, rec, "num_boxes")
            if num_boxes <= 0:
                raise DataFormatError(path, rec, "num_boxes", f"must be positive, got {num_boxes}")
            boxes = _decode(row[4], (num_boxes, 4), path, rec, "boxes")
            features = _decode(row[5], (num_boxes, feature_dim), path, rec, "features")
            yield RegionRecord(image_id, image_w, image_h, num_boxes, boxes, features)


def _rows(reader: Iterator[list[str]], path: Path) -> Iterator[list[str]]:
    """The csv rows, with csv's own errors (NUL bytes, a field over the limit) named by line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            line = getattr(reader, "line_num", "?")
            raise DataFormatError(path, f"line {line}", "<row>",
                                  f"unreadable TSV ({err}); the file is damaged: re-download "
                                  f"it") from err
        yield row


def format_row(record: RegionRecord) -> list[str]:
    """The six TSV fields of ``record``, encoded exactly as the bottom-up-attention tools do."""
    boxes = np.ascontiguousarray(record.boxes, dtype="<f4")
    features = np.ascontiguousarray(record.features, dtype="<f4")
    if boxes.shape != (record.num_boxes, 4) or features.shape[0] != record.num_boxes:
        raise ValueError(f"image {record.image_id}: boxes {boxes.shape} / features "
                         f"{features.shape} do not match num_boxes={record.num_boxes}")
    return [str(record.image_id), str(record.image_w), str(record.image_h),
            str(record.num_boxes), base64.b64encode(boxes.tobytes()).decode("ascii"),
            base64.b64encode(features.tobytes()).decode("ascii")]


def write_bottomup_tsv(path: str | os.PathLike, records: Iterable[RegionRecord]) -> Path:
    """Write records as a headerless bottom-up TSV (for fixtures and the demo world).

    Rows end in ``\r\n``, the csv module's default that the original ``generate_tsv.py`` used.
    """
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\r\n")
        for record in records:
            writer.writerow(format_row(record))
    return Path(path)
