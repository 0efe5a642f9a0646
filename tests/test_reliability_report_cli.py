"""Bad input to the report's and evaluation's commands: one line naming the file and the fix,
exit 2, nothing written (``mia visualize attention``, ``mia evaluate vqa-server``, the SCST
document-frequency file). Each case is one row of docs/RELIABILITY.md.

Everything runs in-process through ``mia.cli.main([...])`` on a tiny real Visual Attention w/
MIA run (tests/test_figure5.py's ``write_run``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_figure5 import write_run

from mia.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("mia: error: ")]
    return code, lines[0] if lines else ""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return write_run(tmp_path_factory.mktemp("visualize"), "mia_n2", [5, 9])


def test_visualize_top_words_must_be_positive(capsys, run_dir: Path, tmp_path: Path) -> None:
    """``--top-words -1`` listed 35 words (a Python slice [:-1]); now refused."""
    out = tmp_path / "fig.png"
    code, line = _run(capsys, "visualize", "attention", "--run", run_dir, "--image", 5,
                      "--out", out, "--top-words", -1)
    assert code == 2 and "--top-words must be >= 1" in line and "got -1" in line
    assert not out.exists()


def test_visualize_out_suffix_picks_the_format(capsys, run_dir: Path, tmp_path: Path) -> None:
    """``--out x.jpg`` wrote PNG bytes under a .jpg name; now a JPEG (and a PDF for .pdf); an
    unknown suffix is refused before the model is loaded."""
    jpg, pdf = tmp_path / "fig.jpg", tmp_path / "fig.pdf"
    for out in (jpg, pdf):
        code, _ = _run(capsys, "visualize", "attention", "--run", run_dir, "--image", 5,
                       "--out", out, "--top-words", 2)
        assert code == 0
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG's start-of-image marker
    assert Image.open(jpg).format == "JPEG"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    numbers = json.loads(jpg.with_suffix(".json").read_text())
    assert all(len(p["concepts"]) == 2 for p in numbers["panels"][0]["positions"])
    bad = tmp_path / "fig.bmpx"
    code, line = _run(capsys, "visualize", "attention", "--run", run_dir, "--image", 5, "--out",
                      bad)
    assert code == 2 and f"{bad}: cannot write a figure as .bmpx" in line and ".png" in line
    assert not bad.exists()


def test_visualize_image_not_in_the_run(capsys, run_dir: Path, tmp_path: Path) -> None:
    """``--image 999`` said the store was damaged ('rebuild it'): it is the user's choice of
    image, so the message lists the run's images."""
    code, line = _run(capsys, "visualize", "attention", "--run", run_dir, "--image", 999,
                      "--out", tmp_path / "x.png")
    assert code == 2 and "image 999 is not in" in line and "2 images, e.g. 5, 9" in line
    assert "rebuild" not in line and "--image" in line


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"",
                                     b"\xff\xd8\xff\xe0 cut JPEG"], ids=["text_file", "empty",
                                                                         "cut_jpeg"])
def test_visualize_image_file_that_is_no_image(capsys, run_dir: Path, tmp_path: Path,
                                               content: bytes) -> None:
    """``--image-file /etc/passwd`` exited 1 with the bug hint; it is bad input: exit 2."""
    image_file = tmp_path / "passwd"
    image_file.write_bytes(content)
    code, line = _run(capsys, "visualize", "attention", "--run", run_dir, "--image", 5, "--out",
                      tmp_path / "x.png", "--image-file", image_file)
    assert code == 2 and f"{image_file}: not an image that can be read" in line
    assert "--debug" not in line and "--image-file" in line


def _questions(path: Path, subtype: str | None) -> Path:
    data: dict = {"questions": [{"question_id": q, "image_id": 1, "question": "?"}
                                for q in (1, 2)]}
    if subtype:
        data["data_subtype"] = subtype
    path.write_text(json.dumps(data))
    return path


def test_vqa_server_refuses_questions_of_another_split(capsys, tmp_path: Path) -> None:
    """The val2014 questions given to ``mia evaluate vqa-server`` were taken without a word (an
    upload scored against nothing); the test-dev and test-std files are accepted."""
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"question_id": 1, "answer": "a"},
                                   {"question_id": 2, "answer": "b"}]))
    val = _questions(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", "val2014")
    out = tmp_path / "server.json"
    code, line = _run(capsys, "evaluate", "vqa-server", "--questions", val, "--results",
                      results, "--out", out)
    assert code == 2 and f"{val}: questions of split 'val2014'" in line
    assert "test-dev2015" in line and not out.exists()
    for subtype in ("test-dev2015", "test2015", None):
        questions = _questions(tmp_path / f"q_{subtype}.json", subtype)
        assert _run(capsys, "evaluate", "vqa-server", "--questions", questions, "--results",
                    results, "--out", out)[0] == 0


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut", b"not a zip at all"],
                         ids=["empty", "cut_zip", "text"])
def test_document_frequency_file_empty_or_damaged(tmp_path: Path, content: bytes) -> None:
    """An empty ``cider_df_train.npz`` was an ``EOFError`` naming no file."""
    from mia.evaluation.cider_df import load_document_frequency

    path = tmp_path / "cider_df_train.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_document_frequency(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable document-frequency file")
    assert "cider_document_frequency" in message
    if not content:
        assert "the file is empty" in message
    # The good file reads (control).
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a mia-cider-document-frequency file"):
        load_document_frequency(tmp_path / "other.npz")
