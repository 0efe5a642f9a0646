"""``mia config check``: validate config files as the workflow will, with file, line and key.

Snakemake reports a config file that does not parse only as "Config file is not valid JSON or
YAML", without the file or the line; this command (which ``make demo`` runs before Snakemake)
names both, and then runs :func:`mia.config.check_config` on the merged config, the same
function the Snakefile runs: the schema, and every check the rules and the dataclasses would run
later. Success is one plain line on stdout; an error is ``mia: error: FILE:LINE: KEY: problem``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mia.config import REPO_ROOT, load_config


def _check(args: argparse.Namespace) -> int:
    paths = list(args.files)
    if not args.no_base and (not paths or paths[0].resolve() != REPO_ROOT / "config.yaml"):
        paths.insert(0, REPO_ROOT / "config.yaml")  # as the Snakefile's `configfile:` does
    config = load_config(paths, full=True)
    tables = config["report"]["tables"]
    runs = {run for table in tables for run in config["tables"][table]["runs"]}
    print(f"{' + '.join(map(str, paths))}: valid (name {config['name']!r}; {len(tables)} tables, "
          f"{len(runs)} runs selected)")
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
