"""Software versions for the report: what produced these numbers, to compare with the paper's."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata

PACKAGES = ("mia-repro", "torch", "torchvision", "numpy", "h5py", "pandas", "snakemake",
            "pycocoevalcap", "jinja2", "matplotlib", "pyyaml")


def software_versions() -> dict[str, str]:
    """``{name: version}`` for Python, the packages above, Java, and the CUDA device if any."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
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
