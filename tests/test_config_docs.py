"""config/README.md describes every key of the workflow config, rendered from the schema's
descriptions; it fails here when a key lacks a description or the page is stale. The project's
other front-door files say what a researcher needs: the licence, `--sdm conda`, `--report` after
a run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from mia.config_docs import config_keys, render_config_readme, render_file, undescribed_keys

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def test_every_key_of_the_schema_has_a_description() -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    keys = config_keys(schema)
    assert len(keys) > 250  # the walk reaches nested, named-entry and shared keys
    missing = undescribed_keys(schema)
    assert missing == [], (f"{SCHEMA.name}: describe these keys (description: beside their "
                           f"type), then run `make config-docs`: {missing}")


def test_config_readme_is_rendered_from_the_schema() -> None:
    readme = REPO / "config" / "README.md"
    assert readme.read_text() == render_file(SCHEMA, REPO / "config.yaml"), (
        "config/README.md is stale: run `make config-docs` after changing the schema")
    text = readme.read_text()
    for key in ("captioning.baselines.<baseline>.stages", "report.bootstrap.resamples",
                "features.grid.num_workers", "vqa.server.demo_images"):
        assert f"| `{key}` |" in text, key
    assert "| `$defs" not in text and "### captioner" in text and "(#shared-captioner)" in text


def test_renderer_links_shared_settings_and_names_undescribed_keys() -> None:
    schema = {"properties": {
        "runs": {"type": "object", "description": "runs by name",
                 "additionalProperties": {"type": "object", "properties": {
                     "lr": {"type": "number", "exclusiveMinimum": 0, "description": "rate"},
                     "model": {"$ref": "#/$defs/model", "description": "its model"}}}},
        "seed": {"type": "integer"}},
        "$defs": {"model": {"type": "object", "description": "a model", "properties": {
            "width": {"enum": [1, 2], "description": "how wide"}}}}}
    page = render_config_readme(schema, {"seed": 3})
    assert "| `runs.<name>.lr` | number > 0 |  | rate |" in page
    assert "| `runs.<name>.model` | [model settings](#shared-model) |  | its model |" in page
    assert "| `seed` | integer | `3` |  |" in page
    assert "| `width` | one of `1`, `2` | how wide |" in page and "Used by `runs.<name>.model`" \
        in page
    assert undescribed_keys(schema) == ["seed"]


def test_licence_conda_and_report_notes() -> None:
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Permission is hereby granted" in licence
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    readme = (REPO / "README.md").read_text()
    assert "--sdm conda" in readme and "config/README.md" in readme
    assert re.search(r"run the workflow first", readme) and "marked for report but does not "\
        "exist" in readme
