"""The ``mia`` command line: one subcommand group per subpackage.

Each group lives next to the code it drives, in a module exposing ``register(subparsers)``; this
file only lists those modules, so adding a command never touches another group's code.

Errors: a command that fails on bad input prints one line, ``mia: error: <message>`` (the
message names the file and what to do), and exits 2, like a usage error; any other failure
exits 1. ``--debug`` adds the traceback; ``-v`` only changes the log level.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable

import mia

# Modules that define ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "mia.config_cli",
    "mia.data.cli",
    "mia.data.demo_cli",
    "mia.evaluation.cli",
    "mia.features.cli",
    "mia.plan_cli",
    "mia.report.cli",
    "mia.train_cli",
)

#: Exit status for bad usage or bad input (a file that is missing, malformed or damaged).
EXIT_BAD_INPUT = 2
#: Exit status for every other failure (network, disk, a bug).
EXIT_FAILURE = 1
#: Exceptions that mean "the input is wrong": the package raises ValueError subclasses
#: (DataFormatError, StoreError, UnsafeArchiveError, BadImagesError, config errors) and
#: FileNotFoundError for inputs that are not there.
_BAD_INPUT = (ValueError, LookupError, TypeError, FileNotFoundError, IsADirectoryError,
              NotADirectoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default (``(default: 4)``), except where there is none to
    show: a required option, a default of ``None`` (the help then says what happens), an
    ``append`` option's empty list."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, [], argparse.SUPPRESS) or (
                isinstance(action.default, bool) and action.nargs == 0):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; every subcommand's parser is one too
    (argparse makes subparsers of the parent's class), so no command module can forget it."""

    #: A function giving the description, called only when the help is shown (a command whose
    #: help lists a config's defaults need not import torch for ``mia --help``).
    describe: Callable[[], str] | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def format_help(self) -> str:
        if self.describe is not None:
            self.description = self.describe()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mia",
        description="Mutual Iterative Attention: data, features, training and evaluation tools.",
    )
    parser.add_argument("--version", action="version", version=f"mia {mia.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="on error, print the full traceback (not just one line)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


#: Built-in errors whose message says what went wrong by itself (the package raises them with
#: a message naming the file; the OS's name the file and the reason).
_SELF_EXPLAINING = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                    PermissionError)


def error_message(err: BaseException) -> str:
    """One readable message: the package's errors as they are, other errors with their type."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # str(KeyError("x")) would quote it
    else:
        text = str(err)
    own = type(err).__module__.startswith("mia") or type(err) in _SELF_EXPLAINING
    if not own or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


def exit_status(err: BaseException) -> int:
    """2 for bad input (see ``_BAD_INPUT``), 1 otherwise."""
    return EXIT_BAD_INPUT if isinstance(err, _BAD_INPUT) else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors (already printed by argparse)
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mia: interrupted", file=sys.stderr)
        return 130
    except SystemExit as done:
        if isinstance(done.code, str):  # SystemExit("message") from a command: bad usage
            print(f"mia: error: {done.code}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        status = exit_status(err)
        hint = "" if status == EXIT_BAD_INPUT or args.debug else " (--debug shows the traceback)"
        print(f"mia: error: {error_message(err)}{hint}", file=sys.stderr)
        return status
