"""Without Java, `make demo` and a workflow that plans caption evaluation stop before anything
runs, naming what to install (they used to fail after training, at evaluate_captions, with
``[Errno 2] No such file or directory: 'java'``).

Java is hidden by a PATH of links to every program on this machine's PATH except ``java``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from workflow_support import snakemake_cmd

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def no_java_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH with everything of this one but ``java``."""
    out = tmp_path_factory.mktemp("bin_without_java")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for program in Path(folder).iterdir():
            link = out / program.name
            if program.name == "java" or link.exists() or not program.is_file():
                continue
            if os.access(program, os.X_OK):
                link.symlink_to(program.resolve())
    assert shutil.which("java", path=str(out)) is None
    return str(out)


def test_make_demo_checks_java_first(no_java_path: str) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "PATH": no_java_path}
    done = subprocess.run([make, "-s", "check-java"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "Java was not found on PATH" in done.stderr and "apt-get install" in done.stderr
    plan = subprocess.run([make, "-n", "demo"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert plan.stdout.index("command -v java") < plan.stdout.index("snakemake")
    assert subprocess.run([make, "-s", "check-java"], cwd=REPO, capture_output=True,
                          timeout=60).returncode == (0 if shutil.which("java") else 2)


def test_workflow_without_java_stops_before_any_job(no_java_path: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": no_java_path}
    done = subprocess.run(snakemake_cmd(tmp_path, "--cores", "1"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "caption evaluation is planned" in done.stderr and "apt-get install" in done.stderr
    assert not (tmp_path / "results").exists()  # not one job ran
    plan = subprocess.run(snakemake_cmd(tmp_path, "-n"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]  # a dry run only plans


def test_evaluate_captions_without_java_names_what_to_install(monkeypatch, tmp_path: Path,
                                                              capsys) -> None:
    import mia.evaluation.java
    from mia.cli import main

    monkeypatch.setattr(mia.evaluation.java.shutil, "which", lambda name: None)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "a red square"}]}))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "caption": "a red square"}]))
    code = main(["evaluate", "captions", "--annotations", str(refs), "--results", str(res),
                 "--out", str(tmp_path / "m.json"), "--no-spice"])
    err = capsys.readouterr().err
    assert code != 0 and "coco-caption's PTB tokenizer needs Java" in err
    assert "apt-get install default-jre-headless" in err and "Errno 2" not in err
