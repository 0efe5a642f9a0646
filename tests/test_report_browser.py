"""The rendered report in a real browser: headless Chromium at 1280 px shows every selected table
and figure, loads every image, logs no console error, and needs no horizontal scrolling.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), so the test needs no Python package beyond
the standard library. Chromium comes from Debian's ``chromium`` package: when it is missing and
the test runs as root with apt-get, it is installed (``apt-get install -y chromium
chromium-driver``); otherwise the test skips and says why.

``MIA_UPDATE_SCREENSHOT=1`` also writes docs/report_screenshot.png (the top of the page).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_report import paper_config, write_fake_inputs

WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def find_or_install_chromium() -> str:
    """The Chromium binary; installs Debian's package when possible, else skips with the
    reason."""
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and "
                    "apt-get): apt-get install chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.skip(f"installing Chromium failed: {(proc.stderr or proc.stdout)[-400:]}")


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mia-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Keep the child's ends away from 3 and 4 so the dup2s below cannot clobber each other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def wire() -> None:
            os.dup2(child_in, 3)  # Chromium reads commands from fd 3
            os.dup2(child_out, 4)  # and writes responses and events to fd 4

        self.proc = subprocess.Popen(
            [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4), preexec_fn=wire)
        os.close(child_in)
        os.close(child_out)
        self.write, self.read = to_browser_w, from_browser_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self.read, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]  # type: ignore
                raise RuntimeError(f"Chromium closed the DevTools pipe: {err}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", session=False, url="about:blank")
        self.session = self.send("Target.attachToTarget", session=False,
                                 targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                 "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", "")))
                                    for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"{entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, height: int | None = None) -> bytes:
        metrics = self.send("Page.getLayoutMetrics")
        full = metrics.get("cssContentSize", metrics.get("contentSize"))
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": min(full["height"], height or 10**6),
                "scale": 1}
        shot = self.send("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", session=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.write, self.read):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_FACTS = """(() => {
  const tables = Array.from(document.querySelectorAll('table')).map(t => {
    const r = t.getBoundingClientRect();
    return {cls: t.className, key: t.dataset.table || null, right: r.right, width: r.width};
  });
  const images = Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}));
  const figures = Array.from(document.querySelectorAll('[data-figure]')).map(
    f => f.dataset.figure);
  return {tables, images, figures, innerWidth: window.innerWidth,
          scrollWidth: document.documentElement.scrollWidth};
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_or_install_chromium()


def test_report_in_headless_chromium(chromium: str, repo_root: Path, tmp_path: Path) -> None:
    config = paper_config(repo_root)
    fake = write_fake_inputs(tmp_path / "runs", config)
    html = fake.render(tmp_path / "report")
    browser = DevTools(chromium)
    try:
        browser.open(html.resolve().as_uri())
        facts = browser.evaluate(PAGE_FACTS)
        shot = browser.screenshot()
        top = browser.screenshot(height=1700)
        errors = browser.errors()
    finally:
        browser.close()
    (tmp_path / "screenshot.png").write_bytes(shot)
    print(f"screenshot: {tmp_path / 'screenshot.png'}")

    assert errors == [], errors
    assert facts["innerWidth"] == WIDTH
    assert len(facts["images"]) >= 10
    broken = [i["src"] for i in facts["images"] if not i["complete"] or i["width"] == 0]
    assert broken == [], f"images that did not load: {broken}"
    shown = {t["key"] for t in facts["tables"] if t["key"]}
    assert shown == set(config["report"]["tables"])
    assert set(facts["figures"]) == set(config["report"]["figures"])
    too_wide = [(t["key"] or t["cls"], round(t["right"])) for t in facts["tables"]
                if t["right"] > WIDTH + 0.5]
    assert too_wide == [], f"tables wider than the {WIDTH} px viewport: {too_wide}"
    assert facts["scrollWidth"] <= WIDTH, "the page scrolls horizontally"
    image = Image.open(io.BytesIO(shot))
    assert image.size[0] == WIDTH and image.size[1] > 3000

    if os.environ.get("MIA_UPDATE_SCREENSHOT") == "1":
        small = Image.open(io.BytesIO(top)).convert("RGB").quantize(colors=128)
        small.save(repo_root / "docs" / "report_screenshot.png", optimize=True)
