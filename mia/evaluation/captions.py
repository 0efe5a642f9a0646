"""Caption metrics exactly as coco-caption computes them, through pycocoevalcap.

Same steps as ``pycocoevalcap.eval.COCOEvalCap``: the Stanford PTB tokenizer (Java) lowercases
and tokenises references and candidates and drops punctuation tokens; then BLEU-1..4 (``closest``
reference length), METEOR 1.5 (Java), ROUGE-L, CIDEr-D (pycocoevalcap's ``Cider`` class is the
CIDEr-D variant) and SPICE (Java + Stanford CoreNLP 3.6.0). Scores are on coco-caption's 0-1
scale; papers print them x100.

What differs from ``COCOEvalCap``, and why:

* inputs are checked first: every annotated image needs exactly one result and every result an
  annotated image, so a silently partial evaluation cannot happen (coco-caption would score only
  the result images, or crash with a bare ``KeyError``);
* SPICE needs CoreNLP jars that pycocoevalcap downloads at first use. Offline, we do not try:
  SPICE is reported as ``None`` with the reason (and how to fix it) in ``skipped``;
* the METEOR Java process is shut down when scoring ends instead of waiting for garbage
  collection, so repeated evaluations do not leak JVMs;
* references and candidates go through one tokenizer run (one JVM start instead of two; the
  tokenizer works line by line, so the tokens are the same).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia.data.errors import DataFormatError, load_json, load_records, require, require_list

CAPTION_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L",
                                    "CIDEr", "SPICE")

# The jars SPICE loads from pycocoevalcap/spice/lib (see spice/get_stanford_models.py).
SPICE_CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar",
                                       "stanford-corenlp-3.6.0-models.jar")


class CaptionEvalError(ValueError):
    """Results and annotations do not describe the same images."""


@dataclass(frozen=True)
class CaptionEvalConfig:
    """Which metrics to compute and whether to keep per-image scores."""

    metrics: tuple[str, ...] = CAPTION_METRICS
    per_image: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(CAPTION_METRICS))
        if unknown:
            raise ValueError(f"unknown caption metrics {unknown}; choose from {CAPTION_METRICS}")


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores (every metric of :data:`CAPTION_METRICS`; ``None`` = not computed, with the
    reason in ``skipped``) and optionally ``{image_id: {metric: score}}``."""

    metrics: dict[str, float | None]
    skipped: dict[str, str]
    num_images: int
    per_image: dict[int, dict[str, float]] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """The metrics file ``mia evaluate captions`` writes: the metrics at the top level, then
        ``skipped`` (metric -> reason) and ``num_images``."""
        return {**self.metrics, "skipped": dict(self.skipped), "num_images": self.num_images}


