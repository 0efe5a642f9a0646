"""The README's screenshot, taken from the demo's own report (never from synthetic files).

    make screenshot        # = python scripts/screenshot_report.py (after `make demo`)

Opens ``reports/demo/index.html`` in headless Chromium at 1280 px and writes the top of the page
to ``docs/report_screenshot.png`` (a 128-colour PNG, small enough for the repository). Run it
again whenever the demo changes (its config, its data, its models, the report's look), so the
picture in the README always shows what `make demo` gives today. It refuses a report that is
not the demo's (``data.source: demo`` in its configuration) and a page whose layout cuts
something (:func:`mia.report.browser.layout_problems`).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from mia.report.browser import ChromiumMissing, check_page, find_chromium, layout_problems  # noqa: E402


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 1700,
               colours: int = 128) -> Path:
    """Write the top ``height`` pixels of ``report`` at ``width`` to ``out``; fail when the
    report is not the demo's or its layout cuts something."""
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no report; run `make demo` first")
    if "source: demo" not in report.read_text(errors="replace"):
        raise ValueError(f"{report}: not the demo's report (its configuration has no "
                         "'source: demo'); the README shows the demo's own numbers")
    facts, shot, errors = check_page(find_chromium(), report.resolve().as_uri(), width,
                                     full_height=height)
    problems = errors + layout_problems(facts)
    if problems:
        raise RuntimeError(f"{report}: the page has problems; fix them before taking the "
                           f"README's picture: {problems[:5]}")
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=colours)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--report", type=Path, default=REPO / "reports/demo/index.html",
                        help="the demo's rendered report")
    parser.add_argument("--out", type=Path, default=REPO / "docs/report_screenshot.png",
                        help="PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS px")
    parser.add_argument("--height", type=int, default=1700, help="how much of the top to keep")
    args = parser.parse_args(argv)
    try:
        out = screenshot(args.report, args.out, args.width, args.height)
    except (ChromiumMissing, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"screenshot_report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
