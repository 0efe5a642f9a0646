"""The workflow configuration in Python: merge ``config.yaml`` with overrides, validate, explain.

:func:`check_config` is THE validation of a workflow config: ``mia config check`` and the
Snakefile both call it, so what the check passes, the workflow accepts. It runs, in order, the
schema (``schemas/config.schema.yaml``), a refusal of NaN and infinite numbers, and every check
the workflow and the dataclasses would run later (:mod:`mia.config_checks`: the dataclasses of
every baseline built, its models built on PyTorch's ``meta`` device, tables against baselines,
...). Files are merged the way Snakemake merges ``--configfile`` overrides (mappings key by key,
everything else replaced); a key written twice in one file is refused (YAML keeps the last one
silently). Every error names the file and line that set the offending key (the last one to set
it), the dotted key path (``captioning.train.lr``) and what is expected.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:  # imported where a config is validated: the GPU image has no jsonschema
    import jsonschema

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.yaml"

T = TypeVar("T")


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build the typed dataclass ``cls`` of one config section from ``values``.

    Unknown keys and NaN or infinite numbers (which pass every ``<= 0`` check) raise a
    ValueError naming them, because a misspelt key (``lr_decay_strat``) would otherwise train
    silently with the default. Captioning and VQA build their configs through here (one floor
    below both), so they refuse the same things the same way.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(values)}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; "
                         f"expected some of {sorted(names)}")
    for key, value in values.items():
        numbers = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
            raise ValueError(f"{where}.{key}: must be a finite number, got {value}")
    return cls(**values)  # type: ignore[call-arg]


class ConfigError(ValueError):
    """A config value breaks the schema; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str, source: str = "config",
                 also: Sequence[str] = ()) -> None:
        super().__init__(f"{source}: {key or '<top level>'}: {message}")
        self.key = key
        self.message = message
        self.source = source
        self.also = tuple(also)  # other keys the problem is about (e.g. heads and width)


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


def _flow(value: Any) -> str:
    """A value as the user writes it in YAML: ``[xe, scst]``, ``null``."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix(
        "\n...").strip()


def _describe(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """One alternative of a ``oneOf``/``anyOf`` in words."""
    if "$ref" in schema:
        return _describe(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "const" in schema:
        return _flow(schema["const"])
    if "enum" in schema:
        return " or ".join(_flow(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return "null"
    words = {"integer": "an integer", "number": "a number", "string": "a string",
             "boolean": "true or false", "array": "a list", "object": "a mapping"}
    text = words.get(kind, "a value") if isinstance(kind, str) else "a value"
    bounds = [f">= {schema['minimum']}" if "minimum" in schema else "",
              f"> {schema['exclusiveMinimum']}" if "exclusiveMinimum" in schema else "",
              f"<= {schema['maximum']}" if "maximum" in schema else "",
              f"< {schema['exclusiveMaximum']}" if "exclusiveMaximum" in schema else ""]
    bounds = [b for b in bounds if b]
    if bounds:
        text += " " + " and ".join(bounds)
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        text += f" of {_describe(schema['items'], defs)}"
    return text


def _message(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """The schema's complaint, with the valid choices of a ``oneOf``/``anyOf`` spelled out (its
    own message says only 'is not valid under any of the given schemas')."""
    if error.validator in ("oneOf", "anyOf") and isinstance(error.validator_value, list):
        choices = [_describe(option, schema.get("$defs", {})) for option in error.validator_value]
        return f"{_flow(error.instance)} is not valid: expected {' or '.join(choices)}"
    return error.message


def validate_config(config: Mapping[str, Any], schema_path: str | os.PathLike = SCHEMA_PATH,
                    source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key of the first schema violation."""
    import jsonschema  # here, not at the top: training code imports this module on GPU images

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_key_path(error), _message(error, schema), source)


@dataclass
class ConfigFile:
    """One YAML config file as read: its data and where each key was written (line numbers of
    dotted key paths; whether the value there is a mapping, which later files merge into)."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], tuple[int, bool]] = field(default_factory=dict)


def _walk_keys(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...],
               tuple[int, bool]], source: Path) -> None:
    """Record each key's line; refuse a key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(
                    ".".join(key), f"written twice (lines {lines[key][0]} and {line}); YAML "
                    "would silently keep only the second block: merge the two into one",
                    f"{source}:{line}")
            lines[key] = (line, isinstance(value_node, yaml.MappingNode))
            _walk_keys(value_node, key, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*path, str(i))
            lines[key] = (item.start_mark.line + 1, isinstance(item, yaml.MappingNode))
            _walk_keys(item, key, lines, source)


