"""``mia train`` and ``mia decode``: one run of the workflow, outside Snakemake.

A researcher debugging one run wants exactly what its rule does, in a terminal, with a debugger:
these commands read the same workflow config (``config.yaml`` plus the overrides given, as
``mia config check`` merges them), take the baseline's own settings on top of the task's, find
the stores where the workflow writes them (``results/<name>/...``) unless told otherwise, and call
the same functions the workflow scripts call (:func:`mia.captioning.train.train_captioner`,
:func:`mia.captioning.scst_train.train_scst`, :func:`mia.vqa.train.train_vqa`, the run lifecycle
of :mod:`mia.training`, :func:`mia.captioning.decode.decode_split`,
:func:`mia.vqa.predict.answer_split`)::

    mia train captioning --config config/demo.yaml --baseline visual_attention --variant mia \\
        --out debug/va_mia --set epochs=1
    mia train captioning --config config/demo.yaml --baseline updown --variant mia --stage scst \\
        --xe-model debug/updown_mia/model.pt --out debug/updown_mia_scst
    mia train vqa --config config/demo.yaml --baseline ban --variant mia --out debug/ban_mia
    mia decode captions --config config/demo.yaml --model debug/va_mia/model.pt --split test \\
        --out debug/va_mia/captions_test.json
    mia decode vqa --config config/demo.yaml --model debug/ban_mia/model.pt --baseline ban \\
        --out debug/ban_mia/answers_val.json

A training run keeps its resumable checkpoints in ``OUT/checkpoints/`` (stop it with Ctrl-C and
run the same command again to resume) and publishes ``OUT/model.pt`` and ``OUT/history.json`` when
it is done. Nothing under ``results/`` is written, so the workflow's own runs stay as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the workflow's config


def workflow_config(files: list[Path]) -> dict[str, Any]:
    """``config.yaml`` then ``files``, merged and validated as the Snakefile does."""
    from mia.config import REPO_ROOT, load_config

    paths = list(files)
    if not paths or paths[0].resolve() != REPO_ROOT / "config.yaml":
        paths.insert(0, REPO_ROOT / "config.yaml")
    return load_config(paths)


def baseline_settings(config: Mapping[str, Any], task: str, baseline: str,
                      section: str) -> dict[str, Any]:
    """``<task>.<section>`` with the baseline's own overrides on top (rules/common.smk's
    ``caption_settings`` / ``vqa_settings``)."""
    baselines = _baselines(config, task, baseline)
    return {**config[task].get(section, {}), **baselines[baseline].get(section, {})}


def _baselines(config: Mapping[str, Any], task: str, baseline: str) -> Mapping[str, Any]:
    baselines = config[task]["baselines"]
    if baseline not in baselines:
        raise ValueError(f"--baseline {baseline!r}: not under {task}.baselines of the config; "
                         f"choose one of {sorted(baselines)}")
    return baselines


def default_stores(config: Mapping[str, Any], task: str, baseline: str) -> dict[str, Path]:
    """Where the workflow writes the stores a run of ``baseline`` reads (rules/common.smk)."""
    results = Path("results") / config["name"]
    kind = _baselines(config, task, baseline)[baseline]["features"]
    features = (results / "features" / f"grid_{config['features']['grid']['backbone']}.h5"
                if kind == "grid" else
                results / "features" / f"regions_{config['features']['regions']['source']}.h5")
    stores = {"features": features, "concepts": results / "features" / f"concepts_{kind}.h5"}
    if task == "captioning":
        stores["captions"] = results / "data" / "captions.h5"
        stores["document_frequency"] = results / "data" / "cider_df_train.npz"
    else:
        stores["vqa"] = results / "data" / "vqa.h5"
    return stores


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. epochs=1")
        out[key] = yaml.safe_load(value)
    return out


def _stores(args: argparse.Namespace, config: Mapping[str, Any], task: str,
            names: tuple[str, ...]) -> dict[str, Path]:
    defaults = default_stores(config, task, args.baseline)
    out = {}
    for name in names:
        path = getattr(args, name) or defaults[name]
        if not Path(path).exists():
            flag = "--" + name.replace("_", "-")
            raise FileNotFoundError(f"{path}: the {name.replace('_', ' ')} store of this run is "
                                    f"not there; build it with the workflow (e.g. `snakemake "
                                    f"--configfile ... {path}`) or pass {flag}")
        out[name] = Path(path)
    return out


def _outputs(out: Path) -> tuple[str, str]:
    """Where a finished run is published (history, model), as the rules' outputs are."""
    return str(out / "history.json"), str(out / "model.pt")


# ------------------------------------------------------------------ mia train


