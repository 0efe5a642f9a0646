"""Where `make setup` takes torch from, said before it installs (stdlib only).

PyPI's ``torch`` for Linux is the CUDA build: several GB of ``nvidia-*`` wheels that a machine
without an NVIDIA GPU never uses. So, for the version pinned in constraints.txt:

1. ``TORCH_INDEX=<url>`` (or ``none``) given to make: as asked;
2. an NVIDIA GPU (``nvidia-smi`` runs): PyPI's CUDA build;
3. pip already finds the pinned torch without any index (a local wheel in ``find-links``, as on
   this project's CI machine): that one, nothing downloaded;
4. otherwise: PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu, ~200 MB), whose
   ``2.13.0+cpu`` satisfies the pin ``torch==2.13.0``.

Prints the extra pip arguments on stdout (``make`` passes them to ``pip install``) and one line
saying what will be installed on stderr.

    python scripts/torch_source.py [--constraints constraints.txt] [--choice auto|none|URL]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned_torch(constraints: Path) -> str:
    """The version constraints.txt pins torch to."""
    match = re.search(r"^torch==([^\s#]+)", constraints.read_text(), flags=re.M)
    if not match:
        raise SystemExit(f"{constraints}: no 'torch==<version>' pin; pin torch there (pip would "
                         "otherwise take the newest CUDA build)")
    return match.group(1)


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def found_without_index(version: str, python: str = sys.executable) -> bool:
    """Whether pip resolves ``torch==version`` from its configured local sources alone."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--quiet",
           "--disable-pip-version-check", f"torch=={version}"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def decide(version: str, choice: str = "auto", gpu: bool | None = None,
           local: bool | None = None) -> tuple[list[str], str]:
    """(extra pip arguments, what it means in words)."""
    if choice not in ("", "auto"):
        if choice == "none":
            return [], f"torch {version} from pip's own sources (TORCH_INDEX=none)"
        return ["--extra-index-url", choice], f"torch {version} from {choice} (TORCH_INDEX)"
    if gpu if gpu is not None else has_nvidia_gpu():
        return [], (f"torch {version} with CUDA from PyPI (an NVIDIA GPU is here; several GB; "
                    f"make setup TORCH_INDEX={CPU_INDEX} for the CPU build)")
    if local if local is not None else found_without_index(version):
        return [], f"torch {version} from pip's configured local sources (nothing downloaded)"
    return ["--extra-index-url", CPU_INDEX], (
        f"torch {version}+cpu from PyTorch's CPU wheel index {CPU_INDEX} (no NVIDIA GPU here; "
        "PyPI's build is the CUDA one, several GB; make setup TORCH_INDEX=none for PyPI's)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--constraints", type=Path,
                        default=Path(__file__).resolve().parent.parent / "constraints.txt",
                        help="the pins (torch==...)")
    parser.add_argument("--choice", default="auto",
                        help="auto, none (pip's own sources) or an index URL")
    args = parser.parse_args(argv)
    extra, words = decide(pinned_torch(args.constraints), args.choice)
    print(f"make setup: installing {words}", file=sys.stderr)
    print(" ".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
