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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group."""
    group = subparsers.add_parser("data", help="build caption / VQA stores from raw annotations")
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
