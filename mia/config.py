"""The workflow configuration in Python: merge ``config.yaml`` with overrides, validate, explain.

Snakemake validates the same schema (``schemas/config.schema.yaml``) in the Snakefile; this
module lets code and tests load a config outside Snakemake, merged the way Snakemake merges
``--configfile`` overrides (mappings key by key, everything else replaced), and reports the first
error as a dotted key path (``captioning.train.lr``) with the schema's expectation.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value breaks the schema; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str, source: str = "config") -> None:
        super().__init__(f"{source}: {key or '<top level>'}: {message}")
        self.key = key


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Snakemake's override rule: nested mappings merge key by key; lists and scalars replace."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _key_path(error: jsonschema.ValidationError) -> str:
    path = [str(p) for p in error.absolute_path]
    # additionalProperties / propertyNames errors point at the parent; name the bad key itself
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        path += extra[:1]
    return ".".join(path)


def validate_config(config: Mapping[str, Any], schema_path: str | os.PathLike = SCHEMA_PATH,
                    source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key of the first schema violation."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_key_path(error), error.message, source)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """One YAML config file as a mapping; a syntax error names the file, line and column, and an
    empty file or a top level that is not a mapping is refused (Snakemake's own loader says only
    "Config file is not valid JSON or YAML")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "file not found", str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError("", f"not UTF-8 text (byte {err.start}); save it as UTF-8",
                          str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError("", f"not valid YAML: {err.problem or err}"
                              f"{' (' + err.context + ')' if err.context else ''}; fix that line",
                          where) from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"not valid YAML: {err}", str(path)) from None
    if data is None:
        raise ConfigError("", "the file is empty; expected a mapping of config sections "
                              "(name:, data:, ...), as in config.yaml", str(path))
    if not isinstance(data, Mapping):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}",
                          str(path))
    return dict(data)


def load_config(paths: Iterable[str | os.PathLike] = (REPO_ROOT / "config.yaml",),
                schema_path: str | os.PathLike = SCHEMA_PATH) -> dict[str, Any]:
    """Merge the YAML files in order (later override earlier), validate, return the dict."""
    config: dict[str, Any] = {}
    names = []
    for path in paths:
        config = merge(config, read_config_file(path))
        names.append(str(path))
    validate_config(config, schema_path, " + ".join(names))
    return config
