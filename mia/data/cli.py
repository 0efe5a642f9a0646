"""``mia data ...``: build the caption and VQA stores from raw annotation files; verify stores.

Thin wrappers over :mod:`mia.data.preprocess` and :mod:`mia.data.store` for use outside
Snakemake; the workflow calls the same functions from its scripts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mia.data.preprocess import (
    CaptionPreprocessConfig,
    VQAPreprocessConfig,
    build_caption_store,
    build_vqa_store,
)
from mia.data.store import verify_store

log = logging.getLogger(__name__)


def _split_path(item: str) -> tuple[str, Path]:
    """``train=questions.json`` -> ``("train", Path(...))`` (an argparse ``type``)."""
    split, sep, path = item.partition("=")
    if not sep or not split or not path:
        raise argparse.ArgumentTypeError(f"{item!r}: expected SPLIT=PATH, e.g. "
                                         f"train=questions.json")
    return split, Path(path)


def _split_paths(items: list[tuple[str, Path]] | None, option: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for split, path in items or []:
        if split in out:
            raise ValueError(f"{option}: split {split!r} given twice ({out[split]}, {path})")
        out[split] = path
    return out


def _captions(args: argparse.Namespace) -> int:
    cfg = CaptionPreprocessConfig(count_threshold=args.count_threshold, max_length=args.max_length)
    out = build_caption_store(args.karpathy, args.out, args.references_dir, cfg)
    log.info("wrote %s and references_{train,val,test}.json in %s", out, args.references_dir)
    return 0


def _vqa(args: argparse.Namespace) -> int:
    cfg = VQAPreprocessConfig(min_answer_count=args.min_answer_count,
                              max_question_length=args.max_question_length)
    out = build_vqa_store(_split_paths(args.questions, "--questions"),
                          _split_paths(args.annotations, "--annotations"), args.out, cfg)
    log.info("wrote %s", out)
    return 0


def _verify(args: argparse.Namespace) -> int:
    for path in args.stores:
        report = verify_store(path)
        checked = ("every dataset matches its recorded sha256" if report["checksums"] else
                   "no checksums recorded (built before they existed): ids and NaN/inf only; "
                   "rebuild it to add them")
        print(f"OK {report['path']}: {report['kind']} store, {report['images']} images, "
              f"{len(report['datasets'])} datasets; {checked}")
    return 0


def _register_copy(args: argparse.Namespace) -> int:
    from mia.config import REPO_ROOT, load_config
    from mia.data.register import register_copy

    workdir = args.directory or Path.cwd()
    base = workdir / "config.yaml"
    configs = [base if base.exists() else REPO_ROOT / "config.yaml", *args.configfile]
    config = load_config(configs)
    downloads_dir = Path(config["data"].get("downloads_dir", "resources/downloads"))
    if not downloads_dir.is_absolute():
        downloads_dir = workdir / downloads_dir
    done = register_copy(args.key, args.file, config["downloads"], downloads_dir,
                         trust=args.trust, mode="copy" if args.copy else "link")
    how = "copied to" if done.mode == "copy" else "linked as"
    print(f"registered downloads.{done.key}: {done.source} {how} {done.archive}, "
          f"{done.pin.describe()}")
    if done.recorded_pin:
        print(f"recorded its sha256 in {downloads_dir / 'local.lock.yaml'} (not config.yaml); "
              f"the report marks this input as pinned by the user, not by the publisher")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group."""
    group = subparsers.add_parser("data", help="build caption / VQA stores; register local "
                                                 "copies of downloads")
    commands = group.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    cap = commands.add_parser("captions", help="dataset_coco.json -> captions.h5 + references")
    cap.add_argument("--karpathy", type=Path, required=True, help="Karpathy dataset_coco.json")
    cap.add_argument("--out", type=Path, required=True, help="captions.h5 to write")
    cap.add_argument("--references-dir", type=Path, required=True,
                     help="directory for references_{train,val,test}.json")
    cap.add_argument("--count-threshold", type=int,
                     default=CaptionPreprocessConfig.count_threshold,
                     help="keep a word seen at least this often in the training captions, else "
                          "<unk> (the released code: 5)")
    cap.add_argument("--max-length", type=int, default=CaptionPreprocessConfig.max_length,
                     help="cut training captions to this many words (default: the longest "
                          "caption, nothing cut)")
    cap.set_defaults(func=_captions)

    vqa = commands.add_parser("vqa", help="VQA v2 questions/annotations -> vqa.h5")
    vqa.add_argument("--questions", action="append", required=True, metavar="SPLIT=PATH",
                     type=_split_path,
                     help="questions file per split (train, val, test); repeat the option")
    vqa.add_argument("--annotations", action="append", metavar="SPLIT=PATH", type=_split_path,
                     help="annotations file per split (none for test); repeat the option")
    vqa.add_argument("--out", type=Path, required=True, help="vqa.h5 to write")
    vqa.add_argument("--min-answer-count", type=int, default=VQAPreprocessConfig.min_answer_count,
                     help="keep an answer seen at least this often in train+val (3,129 answers "
                          "on VQA v2)")
    vqa.add_argument("--max-question-length", type=int,
                     default=VQAPreprocessConfig.max_question_length,
                     help="cut questions to this many words (bottom-up-attention-vqa: 14)")
    vqa.set_defaults(func=_vqa)

    verify = commands.add_parser(
        "verify", help="check stores in full: checksums, NaN/inf, duplicate image ids",
        description="Read every row of each store and compare every dataset with the sha256 "
                    "recorded when it was built (opening a store checks only small datasets "
                    "and sampled rows of large ones). Exit status 2 names the first damage.")
    verify.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="a .h5 store")
    verify.set_defaults(func=_verify)

    reg = commands.add_parser(
        "register", help="use a copy you already have of a download (checked against its pin)",
        description="Check FILE against the pin of downloads.KEY (config.yaml: the publisher's "
                    "sha256/md5 and size) and link it where the download rule puts it "
                    "(<data.downloads_dir>/KEY.zip), so the workflow extracts it instead of "
                    "downloading. For a key with no published checksum (bottom_up_features), "
                    "--trust records this file's own sha256 in <data.downloads_dir>/"
                    "local.lock.yaml (never config.yaml); the report marks such inputs 'pinned "
                    "by the user, not by the publisher'.")
    reg.add_argument("key", metavar="KEY", help="a key under downloads: in the config")
    reg.add_argument("file", type=Path, metavar="FILE", help="your copy of that archive")
    reg.add_argument("--trust", action="store_true",
                     help="no published checksum: record this file's own sha256 as the pin")
    reg.add_argument("--copy", action="store_true",
                     help="copy the file instead of linking it (a copy on a disk that goes away)")
    reg.add_argument("--configfile", type=Path, nargs="+", default=[], metavar="FILE",
                     help="config overrides, as given to snakemake --configfile")
    reg.add_argument("--directory", type=Path, default=None, metavar="DIR",
                     help="the workflow's working directory, as snakemake --directory "
                          "(default: here)")
    reg.set_defaults(func=_register_copy)
