"""config/README.md, rendered from the schema: every key of the workflow config, its type, the
paper config's value and what it does.

The schema (``schemas/config.schema.yaml``) is the one place a key is described: ``description``
beside its type. :func:`render_config_readme` turns it into the README, so the page cannot drift
from what the workflow accepts; ``tests/test_config_docs.py`` fails when a key lacks a description
or the README is stale (regenerate it with ``make config-docs``).

Settings shared by several places (a captioner's model, training, SCST, VQA model and training, a
rule's resources, a download) are ``$defs`` of the schema; the page lists each once, in its own
section, and links to it from every key that uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Placeholder shown for the keys of a mapping whose keys are names (``captioning.baselines``).
PLACEHOLDERS = {"downloads": "<key>", "captioning.baselines": "<baseline>",
                "vqa.baselines": "<baseline>", "seeds.runs": "<run id>", "tables": "<table>"}
#: Subschemas that constrain keys already listed rather than adding keys.
CONDITIONAL = ("if", "then", "else")
HEADER = ("<!-- Generated from schemas/config.schema.yaml by `make config-docs` "
          "(scripts/render_config_docs.py): edit the schema's descriptions, not this file. -->")
INTRO = """\
Every key of the workflow's configuration: its type, its value in `config.yaml` (the paper) and
what it does. `config.yaml` builds the paper; `config/demo.yaml` overrides it key by key for the
demo world, and `config/test.yaml` the demo for the tests (`snakemake --configfile
config/demo.yaml`: a file given later wins, lists replace). `mia config check FILE...` validates
the merged result against `schemas/config.schema.yaml` as the Snakefile does: an unknown key is an
error naming the file, line and key. Settings several places share (a captioner, its training,
SCST, a VQA model and its training, a rule's resources, a download) are described once, at the
end, and linked from each key that uses them."""


@dataclass(frozen=True)
class Key:
    """One row of the page."""

    path: str  # dotted, placeholders for named entries (captioning.baselines.<baseline>)
    kind: str  # the type in words (markdown)
    description: str | None
    value: Any  # in config.yaml, or None


_MISSING = object()


def _lookup(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _anchor(name: str) -> str:
    return f"shared-{name.replace('_', '-')}"


def describe_type(node: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A schema node's type in a few words (markdown)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if target.get("type") == "object" and "properties" in target:
            return f"[{name} settings](#{_anchor(name)})"
        words = {"positive_int": "integer >= 1", "probability": "number in [0, 1]",
                 "betas": "two numbers in [0, 1)", "seed_list": "list of distinct integers >= 0",
                 "run_id": "run id `task/baseline/variant`"}
        return words.get(name, describe_type(target, defs))
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v) if not isinstance(v, str) else v}`"
                                     for v in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    for combinator in ("oneOf", "anyOf"):
        if combinator in node:
            return " or ".join(describe_type(sub, defs) for sub in node[combinator])
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(describe_type({**node, "type": k}, defs) for k in kind)
    if kind == "array":
        items = node.get("items")
        return f"list of {describe_type(items, defs)}" if isinstance(items, Mapping) else "list"
    if kind == "object":
        return "mapping"
    if kind in ("integer", "number"):
        bounds = []
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                          ("exclusiveMaximum", "<")):
            if key in node:
                bounds.append(f"{sign} {node[key]}")
        return f"{kind} {', '.join(bounds)}" if bounds else kind
    if kind == "null":
        return "`null`"
    return kind or "any"


def _walk(node: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> Iterator[
        tuple[str, Mapping[str, Any]]]:
    """``(dotted path, property schema)`` of every key under ``node`` (at ``path``; "" for the
    root), in schema order; the keys of a named-entries mapping get a placeholder; ``$ref``'d
    shared settings are not expanded."""
    prefix = f"{path}." if path else ""
    for key, sub in (node.get("properties") or {}).items():
        yield f"{prefix}{key}", sub
        if isinstance(sub, Mapping) and "$ref" not in sub:
            yield from _walk(sub, defs, f"{prefix}{key}")
    extra = node.get("additionalProperties")
    if path and isinstance(extra, Mapping) and "$ref" not in extra:
        yield from _walk(extra, defs, f"{path}.{PLACEHOLDERS.get(path, '<name>')}")


def config_keys(schema: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every key the schema describes: the config's own, then each shared setting's
    (``$defs.<name>.<key>``)."""
    defs = schema.get("$defs", {})
    out = list(_walk(schema, defs, ""))
    for name, node in defs.items():
        if node.get("type") == "object" and "properties" in node:
            out += list(_walk(node, defs, f"$defs.{name}"))
    return out


def undescribed_keys(schema: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the keys (and shared settings) without a description: the list of what
    to write."""
    missing = [path for path, sub in config_keys(schema)
               if not (isinstance(sub, Mapping) and str(sub.get("description", "")).strip())]
    for name, node in (schema.get("$defs") or {}).items():
        if node.get("type") == "object" and "properties" in node and not str(
                node.get("description", "")).strip():
            missing.append(f"$defs.{name}")
    return missing


def _value(value: Any) -> str:
    if value is _MISSING:
        return ""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    if isinstance(value, Mapping):
        return "(mapping)" if value else "`{}`"
    text = text.replace("|", "\\|")
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def _cell(text: str | None) -> str:
    """One table cell: one line, pipes escaped, ``<eos>`` not taken for an HTML tag."""
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[tuple[str, str, str, str]], with_value: bool) -> list[str]:
    if with_value:
        out = ["| key | type | config.yaml | what it does |", "|---|---|---|---|"]
        out += [f"| `{k}` | {t} | {v} | {d} |" for k, t, v, d in rows]
    else:
        out = ["| key | type | what it does |", "|---|---|---|"]
        out += [f"| `{k}` | {t} | {d} |" for k, t, _, d in rows]
    return out


def _uses(schema: Mapping[str, Any], name: str) -> list[str]:
    ref = f"#/$defs/{name}"
    return [path for path, sub in config_keys(schema)
            if isinstance(sub, Mapping) and (sub.get("$ref") == ref or (
                isinstance(sub.get("additionalProperties"), Mapping)
                and sub["additionalProperties"].get("$ref") == ref))]


def render_config_readme(schema: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The page (markdown) for ``schema``, with the values of ``config`` (config.yaml)."""
    defs = schema.get("$defs", {})
    lines = ["# The workflow's configuration", "", HEADER, "", INTRO, ""]
    sections = list((schema.get("properties") or {}).items())
    lines.append("Sections: " + ", ".join(f"[`{k}`](#{k})" for k, _ in sections) +
                 "; [shared settings](#shared-settings).")
    for top, node in sections:
        lines += ["", f"## {top}", ""]
        rows = []
        for path, sub in [(top, node), *_walk(node, defs, top)]:
            kind = describe_type(sub, defs)
            extra = sub.get("additionalProperties") if isinstance(sub, Mapping) else None
            if isinstance(extra, Mapping) and "$ref" in extra:
                kind = f"mapping of `{PLACEHOLDERS.get(path, '<name>')}` to " \
                       f"{describe_type(extra, defs)}"
            elif isinstance(extra, Mapping):
                kind = f"mapping of `{PLACEHOLDERS.get(path, '<name>')}` to a mapping"
            rows.append((path, kind, _value(_lookup(config, path)),
                         _cell(sub.get("description"))))
        lines += _table(rows, with_value=True)
    lines += ["", "## Shared settings", "",
              "Each is described once; the keys that use it are listed under its name."]
    for name, node in defs.items():
        if not (node.get("type") == "object" and "properties" in node):
            continue
        uses = ", ".join(f"`{u}`" for u in _uses(schema, name)) or "(none)"
        about = _cell(node.get("description")).rstrip(".")
        lines += ["", f'<a id="{_anchor(name)}"></a>', "", f"### {name}", "",
                  f"{about}. Used by {uses}.", ""]
        rows = [(path, describe_type(sub, defs), "", _cell(sub.get("description")))
                for path, sub in _walk(node, defs, "")]
        lines += _table(rows, with_value=False)
    return "\n".join(lines) + "\n"


def render_file(schema_path: str | os.PathLike, config_path: str | os.PathLike) -> str:
    """:func:`render_config_readme` of the files."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = yaml.safe_load(Path(config_path).read_text())
    return render_config_readme(schema, config)
