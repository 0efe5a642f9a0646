"""``mia evaluate ...``: coco-caption metrics and the official VQA accuracy, as JSON files.

``mia evaluate captions`` writes the eight coco-caption metrics at the top level (0-1 scale,
``null`` when not computed) plus ``skipped`` (metric -> reason) and ``num_images``;
``mia evaluate vqa`` writes ``{"overall", "perAnswerType", "perQuestionType", "perQuestion"}``
in percent. ``mia evaluate vqa-server`` writes the result file the VQA test server takes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mia.evaluation.captions import CAPTION_METRICS, CaptionEvalConfig, evaluate_captions
from mia.evaluation.vqa import evaluate_vqa, write_test_server_results
from mia.io import write_json

log = logging.getLogger(__name__)


def _write_json(obj: Any, path: Path) -> None:
    write_json(path, obj, indent=2)


def _captions(args: argparse.Namespace) -> int:
    metrics = tuple(args.metrics or CAPTION_METRICS)
    if args.no_spice:
        metrics = tuple(m for m in metrics if m != "SPICE")
    cfg = CaptionEvalConfig(metrics=metrics, per_image=args.per_image is not None)
    scores = evaluate_captions(args.annotations, args.results, cfg)
    _write_json(scores.to_json(), args.out)
    if args.per_image is not None:
        _write_json({str(k): v for k, v in (scores.per_image or {}).items()}, args.per_image)
    for name, reason in scores.skipped.items():
        if reason != "not requested":
            log.warning("%s not computed: %s", name, reason)
    shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in scores.metrics.items() if v is not None)
    log.info("%s: %s (x100, the paper's scale; the file holds coco-caption's 0-1 scores)",
             args.out, shown)
    return 0


def _vqa(args: argparse.Namespace) -> int:
    acc = evaluate_vqa(args.questions, args.annotations, args.results)
    acc["perQuestion"] = {str(k): v for k, v in acc["perQuestion"].items()}
    _write_json(acc, args.out)
    log.info("%s: overall %.2f, per answer type %s", args.out, acc["overall"],
             acc["perAnswerType"])
    return 0


def _vqa_server(args: argparse.Namespace) -> int:
    out = write_test_server_results(args.results, args.questions, args.out)
    log.info("wrote %s", out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command group."""
    group = subparsers.add_parser("evaluate", help="caption metrics and VQA accuracy")
    commands = group.add_subparsers(dest="evaluate_command", metavar="COMMAND", required=True)

    cap = commands.add_parser("captions", help="coco-caption metrics of generated captions")
    cap.add_argument("--annotations", "--references", dest="annotations", type=Path,
                     required=True, help="COCO-format caption annotations (the references)")
    cap.add_argument("--results", type=Path, required=True,
                     help='[{"image_id": int, "caption": str}], one per annotated image')
    cap.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    cap.add_argument("--per-image", type=Path, help="also write {image_id: {metric: score}}")
    cap.add_argument("--metrics", nargs="+", choices=CAPTION_METRICS,
                     help="metrics to compute (default: all)")
    cap.add_argument("--no-spice", action="store_true", help="skip SPICE (needs CoreNLP jars)")
    cap.set_defaults(func=_captions)

    vqa = commands.add_parser("vqa", help="official VQA accuracy (percent)")
    vqa.add_argument("--questions", type=Path, required=True, help="VQA questions JSON")
    vqa.add_argument("--annotations", type=Path, required=True, help="VQA annotations JSON")
    vqa.add_argument("--results", type=Path, required=True,
                     help='[{"question_id": int, "answer": str}], one per question')
    vqa.add_argument("--out", type=Path, required=True, help="accuracy JSON to write")
    vqa.set_defaults(func=_vqa)

    server = commands.add_parser("vqa-server",
                                 help="check answers and write the VQA test-server result file")
    server.add_argument("--questions", type=Path, required=True,
                        help="test-dev or test-std questions JSON")
    server.add_argument("--results", type=Path, required=True,
                        help='[{"question_id": int, "answer": str}]')
    server.add_argument("--out", type=Path, required=True, help="result file to write")
    server.set_defaults(func=_vqa_server)
