"""Software versions for the report: what produced these numbers, to compare with the paper's."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

#: The checkout this package runs from (a git work tree for a clone, not for a wheel).
REPO_ROOT = Path(__file__).resolve().parents[2]

PACKAGES = ("mia-repro", "torch", "torchvision", "numpy", "h5py", "snakemake",
            "pycocoevalcap", "jinja2", "matplotlib", "pyyaml")


def software_versions() -> dict[str, str]:
    """``{name: version}`` for Python, the packages above, Java, and the CUDA device if any."""
    versions = {"code (git commit)": git_commit(REPO_ROOT),
                "python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["java"] = _java_version()
    try:
        import torch

        versions["cuda device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                   else "none (CPU)")
    except ImportError:  # the report renders without torch too
        pass
    return versions


def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        return "not found"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def git_commit(repo: Path) -> str:
    """``<commit>`` or ``<commit> + uncommitted changes`` (the dirty flag) of the checkout whose
    code made the report, or why it is unknown. A results page must name the code behind it."""
    git = shutil.which("git")
    if git is None:
        return "unknown (git not installed)"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([git, "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=30)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return f"unknown ({repo} is not a git checkout)"
        status = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    commit = head.stdout.strip()
    if status.returncode != 0:
        return f"{commit} (dirty flag unknown: {status.stderr.strip()[:80]})"
    if status.stdout.strip():
        changed = len(status.stdout.strip().splitlines())
        return f"{commit} + uncommitted changes to {changed} tracked file(s) (dirty)"
    return f"{commit} (clean)"
