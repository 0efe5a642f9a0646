"""Java, which coco-caption's PTB tokenizer and METEOR (and SPICE) run on: found up front, or a
message saying what to install, before hours of training end in ``[Errno 2] No such file or
directory: 'java'`` at the first caption evaluation.
"""

from __future__ import annotations

import shutil

#: What to install, on the usual machines (the conda environment brings its own, see envs/).
JAVA_HINT = ("Java was not found on PATH. The caption metrics (coco-caption's PTB tokenizer and "
             "METEOR) run on Java 8 or later: install it first, e.g. `sudo apt-get install "
             "default-jre-headless` (Debian/Ubuntu), `sudo dnf install java-17-openjdk-headless` "
             "(Fedora/RHEL), `brew install openjdk` (macOS) or `conda install -c conda-forge "
             "openjdk`; or run the workflow with `--sdm conda`, whose evaluation environment "
             "(envs/evaluation.yaml) has it")


class JavaMissing(RuntimeError):
    """No ``java`` on PATH (the message says what to install)."""


def java_path() -> str | None:
    return shutil.which("java")


def require_java(what: str = "caption evaluation") -> str:
    """The ``java`` executable, or :class:`JavaMissing` naming ``what`` needs it."""
    java = java_path()
    if java is None:
        raise JavaMissing(f"{what} needs Java. {JAVA_HINT}")
    return java