def _train_captioning(args: argparse.Namespace) -> int:
    import torch

    from mia.data.loaders import CaptionData
    from mia.io import write_json
    from mia.training import RunDirectory, fingerprint, run_training_job

    config = workflow_config(args.config)
    seed = args.seed if args.seed is not None else int(config["seeds"]["default"][0])
    names = ("captions", "features", "concepts") + (
        ("document_frequency",) if args.stage == "scst" else ())
    stores = _stores(args, config, "captioning", names)
    torch.set_num_threads(args.threads)
    data = CaptionData.from_stores(stores["captions"], stores["features"], stores["concepts"])
    checkpoints = args.out / "checkpoints"
    what = f"captioning/{args.baseline}/{args.variant} seed {seed}"
    if args.stage == "xe":
        from mia.captioning.config import CaptionerConfig, TrainConfig
        from mia.captioning.finetune import image_paths_from_karpathy
        from mia.captioning.train import train_captioner

        captioner = CaptionerConfig.from_dict(
            {**baseline_settings(config, "captioning", args.baseline, "model"),
             "baseline": args.baseline, "variant": args.variant,
             "feature_dim": int(data.features.shape[2])}, "config captioning.model")
        cfg = TrainConfig.from_dict(
            {**baseline_settings(config, "captioning", args.baseline, "train"),
             **_overrides(args.set), "seed": seed, "captioner": captioner},
            "config captioning.train")
        inputs = {k: str(stores[k]) for k in ("captions", "features", "concepts")}
        root = Path(config["data"]["root"])
        write_json(args.out / "run.json", {"run": f"captioning/{args.baseline}/{args.variant}",
                                           "seed": seed, "inputs": inputs,
                                           "images_root": str(root / "images")})
        image_paths = None
        if captioner.fine_tunes_cnn:
            image_paths = image_paths_from_karpathy(root / "karpathy" / "dataset_coco.json", root)
        run_dir = RunDirectory(checkpoints, fingerprint(dataclasses.asdict(cfg), inputs))
        result = run_training_job(run_dir, lambda: train_captioner(
            cfg, data, run_dir.path, inputs=", ".join(f"{k} store {v}" for k, v in
                                                      inputs.items()),
            image_paths=image_paths), log, f"{what} (XE) for {cfg.epochs} epochs",
            publish=_outputs(args.out))
    else:
        from mia.captioning.scst import SCSTConfig
        from mia.captioning.scst_train import train_scst

        if args.xe_model is None:
            raise ValueError("--stage scst starts from a cross-entropy model: pass --xe-model "
                             "(the model.pt of `mia train captioning` or of the workflow's "
                             "xe/ stage)")
        cfg = SCSTConfig.from_dict({**baseline_settings(config, "captioning", args.baseline,
                                                        "scst"), **_overrides(args.set),
                                    "seed": seed}, "config captioning.scst")
        inputs = {**{k: str(v) for k, v in stores.items()}, "xe_model": str(args.xe_model)}
        run_dir = RunDirectory(checkpoints, fingerprint(dataclasses.asdict(cfg), inputs))
        result = run_training_job(run_dir, lambda: train_scst(
            cfg, data, args.xe_model, run_dir.path, stores["document_frequency"],
            inputs=", ".join(f"{k} {v}" for k, v in inputs.items())), log,
            f"{what} (SCST) for {cfg.epochs} epochs", publish=_outputs(args.out))
        if result.best_epoch == 0:
            log.warning("no SCST epoch beat the XE model's val CIDEr-D %.2f: the stage keeps "
                        "the XE weights", 100 * result.best_score)
    log.info("best val CIDEr-D %.2f (x100) at epoch %d; published %s", 100 * result.best_score,
             result.best_epoch, args.out / "model.pt")
    return 0


