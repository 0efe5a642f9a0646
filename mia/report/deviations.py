"""The report's "Deviations from the released code" box, generated from the chosen config.

Every setting of the pipeline that a reference implementation fixes is compared with that
reference's value, for the baselines the selected tables run:

* the Table 1/4 captioners (and Visual Regional Attention, built from Visual Attention's code)
  against the authors' fenglinliu98/MIA (``Train.py``, ``Test.py``, ``Models/Main.py``);
* Up-Down and the Transformer (Table 2) against ruotianluo/self-critical.pytorch
  (``configs/updown``, ``configs/transformer``, ``tools/train.py``);
* the VQA baselines (Table 3) against hengyuan-hu/bottom-up-attention-vqa and jnhwkim/ban-vqa.

A setting absent from the config takes its dataclass default, as a training run would. The
pipeline's fixed choices (the real Karpathy split, selection on val) are always listed. Each
entry names the config key, our value and the reference's, so the box changes when the config
does and never needs editing by hand; docs/RECIPE.md explains each setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from mia.captioning.config import CaptionerConfig, CNNConfig, TrainConfig
from mia.captioning.scst import SCSTConfig
from mia.captioning.transformer import TransformerOptions
from mia.captioning.updown import UpDownOptions
from mia.data.preprocess import CaptionPreprocessConfig, VQAPreprocessConfig
from mia.vqa.config import VQAModelConfig
from mia.vqa.train import VQATrainConfig

#: Always true of this pipeline, whatever the config.
FIXED = (
    "Splits: the Karpathy split (113,287 / 5,000 / 5,000 images) from dataset_coco.json; the "
    "authors' released code used a random 5k/5k val/test split.",
    "Checkpoint selection: the epoch with the best validation CIDEr-D (VQA: val accuracy); the "
    "released captioning code selected on the test split. The test split is decoded once.",
)

MIA_CAPTIONERS = ("visual_attention", "concept_attention", "visual_condition",
                  "concept_condition", "visual_regional_attention")
GRID_CAPTIONERS = MIA_CAPTIONERS[:4]
ALL_QUESTION_FILES = ["train", "val", "test2015", "test-dev2015"]

#: fenglinliu98/MIA: Train.py's defaults, Main.py's sizes, Test.py's beam.
RELEASED_MIA: dict[str, dict[str, Any]] = {
    "model": {"d_model": 512, "embed_dim": 512, "attention_dim": 49, "dropout": 0.5,
              "decoder_style": "released", "concept_pooling": "mean", "init": "released",
              "mia_heads": 8, "mia_d_ff": 2048, "mia_iterations": 2, "mia_dropout": 0.1,
              "mia_mode": "released", "mia_attention_bias": True,
              "mia_textual_layer_shortcut": False, "mia_attention_dropout": 0.1,
              "mia_layer_dropout": False},
    "train": {"epochs": 30, "batch_size": 80, "lr": 5e-4, "betas": [0.8, 0.999],
              "label_smoothing": 0.1, "grad_clip_norm": 0.0, "grad_clip_value": 0.0,
              "weight_clamp": 0.1, "rebuild_optimizer_each_epoch": True, "lr_schedule": "step",
              "lr_decay_start": 20, "lr_decay_every": 50, "lr_decay_factor": 0.5,
              "lr_decay_staircase": False, "warmup_steps": 0, "weight_decay": 0.0},
    "decode": {"beam_size": 3, "max_length": 19},
    "preprocess": {"count_threshold": 5, "max_length": None},
}
#: The grid captioners also fine-tune ResNet-152 from epoch 9 (Train.py).
RELEASED_CNN = {"fine_tune_cnn_after_epoch": 8}
RELEASED_CNN_SETTINGS = {"backbone": "resnet152", "first_trained_child": 5, "lr": 1e-5,
                         "betas": [0.8, 0.999], "resize": 256, "crop": 224, "flip": True,
                         "batchnorm": "train"}

_SC_COMMON_TRAIN = {"label_smoothing": 0.0, "grad_clip_value": 0.1, "grad_clip_norm": 0.0,
                    "weight_clamp": 0.0, "rebuild_optimizer_each_epoch": False,
                    "batch_size": 50, "weight_decay": 0.0}
_SC_COMMON_SCST = {"samples_per_image": 5, "baseline": "greedy", "batch_size": 10,
                   "max_length": 20, "temperature": 1.0, "grad_clip_mode": "value",
                   "grad_clip": 0.1, "optimizer_state": "carry", "val_beam_size": 1}
#: ruotianluo/self-critical.pytorch: configs/updown/updown(_sc).yml with opts.py defaults.
SELF_CRITICAL: dict[str, dict[str, dict[str, Any]]] = {
    "updown": {
        "model": {"d_model": 1000, "embed_dim": 1000, "attention_dim": 512, "dropout": 0.5,
                  "options.rnn_size": 1000},
        "train": {**_SC_COMMON_TRAIN, "epochs": 30, "lr": 5e-4, "betas": [0.9, 0.999],
                  "lr_schedule": "step", "lr_decay_start": 1, "lr_decay_every": 3,
                  "lr_decay_factor": 0.8, "lr_decay_staircase": True, "ss_start": 0,
                  "ss_every": 5, "ss_increase": 0.05, "ss_max": 0.25},
        "scst": {**_SC_COMMON_SCST, "lr": 5e-5, "lr_schedule": "constant", "epochs": 20},
    },
    "transformer": {
        "model": {"d_model": 512, "embed_dim": 512, "dropout": 0.5,
                  "options.encoder_layers": 6, "options.decoder_layers": 6,
                  "options.heads": 8, "options.d_ff": 2048, "options.dropout": 0.1,
                  "options.layer_norm": "reference", "options.tie_output": False},
        "train": {**_SC_COMMON_TRAIN, "epochs": 15, "lr_schedule": "noam",
                  "warmup_steps": 20000, "noam_factor": 1.0, "betas": [0.9, 0.98],
                  "eps": 1e-9, "ss_start": -1},
        "scst": {**_SC_COMMON_SCST, "lr": 1e-5, "lr_schedule": "plateau",
                 "plateau_factor": 0.5, "epochs": 35},
    },
}
#: The VQA references (main.py / train.py / dataset.py).
VQA_REFERENCES: dict[str, dict[str, dict[str, Any]]] = {
    "updown": {
        "model": {"hidden": 1024, "embed_dim": 300, "dropout": 0.2, "classifier_dropout": 0.5,
                  "question_pads": "reference", "tfidf_embedding": False},
        "train": {"epochs": 30, "batch_size": 512, "lr": 2e-3, "lr_schedule": "constant",
                  "grad_clip_norm": 0.25, "train_splits": ["train"]},
    },
    "ban": {
        "model": {"hidden": 1280, "embed_dim": 300, "glimpses": 8, "ban_rank": 3,
                  "counter_objects": 10, "dropout": 0.2, "attention_dropout": 0.5,
                  "classifier_dropout": 0.5, "question_pads": "reference",
                  "tfidf_embedding": True},
        "train": {"epochs": 13, "batch_size": 256, "lr": 1e-3, "lr_schedule": "warmup_step",
                  "warmup_factors": [0.5, 1.0, 1.5, 2.0], "lr_decay_factor": 0.25,
                  "grad_clip_norm": 0.25, "train_splits": ["train"]},
    },
}
VQA_PREPROCESS = {"tokenizer": "reference", "vocabulary_questions": ALL_QUESTION_FILES,
                  "question_count_threshold": 1, "max_question_length": 14,
                  "min_answer_count": 9}


def deviations(config: Mapping[str, Any]) -> list[str]:
    """The box's entries for ``config`` (the workflow config, overrides merged)."""
    out = list(FIXED)
    runs = _selected_runs(config)
    captioning = config.get("captioning") or {}
    mia = [b for b in _baselines(runs, "captioning") if b in MIA_CAPTIONERS]
    if mia:
        out += _mia_captioners(config, captioning, mia)
    for baseline in _baselines(runs, "captioning"):
        if baseline in SELF_CRITICAL:
            out += _self_critical(captioning, baseline)
    vqa = _baselines(runs, "vqa")
    if vqa:
        out += _vqa(config, vqa)
    return out


