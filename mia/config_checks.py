"""What the workflow and the dataclasses would refuse later, checked on the config up front.

The schema checks each value alone; these checks need several values or the code itself:

* every table's runs name a baseline of their task, ``report.tables`` names defined tables,
  the figures find the runs and tables they draw;
* for every captioning and VQA baseline and every variant the tables (and figures) run, the
  settings the rules pass to the training scripts (:func:`baseline_settings`, the one merge the
  Snakefile uses too) build the dataclasses the scripts build (``CaptionerConfig``,
  ``TrainConfig``, ``SCSTConfig``, ``VQAModelConfig``, ``VQATrainConfig``, with all their own
  checks), and the model itself is built on PyTorch's ``meta`` device (no memory, no time), so a
  Transformer whose heads do not divide its width or a MIA whose heads do not divide its width
  fails here, naming the key, not in a train job hours later;
* the local VQA runs must hold val out (they are scored on it); only the evaluation-server runs
  (``vqa.server.train``) may train on train + val.

:func:`mia.config.check_config` calls :func:`check_workflow` after the schema, and
``mia config check`` and the Snakefile call that, so the check and the workflow agree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mia.config import ConfigError

VOCAB = 16  # vocabulary sizes are the stores' too: any size builds the same layers
_FIELD = re.compile(r"\b(?:captioner|train|scst|vqa\.model|vqa\.train)\.((?:[a-z_0-9]+\.)*"
                    r"[a-z_0-9]+)")


def baseline_settings(config: Mapping[str, Any], task: str, baseline: str, section: str
                      ) -> dict[str, Any]:
    """``<task>.<section>`` (model, train, scst) with the baseline's own overrides on top: what
    the rules pass as ``params`` (rules/common.smk calls this)."""
    own = config[task]["baselines"][baseline].get(section, {})
    return {**config[task].get(section, {}), **own}


def feature_width(config: Mapping[str, Any], kind: str) -> int:
    """The width C of the ``grid`` or ``regions`` feature store the config builds (a training
    script reads it from the store)."""
    from mia.features.backbone import RESNETS

    if kind == "grid":
        return RESNETS[config["features"]["grid"].get("backbone", "resnet152")][2]
    regions = config["features"]["regions"]
    source = regions.get("source", "bottom_up_tsv")
    if source == "boxes":
        return RESNETS[regions.get("backbone", "resnet152")][2]
    if source == "bottom_up_tsv":
        return int(regions.get("feature_dim", 2048))
    if source == "bottom_up":  # the detector's res5 width (2048 for the public model)
        from mia.features.bottom_up.config import bottom_up_config

        return bottom_up_config(regions.get("bottom_up")).model.res5_channels
    return 2048  # detectron2: the Visual Genome Faster R-CNN's res5 (ResNet-101 C4)


def region_source_variants(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The config once per region source it may build: ``auto`` becomes ``bottom_up_tsv`` or
    ``bottom_up`` only when the workflow sees which copies the user has
    (:func:`mia.features.region_source.resolve_region_source`), so both are checked."""
    from mia.features.region_source import AUTO, EXTRACTOR, TSV

    regions = config["features"]["regions"]
    if regions.get("source") != AUTO:
        return [config]
    return [{**config, "features": {**config["features"], "regions": {**regions, "source": s}}}
            for s in (TSV, EXTRACTOR)]


def check_workflow(config: Mapping[str, Any], source: str = "config") -> None:
    """Raise :class:`ConfigError` (key and message) for the first problem found."""
    candidates = region_source_variants(config)
    for candidate in candidates:
        _check_regions(candidate, source)
    runs = _check_tables(config, source)
    widths = {feature_width(c, "regions"): c for c in candidates}  # one check per store width
    for candidate in widths.values():
        for baseline in candidate["captioning"]["baselines"]:
            variants = sorted({v for t, b, v in runs if t == "captioning" and b == baseline}
                              or {"base", "mia"})
            _check_captioning(candidate, baseline, variants, source)
        for baseline in candidate["vqa"]["baselines"]:
            variants = sorted({v for t, b, v in runs if t == "vqa" and b == baseline}
                              or {"base", "mia"})
            _check_vqa(candidate, baseline, variants, source)


