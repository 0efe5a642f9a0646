"""``mia demo-world``: write the seeded demo world (mia.data.demo) without running Snakemake."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from mia.data.demo import DemoConfig, generate_demo_world

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    start = time.perf_counter()
    manifest = generate_demo_world(args.root, cfg)
    seconds = time.perf_counter() - start
    log.info("demo world in %s: %s images (%s), %d captions, questions %s; %.1f s (%.0f images/s)",
             manifest.root, cfg.num_images, manifest.split_sizes, manifest.num_captions,
             manifest.num_questions, seconds, cfg.num_images / seconds)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo-world`` command."""
    cmd = subparsers.add_parser("demo-world", help="generate the demo world in the raw data layout")
    cmd.add_argument("--root", type=Path, required=True, help="folder to write (data.root)")
    cmd.add_argument("--num-images", type=int, default=DemoConfig.num_images,
                     help="captioned images, split into train/restval/val/test (at least 4)")
    cmd.add_argument("--image-size", type=int, default=DemoConfig.image_size,
                     help="side of the square images in pixels (at least 48)")
    cmd.add_argument("--seed", type=int, default=DemoConfig.seed,
                     help="the world's seed: the same seed writes byte-identical files")
    cmd.set_defaults(func=_run)