def _train_vqa(args: argparse.Namespace) -> int:
    import torch

    from mia.data.loaders import VQAData
    from mia.training import RunDirectory, fingerprint, run_training_job
    from mia.vqa.config import VQAModelConfig
    from mia.vqa.train import VQATrainConfig, train_vqa

    config = workflow_config(args.config)
    seed = args.seed if args.seed is not None else int(config["seeds"]["default"][0])
    stores = _stores(args, config, "vqa", ("vqa", "features", "concepts"))
    torch.set_num_threads(args.threads)
    data = VQAData.from_stores(stores["vqa"], stores["features"], concepts_h5=stores["concepts"])
    model = VQAModelConfig.from_dict(
        {**baseline_settings(config, "vqa", args.baseline, "model"), "baseline": args.baseline,
         "variant": args.variant, "feature_dim": int(data.features.shape[2])}, "config vqa.model")
    cfg = VQATrainConfig.from_dict({**baseline_settings(config, "vqa", args.baseline, "train"),
                                    **_overrides(args.set), "seed": seed, "model": model},
                                   "config vqa.train")
    root = Path(config["data"]["root"])
    inputs = {k: str(v) for k, v in stores.items()}
    glove = args.glove or (root / config["vqa"]["glove"] if config["vqa"].get("glove") else None)
    if glove is not None:
        inputs["glove"] = str(glove)
    val = {"val_questions": root / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json",
           "val_annotations": root / "vqa" / "v2_mscoco_val2014_annotations.json"}
    if cfg.validates:
        inputs.update({k: str(v) for k, v in val.items()})
    run_dir = RunDirectory(args.out / "checkpoints", fingerprint(dataclasses.asdict(cfg), inputs))
    result = run_training_job(run_dir, lambda: train_vqa(
        cfg, data, run_dir.path, glove=inputs.get("glove"),
        inputs=", ".join(f"{k} store {v}" for k, v in stores.items()),
        val_questions=inputs.get("val_questions"), val_annotations=inputs.get("val_annotations")),
        log, f"vqa/{args.baseline}/{args.variant} seed {seed} for {cfg.epochs} epochs",
        publish=_outputs(args.out))
    log.info("best %s %.2f at epoch %d; published %s", "official val accuracy (%)"
             if cfg.validates else "epoch (the last)", result.best_score, result.best_epoch,
             args.out / "model.pt")
    return 0


# ------------------------------------------------------------------ mia decode


def _decode_captions(args: argparse.Namespace) -> int:
    import torch

    from mia.captioning.decode import decode_split
    from mia.data.loaders import CaptionData

    config = workflow_config(args.config)
    settings = dict(config["captioning"]["decode"])
    if args.baseline is None:
        args.baseline = _baseline_of(args.model)
    stores = _stores(args, config, "captioning", ("captions", "features", "concepts"))
    torch.set_num_threads(args.threads)
    data = CaptionData.from_stores(stores["captions"], stores["features"], stores["concepts"])
    image_paths = None
    model_settings = baseline_settings(config, "captioning", args.baseline, "model")
    if model_settings.get("fine_tune_cnn_after_epoch") is not None:
        from mia.captioning.finetune import image_paths_from_karpathy

        root = Path(config["data"]["root"])
        image_paths = image_paths_from_karpathy(root / "karpathy" / "dataset_coco.json", root)
    split = args.split or settings["split"]
    beam = args.beam_size or settings["beam_size"]
    results = decode_split(args.model, data, split, beam_size=beam,
                           max_length=args.max_length or settings["max_length"],
                           out_path=args.out, device=args.device or settings.get("device", "auto"),
                           batch_size=args.batch_size or settings.get("batch_size", 100),
                           image_paths=image_paths)
    log.info("decoded %d images of %s with beam %d -> %s", len(results), split, beam, args.out)
    return 0


def _decode_vqa(args: argparse.Namespace) -> int:
    import torch

    from mia.data.loaders import VQAData
    from mia.vqa.predict import answer_split

    config = workflow_config(args.config)
    if args.baseline is None:
        args.baseline = _baseline_of(args.model)
    train = baseline_settings(config, "vqa", args.baseline, "train")
    stores = _stores(args, config, "vqa", ("vqa", "features", "concepts"))
    torch.set_num_threads(args.threads)
    data = VQAData.from_stores(stores["vqa"], stores["features"], concepts_h5=stores["concepts"])
    split = args.split or config["vqa"]["eval_split"]
    answers = answer_split(args.model, data, split, out_path=args.out,
                           batch_size=args.batch_size or train.get("val_batch_size", 512),
                           device=args.device or train.get("device", "auto"))
    log.info("answered %d questions of %s -> %s", len(answers), split, args.out)
    return 0


def _baseline_of(model: Path) -> str:
    """The baseline a model.pt was trained as (its config), for the stores it reads."""
    from mia.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)
    for key in ("captioner", "vqa_model"):
        section = checkpoint.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("baseline"), str):
            return section["baseline"]
    raise ValueError(f"{model}: cannot tell which baseline it is; pass --baseline")


# ------------------------------------------------------------------ the parsers


