"""The report in a real browser: headless Chromium driven over the DevTools protocol, for the
layout checks of the tests and for the README's screenshot (``scripts/screenshot_report.py``).

Chromium runs with ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file
descriptors 3 and 4), so nothing beyond the standard library is needed. Chromium itself comes
from Debian's ``chromium`` package (``apt-get install chromium``); :func:`find_chromium` names
what to install when it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")

#: What a layout check needs to know about a page: every table with the scroll wrapper around
#: it (if any), images, figures, and whether the page itself scrolls sideways.
PAGE_FACTS = """(() => {
  const tables = Array.from(document.querySelectorAll('table')).map(t => {
    const r = t.getBoundingClientRect();
    const wrap = t.closest('.scroll');
    const w = wrap ? wrap.getBoundingClientRect() : null;
    return {cls: t.className, key: t.dataset.table || null, right: r.right, width: r.width,
            wrapped: !!wrap, wrapRight: w ? w.right : null, wrapWidth: w ? w.width : null,
            wrapScrolls: wrap ? ['auto', 'scroll'].includes(getComputedStyle(wrap).overflowX)
                              : false};
  });
  const images = Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
    shown: i.getBoundingClientRect().width}));
  const figures = Array.from(document.querySelectorAll('[data-figure]')).map(
    f => f.dataset.figure);
  const wide = Array.from(document.querySelectorAll('body *')).filter(e => {
    if (e.closest('.scroll')) return false;
    return e.getBoundingClientRect().right > window.innerWidth + 0.5;
  }).map(e => e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 60));
  return {tables, images, figures, wide, innerWidth: window.innerWidth,
          scrollWidth: document.documentElement.scrollWidth};
})()"""


class ChromiumMissing(RuntimeError):
    """No Chromium on this machine (the message says what to install)."""


def find_chromium(install: bool = False) -> str:
    """The Chromium binary. With ``install`` (and root and apt-get), Debian's package is installed
    when missing; otherwise :class:`ChromiumMissing` names the command that would."""
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ChromiumMissing("Chromium is not installed (and cannot be installed here without "
                              "root and apt-get): apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    raise ChromiumMissing(f"installing Chromium failed: {(proc.stderr or proc.stdout)[-400:]}")


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, timeout: float = 60.0, width: int = WIDTH,
                 height: int = HEIGHT) -> None:
        self.timeout = timeout
        self.width, self.height = width, height
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
             f"--window-size={width},{height}", "about:blank"],
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
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=self.width < 600)
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
        clip = {"x": 0, "y": 0, "width": self.width,
                "height": min(full["height"], height or 10**6), "scale": 1}
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


def layout_problems(facts: dict[str, Any]) -> list[str]:
    """What a reader would see cut: a table wider than the viewport outside a scroll wrapper, a
    wrapper that does not scroll or sticks out, any other element past the right edge, a page
    that scrolls sideways. Empty when the layout holds."""
    width = facts["innerWidth"]
    problems = []
    for t in facts["tables"]:
        name = t["key"] or t["cls"] or "table"
        if not t["wrapped"]:
            if t["right"] > width + 0.5:
                problems.append(f"table {name} is cut at {width} px (right edge "
                                f"{t['right']:.0f} px) and has no scroll wrapper")
        elif t["wrapRight"] > width + 0.5:
            problems.append(f"the scroll wrapper of table {name} ends at {t['wrapRight']:.0f} "
                            f"px, past the {width} px viewport")
        elif t["width"] > t["wrapWidth"] + 0.5 and not t["wrapScrolls"]:
            problems.append(f"table {name} ({t['width']:.0f} px) overflows its wrapper "
                            f"({t['wrapWidth']:.0f} px), which does not scroll")
    problems += [f"past the right edge: {w}" for w in facts["wide"]]
    if facts["scrollWidth"] > width:
        problems.append(f"the page scrolls sideways ({facts['scrollWidth']} px > {width} px)")
    return problems


def check_page(binary: str, url: str, width: int, height: int = HEIGHT,
               full_height: int | None = None) -> tuple[dict[str, Any], bytes, list[str]]:
    """Open ``url`` at ``width`` x ``height``: (page facts, a screenshot of the whole page or its
    top ``full_height`` pixels, console errors)."""
    browser = DevTools(binary, width=width, height=height)
    try:
        browser.open(url)
        facts = browser.evaluate(PAGE_FACTS)
        shot = browser.screenshot(full_height)
        errors = browser.errors()
    finally:
        browser.close()
    return facts, shot, errors