# ----------------------------------------------------------------------------- captioning


def _mia_captioners(config: Mapping[str, Any], captioning: Mapping[str, Any],
                    baselines: list[str]) -> list[str]:
    found: dict[tuple[str, str], list[str]] = {}  # (section, "key ours (reference: x)")

    def add(section: str, pairs: Iterable[tuple[str, str]], names: Iterable[str]) -> None:
        for key, text in pairs:
            found.setdefault((section, f"{key} {text}"), []).extend(names)

    for baseline in baselines:
        model = _resolved(CaptionerConfig, _settings(captioning, baseline, "model"),
                          baseline=baseline)
        train = _resolved(TrainConfig, _settings(captioning, baseline, "train"),
                          skip={"captioner"})
        add("captioning.model", _differences(model, RELEASED_MIA["model"]), [baseline])
        add("captioning.train", _differences(train, RELEASED_MIA["train"]), [baseline])
        if baseline in GRID_CAPTIONERS:
            after = model["fine_tune_cnn_after_epoch"]
            if after != RELEASED_CNN["fine_tune_cnn_after_epoch"]:
                what = ("null: frozen precomputed ResNet features" if after is None
                        else str(after))
                add("captioning.model", [("fine_tune_cnn_after_epoch",
                                          f"{what} (reference: 8, ResNet-152 fine-tuned)")],
                    [baseline])
            else:
                cnn = _resolved(CNNConfig, model.get("cnn") or {})
                add("captioning.model.cnn", _differences(cnn, RELEASED_CNN_SETTINGS),
                    [baseline])
    decode = {**RELEASED_MIA["decode"], **(captioning.get("decode") or {})}
    add("captioning.decode", _differences(decode, RELEASED_MIA["decode"]), baselines)
    pre = _resolved(CaptionPreprocessConfig, (config.get("preprocess") or {}).get("captions")
                    or {})
    add("preprocess.captions", _differences(pre, RELEASED_MIA["preprocess"]), baselines)
    grouped: dict[tuple[str, str], list[str]] = {}
    for (section, text), names in found.items():
        scope = ("Table 1/4 captioners" if set(names) >= set(baselines)
                 else ", ".join(dict.fromkeys(names)))
        grouped.setdefault((scope, section), []).append(text)
    return [f"{scope} (vs fenglinliu98/MIA): {section}: {'; '.join(texts)}"
            for (scope, section), texts in grouped.items()]


