"""The ``mia`` command line: one subcommand group per subpackage.

Each group lives next to the code it drives, in a module exposing ``register(subparsers)``; this
file only lists those modules, so adding a command never touches another group's code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import mia

# Modules that define ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "mia.data.cli",
    "mia.data.demo_cli",
    "mia.evaluation.cli",
    "mia.features.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mia",
        description="Mutual Iterative Attention: data, features, training and evaluation tools.",
    )
    parser.add_argument("--version", action="version", version=f"mia {mia.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)
