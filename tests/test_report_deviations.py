"""The report's "Deviations from the released code" box comes from the config (issue 21): every
switch whose value differs from its reference implementation's shows up, with both values, and
the paper config deviates only where docs/RECIPE.md says it does on purpose."""

from __future__ import annotations

import copy

import pytest

from mia.config import load_config
from mia.report.deviations import FIXED, deviations

SWITCHES = ("weight_clamp", "rebuild_optimizer_each_epoch", "batchnorm", "layer_norm",
            "optimizer_state", "tokenizer", "vocabulary_questions", "tfidf", "rnn_size",
            "fine_tune_cnn_after_epoch", "mia_")


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(["config.yaml"])


def test_paper_config_deviates_only_where_recipe_md_says(paper):
    box = deviations(paper)
    assert box[:len(FIXED)] == list(FIXED)
    text = "\n".join(box[len(FIXED):])
    assert not any(s in text for s in SWITCHES), text
    assert "SCST starts from the val-selected XE epoch" in text  # RECIPE.md: on purpose
    assert "adaptive 10-100" in text  # BAN: the paper's 36 boxes


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("captioning", "train", "weight_clamp"), 0.0,
     "Table 1/4 captioners (vs fenglinliu98/MIA): captioning.train: weight_clamp 0 "
     "(reference: 0.1)"),
    (("captioning", "train", "rebuild_optimizer_each_epoch"), False,
     "rebuild_optimizer_each_epoch false (reference: true)"),
    (("captioning", "model", "cnn", "batchnorm"), "eval", "cnn: batchnorm eval (reference: train)"),
    (("captioning", "model", "mia_mode"), "paper", "mia_attention_bias false (reference: true)"),
    (("captioning", "baselines", "transformer", "model", "options", "layer_norm"), "torch",
     "transformer (vs self-critical.pytorch): captioning.model: options.layer_norm torch "
     "(reference: reference)"),
    (("captioning", "scst", "optimizer_state"), "fresh",
     "captioning.scst: optimizer_state fresh (reference: carry)"),
    (("captioning", "baselines", "updown", "model", "options", "rnn_size"), 512,
     "d_model 1000 != options.rnn_size 512"),
    (("preprocess", "vqa", "tokenizer"), "words", "preprocess.vqa: tokenizer words"),
    (("preprocess", "vqa", "vocabulary_questions"), ["train"],
     "vocabulary_questions [train] (reference: [train, val, test2015, test-dev2015])"),
    (("vqa", "baselines", "ban", "model", "tfidf_embedding"), False,
     "tfidf_embedding false (reference: true)"),
])
def test_a_switch_away_from_its_reference_is_listed(paper, path, value, expected):
    config = copy.deepcopy(paper)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(expected in entry for entry in deviations(config)), deviations(config)


def test_only_the_selected_tables_are_compared(paper):
    config = copy.deepcopy(paper)
    config["report"]["tables"] = ["table3"]
    box = "\n".join(deviations(config)[len(FIXED):])
    assert "captioning" not in box and "VQA ban" in box
