"""``mia visualize attention``: Figure 5 (accumulated MIA attention) for a run and an image.

    mia visualize attention --run RUN_DIR --image ID --out fig.png
    mia visualize attention --run results/paper/runs/captioning/visual_attention/mia_n1 \\
        --run .../mia_n3 --run .../mia_n5 --image 391895 --out fig5.png   # one panel per N

Writes the PNG and a JSON of the numbers drawn beside it (``--json`` to put it elsewhere).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _attention(args: argparse.Namespace) -> int:
    from mia.report.visualize import visualize_attention

    drawn = visualize_attention(
        args.run, args.image, args.out, out_json=args.json, features=args.features,
        concepts=args.concepts, images=args.images, image_file=args.image_file,
        positions=args.positions, iterations=args.iterations, top_words=args.top_words,
        device=args.device)
    log.info("image %d, positions %s: %s", args.image, drawn.numbers["positions"], drawn.png)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``visualize`` command group."""
    group = subparsers.add_parser("visualize", help="figures from trained runs")
    commands = group.add_subparsers(dest="visualize_command", metavar="FIGURE", required=True)
    att = commands.add_parser(
        "attention", help="Figure 5: accumulated MIA attention of three fused positions",
        description="Draw where three fused MIA positions come from in the original grid "
                    "cells/regions (heat map) and concepts (top words), one panel per run "
                    "(its N) or per iteration of one run.")
    att.add_argument("--run", type=Path, action="append", required=True, metavar="RUN_DIR",
                     help="run folder with model.pt and run.json; repeat for one panel per run")
    att.add_argument("--image", type=int, required=True, help="image id (as in the stores)")
    att.add_argument("--out", type=Path, required=True,
                     help="figure to write; its suffix picks the format (.png, .jpg, .pdf, .svg)")
    att.add_argument("--json", type=Path, help="numbers drawn (default: --out with .json)")
    att.add_argument("--features", type=Path, help="feature store (overrides run.json)")
    att.add_argument("--concepts", type=Path, help="concept store (overrides run.json)")
    att.add_argument("--captions", type=Path,
                     help="captions store (accepted for symmetry with run.json; the model's "
                          "vocabulary comes from model.pt)")
    att.add_argument("--images", type=Path, help="raw-data root holding images/ (overrides "
                                                 "run.json images_root)")
    att.add_argument("--image-file", type=Path, help="the image file itself")
    att.add_argument("--positions", type=int, nargs="+", metavar="J",
                     help="fused positions to draw (default: the three most concentrated)")
    att.add_argument("--iterations", type=int, nargs="+", metavar="K",
                     help="draw these iterations of a single run instead of its last one")
    att.add_argument("--top-words", type=int, default=5, help="concept words per position")
    att.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    att.set_defaults(func=_attention)
