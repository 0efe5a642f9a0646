"""The config schema is the single strict source of truth, tested against the dataclasses.

Every section of config.yaml that a typed dataclass reads refuses unknown keys in the schema
(`additionalProperties: false`), so a typo fails `snakemake -n` at once instead of a train job
hours later, and its keys are exactly the dataclass's fields (minus those the workflow fills in).
The defaults of each dataclass validate against its schema section, so the two agree on types.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mia.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())

# (schema path, dataclass, fields the workflow fills in rather than the config)
SECTIONS: list[tuple[str, str, set[str]]] = [
    ("properties.preprocess.properties.captions", "mia.data.preprocess.CaptionPreprocessConfig",
     set()),
    ("properties.preprocess.properties.vqa", "mia.data.preprocess.VQAPreprocessConfig", set()),
    ("properties.features.properties.grid", "mia.features.grid.GridFeatureConfig", set()),
    ("properties.features.properties.regions", "mia.features.regions.RegionFeatureConfig", set()),
    ("properties.features.properties.regions.properties.bottom_up",
     "mia.features.bottom_up.config.BottomUpConfig", set()),
    ("properties.features.properties.regions.properties.bottom_up.properties.model",
     "mia.features.bottom_up.config.FasterRCNNConfig", set()),
    ("properties.features.properties.concepts", "mia.features.concepts.ConceptConfig", set()),
    ("properties.data.properties.demo", "mia.data.demo.DemoConfig", set()),
    ("$defs.captioner", "mia.captioning.config.CaptionerConfig",
     {"baseline", "variant", "feature_dim"}),
    ("$defs.cnn", "mia.captioning.config.CNNConfig", set()),
    ("$defs.caption_train", "mia.captioning.config.TrainConfig", {"captioner"}),
    ("$defs.scst", "mia.captioning.scst.SCSTConfig", set()),
    ("properties.evaluation.properties.captions", "mia.evaluation.captions.CaptionEvalConfig",
     {"per_image"}),
    ("properties.report.properties.bootstrap", "mia.report.gains.GainSettings", set()),
    ("$defs.vqa_model", "mia.vqa.config.VQAModelConfig", {"baseline", "variant", "feature_dim"}),
    ("$defs.vqa_train", "mia.vqa.train.VQATrainConfig", {"model"}),
]


def node(path: str) -> dict[str, Any]:
    out: Any = SCHEMA
    for key in path.split("."):
        out = out[key]
    return out


def dataclass_of(dotted: str) -> type:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("path", "dotted", "filled_in"), SECTIONS,
                         ids=[s[0].rsplit(".", 1)[-1] for s in SECTIONS])
def test_schema_section_is_strict_and_equals_the_dataclass(path: str, dotted: str,
                                                           filled_in: set[str]) -> None:
    section = node(path)
    cls = dataclass_of(dotted)
    fields = {f.name for f in dataclasses.fields(cls)} - filled_in
    assert section.get("additionalProperties") is False, f"{path} accepts unknown keys"
    assert set(section.get("properties", {})) == fields, (
        f"{path} vs {dotted}: only in the schema {sorted(set(section['properties']) - fields)}, "
        f"only in the dataclass {sorted(fields - set(section['properties']))}")


@pytest.mark.parametrize(("path", "dotted", "filled_in"), SECTIONS,
                         ids=[s[0].rsplit(".", 1)[-1] for s in SECTIONS])
def test_dataclass_defaults_validate_against_the_schema(path: str, dotted: str,
                                                        filled_in: set[str]) -> None:
    cls = dataclass_of(dotted)
    defaults = {f.name: _plain(getattr(cls(), f.name)) for f in dataclasses.fields(cls)
                if f.name not in filled_in}
    if dotted.endswith("ConceptConfig"):
        defaults["k"] = {"grid": 49, "regions": 36}  # one per feature kind in the config
    schema = {**copy.deepcopy(node(path)), "$defs": SCHEMA["$defs"]}
    jsonschema.Draft202012Validator(schema).validate(defaults)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("key_path", [
    ("captioning", "model", "atention_dim"),
    ("captioning", "train", "lr_decay_strat"),
    ("captioning", "baselines", "updown", "model", "rnn_size"),  # belongs under options
    ("captioning", "baselines", "updown", "train", "epoch"),
    ("captioning", "model", "cnn", "lerning_rate"),
    ("captioning", "scst", "samples"),
    ("vqa", "model", "glimpse"),
    ("vqa", "baselines", "ban", "train", "lr_decay_epoch"),
    ("report", "bootstrap", "n"),
])
def test_a_typo_anywhere_fails_validation_naming_the_key(key_path: tuple[str, ...]) -> None:
    config = load_config([REPO / "config.yaml"])
    parent = config
    for key in key_path[:-1]:
        parent = parent.setdefault(key, {})
    parent[key_path[-1]] = 1
    with pytest.raises(ConfigError, match=r"\.".join(key_path)):
        validate_config(config)


@pytest.mark.parametrize(("task", "metric"), [("captioning", "CIDEr-D"), ("captioning", "number"),
                                              ("vqa", "CIDEr"), ("vqa", "Number")])
def test_table_metric_names_are_enums_per_task(task: str, metric: str) -> None:
    config = load_config([REPO / "config.yaml"])
    table = "table1" if task == "captioning" else "table3"
    config["tables"][table]["metrics"].append(metric)
    with pytest.raises(ConfigError, match=rf"tables\.{table}\.metrics"):
        validate_config(config)


def test_every_config_file_validates() -> None:
    for extra in ([], ["demo.yaml"], ["demo.yaml", "test.yaml"]):
        load_config([REPO / "config.yaml", *(REPO / "config" / e for e in extra)])