def _self_critical(captioning: Mapping[str, Any], baseline: str) -> list[str]:
    reference = SELF_CRITICAL[baseline]
    model = _resolved(CaptionerConfig, _settings(captioning, baseline, "model"),
                      baseline=baseline)
    options_cls = UpDownOptions if baseline == "updown" else TransformerOptions
    options = dataclasses.asdict(options_cls.from_dict(model.get("options") or {}))
    model.update({f"options.{k}": v for k, v in options.items()})
    values = {"model": model,
              "train": _resolved(TrainConfig, _settings(captioning, baseline, "train"),
                                 skip={"captioner"}),
              "scst": _resolved(SCSTConfig, _settings(captioning, baseline, "scst"))}
    stages = ((captioning.get("baselines") or {}).get(baseline) or {}).get("stages", ["xe"])
    entries = []
    for section in ("model", "train", "scst"):
        if section == "scst" and "scst" not in stages:
            entries.append("no SCST stage (the reference's Table 2 recipe trains one)")
            continue
        entries += _grouped(f"captioning.{section}",
                            _differences(values[section], reference[section]))
    if baseline == "updown":
        rnn = options["rnn_size"]
        if rnn != model["d_model"]:
            entries.append(f"d_model {model['d_model']} != options.rnn_size {rnn}: an "
                           "architecture the reference cannot express (its region embedding "
                           "outputs rnn_size)")
    if "scst" in stages:
        entries.append("SCST starts from the val-selected XE epoch (the reference: the last "
                       "XE checkpoint; docs/RECIPE.md)")
    return [f"{baseline} (vs self-critical.pytorch): {e}" for e in entries]


