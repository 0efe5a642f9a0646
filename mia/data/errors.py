"""One error type for malformed raw data, and the field checks every reader shares.

Raw files come from many places (COCO, Karpathy, VQA, bottom-up features, the demo world), and a
bad record deep inside a 400 MB JSON is useless to report as a bare ``KeyError``. Every reader
therefore raises :class:`DataFormatError`, whose message names the file, the record and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A raw data file does not have the structure its format promises."""

    def __init__(self, path: str | os.PathLike, record: object, field: str, problem: str) -> None:
        self.path = Path(path)
        self.record = record
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: record {record}: field {field!r}: {problem}")


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; every way it can be unreadable becomes one error naming the file.

    A syntax error gives its line, bytes that are not UTF-8 (a damaged download, a file saved in
    another encoding) their byte offset, an empty file or a folder say so.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found; run the download rule that fetches it")
    if path.is_dir():
        raise DataFormatError(path, "<file>", "<json>", "is a folder, not a JSON file; check the "
                                                        "path in the config")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFormatError(path, "<file>", "<json>", "the file is empty; re-download it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"byte {err.start}", "<json>",
                              f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                              f"{err.start}); the file is damaged or not JSON: re-download "
                              f"it") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"line {err.lineno}", "<json>",
                              f"not valid JSON ({err.msg} at line {err.lineno} column "
                              f"{err.colno}); re-download the file") from err
    except RecursionError as err:
        raise DataFormatError(path, "<top>", "<json>",
                              "nested too deeply to be a real annotation file") from err


def load_records(records: str | os.PathLike | Sequence[Any], expected: str
                 ) -> tuple[list, str]:
    """A JSON array from a file, or an in-memory list, with the name errors should cite.

    Results files (captions, VQA answers) come both ways: from disk in the command line and the
    workflow, as Python lists from a training loop's validation. ``expected`` describes one item
    for the error message, e.g. ``{"image_id": int, "caption": str}``.
    """
    if isinstance(records, str | os.PathLike):
        data, source = load_json(records), str(records)
    else:
        data, source = list(records), "<results list>"
    if not isinstance(data, list):
        raise DataFormatError(source, "<top>", "<json>", f"expected a list of {expected}")
    return data, source


def require(obj: Any, key: str, types: type | tuple[type, ...], path: str | os.PathLike,
            record: object) -> Any:
    """``obj[key]`` checked to be present and of ``types`` (bool is never accepted as a number)."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, record, key, f"record is a {type(obj).__name__}, not an object")
    if key not in obj:
        raise DataFormatError(path, record, key, "missing")
    value = obj[key]
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in wanted:
        raise DataFormatError(path, record, key, f"expected {_names(wanted)}, got bool {value!r}")
    if not isinstance(value, wanted):
        raise DataFormatError(path, record, key,
                              f"expected {_names(wanted)}, got {type(value).__name__} {value!r:.80}")
    return value


def require_list(obj: Any, key: str, path: str | os.PathLike, record: object = "<top>") -> list:
    """``obj[key]`` checked to be a JSON array."""
    return require(obj, key, list, path, record)


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)