def _check_regions(config: Mapping[str, Any], source: str) -> None:
    """``features.regions`` builds the extractor's config (the bottom-up detector: its store
    width equals ``bottom_up.max_boxes``, its model and selection settings are consistent)."""
    from mia.features.regions import RegionFeatureConfig

    try:
        RegionFeatureConfig(**config["features"]["regions"])
    except (TypeError, ValueError) as err:
        text = str(err)
        key = next((k for k in re.findall(r"features\.regions(?:\.[a-z_0-9]+)+", text)),
                   "features.regions")
        raise ConfigError(key, text, source) from None


def _runs_of(config: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, task, baseline, variant) of every run any table or figure names."""
    runs = []
    for name, table in config["tables"].items():
        for i, run in enumerate(table["runs"]):
            runs.append((f"tables.{name}.runs.{i}", *run.split("/")))
    if "figure5" in config["report"].get("figures", []):
        for n in (1, 3, 5):  # rules/common.smk FIGURE5_RUNS
            runs.append(("report.figures", "captioning", "visual_attention", f"mia_n{n}"))
    return runs


def _check_tables(config: Mapping[str, Any], source: str) -> set[tuple[str, str, str]]:
    tables = config["tables"]
    for i, name in enumerate(config["report"]["tables"]):
        if name not in tables:
            raise ConfigError(f"report.tables.{i}", f"{name!r} is not defined under tables "
                              f"(defined: {', '.join(sorted(tables))})", source)
    figures = config["report"].get("figures", [])
    if "figure4" in figures and "figure4_iterations" not in tables:
        raise ConfigError("report.figures", "figure4 draws the runs of tables.figure4_iterations,"
                          " which is not defined; define it or remove figure4", source)
    runs = _runs_of(config)
    for key, task, baseline, _ in runs:
        section = "captioning" if task == "captioning" else "vqa"
        known = config[section]["baselines"]
        if baseline not in known:
            raise ConfigError(key, f"run {task}/{baseline}/... names baseline {baseline!r}, "
                              f"which is not under {section}.baselines (defined: "
                              f"{', '.join(sorted(known))})", source)
    return {(task, baseline, variant) for _, task, baseline, variant in runs}


def _blame(message: str, candidates: Iterable[tuple[str, Mapping[str, Any]]]
           ) -> tuple[list[str], str]:
    """The config keys a dataclass's error is about (every ``captioner.<field>`` it names, in
    order), and the message without the dataclass's own ``captioner.<field>:`` prefix.
    ``candidates``: (key prefix, the mapping set there), the most specific first (the
    baseline's own section, then the task's): a field is blamed where it is set."""
    candidates = list(candidates)
    fields = list(dict.fromkeys(m.group(1) for m in _FIELD.finditer(message)))
    text = message
    first = _FIELD.match(message)
    if first and message.startswith(first.group(0) + ":"):
        text = message[len(first.group(0)) + 1:].strip()
    keys = []
    for field in fields:
        top = field.split(".")[0]
        prefix = next((p for p, section in candidates if top in section), candidates[-1][0])
        keys.append(f"{prefix}.{field}")
    if not keys:
        keys = [next((p for p, section in candidates if section), candidates[-1][0])]
    return keys, text


def _checked(build: Callable[[], Any], candidates: list[tuple[str, Mapping[str, Any]]],
             what: str, source: str) -> Any:
    """``build()``; a ValueError it raises becomes a ConfigError on the keys it is about."""
    try:
        return build()
    except ValueError as err:
        keys, text = _blame(str(err), candidates)
        raise ConfigError(keys[0], f"{text} ({what})", source, also=keys[1:]) from None


def _candidates(config: Mapping[str, Any], task: str, baseline: str, section: str
                ) -> list[tuple[str, Mapping[str, Any]]]:
    return [(f"{task}.baselines.{baseline}.{section}",
             config[task]["baselines"][baseline].get(section, {})),
            (f"{task}.{section}", config[task].get(section, {}))]


def _check_captioning(config: Mapping[str, Any], baseline: str, variants: list[str],
                      source: str) -> None:
    import torch

    import mia.captioning.transformer  # noqa: F401  (registers the baseline)
    import mia.captioning.updown  # noqa: F401
    from mia.captioning.config import CaptionerConfig, TrainConfig
    from mia.captioning.models import build_captioner
    from mia.captioning.scst import SCSTConfig

    model = baseline_settings(config, "captioning", baseline, "model")
    train = baseline_settings(config, "captioning", baseline, "train")
    width = feature_width(config, config["captioning"]["baselines"][baseline]["features"])
    model_keys = _candidates(config, "captioning", baseline, "model")
    built: set[str] = set()
    for variant in variants:
        what = f"run captioning/{baseline}/{variant}"
        captioner = _checked(lambda v=variant: CaptionerConfig.from_dict(
            {**model, "baseline": baseline, "variant": v, "feature_dim": width}, "captioner"),
            model_keys, what, source)
        shape = "mia_n" if variant.startswith("mia_n") else variant  # N changes no layer's size
        if shape not in built:
            # The fine-tuned CNN is the same for every variant (and the slow part to build).
            c = captioner if not built else dataclasses.replace(
                captioner, fine_tune_cnn_after_epoch=None)
            built.add(shape)

            def build(c: CaptionerConfig = c) -> None:
                with torch.device("meta"):
                    build_captioner(c, VOCAB)

            _checked(build, model_keys, what, source)
        _checked(lambda c=captioner: TrainConfig.from_dict({**train, "captioner": c}, "train"),
                 _candidates(config, "captioning", baseline, "train"), what, source)
    if "scst" in config["captioning"]["baselines"][baseline]["stages"]:
        scst = baseline_settings(config, "captioning", baseline, "scst")
        _checked(lambda: SCSTConfig.from_dict(scst, "scst"),
                 _candidates(config, "captioning", baseline, "scst"),
                 f"SCST of captioning/{baseline}", source)


def _check_vqa(config: Mapping[str, Any], baseline: str, variants: list[str], source: str
               ) -> None:
    import torch

    from mia.vqa.config import VQAModelConfig
    from mia.vqa.models import build_vqa_model
    from mia.vqa.train import VQATrainConfig

    model = baseline_settings(config, "vqa", baseline, "model")
    train = baseline_settings(config, "vqa", baseline, "train")
    width = feature_width(config, config["vqa"]["baselines"][baseline]["features"])
    model_keys = _candidates(config, "vqa", baseline, "model")
    train_keys = _candidates(config, "vqa", baseline, "train")
    server = config["vqa"]["server"]
    for variant in variants:
        what = f"run vqa/{baseline}/{variant}"
        cfg = _checked(lambda v=variant: VQAModelConfig.from_dict(
            {**model, "baseline": baseline, "variant": v, "feature_dim": width}, "vqa.model"),
            model_keys, what, source)

        def build(c: VQAModelConfig = cfg) -> None:
            with torch.device("meta"):
                build_vqa_model(c, VOCAB, VOCAB, VOCAB if c.uses_mia else None)

        _checked(build, model_keys, what, source)
        local = _checked(lambda c=cfg: VQATrainConfig.from_dict({**train, "model": c},
                                                                "vqa.train"),
                         train_keys, what, source)
        if not local.validates:
            key = _blame("vqa.train.train_splits", train_keys)[0][0]
            raise ConfigError(key, f"{list(local.train_splits)}: the local runs ({what}) are "
                              "scored on val, so they must not train on it; keep [train] here and "
                              "give [train, val] only under vqa.server.train (the "
                              "evaluation-server runs)", source)
        if server.get("enabled"):
            _checked(lambda c=cfg: VQATrainConfig.from_dict(
                {**train, **server.get("train", {}), "model": c}, "vqa.train"),
                [("vqa.server.train", server.get("train", {})), *train_keys],
                f"evaluation-server run vqa/{baseline}/{variant}", source)
