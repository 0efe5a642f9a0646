"""coco-caption metrics: our wrapper and CLI against direct pycocoevalcap calls on real COCO
captions, nlg-eval's published numbers, input errors, SPICE without its jars."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mia.evaluation import captions as cap
from mia.evaluation.captions import (
    CAPTION_METRICS,
    CaptionEvalConfig,
    CaptionEvalError,
    evaluate_captions,
    score_tokenized,
)

SEVEN = CAPTION_METRICS[:7]  # all but SPICE


@pytest.fixture(scope="module")
def coco_mini(data_dir, tmp_path_factory):
    """Real COCO captions: the first caption of each image is the "result", the other four the
    references (a human-vs-humans score, the usual sanity check of coco-caption)."""
    data = json.loads((data_dir / "coco-mini" / "captions.json").read_text())
    first: dict[int, dict] = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann)
    chosen = {id(a) for a in first.values()}
    annotations = {"images": data["images"],
                   "annotations": [a for a in data["annotations"] if id(a) not in chosen]}
    results = [{"image_id": a["image_id"], "caption": a["caption"]} for a in first.values()]
    root = tmp_path_factory.mktemp("coco_mini_eval")
    (root / "annotations.json").write_text(json.dumps(annotations))
    (root / "results.json").write_text(json.dumps(results))
    return root, annotations, results


@pytest.fixture(scope="module")
def cli_metrics(coco_mini, repo_root):
    """``python -m mia evaluate captions`` on coco-mini, as the workflow runs it."""
    root, _, _ = coco_mini
    cmd = [sys.executable, "-m", "mia", "evaluate", "captions",
           "--annotations", str(root / "annotations.json"), "--results", str(root / "results.json"),
           "--out", str(root / "metrics.json"), "--per-image", str(root / "per_image.json")]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (json.loads((root / "metrics.json").read_text()),
            json.loads((root / "per_image.json").read_text()))


@pytest.fixture(scope="module")
def direct_pycocoevalcap(coco_mini):
    """The metrics as ``COCOEvalCap.evaluate`` computes them, one scorer call at a time."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _, annotations, results = coco_mini
    gts: dict[int, list[dict]] = {img["id"]: [] for img in annotations["images"]}
    for ann in annotations["annotations"]:
        gts[ann["image_id"]].append(ann)
    res = {r["image_id"]: [r] for r in results}
    res = {k: res[k] for k in gts}
    gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    out: dict[str, tuple[float, list[float]]] = {}
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"Bleu_{k + 1}"] = (bleu[k], bleu_per[k])
    meteor = Meteor()
    out["METEOR"] = meteor.compute_score(gts, res)
    meteor.__del__()  # pycocoevalcap's own shutdown of the METEOR JVM
    out["ROUGE_L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    return out, list(gts)


@pytest.mark.java
def test_cli_equals_direct_pycocoevalcap(cli_metrics, direct_pycocoevalcap):
    metrics, per_image = cli_metrics
    expected, image_ids = direct_pycocoevalcap
    assert set(CAPTION_METRICS) <= set(metrics)
    assert metrics["num_images"] == 33
    for name in SEVEN:
        score, scores = expected[name]
        assert metrics[name] == pytest.approx(float(score), abs=1e-12), name
        got = [per_image[str(i)][name] for i in image_ids]
        assert got == pytest.approx([float(s) for s in scores], abs=1e-12), name
    # Human captions against four other humans: coco-caption's known ballpark, not degenerate.
    assert 0.5 < metrics["Bleu_1"] < 0.8 and 0.5 < metrics["CIDEr"] < 1.2
    reason = cap.spice_unavailable_reason()
    if reason is None:  # SPICE can run here, so it must have run
        assert isinstance(metrics["SPICE"], float) and 0 < metrics["SPICE"] < 1
        assert "SPICE" not in metrics["skipped"]
    else:
        assert metrics["SPICE"] is None
        assert metrics["skipped"]["SPICE"] == reason


@pytest.mark.java
def test_several_result_sets_in_one_pass_equal_each_alone(coco_mini, cli_metrics, repo_root):
    """``--results A B`` (one tokenizer run, one METEOR JVM: the workflow scores every run of a
    split this way) gives each set exactly the numbers it gets alone: A those of the one-file
    CLI run, B (each caption's words reversed) those of evaluate_captions on B alone."""
    root, annotations, results = coco_mini
    reversed_words = [{"image_id": r["image_id"], "caption": " ".join(r["caption"].split()[::-1])}
                      for r in results]
    (root / "reversed.json").write_text(json.dumps(reversed_words))
    outs = [root / "batch_a.json", root / "batch_b.json"]
    per = [root / "batch_a_per.json", root / "batch_b_per.json"]
    cmd = [sys.executable, "-m", "mia", "evaluate", "captions",
           "--annotations", str(root / "annotations.json"),
           "--results", str(root / "results.json"), str(root / "reversed.json"),
           "--out", *map(str, outs), "--per-image", *map(str, per)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics, per_image = cli_metrics
    assert json.loads(outs[0].read_text()) == metrics
    assert json.loads(per[0].read_text()) == per_image
    alone = evaluate_captions(annotations, reversed_words, CaptionEvalConfig(
        metrics=tuple(m for m in CAPTION_METRICS if m != "SPICE"), per_image=True))
    got = json.loads(outs[1].read_text())
    for name in SEVEN:
        assert got[name] == alone.metrics[name], name
    batch_per = json.loads(per[1].read_text())
    assert {i: {m: v[m] for m in SEVEN} for i, v in batch_per.items()} == {
        str(k): {m: v[m] for m in SEVEN} for k, v in alone.per_image.items()}
    assert got["CIDEr"] < metrics["CIDEr"]  # reversed captions are worse: B is not A again
    bad = subprocess.run([*cmd[:cmd.index("--out") + 1], str(outs[0])], cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "one output per results file" in bad.stderr


@pytest.mark.java
def test_nlg_eval_published_numbers(data_dir, monkeypatch):
    """nlg-eval's example files score as its test suite publishes (no PTB tokenizer there)."""
    import pycocoevalcap.meteor.meteor as meteor_module

    root = data_dir / "nlg-eval"
    readme = (root / "README.md").read_text()
    header, values = (line for line in readme.splitlines() if line.startswith("|")
                         and not line.startswith("|---"))
    names = [c.strip() for c in header.strip("|").split("|")]
    published = dict(zip(names, (float(v) for v in values.strip("|").split("|")), strict=True))
    assert set(published) == set(SEVEN)

    hyps = [line.strip() for line in (root / "hyp.txt").read_text().splitlines()]
    refs = [[line.strip() for line in (root / f).read_text().splitlines()]
            for f in ("ref1.txt", "ref2.txt")]
    gts = {i: [r[i] for r in refs] for i in range(len(hyps))}
    res = {i: [h] for i, h in enumerate(hyps)}

    started = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self) -> None:
            super().__init__()
            started.append(self)

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    scores = score_tokenized(gts, res, CaptionEvalConfig(metrics=SEVEN))
    for name in SEVEN:
        assert scores.metrics[name] == pytest.approx(published[name], abs=1e-6), name
    # The METEOR JVM was shut down when scoring ended, not left for garbage collection.
    assert len(started) == 1 and started[0].meteor_p.poll() is not None


def test_spice_null_with_reason_when_jars_missing(tmp_path, monkeypatch):
    """No download is attempted; SPICE is None with the reason; CIDEr still computed."""
    import pycocoevalcap.spice.spice as spice_module

    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    (tmp_path / "lib").mkdir()
    monkeypatch.setattr(cap, "_spice_dir", lambda: tmp_path)
    monkeypatch.setattr(cap.shutil, "which", lambda name: "/usr/bin/java")

    def no_download() -> None:
        raise AssertionError("tried to download the CoreNLP jars")

    monkeypatch.setattr(spice_module, "get_stanford_models", no_download)
    reason = cap.spice_unavailable_reason()
    assert reason is not None and "stanford-corenlp-3.6.0.jar" in reason
    assert "stanford-corenlp-3.6.0-models.jar" in reason and str(tmp_path) in reason
    gts = {1: ["a man rides a horse", "a person on a horse"], 2: ["a red bus", "a bus"]}
    res = {1: ["a man on a horse"], 2: ["a red bus"]}
    scores = score_tokenized(gts, res, CaptionEvalConfig(metrics=("CIDEr", "SPICE")))
    assert scores.metrics["SPICE"] is None and scores.skipped["SPICE"] == reason
    assert scores.metrics["CIDEr"] > 0
    out = scores.to_json()
    assert list(out)[:8] == list(CAPTION_METRICS)
    assert out["skipped"]["Bleu_1"] == "not requested" and out["Bleu_1"] is None

    # With both jars present SPICE counts as available (and would run).
    for name in cap.SPICE_CORENLP_JARS:
        (tmp_path / "lib" / name).write_bytes(b"")
    assert cap.spice_unavailable_reason() is None


def test_spice_needs_java(monkeypatch):
    monkeypatch.setattr(cap.shutil, "which", lambda name: None)
    assert "java not on PATH" in cap.spice_unavailable_reason()


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


ANNOTATIONS = {"images": [{"id": 1}, {"id": 2}],
               "annotations": [{"image_id": 1, "id": 10, "caption": "a dog"},
                               {"image_id": 2, "id": 11, "caption": "a cat"}]}


def test_result_missing_an_image(tmp_path):
    ann = _write(tmp_path / "refs.json", ANNOTATIONS)
    res = _write(tmp_path / "res.json", [{"image_id": 1, "caption": "a dog"}])
    with pytest.raises(CaptionEvalError, match=r"res\.json: no result for image 2 of .*refs\.json"):
        evaluate_captions(ann, res)


def test_duplicate_image_in_results(tmp_path):
    res = _write(tmp_path / "res.json", [{"image_id": 1, "caption": "a"},
                                         {"image_id": 2, "caption": "b"},
                                         {"image_id": 1, "caption": "c"}])
    with pytest.raises(CaptionEvalError, match=r"res\.json: \[2\]: image 1 has more than one"):
        evaluate_captions(ANNOTATIONS, res)


def test_result_image_not_in_annotations(tmp_path):
    ann = _write(tmp_path / "refs.json", ANNOTATIONS)
    res = _write(tmp_path / "res.json", [{"image_id": 1, "caption": "a"},
                                         {"image_id": 2, "caption": "b"},
                                         {"image_id": 7, "caption": "c"}])
    with pytest.raises(CaptionEvalError, match=r"res\.json: image 7 is not in the annotations"):
        evaluate_captions(ann, res)


def test_malformed_inputs_name_the_record(tmp_path):
    res = _write(tmp_path / "res.json", [{"image_id": 1, "caption": 5}])
    with pytest.raises(ValueError, match=re.escape("res.json: record [0]: field 'caption'")):
        evaluate_captions(ANNOTATIONS, res)
    bad = {"images": [{"id": 1}, {"id": 3}], "annotations": ANNOTATIONS["annotations"][:1]}
    with pytest.raises(ValueError, match="image 3"):
        evaluate_captions(bad, [{"image_id": 1, "caption": "a"}])
    with pytest.raises(ValueError, match="unknown caption metrics"):
        CaptionEvalConfig(metrics=("BLEU",))