def read_config(path: str | os.PathLike) -> ConfigFile:
    """:func:`read_config_file`, keeping the line of every key (for error messages)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "file not found", str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError("", f"not UTF-8 text (byte {err.start}); save it as UTF-8",
                          str(path)) from None
    lines: dict[tuple[str, ...], tuple[int, bool]] = {}
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _walk_keys(node, (), lines, path)
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
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
    return ConfigFile(path, dict(data), lines)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """One YAML config file as a mapping; a syntax error names the file, line and column, a key
    written twice in one mapping names both lines, and an empty file or a top level that is not a
    mapping is refused (Snakemake's own loader says only "Config file is not valid JSON or YAML"
    and keeps the second of two blocks silently)."""
    return read_config(path).data


def _where(key: str, files: Sequence[ConfigFile]) -> tuple[int, int, str] | None:
    """(index of the file, length of the key prefix found, ``file:line``) of :func:`locate`."""
    merged: dict[tuple[str, ...], tuple[int, int]] = {}
    for index, config_file in enumerate(files):
        for path, (line, is_mapping) in sorted(config_file.lines.items()):
            if not is_mapping:  # a list or a value replaces whatever earlier files had below it
                for below in [p for p in merged if p[:len(path)] == path and p != path]:
                    del merged[below]
            merged[path] = (index, line)
    parts = tuple(key.split(".")) if key else ()
    for n in range(len(parts), 0, -1):
        if parts[:n] in merged:
            index, line = merged[parts[:n]]
            return index, n, f"{files[index].path}:{line}"
    return None


def locate(key: str, files: Sequence[ConfigFile]) -> str | None:
    """``file:line`` of the file that set ``key`` last (or, when no file sets the key itself,
    its nearest enclosing section), as Snakemake's merge decides; None when no file has it (a
    ``--config`` value on the command line, or a default)."""
    found = _where(key, files)
    return None if found is None else found[2]


def _located(err: ConfigError, files: Sequence[ConfigFile]) -> ConfigError:
    """``err`` naming the file and line; of the keys it is about, the one the latest file set
    (the change that broke the config), the first named on a tie."""
    best: tuple[int, int, str, str] | None = None
    for key in (err.key, *err.also):
        found = _where(key, files)
        if found is None:
            continue
        index, depth, where = found
        if depth == len(key.split(".")) and (best is None or index > best[0]):
            best = (index, depth, where, key)
    if best is None:  # no file sets one of the keys itself: its nearest section
        where = locate(err.key, files)
        return err if where is None else ConfigError(err.key, err.message, where)
    return ConfigError(best[3], err.message, best[2])


def _non_finite(value: Any, path: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The first NaN or infinite number in a config (YAML's ``.nan``, ``.inf``), as (key,
    value): no setting of the workflow takes one, and NaN passes every ``minimum`` of the
    schema (every comparison with NaN is false)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".".join(path), value
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, (*path, str(key)))
        if found is not None:
            return found
    return None


def check_config(config: Mapping[str, Any], files: Sequence[ConfigFile] = (),
                 schema_path: str | os.PathLike = SCHEMA_PATH, source: str = "config") -> None:
    """Every validation of a merged workflow config, the one function ``mia config check`` and
    the Snakefile call: the schema, finite numbers, then :func:`mia.config_checks.check_workflow`
    (what the rules and the dataclasses would refuse later). Raises :class:`ConfigError` naming
    the file and line (from ``files``, the files merged, in order), the key and the problem."""
    try:
        validate_config(config, schema_path, source)
        bad = _non_finite(config)
        if bad is not None:
            raise ConfigError(bad[0], f"{bad[1]} is not a finite number; give a number "
                                      "(YAML's .nan and .inf are refused)", source)
        from mia.config_checks import check_workflow  # imports torch: only when needed

        check_workflow(config, source)
    except ConfigError as err:
        if files and not err.source.startswith(tuple(str(f.path) + ":" for f in files)):
            raise _located(err, files) from None
        raise


def load_config(paths: Iterable[str | os.PathLike] = (REPO_ROOT / "config.yaml",),
                schema_path: str | os.PathLike = SCHEMA_PATH, full: bool = False
                ) -> dict[str, Any]:
    """Merge the YAML files in order (later override earlier), validate, return the dict.

    ``full``: run every check of :func:`check_config` (what ``mia config check`` and the
    Snakefile do), not only the schema."""
    config: dict[str, Any] = {}
    files = []
    for path in paths:
        files.append(read_config(path))
        config = merge(config, files[-1].data)
    source = " + ".join(str(f.path) for f in files)
    if full:
        check_config(config, files, schema_path, source)
    else:
        try:
            validate_config(config, schema_path, source)
        except ConfigError as err:
            raise _located(err, files) from None
    return config