def _common(parser: argparse.ArgumentParser, task: str, stores: tuple[str, ...]) -> None:
    parser.add_argument("--config", type=Path, nargs="*", default=[], metavar="FILE",
                        help="workflow config overrides, merged over config.yaml in order (as "
                             "`snakemake --configfile`); their settings and store paths are used")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    for name in stores:
        what = {"captions": "captions.h5", "features": "feature store (grid_*.h5 or regions_*.h5)",
                "concepts": "concept store (concepts_*.h5)", "vqa": "vqa.h5",
                "document_frequency": "CIDEr-D document frequencies (cider_df_train.npz)"}[name]
        parser.add_argument("--" + name.replace("_", "-"), type=Path, dest=name,
                            help=f"{what}; default: where the workflow writes it for the "
                                 f"config's name and the baseline's {task} features")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``decode`` command groups."""
    train = subparsers.add_parser(
        "train", help="train one run outside Snakemake (what train_captioner/train_vqa do)",
        description=__doc__.split("\n\n")[1])
    tasks = train.add_subparsers(dest="train_command", metavar="TASK", required=True)

    cap = tasks.add_parser("captioning", help="one captioning run: XE, or SCST from an XE model",
                           description="Train captioning/BASELINE/VARIANT as the workflow's "
                                       "train_captioner (--stage xe) or train_captioner_scst "
                                       "(--stage scst) rule does.")
    cap.add_argument("--baseline", required=True, help="a key of captioning.baselines")
    cap.add_argument("--variant", required=True,
                     help="base, mia, mia_visual, mia_concepts, self_attention, mia_n1..5")
    cap.add_argument("--stage", choices=("xe", "scst"), default="xe",
                     help="cross-entropy training, or self-critical training from --xe-model")
    cap.add_argument("--xe-model", type=Path, help="the XE model.pt SCST starts from")
    cap.add_argument("--seed", type=int,
                     help="training seed (default: the config's seeds.default[0])")
    cap.add_argument("--out", type=Path, required=True,
                     help="run folder: checkpoints/ (resumable), model.pt, history.json")
    cap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a captioning.train (or .scst) setting, e.g. epochs=1; "
                          "repeatable")
    _common(cap, "captioning", ("captions", "features", "concepts", "document_frequency"))
    cap.set_defaults(func=_train_captioning)

    vqa = tasks.add_parser("vqa", help="one VQA run (Table 3)",
                           description="Train vqa/BASELINE/VARIANT as the workflow's train_vqa "
                                       "rule does (official val accuracy selects the epoch).")
    vqa.add_argument("--baseline", required=True, help="a key of vqa.baselines")
    vqa.add_argument("--variant", required=True, help="base or mia")
    vqa.add_argument("--seed", type=int,
                     help="training seed (default: the config's seeds.default[0])")
    vqa.add_argument("--glove", type=Path,
                     help="GloVe vectors (default: vqa.glove under data.root, when set)")
    vqa.add_argument("--out", type=Path, required=True,
                     help="run folder: checkpoints/ (resumable), model.pt, history.json")
    vqa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a vqa.train setting, e.g. epochs=1; repeatable")
    _common(vqa, "vqa", ("vqa", "features", "concepts"))
    vqa.set_defaults(func=_train_vqa)

    decode = subparsers.add_parser(
        "decode", help="captions or answers of one split from a trained model outside Snakemake")
    kinds = decode.add_subparsers(dest="decode_command", metavar="TASK", required=True)
    dcap = kinds.add_parser("captions", help="beam-search captions (COCO results JSON)",
                            description="What the workflow's decode_captions rule does.")
    dcap.add_argument("--model", type=Path, required=True, help="a captioner's model.pt")
    dcap.add_argument("--baseline", help="its baseline (default: read from model.pt)")
    dcap.add_argument("--split", choices=("train", "val", "test"),
                      help="split to caption (default: captioning.decode.split)")
    dcap.add_argument("--beam-size", type=int,
                      help="beam width (default: captioning.decode.beam_size)")
    dcap.add_argument("--max-length", type=int,
                      help="longest caption in words (default: captioning.decode.max_length)")
    dcap.add_argument("--batch-size", type=int,
                      help="images per batch (default: captioning.decode.batch_size)")
    dcap.add_argument("--device", help="cpu, cuda, auto (default: captioning.decode.device)")
    dcap.add_argument("--out", type=Path, required=True, help="captions JSON to write")
    _common(dcap, "captioning", ("captions", "features", "concepts"))
    dcap.set_defaults(func=_decode_captions)

    dvqa = kinds.add_parser("vqa", help="answers in the official VQA results format",
                            description="What the workflow's answer_vqa rule does.")
    dvqa.add_argument("--model", type=Path, required=True, help="a VQA model.pt")
    dvqa.add_argument("--baseline", help="its baseline (default: read from model.pt)")
    dvqa.add_argument("--split", choices=("train", "val", "test"),
                      help="split to answer (default: vqa.eval_split)")
    dvqa.add_argument("--batch-size", type=int,
                      help="questions per batch (default: vqa.train.val_batch_size)")
    dvqa.add_argument("--device", help="cpu, cuda, auto (default: vqa.train.device)")
    dvqa.add_argument("--out", type=Path, required=True, help="answers JSON to write")
    _common(dvqa, "vqa", ("vqa", "features", "concepts"))
    dvqa.set_defaults(func=_decode_vqa)
