"""The rendered report in a real browser: headless Chromium at 1280 px (a laptop) and 390 px (a
phone) shows every selected table and figure, loads every image, logs no console error, and cuts
nothing: every table sits in a scroll wrapper that ends inside the viewport, and the page itself
never scrolls sideways (:func:`mia.report.browser.layout_problems`).

Two reports: the paper config's, from synthetic files (tests/test_report.py), and the demo
world's as the workflow renders it (the test DAG of tests/test_workflow_demo.py, a session
fixture: about 5 minutes on 2 cores when this file runs alone, nothing extra in the whole suite).

Chromium comes from Debian's ``chromium`` package: when it is missing and the test runs as root
with apt-get, it is installed; otherwise the test skips and says why.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image
from test_report import paper_config, write_fake_inputs

from mia.report.browser import ChromiumMissing, check_page, find_chromium, layout_problems

WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return find_chromium(install=True)
    except ChromiumMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def fake_report(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("browser")
    config = paper_config(repo_root)
    fake = write_fake_inputs(root / "runs", config)
    return fake.render(root / "report"), config


def _check(chromium: str, html: Path, width: int, out: Path) -> tuple[dict, Image.Image]:
    facts, shot, errors = check_page(chromium, html.resolve().as_uri(), width)
    out.write_bytes(shot)
    print(f"screenshot at {width} px: {out}")
    assert errors == [], errors
    assert facts["innerWidth"] == width
    broken = [i["src"] for i in facts["images"] if not i["complete"] or i["width"] == 0]
    assert broken == [], f"images that did not load: {broken}"
    assert layout_problems(facts) == []
    image = Image.open(io.BytesIO(shot))
    assert image.size[0] == width
    return facts, image


@pytest.mark.parametrize("width", WIDTHS)
def test_report_in_headless_chromium(chromium: str, fake_report: tuple[Path, dict],
                                     tmp_path: Path, width: int) -> None:
    html, config = fake_report
    facts, image = _check(chromium, html, width, tmp_path / f"report_{width}.png")
    assert len(facts["images"]) >= 10
    shown = {t["key"] for t in facts["tables"] if t["key"]}
    assert shown == set(config["report"]["tables"])
    assert set(facts["figures"]) == set(config["report"]["figures"])
    assert all(t["wrapped"] for t in facts["tables"])
    assert image.size[1] > 3000
    if width == 390:  # on a phone the wide tables scroll inside their wrappers
        assert any(t["width"] > t["wrapWidth"] for t in facts["tables"])


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_report_in_headless_chromium(chromium: str, workflow_run: Path, tmp_path: Path,
                                          width: int) -> None:
    """The report the workflow rendered for the demo world (the test DAG): nothing cut at either
    width; it names its commit, says once that the paper's numbers are context, shows the
    pipeline's cost by stage, and flags what the test DAG's tiny runs really did."""
    html = workflow_run / "reports/test/index.html"
    facts, _ = _check(chromium, html, width, tmp_path / f"demo_{width}.png")
    assert {"table1", "table2", "table3", "table4"} <= {t["key"] for t in facts["tables"]}
    page = html.read_text()
    assert page.count('id="demo-context"') == 1
    assert re.search(r'data-software="code \(git commit\)"><td>[^<]*</td><td><code>'
                     r'([0-9a-f]{40}|unknown)', page)
    for stage in ("data", "features", "training", "decoding", "evaluation", "all"):
        assert f'data-stage="{stage}"' in page
    assert "val_cider<" not in page and "This page makes" in page


def test_readme_screenshot_is_taken_from_the_demo_report_only(chromium: str, workflow_run: Path,
                                                              fake_report: tuple[Path, dict],
                                                              tmp_path: Path) -> None:
    """scripts/screenshot_report.py (``make screenshot``): the demo's report gives a 1280 px
    wide PNG; the synthetic paper report is refused (the README's picture once came from it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "screenshot_report", Path(__file__).parents[1] / "scripts" / "screenshot_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # type: ignore[union-attr]
    out = tmp_path / "shot.png"
    assert tool.main(["--report", str(workflow_run / "reports/test/index.html"), "--out",
                      str(out), "--height", "800"]) == 0
    assert Image.open(out).size == (1280, 800)
    assert tool.main(["--report", str(fake_report[0]), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
