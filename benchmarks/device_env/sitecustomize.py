"""Imports as on the GPU machine: a package its image lacks cannot be imported.

Python imports ``sitecustomize`` at start-up from ``sys.path``; ``benchmarks/gpu.sh --check``
puts this folder on ``PYTHONPATH`` and sets ``MIA_DEVICE_PACKAGES`` to ``packages.txt`` (the
image's package list). Every top-level module that the installed distributions provide, when
none of those distributions is on the list, then raises ``ModuleNotFoundError`` naming the
list: what the GPU machine would say, found on a CPU before a lease is spent. The standard
library, this repository (``mia``, the benchmarks, the tests' helpers) and the listed packages
import as usual. Without ``MIA_DEVICE_PACKAGES`` this file does nothing.
"""

from __future__ import annotations

import os
import re
import sys


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocked(listed: set[str]) -> dict[str, str]:
    """{top-level module: the distribution providing it} of what the device lacks."""
    from importlib.metadata import packages_distributions

    blocked = {}
    for module, dists in packages_distributions().items():
        if module in sys.stdlib_module_names or module.startswith("_") or module == "mia":
            continue
        names = {_normalise(d) for d in dists}
        if names & listed or names == {"mia-repro"}:
            continue
        blocked[module] = sorted(dists)[0]
    return blocked


class _DeviceImage:
    """A meta-path finder refusing the blocked top-level modules."""

    def __init__(self, blocked: dict[str, str], listing: str) -> None:
        self.blocked, self.listing = blocked, listing

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        top = fullname.partition(".")[0]
        if top in self.blocked:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} on the GPU machine: its image lacks "
                f"{self.blocked[top]} ({self.listing}); carry a wheel or skip what needs it",
                name=fullname)
        return None


def _install() -> None:
    listing = os.environ.get("MIA_DEVICE_PACKAGES")
    if not listing:
        return
    with open(listing, encoding="utf-8") as f:
        listed = {_normalise(line.strip()) for line in f
                  if line.strip() and not line.startswith("#")}
    blocked = _blocked(listed)
    for name in [m for m in sys.modules if m.partition(".")[0] in blocked]:
        del sys.modules[name]  # imported at start-up by a .pth file: forget it
    sys.meta_path.insert(0, _DeviceImage(blocked, listing))


_install()