def _spice_dir() -> Path:
    # pycocoevalcap is a namespace package (no __init__); its spice subpackage has a file.
    from pycocoevalcap.spice import spice

    return Path(spice.__file__).resolve().parent


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or ``None`` when it can (Java and every jar present)."""
    if shutil.which("java") is None:
        return "java not on PATH (SPICE is a Java program)"
    spice_dir = _spice_dir()
    missing = [name for name in ("spice-1.0.jar",) if not (spice_dir / name).exists()]
    missing += [f"lib/{name}" for name in SPICE_CORENLP_JARS
                if not (spice_dir / "lib" / name).exists()]
    if missing:
        return (f"Stanford CoreNLP 3.6.0 jars missing from {spice_dir}: {', '.join(missing)}; "
                "they are downloaded by `python -m pycocoevalcap.spice.get_stanford_models` "
                "(needs internet), or copy them there from stanford-corenlp-full-2015-12-09.zip")
    return None


def load_references(annotations: str | os.PathLike | Mapping[str, Any]
                    ) -> tuple[dict[int, list[str]], str]:
    """``{image_id: [raw captions]}`` in the order of ``images`` and the source's name for errors.

    Every image must have at least one caption and every caption a listed image.
    """
    if isinstance(annotations, Mapping):
        data, source = annotations, "<annotations dict>"
    else:
        data, source = load_json(annotations), str(annotations)
    refs: dict[int, list[str]] = {}
    for i, image in enumerate(require_list(data, "images", source)):
        image_id = require(image, "id", int, source, f"images[{i}]")
        refs.setdefault(image_id, [])
    for i, ann in enumerate(require_list(data, "annotations", source)):
        rec = f"annotations[{i}]"
        image_id = require(ann, "image_id", int, source, rec)
        caption = require(ann, "caption", str, source, rec)
        if image_id not in refs:
            raise DataFormatError(source, rec, "image_id",
                                  f"image {image_id} is not in the file's images list")
        refs[image_id].append(caption)
    empty = [image_id for image_id, caps in refs.items() if not caps]
    if empty:
        raise DataFormatError(source, f"image {empty[0]}", "annotations",
                              f"{len(empty)} image(s) have no caption (first: {empty[0]}); "
                              "remove them from images or add their captions")
    return refs, source


def load_results(results: str | os.PathLike | Sequence[Mapping[str, Any]]
                 ) -> tuple[dict[int, str], str]:
    """``{image_id: caption}`` of a results list; a duplicated image id is an error."""
    data, source = load_records(results, '{"image_id": int, "caption": str}')
    out: dict[int, str] = {}
    for i, item in enumerate(data):
        rec = f"[{i}]"
        image_id = require(item, "image_id", int, source, rec)
        caption = require(item, "caption", str, source, rec)
        if image_id in out:
            raise CaptionEvalError(f"{source}: {rec}: image {image_id} has more than one result; "
                                   "keep one caption per image")
        out[image_id] = caption
    return out, source


def _check_same_images(refs: Mapping[int, list[str]], ref_source: str,
                       res: Mapping[int, str], res_source: str) -> None:
    extra = [i for i in res if i not in refs]
    if extra:
        raise CaptionEvalError(f"{res_source}: image {extra[0]} is not in the annotations "
                               f"{ref_source} ({len(extra)} such image(s)); evaluate against the "
                               "references of the split the captions were generated for")
    missing = [i for i in refs if i not in res]
    if missing:
        raise CaptionEvalError(f"{res_source}: no result for image {missing[0]} of {ref_source} "
                               f"({len(missing)} image(s) missing); every annotated image needs "
                               "one caption")


def tokenize(refs: Mapping[int, list[str]], res: Mapping[int, str]
             ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """coco-caption's PTB tokenisation of references and results, in one Java run."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from mia.evaluation.java import require_java

    require_java("coco-caption's PTB tokenizer")

    both: dict[tuple[str, int], list[dict[str, str]]] = {}
    for image_id, caps in refs.items():
        both[("gts", image_id)] = [{"caption": c} for c in caps]
    for image_id, cap in res.items():
        both[("res", image_id)] = [{"caption": cap}]
    tokens = PTBTokenizer().tokenize(both)
    # pycocoevalcap pairs output lines with captions by position: a caption holding a character
    # Java treats as a line break (e.g. "\r") would shift every later caption. Refuse instead.
    short = [k for k, caps in both.items() if len(tokens.get(k, ())) != len(caps)]
    if short:
        kind, image_id = short[0]
        what = "references" if kind == "gts" else "result"
        raise CaptionEvalError(f"PTB tokenizer output does not line up with the captions "
                               f"(first at image {image_id}, {what}): "
                               "a caption contains a line-break character such as \\r; remove it")
    gts = {image_id: tokens[("gts", image_id)] for image_id in refs}
    out = {image_id: tokens[("res", image_id)] for image_id in refs}
    return gts, out


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    """METEOR through pycocoevalcap's wrapper, its JVM shut down before returning."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    finally:
        proc = scorer.meteor_p
        with scorer.lock:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            proc.kill()
            proc.wait()
    return float(score), [float(s) for s in scores]


def _spice(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    import subprocess

    from pycocoevalcap.spice.spice import Spice

    try:
        score, scores = Spice().compute_score(gts, res)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"SPICE failed ({err}); SPICE 1.0 is known to need Java 8, or pass "
                           "--no-spice / leave SPICE out of the metrics") from err
    return float(score), [float(s["All"]["f"]) for s in scores]


def score_tokenized(gts: dict[int, list[str]], res: dict[int, list[str]],
                    config: CaptionEvalConfig) -> CaptionScores:
    """The metrics of already tokenised ``{image_id: [caption]}`` mappings (same keys)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    wanted = set(config.metrics)
    metrics: dict[str, float | None] = dict.fromkeys(CAPTION_METRICS)
    skipped = {m: "not requested" for m in CAPTION_METRICS if m not in wanted}
    image_ids = list(gts)
    per_image: dict[int, dict[str, float]] = {i: {} for i in image_ids}

    def keep(name: str, score: float, scores: Sequence[float]) -> None:
        metrics[name] = float(score)
        for image_id, s in zip(image_ids, scores, strict=True):
            per_image[image_id][name] = float(s)

    bleu_names = [m for m in CAPTION_METRICS[:4] if m in wanted]
    if bleu_names:
        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for k, name in enumerate(CAPTION_METRICS[:4]):
            if name in wanted:
                keep(name, score[k], scores[k])
    if "METEOR" in wanted:
        keep("METEOR", *_meteor(gts, res))
    if "ROUGE_L" in wanted:
        keep("ROUGE_L", *Rouge().compute_score(gts, res))
    if "CIDEr" in wanted:
        keep("CIDEr", *Cider().compute_score(gts, res))
    if "SPICE" in wanted:
        reason = spice_unavailable_reason()
        if reason is None:
            keep("SPICE", *_spice(gts, res))
        else:
            skipped["SPICE"] = reason
    return CaptionScores(metrics=metrics, skipped=skipped, num_images=len(image_ids),
                         per_image=per_image if config.per_image else None)


def evaluate_captions(annotations: str | os.PathLike | Mapping[str, Any],
                      results: str | os.PathLike | Sequence[Mapping[str, Any]],
                      config: CaptionEvalConfig | None = None) -> CaptionScores:
    """coco-caption metrics of ``results`` (``[{"image_id", "caption"}]``, one per annotated
    image) against COCO-format caption ``annotations`` (a path or the parsed dict)."""
    config = config or CaptionEvalConfig()
    refs, ref_source = load_references(annotations)
    res, res_source = load_results(results)
    _check_same_images(refs, ref_source, res, res_source)
    gts, out = tokenize(refs, res)
    return score_tokenized(gts, out, config)
