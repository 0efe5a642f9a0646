"""``mia config check``: validate config files as the workflow will, with file, line and key.

Snakemake reports a config file that does not parse only as "Config file is not valid JSON or
YAML", without the file or the line; this command (which ``make demo`` runs before Snakemake)
names both, and then checks the merged config against the schema, naming the dotted key.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mia.config import REPO_ROOT, load_config

log = logging.getLogger(__name__)


def _check(args: argparse.Namespace) -> int:
    paths = list(args.files)
    if not args.no_base and (not paths or paths[0].resolve() != REPO_ROOT / "config.yaml"):
        paths.insert(0, REPO_ROOT / "config.yaml")  # as the Snakefile's `configfile:` does
    config = load_config(paths)
    log.info("%s: valid (name %r, %d tables selected)", " + ".join(map(str, paths)),
             config["name"], len(config["report"]["tables"]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("config", help="check workflow config files")
    commands = group.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="parse and validate config files merged in order (config.yaml first)")
    check.add_argument("files", nargs="*", type=Path, help="overrides, e.g. config/demo.yaml")
    check.add_argument("--no-base", action="store_true",
                       help="do not put config.yaml first (check a complete config on its own)")
    check.set_defaults(func=_check)