# ----------------------------------------------------------------------------- VQA


def _vqa(config: Mapping[str, Any], baselines: list[str]) -> list[str]:
    vqa = config.get("vqa") or {}
    pre = _resolved(VQAPreprocessConfig, (config.get("preprocess") or {}).get("vqa") or {})
    out = [f"VQA (vs bottom-up-attention-vqa, ban-vqa): {e}"
           for e in _grouped("preprocess.vqa", _differences(pre, VQA_PREPROCESS))]
    for baseline in baselines:
        if baseline not in VQA_REFERENCES:
            continue
        reference = VQA_REFERENCES[baseline]
        model = _resolved(VQAModelConfig, _settings(vqa, baseline, "model"), baseline=baseline)
        train = _resolved(VQATrainConfig, _settings(vqa, baseline, "train"), skip={"model"})
        entries = [e for section, values in (("model", model), ("train", train))
                   for e in _grouped(f"vqa.{section}", _differences(values,
                                                                     reference[section]))]
        if not vqa.get("glove"):
            entries.append("vqa.glove: null, question words not initialised from GloVe (the "
                           "references: GloVe 6B 300d)")
        if baseline == "ban":
            if model["tfidf_embedding"] and list(pre["tfidf_questions"]) != ["train", "val",
                                                                             "test2015"]:
                entries.append(f"preprocess.vqa.tfidf_questions: {list(pre['tfidf_questions'])} "
                               "(reference: [train, val, test2015])")
            regions = (config.get("features") or {}).get("regions") or {}
            if int(regions.get("max_boxes", regions.get("num_boxes", 36))) <= 36:
                entries.append("region boxes: the paper's 36 per image (ban-vqa trains on the "
                               "adaptive 10-100; docs/RECIPE.md)")
        source = ("bottom-up-attention-vqa" if baseline == "updown" else "ban-vqa")
        out += [f"VQA {baseline} (vs {source}): {e}" for e in entries]
    return out


# ----------------------------------------------------------------------------- helpers


def _selected_runs(config: Mapping[str, Any]) -> list[str]:
    tables = config.get("tables") or {}
    names = (config.get("report") or {}).get("tables") or list(tables)
    return [r for t in names if t in tables for r in tables[t].get("runs", [])]


def _baselines(runs: Iterable[str], task: str) -> list[str]:
    return list(dict.fromkeys(r.split("/")[1] for r in runs if r.startswith(f"{task}/")))


def _settings(section: Mapping[str, Any], baseline: str, part: str) -> dict[str, Any]:
    own = ((section.get("baselines") or {}).get(baseline) or {}).get(part) or {}
    return {**(section.get(part) or {}), **own}


def _resolved(cls: type, values: Mapping[str, Any], skip: set[str] = frozenset(),
              **fixed: Any) -> dict[str, Any]:
    """The dataclass ``cls`` built from ``values`` (so presets such as ``mia_mode`` and the
    baselines' default sizes resolve as in a run), as a plain dict."""
    kwargs = {k: v for k, v in values.items() if k not in skip}
    obj = cls(**{**kwargs, **fixed})
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(
            1.0, abs(float(b)))
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grouped(section: str, pairs: list[tuple[str, str]]) -> list[str]:
    """One entry per config section: ``section: key ours (reference: x); ...``."""
    return [f"{section}: " + "; ".join(f"{k} {t}" for k, t in pairs)] if pairs else []


def _differences(values: Mapping[str, Any], reference: Mapping[str, Any]
                 ) -> list[tuple[str, str]]:
    return [(key, f"{_show(values.get(key))} (reference: {_show(ref)})")
            for key, ref in reference.items() if not _same(values.get(key), ref)]
