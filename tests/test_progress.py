"""Every long job says in its log how far it is, whatever ``progress`` says; bars and log lines
share a terminal without tearing; the run's time left counts validation and says what it is.

* feature extraction with ``progress: false`` (config.yaml's setting) logs items, rate, elapsed
  and ETA into its log (it used to log nothing between start and end);
* in a job with a log file and a terminal, every log line reaches the terminal whole after a
  bar was drawn (it lost its first character, or sat after the bar), and the log file holds no
  bar;
* a training progress line says ``epoch left``, ``run left`` (with the validations still to
  come once one has been timed) and ``run elapsed`` (it said ``run 0m11s``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest
import torch
from test_captioning_train import ToyCaptionData, toy_config

REPO = Path(__file__).resolve().parent.parent


def test_grid_extraction_logs_progress_with_the_bar_off(data_dir: Path, tmp_path: Path,
                                                        monkeypatch, caplog) -> None:
    import mia.progress
    from mia.features.grid import GridFeatureConfig, extract_grid_features

    torch.set_num_threads(1)
    monkeypatch.setattr(mia.progress, "DEFAULT_EVERY_S", 0.0)  # a line at every batch
    images = sorted((data_dir / "coco-mini" / "images").glob("*.jpg"))[:6]
    items = [(int(p.stem), str(p)) for p in images]
    cfg = GridFeatureConfig(backbone="resnet18", pretrained=False, image_size=32, batch_size=2,
                            num_workers=0, device="cpu", progress=False)
    with caplog.at_level(logging.INFO, logger="mia.features.grid"):
        extract_grid_features(items, tmp_path / "grid.h5", cfg)
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("grid features (resnet18)")]
    assert lines[0] == "grid features (resnet18): 6 images to do"
    middle = [line for line in lines if "% )" in line or "%)" in line]
    assert len(middle) == 3  # after each batch of 2
    assert re.fullmatch(r"grid features \(resnet18\): 2 of 6 images \(33%\), [\d.]+ images/s, "
                        r"elapsed \dm\d\ds, ETA \dm\d\ds", middle[0]), middle[0]
    assert re.fullmatch(r"grid features \(resnet18\): done, 6 images in \dm\d\ds "
                        r"\([\d.]+ images/s\)", lines[-1]), lines[-1]


def test_progress_logs_every_interval_and_scales_bytes(monkeypatch, caplog) -> None:
    import mia.progress
    from mia.progress import Progress, format_duration

    now = [0.0]
    monkeypatch.setattr(mia.progress.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO), Progress(
            "download x.zip", 100 * 2**20, unit="MB", scale=2**20, every_s=25,
            logger=logging.getLogger("t"), bar=False) as progress:
        for _ in range(10):  # 10 MB every 10 s
            now[0] += 10.0
            progress.update(10 * 2**20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "download x.zip: 100.0 MB to do"
    # t0 = 0; updates at 10, 20, ...: a line every 25 s or more (at 30, 60, 90)
    assert lines[1] == ("download x.zip: 30.0 of 100.0 MB (30%), 1.0 MB/s, elapsed 0m30s, "
                        "ETA 1m10s")
    assert len(lines) == 5 and lines[-1].startswith("download x.zip: done, 100.0 MB in ")
    assert format_duration(3725) == "1h02m" and format_duration(59.9) == "0m59s"


def test_training_line_says_time_left_with_validation_and_elapsed(monkeypatch, tmp_path,
                                                                   caplog) -> None:
    """Epoch 1 has no validation timed yet and says so; epoch 2 counts the validations left at
    the mean duration so far; every line says the run's time elapsed."""
    from mia.captioning.train import train_captioner

    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO, logger="mia.training.loop"):
        train_captioner(toy_config(epochs=2, log_every=2), ToyCaptionData(), tmp_path)
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    first = [line for line in lines if line.startswith("epoch 1/2")]
    second = [line for line in lines if line.startswith("epoch 2/2")]
    assert first and second
    assert re.search(r", epoch left \dm\d\ds, run left \dm\d\ds \+ 2 validation\(s\) not timed "
                     r"yet, run elapsed \dm\d\ds", first[0]), first[0]
    assert re.search(r", run left \dm\d\ds \(incl\. 1 validation\(s\) of ~\dm\d\ds\), run "
                     r"elapsed \dm\d\ds", second[0]), second[0]
    assert " run 0m" not in " ".join(lines)  # "run" alone said neither elapsed nor left
    summary = [r.getMessage() for r in caplog.records if " done: train loss" in r.getMessage()]
    assert summary and all("val CIDEr-D (x100) " in line for line in summary)
    value = float(re.search(r"val CIDEr-D \(x100\) ([\d.]+)", summary[0]).group(1))
    assert value > 1.5  # x100: the toy data's val CIDEr-D is well above 0.015


def _run_on_a_terminal(script: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``script`` with its stderr on a pseudo-terminal; (exit status, what it printed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower, close_fds=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=30), out.decode(errors="replace")


@pytest.mark.parametrize("kind", ["feature_progress", "training_progress"])
def test_bar_and_log_lines_share_a_terminal_without_tearing(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "job.log"
    loop = {
        "feature_progress": """
            from mia.progress import Progress
            with Progress("grid features", 40, unit="images", logger=logger, bar="auto",
                          every_s=0) as p:
                for i in range(40):
                    p.update(1)
                    time.sleep(0.005)
                    if i % 10 == 5:
                        logger.info("MARK %d in the middle of the loop", i)
        """,
        "training_progress": """
            from mia.training.progress import ProgressLog
            bar = ProgressLog(logger, 1, 1, 40, 0, log_every=7, bar="auto")
            for i in range(1, 41):
                time.sleep(0.005)
                bar.step(i, i, 1.0, 0.1)
                if i % 10 == 5:
                    logger.info("MARK %d in the middle of the loop", i)
            bar.close()
        """}[kind]
    script = "import time\nfrom mia.runlog import setup_job_logging\n" + \
        f"logger = setup_job_logging({str(log)!r}, 'workflow.test')\n" + textwrap.dedent(loop)
    code, printed = _run_on_a_terminal(script)
    assert code == 0, printed
    # On the terminal: each record's text starts a line (after the bar was cleared with \r).
    shown = [line.rsplit("\r", 1)[-1].strip() for line in printed.replace("\r\n", "\n")
             .split("\n")]
    marks = [line for line in shown if "MARK" in line]
    assert len(marks) == 4, printed[-3000:]
    for line in marks:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO workflow\.test: MARK \d+ "
                            r"in the middle of the loop", line), repr(line)
    assert "it/s]" in printed or "images/s]" in printed  # a bar was drawn
    # In the log file: the records, whole, and no bar.
    text = log.read_text()
    assert text.count("MARK") == 4 and "\r" not in text and "|##" not in text
