"""``benchmarks/gpu.sh`` must run on the GPU machine the first time: that machine has its own
Python and torch, no package registry, and only what a run carries (README "GPU"; benchmarks/
device_env/packages.txt). ``gpu.sh --check`` runs every step on this CPU at tiny sizes with
the packages that image lacks made unimportable; these tests run it (about 2 minutes on an idle
2-core machine: eight Python start-ups and tiny models) and check that the guard itself bites.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUARD = {"MIA_DEVICE_PACKAGES": str(REPO / "benchmarks" / "device_env" / "packages.txt"),
         "PYTHONPATH": f"{REPO / 'benchmarks' / 'device_env'}:{REPO}"}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **GUARD}, timeout=120)


def test_the_device_guard_refuses_what_the_image_lacks_and_nothing_else():
    missing = _python("import jsonschema")
    assert missing.returncode != 0
    assert "No module named 'jsonschema' on the GPU machine" in missing.stderr
    assert "packages.txt" in missing.stderr
    present = _python("import torch, numpy, h5py, PIL, yaml, jinja2, tqdm, pytest; "
                      "import mia.captioning.train, mia.vqa.train, mia.captioning.image_store; "
                      "print('ok')")
    assert present.returncode == 0 and present.stdout.strip() == "ok", present.stderr[-2000:]
    # Training code imports mia.config (from_dict); only validating a config file needs
    # jsonschema, which the GPU image lacks: the guard names it there.
    validating = _python("from mia.config import validate_config; validate_config({})")
    assert validating.returncode != 0
    assert "No module named 'jsonschema' on the GPU machine" in validating.stderr


def test_gpu_sh_check_passes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--check", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    log = (out / "gpu.log").read_text()
    assert done.returncode == 0, log[-6000:]
    assert "(device-image imports)" in log  # the guard was on
    steps = ["mia_module", "captioners", "scst", "vqa", "features", "finetune_input",
             "training_step", "bottom_up", "cuda_tests"]
    for name in steps:
        assert f"=== {name} done" in log, name
        assert (out / f"{name}.md").stat().st_size > 0, name
    tests = (out / "cuda_tests.md").read_text()
    assert "no CUDA GPU on this machine" in tests  # skipped, with the reason printed
    assert "error" not in tests.lower()  # every GPU test file collects without a GPU package
    syncs = (out / "training_step.md").read_text()
    assert "| XE captioning (VA w/ MIA) | 4 | 0 | 0.0 |" in syncs
