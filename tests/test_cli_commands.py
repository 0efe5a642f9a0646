"""The ``mia`` command line as researchers expect it: every option has help, ``--help`` shows
defaults, image decoding starts as many workers as the machine has cores (at most 4), and one
run trains or decodes outside Snakemake with ``mia train`` / ``mia decode``, giving exactly what
the workflow's scripts give for the same config (the same functions, the same settings).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from test_workflow_scripts import SCRIPTS, fake_snakemake, run_script, stores  # noqa: F401
from vqa_fixtures import build_vqa_world

from mia.cli import build_parser, main
from mia.runlog import stop_job_logging
from mia.train_cli import baseline_settings, workflow_config
from mia.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def _parsers(parser: argparse.ArgumentParser, path: str = "mia"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}"
               for path, p in _parsers(parser) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction | argparse._HelpAction |
                                 argparse._VersionAction) and not a.help]
    assert missing == [], f"options without help: {missing}"
    commands = [path for path, _ in _parsers(parser)]
    assert {"mia train captioning", "mia train vqa", "mia decode captions",
            "mia decode vqa"} <= set(commands)
    helps = {path: " ".join(p.format_help().split()) for path, p in _parsers(parser)}
    assert "(default: 5)" in helps["mia data captions"]  # --count-threshold
    assert "(default: 14)" in helps["mia data vqa"]  # --max-question-length
    assert "(default: 1000)" in helps["mia demo-world"]  # --num-images
    assert "(default: xe)" in helps["mia train captioning"]
    assert "(default: None)" not in "".join(helps.values())  # nothing to show: nothing shown
    assert f"num_workers={min(4, len(os.sched_getaffinity(0)))}" in helps["mia features grid"]


def test_image_workers_default_to_the_cores_this_process_may_use(monkeypatch) -> None:
    from mia.features.grid import GridFeatureConfig
    from mia.features.regions import RegionFeatureConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a 2-core laptop
    assert GridFeatureConfig().num_workers == 2 and RegionFeatureConfig().num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert GridFeatureConfig().num_workers == 4
    assert GridFeatureConfig(num_workers=8).num_workers == 8  # the config's value wins


# ------------------------------------------------------------------ mia train / mia decode

TRAIN = {"epochs": 2, "batch_size": 16, "lr": 2e-3, "checkpoint_every": 2, "device": "cpu",
         "progress": False, "val_batch_size": 8, "max_length": 8, "log_every": 2}


def _overlay(tmp_path: Path, extra: dict) -> list[Path]:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(extra))
    return [REPO / "config" / "demo.yaml", path]


def _script(name: str, smk: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    try:
        runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": smk},
                       run_name="__main__")
    finally:
        stop_job_logging()


def _same_weights(a: Path, b: Path) -> None:
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("wall_s")}
            for r in json.loads(path.read_text())]


def test_mia_train_and_decode_captioning_equal_the_workflow_scripts(
        stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    torch.set_num_threads(1)
    configs = _overlay(tmp_path, {"captioning": {"train": TRAIN, "decode": {
        "split": "test", "beam_size": 2, "max_length": 8, "batch_size": 8, "device": "cpu"}}})
    config = workflow_config(configs)
    # The rule: params from the same config (rules/common.smk caption_settings).
    smk = fake_snakemake(stores, tmp_path / "rule", baseline_settings(
        config, "captioning", "visual_attention", "train"))
    smk.params.model = baseline_settings(config, "captioning", "visual_attention", "model")
    run_script(smk, monkeypatch)
    # The command line.
    out = tmp_path / "cli"
    store_args = [a for k in ("captions", "features", "concepts") for a in (f"--{k}", stores[k])]
    assert main(["train", "captioning", "--config", *map(str, configs), "--baseline",
                 "visual_attention", "--variant", "mia", "--seed", "7", "--out", str(out),
                 *store_args]) == 0
    _same_weights(tmp_path / "rule" / "model.pt", out / "model.pt")
    assert _rows(tmp_path / "rule" / "history.json") == _rows(out / "history.json")
    run = json.loads((out / "run.json").read_text())
    assert run["run"] == "captioning/visual_attention/mia" and run["seed"] == 7
    # A second call resumes the finished run instead of training it again.
    assert main(["train", "captioning", "--config", *map(str, configs), "--baseline",
                 "visual_attention", "--variant", "mia", "--seed", "7", "--out", str(out),
                 *store_args]) == 0
    _same_weights(tmp_path / "rule" / "model.pt", out / "model.pt")

    decode = SimpleNamespace(
        input=SimpleNamespace(**stores, model=str(out / "model.pt")), rule="decode_captions",
        threads=1, output=SimpleNamespace(captions=str(tmp_path / "rule_captions.json")),
        params=SimpleNamespace(decode=config["captioning"]["decode"], data_root="."),
        wildcards=SimpleNamespace(split="test"), log=[str(tmp_path / "decode.log")])
    _script("decode_captions.py", decode, monkeypatch)
    assert main(["decode", "captions", "--config", *map(str, configs), "--model",
                 str(out / "model.pt"), "--out", str(tmp_path / "cli_captions.json"),
                 *store_args]) == 0
    rule_captions = json.loads((tmp_path / "rule_captions.json").read_text())
    assert rule_captions and rule_captions == json.loads(
        (tmp_path / "cli_captions.json").read_text())


def test_mia_train_and_decode_vqa_equal_the_workflow_scripts(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    torch.set_num_threads(1)
    world = build_vqa_world(tmp_path / "world")
    train = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "checkpoint_every": 3, "device": "cpu",
             "progress": False, "val_batch_size": 8}
    configs = _overlay(tmp_path, {"data": {"root": str(world.root)},
                                  "vqa": {"glove": None, "train": train, "model": {
                                      "embed_dim": 8, "concept_embed_dim": 8, "mia_d_model": 8,
                                      "mia_heads": 2, "mia_d_ff": 16},
                                      "baselines": {"ban": {"model": {
                                          "hidden": 16, "glimpses": 1,
                                          "tfidf_embedding": False}}}}})  # the world has none
    config = workflow_config(configs)
    store_args = ["--vqa", str(world.vqa), "--features", str(world.regions), "--concepts",
                  str(world.concepts)]

    class Named(dict):
        __getattr__ = dict.__getitem__

    rule = tmp_path / "rule"
    smk = SimpleNamespace(
        input=Named(vqa=str(world.vqa), features=str(world.regions),
                    concepts=str(world.concepts), val_questions=str(world.questions["val"]),
                    val_annotations=str(world.annotations["val"])),
        rule="train_vqa", threads=1, attempt=1,
        output=Named(model=str(rule / "model.pt"), history=str(rule / "history.json")),
        params=Named(model=baseline_settings(config, "vqa", "ban", "model"),
                     train=baseline_settings(config, "vqa", "ban", "train"),
                     checkpoints=str(rule / "checkpoints")),
        wildcards=Named(baseline="ban", variant="mia", seed="7"), log=[str(rule / "train.log")])
    rule.mkdir()
    _script("train_vqa.py", smk, monkeypatch)
    out = tmp_path / "cli"
    assert main(["train", "vqa", "--config", *map(str, configs), "--baseline", "ban",
                 "--variant", "mia", "--seed", "7", "--out", str(out), *store_args]) == 0
    _same_weights(rule / "model.pt", out / "model.pt")
    assert _rows(rule / "history.json") == _rows(out / "history.json")
    assert main(["decode", "vqa", "--config", *map(str, configs), "--model",
                 str(out / "model.pt"), "--out", str(tmp_path / "answers.json"),
                 *store_args]) == 0
    answers = json.loads((tmp_path / "answers.json").read_text())
    assert len(answers) == sum(1 for _ in json.loads(world.questions["val"].read_text())[
        "questions"])


def test_mia_train_names_a_missing_store_and_an_unknown_baseline(capsys, tmp_path: Path) -> None:
    code = main(["train", "captioning", "--config", str(REPO / "config" / "demo.yaml"),
                 "--baseline", "visual_attention", "--variant", "mia", "--out",
                 str(tmp_path / "x"), "--captions", str(tmp_path / "nope.h5")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'nope.h5'}: the captions store of this run is not there" \
        in err and "--captions" in err
    code = main(["train", "vqa", "--config", str(REPO / "config" / "demo.yaml"), "--baseline",
                 "nope", "--variant", "mia", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "--baseline 'nope': not under vqa.baselines" in err
