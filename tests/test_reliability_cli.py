"""The ``mia`` command line on bad input: one line ``mia: error: <message>`` on stderr, exit 2
(bad usage or input) or 1 (anything else), and a traceback only with ``--debug``.

Everything runs in-process through ``mia.cli.main([...])``. Each case is one row of
docs/RELIABILITY.md.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from coco_mini_fixtures import write_karpathy

import mia.data.cli as data_cli
from mia.cli import main
from mia.data.store import HASH_ATTR, write_store


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    """The error: one line, after any log lines; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("mia: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _grid(path: Path, legacy: bool = False) -> Path:
    feats = np.random.default_rng(0).normal(size=(20, 4, 8)).astype(np.float16)
    write_store(path, kind="grid_features", image_ids=np.arange(20), datasets={"features": feats})
    if legacy:
        with h5py.File(path, "a") as f:
            del f.attrs[HASH_ATTR]
    return path


def _damaged(path: Path) -> Path:
    _grid(path)
    with h5py.File(path, "a") as f:
        f["features"][3, 0, 0] = np.nan
    return path


def _bad_json(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# (case, argv builder, exit status, text the error line must hold)
CASES = {
    "captions_missing_karpathy": (
        lambda t: ["data", "captions", "--karpathy", t / "nope.json", "--out", t / "c.h5",
                   "--references-dir", t], 2, "nope.json: file not found"),
    "captions_karpathy_not_utf8": (
        lambda t: ["data", "captions", "--karpathy", _bad_json(t, "k.json", b'{"images": "\xff"}'),
                   "--out", t / "c.h5", "--references-dir", t], 2, "not UTF-8 text (byte 0xff"),
    "captions_karpathy_bad_record": (
        lambda t: ["data", "captions", "--karpathy", _bad_json(
            t, "k.json", json.dumps({"images": [{"cocoid": "x"}]}).encode()),
            "--out", t / "c.h5", "--references-dir", t], 2, "images[0]: field 'cocoid'"),
    "vqa_questions_missing": (
        lambda t: ["data", "vqa", "--questions", f"train={t / 'q.json'}", "--out", t / "v.h5"],
        2, "q.json: file not found"),
    "vqa_split_given_twice": (
        lambda t: ["data", "vqa", "--questions", "train=a.json", "--questions", "train=b.json",
                   "--out", t / "v.h5"], 2, "split 'train' given twice"),
    "verify_damaged_store": (
        lambda t: ["data", "verify", _damaged(t / "grid.h5")], 2,
        "'features' row 3 (image_id 3) holds NaN"),
    "verify_missing_store": (lambda t: ["data", "verify", t / "grid.h5"], 2, "store not found"),
    "verify_not_hdf5": (
        lambda t: ["data", "verify", _bad_json(t, "grid.h5", b"not hdf5")], 2,
        "not a readable HDF5 file"),
    "evaluate_captions_missing_annotations": (
        lambda t: ["evaluate", "captions", "--annotations", t / "refs.json", "--results",
                   t / "res.json", "--out", t / "m.json", "--no-spice"], 2,
        "refs.json: file not found"),
    "evaluate_vqa_results_not_a_list": (
        lambda t: ["evaluate", "vqa-server", "--questions", _bad_json(
            t, "q.json", b'{"questions": []}'), "--results", _bad_json(t, "r.json", b"{}"),
            "--out", t / "o.json"], 2, "r.json: record <top>: field '<json>': expected a list"),
    "features_grid_missing_root": (
        lambda t: ["features", "grid", "--root", t / "empty", "--out", t / "g.h5", "--set",
                   "pretrained=false"], 2, "karpathy/dataset_coco.json: file not found"),
    "features_unknown_setting": (
        lambda t: ["features", "grid", "--root", t, "--out", t / "g.h5", "--set", "nonsense=1"],
        2, "--set 'nonsense=1': expected key=value"),
    "demo_world_too_few_images": (
        lambda t: ["demo-world", "--root", t / "demo", "--num-images", "2"], 2,
        "num_images must be >= 4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2(tmp_path, capsys, case):
    argv, status, expected = CASES[case]
    code, _, err = _run(capsys, *argv(tmp_path))
    line = _one_error_line(err)
    assert code == status and expected in line, line


@pytest.mark.parametrize("argv, expected", [
    (["data", "vqa", "--questions", "no-equals-sign", "--out", "x"], "expected SPLIT=PATH"),
    (["data", "verify"], "the following arguments are required: STORE"),
    (["no-such-command"], "invalid choice"),
    (["data", "captions"], "required"),
], ids=["vqa_split_path_malformed", "verify_without_store", "unknown_command",
        "missing_required_option"])
def test_usage_errors_exit_2(capsys, argv, expected):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and expected in err and "Traceback" not in err


def test_no_command_prints_help_exit_2_and_version_exit_0(capsys):
    code, _, err = _run(capsys)
    assert code == 2 and "COMMAND" in err
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("mia ")


def test_verify_good_and_legacy_stores(tmp_path, capsys):
    good, legacy = _grid(tmp_path / "grid.h5"), _grid(tmp_path / "grid_old.h5", legacy=True)
    code, out, err = _run(capsys, "data", "verify", good, legacy)
    assert code == 0 and "mia: error" not in err
    lines = out.splitlines()
    assert lines[0].startswith(f"OK {good}: grid_features store, 20 images, 2 datasets")
    assert "every dataset matches its recorded sha256" in lines[0]
    assert "no checksums recorded" in lines[1] and "rebuild it to add them" in lines[1]


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = _run(capsys, "--debug", "data", "verify", _damaged(tmp_path / "grid.h5"))
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("mia: error: ")


@pytest.mark.parametrize("raised, status, expected", [
    (OSError(errno.EIO, "Input/output error"), 1, "OSError: [Errno 5] Input/output error"),
    (RuntimeError("CUDA out of memory"), 1, "RuntimeError: CUDA out of memory"),
    (KeyError("split 'dev' unknown"), 2, "KeyError: split 'dev' unknown"),
], ids=["disk_io_error", "runtime_error", "key_error"])
def test_other_failures_exit_1_with_hint(tmp_path, capsys, monkeypatch, raised, status, expected):
    def fail(path):
        raise raised

    monkeypatch.setattr(data_cli, "verify_store", fail)
    code, _, err = _run(capsys, "data", "verify", tmp_path / "x.h5")
    line = _one_error_line(err)
    assert code == status and expected in line
    assert ("--debug shows the traceback" in line) == (status == 1)


def test_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cli, "verify_store", interrupted)
    code, _, err = _run(capsys, "data", "verify", tmp_path / "x.h5")
    assert code == 130 and err.strip() == "mia: interrupted"


def test_verbose_still_accepted(tmp_path, capsys):
    code, out, _ = _run(capsys, "-v", "data", "verify", _grid(tmp_path / "grid.h5"))
    assert code == 0 and out.startswith("OK ")


def test_karpathy_fixture_builds_through_cli(tmp_path, capsys):
    """The good path still works end to end (the errors above are not everything failing)."""
    karpathy = write_karpathy(tmp_path / "dataset_coco.json")
    code, _, err = _run(capsys, "data", "captions", "--karpathy", karpathy, "--out",
                        tmp_path / "captions.h5", "--references-dir", tmp_path)
    assert code == 0 and "mia: error" not in err
    code, out, _ = _run(capsys, "data", "verify", tmp_path / "captions.h5")
    assert code == 0 and "captions store, 33 images" in out
