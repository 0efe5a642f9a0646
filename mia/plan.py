"""What a config will cost before anything runs: GPU-hours per job kind of every planned job.

``mia plan`` (:mod:`mia.plan_cli`) asks Snakemake which jobs a config plans (``snakemake -n``),
and prices each one with a FLOP model:

* the forward FLOPs of every model at the config's sizes, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (shapes only: no weights,
  no memory, a few seconds): captioners per caption of ``CAPTION_TOKENS`` tokens, the CNN per
  image (its frozen and trained parts apart), VQA models per question;
* a training step costs its forward three times (forward + backward); the CNN's frozen layers
  (conv1..layer1) once; validation and decoding once per token loop (beam search K times);
* the dataset sizes: Karpathy's COCO split (113,287 / 5,000 / 5,000 images, 5 captions each),
  COCO 2014 (123,287 images) and test2015 (81,434), VQA v2 (443,757 train, 214,354 val and
  447,793 test2015 questions); for the demo world, the sizes its config makes;
* FLOPs become hours at an assumed share of the device's bf16 peak per job kind
  (:data:`UTILISATION`; an H100 SXM: 989 TFLOP/s dense), replaced by the figures
  ``benchmarks/gpu.sh`` measured when given (``--throughput``).

CPU jobs (downloads, stores, the bottom-up TSV import, evaluation, the report) are listed with
no GPU-hours. The model is a plan, not a promise: its assumptions are printed with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

#: bf16 dense peak of the reference device (NVIDIA H100 SXM5 datasheet), FLOP/s.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
#: Share of the peak each job kind is assumed to reach, until gpu.sh measures it. Large
#: convolutions and matrix products run near their roofline; small-batch LSTMs and token loops
#: are bound by kernel launches (sequential steps of ~50-row matrix products).
UTILISATION: dict[str, float] = {
    "grid features (ResNet-152)": 0.40,
    "region features (bottom-up Faster R-CNN)": 0.30,
    "captioning XE: CNN fine-tuning": 0.35,
    "captioning XE: LSTM decoders + MIA": 0.10,
    "captioning XE: Transformer": 0.25,
    "captioning SCST": 0.05,
    "captioning validation + decoding": 0.05,
    "VQA training + answering": 0.30,
    "MIL concepts": 0.20,
}
#: Tokens a teacher-forced caption row costs: captions are cut to the longest of their batch;
#: Karpathy captions have 10.5 words on average, the longest of 80 about 20 (+ <bos>/<eos>).
CAPTION_TOKENS = 20


@dataclass(frozen=True)
class DatasetSizes:
    train_images: int = 113_287  # Karpathy train + restval
    val_images: int = 5_000
    test_images: int = 5_000
    captions_per_image: float = 5.0
    coco_images: int = 123_287  # train2014 + val2014: the grid and region features
    test2015_images: int = 81_434
    vqa_train: int = 443_757
    vqa_val: int = 214_354
    vqa_test2015: int = 447_793

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> DatasetSizes:
        """The paper's sizes, or the demo world's (``data.source: demo``)."""
        if config["data"].get("source") != "demo":
            return cls()
        from mia.data.demo import DemoConfig

        demo = DemoConfig(**config["data"].get("demo", {}))
        n = demo.num_images
        val, test = round(n * demo.val_fraction), round(n * demo.test_fraction)
        server = int(config["vqa"].get("server", {}).get("demo_images", 0))
        q = demo.questions_per_image
        return cls(train_images=n - val - test, val_images=val, test_images=test,
                   captions_per_image=demo.captions_per_image, coco_images=n,
                   test2015_images=server, vqa_train=(n - val - test) * q,
                   vqa_val=(val + test) * q, vqa_test2015=server * q)


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()


@dataclass
class JobCost:
    job: Job
    kind: str
    flops: dict[str, float]  # kind -> FLOPs (a job can span kinds: CNN + decoder)


# --------------------------------------------------------------------------- the jobs


def planned_jobs(configfiles: Sequence[str | os.PathLike], snakemake: str | None = None,
                 targets: Sequence[str] = (), directory: str | os.PathLike | None = None
                 ) -> list[Job]:
    """Every job ``snakemake -n`` plans for ``configfiles`` in ``directory`` (the workflow's
    working directory: jobs already done there are not planned, and the downloads registered
    there decide the region source); ``None``: a scratch directory, the whole paper."""
    exe = snakemake or shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    if not Path(exe).exists() and not shutil.which(exe):
        raise FileNotFoundError("mia plan asks Snakemake which jobs the config plans, but no "
                                "snakemake is installed: pip install -c constraints.txt -e "
                                "'.[workflow]' (or pass --snakemake PATH)")
    with tempfile.TemporaryDirectory(prefix="mia-plan-") as scratch:
        cmd = [exe, "-n", "-s", str(REPO_ROOT / "Snakefile"), "--directory",
               str(directory or scratch),
               "--configfile", *[str(Path(c).resolve()) for c in configfiles], *targets]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ValueError(f"snakemake -n failed on {', '.join(map(str, configfiles))}:\n"
                         + (done.stderr or done.stdout)[-3000:])
    return parse_dry_run(done.stdout + "\n" + done.stderr)


def parse_dry_run(text: str) -> list[Job]:
    """Jobs of a ``snakemake -n`` listing: each ``rule NAME:`` block and its ``wildcards:``."""
    jobs: list[Job] = []
    rule, wildcards, outputs = None, {}, ()
    for line in text.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if head:
            if rule is not None:
                jobs.append(Job(rule, wildcards, outputs))
            rule, wildcards, outputs = head.group(1), {}, ()
            continue
        found = re.match(r"^\s+wildcards: (.*)$", line)
        out = re.match(r"^\s+output: (.*)$", line)
        if found and rule is not None:
            wildcards = dict(part.split("=", 1) for part in found.group(1).split(", "))
        elif out and rule is not None:
            outputs = tuple(p.strip() for p in out.group(1).split(","))
        elif rule is not None and re.match(r"^\S", line) and not line.startswith(" "):
            jobs.append(Job(rule, wildcards, outputs))
            rule, wildcards, outputs = None, {}, ()
    if rule is not None:
        jobs.append(Job(rule, wildcards, outputs))
    return [j for j in jobs if j.rule != "all"]


# --------------------------------------------------------------------------- model FLOPs


def _count(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@cache
def captioner_flops(settings_json: str, vocab: int, n: int, tokens: int) -> float:
    """Forward FLOPs of one teacher-forced caption row of ``tokens`` tokens."""
    import torch

    from mia.captioning.config import CaptionerConfig
    from mia.captioning.models import build_captioner

    settings = json.loads(settings_json)
    cfg = CaptionerConfig.from_dict({**settings, "fine_tune_cnn_after_epoch": None})
    b = 2
    with torch.device("meta"):
        model = build_captioner(cfg, vocab)
        batch = {"features": torch.empty(b, n, cfg.feature_dim),
                 "feature_mask": torch.ones(b, n, dtype=torch.bool),
                 "concepts": torch.zeros(b, n, dtype=torch.long),
                 "concept_mask": torch.ones(b, n, dtype=torch.bool),
                 "captions": torch.zeros(b, tokens + 1, dtype=torch.long)}
        return _count(lambda: model(batch)) / b


@cache
def cnn_flops(cnn_json: str, size: int) -> tuple[float, float]:
    """Forward FLOPs of one image through the CNN: (frozen layers, trained layers)."""
    import torch

    from mia.captioning.config import CNNConfig
    from mia.captioning.finetune import GridCNN
    from mia.config import from_dict

    cfg = from_dict(CNNConfig, {**json.loads(cnn_json), "pretrained": False}, "cnn")
    with torch.device("meta"):
        cnn = GridCNN(cfg)
        x = torch.empty(1, 3, size, size)
        mid = cnn.frozen(x)
        return _count(lambda: cnn.frozen(x)), _count(lambda: cnn.tuned(mid))


@cache
def backbone_channels(backbone: str) -> int:
    """Channels of a ResNet trunk's last layer (the grid features' width)."""
    import torch

    from mia.features.backbone import build_resnet_trunk

    with torch.device("meta"):
        return build_resnet_trunk(backbone, False, 0)[1]


@cache
def backbone_flops(backbone: str, size: int) -> float:
    """Forward FLOPs of one image through a whole ResNet trunk (feature extraction)."""
    frozen, tuned = cnn_flops(json.dumps({"backbone": backbone, "resize": size, "crop": size}),
                              size)
    return frozen + tuned


@cache
def detector_flops() -> float:
    """Forward FLOPs of the bottom-up Faster R-CNN on one 600 x 800 image: ResNet-101 C4, the
    RPN head, res5 and the class/attribute heads on the kept proposals (features.regions.source:
    bottom_up)."""
    import torch

    from mia.features.bottom_up.config import FasterRCNNConfig
    from mia.features.bottom_up.model import BottomUpFasterRCNN

    cfg = FasterRCNNConfig()
    with torch.device("meta"):
        model = BottomUpFasterRCNN(cfg)
        x = torch.empty(1, 3, 600, 800)
        features = model.backbone(x)
        rois = cfg.rpn_post_nms_topk
        return (_count(lambda: model.backbone(x))
                + _count(lambda: model.proposal_generator.rpn_head(features))
                + _count(lambda: model.roi_heads.res5(torch.empty(rois, cfg.res4_channels, 14,
                                                                   14)))
                + _count(lambda: model.roi_heads.box_predictor(
                    torch.empty(rois, cfg.res5_channels))))


@cache
def vqa_flops(model_json: str, question_vocab: int, answers: int, concepts: int) -> float:
    """Forward FLOPs of one question (14 words, 36 regions)."""
    import torch

    from mia.vqa.config import VQAModelConfig
    from mia.vqa.models import build_vqa_model

    cfg = VQAModelConfig.from_dict(json.loads(model_json))
    b, n = 2, 36
    with torch.device("meta"):
        model = build_vqa_model(cfg, question_vocab, answers, concepts if cfg.uses_mia else None)
        batch = {"questions": torch.zeros(b, 14, dtype=torch.long),
                 "features": torch.empty(b, n, cfg.feature_dim),
                 "feature_mask": torch.ones(b, n, dtype=torch.bool),
                 "boxes": torch.rand(b, n, 4), "concepts": torch.zeros(b, n, dtype=torch.long),
                 "concept_mask": torch.ones(b, n, dtype=torch.bool)}
        return _count(lambda: model(batch)) / b


# --------------------------------------------------------------------------- costs


CNN_KIND = "captioning XE: CNN fine-tuning"


class CostModel:
    """FLOPs of each job of a config (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any], caption_vocab: int = 9_487,
                 question_vocab: int = 19_901, answers: int = 3_129) -> None:
        self.config = config
        self.sizes = DatasetSizes.of(config)
        self.caption_vocab, self.question_vocab, self.answers = (caption_vocab, question_vocab,
                                                                 answers)

    # settings as the workflow merges them (rules/common.smk: caption_settings, vqa_settings)
    def _caption(self, baseline: str, section: str) -> dict[str, Any]:
        c = self.config["captioning"]
        return {**c[section], **c["baselines"][baseline].get(section, {})}

    def _vqa(self, baseline: str, section: str) -> dict[str, Any]:
        v = self.config["vqa"]
        return {**v[section], **v["baselines"][baseline].get(section, {})}

    def _captioner(self, wc: Mapping[str, str]) -> tuple[dict[str, Any], int]:
        baseline = wc["baseline"]
        kind = self.config["captioning"]["baselines"][baseline]["features"]
        n = self.config["features"]["concepts"]["k"][kind]
        dim = (backbone_channels(self.config["features"]["grid"]["backbone"]) if kind == "grid"
               else int(self.config["features"]["regions"].get("feature_dim", 2048)))
        settings = {**self._caption(baseline, "model"), "baseline": baseline,
                    "variant": wc["variant"], "feature_dim": dim}
        return settings, n

    def _caption_row(self, wc: Mapping[str, str], tokens: int) -> float:
        settings, n = self._captioner(wc)
        return captioner_flops(json.dumps(settings, sort_keys=True), self.caption_vocab, n,
                               tokens)

    def cost(self, job: Job) -> JobCost:
        rule, wc, s = job.rule, job.wildcards, self.sizes
        flops: dict[str, float] = {}
        kind = "CPU"
        if rule in ("extract_grid_features", "extract_test_grid_features"):
            grid = self.config["features"]["grid"]
            images = s.coco_images if rule == "extract_grid_features" else s.test2015_images
            kind = "grid features (ResNet-152)"
            flops[kind] = images * backbone_flops(grid["backbone"], int(grid["image_size"]))
        elif (rule in ("extract_region_features", "extract_test_region_features")
              and self._detector(job)):
            kind = "region features (bottom-up Faster R-CNN)"
            images = s.coco_images if rule == "extract_region_features" else s.test2015_images
            flops[kind] = images * detector_flops()
        elif rule in ("build_concept_store", "build_test_concept_store"):
            c = self.config["features"]["concepts"]
            k = c["k"]["grid"]
            per_image = 2.0 * k * 2048 * c["vocab_size"]  # the MIL head over each grid cell
            kind = "MIL concepts"
            train = 3 * per_image * s.train_images * c["epochs"] if rule == "build_concept_store" \
                else 0.0
            flops[kind] = train + per_image * (s.coco_images if rule == "build_concept_store"
                                               else s.test2015_images)
        elif rule == "train_captioner":
            kind = self._train_captioner(wc, flops)
        elif rule == "train_captioner_scst":
            kind = self._train_scst(wc, flops)
        elif rule == "decode_captions":
            decode = self.config["captioning"]["decode"]
            split = s.test_images if wc.get("split", "test") == "test" else s.val_images
            kind = "captioning validation + decoding"
            flops[kind] = split * decode["beam_size"] * self._caption_row(
                wc, int(decode["max_length"]))
            flops.update(self._cnn_eval(wc, split))
        elif rule in ("train_vqa", "train_vqa_trainval", "answer_vqa", "answer_vqa_server"):
            kind = "VQA training + answering"
            flops[kind] = self._vqa_job(rule, wc)
        return JobCost(job, kind, flops)

    def _detector(self, job: Job) -> bool:
        """Whether the region store is made by the bottom-up detector: its planned output
        (``regions_bottom_up.h5``, what ``source: auto`` resolved to) or the configured
        source."""
        if job.outputs:
            return any(Path(o).name.startswith("regions_bottom_up.")
                       or Path(o).name.startswith("regions_bottom_up_test2015.")
                       for o in job.outputs)
        return self.config["features"]["regions"].get("source") == "bottom_up"

    def _cnn_eval(self, wc: Mapping[str, str], images: int) -> dict[str, float]:
        model = self._caption(wc["baseline"], "model")
        if model.get("fine_tune_cnn_after_epoch") is None:
            return {}
        cnn = model.get("cnn", {})
        frozen, tuned = cnn_flops(json.dumps(cnn, sort_keys=True), int(cnn.get("crop", 224)))
        return {CNN_KIND: images * (frozen + tuned)}

    def _train_captioner(self, wc: Mapping[str, str], flops: dict[str, float]) -> str:
        s = self.sizes
        train = self._caption(wc["baseline"], "train")
        model = self._caption(wc["baseline"], "model")
        epochs = int(train["epochs"])
        captions = s.train_images * s.captions_per_image
        kind = ("captioning XE: Transformer" if wc["baseline"] == "transformer"
                else "captioning XE: LSTM decoders + MIA")
        flops[kind] = 3 * captions * epochs * self._caption_row(wc, CAPTION_TOKENS)
        flops["captioning validation + decoding"] = (
            epochs * s.val_images * int(train.get("val_beam_size", 1))
            * self._caption_row(wc, int(train.get("max_length", 19))))
        after = model.get("fine_tune_cnn_after_epoch")
        if after is not None:
            cnn = model.get("cnn", {})
            frozen, tuned = cnn_flops(json.dumps(cnn, sort_keys=True), int(cnn.get("crop", 224)))
            by_image = train.get("batch_by", "auto") in ("auto", "image")
            per_epoch = s.train_images if by_image else captions
            fixed = min(int(after), epochs)
            flops[CNN_KIND] = per_epoch * (fixed * (frozen + tuned)
                                           + (epochs - fixed) * (frozen + 3 * tuned))
            flops[CNN_KIND] += epochs * s.val_images * (frozen + tuned)
        return kind

    def _train_scst(self, wc: Mapping[str, str], flops: dict[str, float]) -> str:
        s = self.sizes
        scst = self._caption(wc["baseline"], "scst")
        epochs, k = int(scst["epochs"]), int(scst.get("samples_per_image", 5))
        steps = int(scst.get("max_length", 20))
        row = self._caption_row(wc, steps)
        greedy = 1 if scst.get("baseline", "greedy") == "greedy" else 0
        kind = "captioning SCST"
        flops[kind] = epochs * s.train_images * (3 * k + greedy) * row
        flops["captioning validation + decoding"] = epochs * s.val_images * row
        return kind

    def _vqa_job(self, rule: str, wc: Mapping[str, str]) -> float:
        s = self.sizes
        model = {**self._vqa(wc["baseline"], "model"), "baseline": wc["baseline"],
                 "variant": wc["variant"],
                 "feature_dim": int(self.config["features"]["regions"].get("feature_dim", 2048))}
        per_question = vqa_flops(json.dumps(model, sort_keys=True), self.question_vocab,
                                 self.answers, int(self.config["features"]["concepts"]
                                                   ["vocab_size"]))
        train = self._vqa(wc["baseline"], "train")
        if rule == "answer_vqa":
            return s.vqa_val * per_question
        if rule == "answer_vqa_server":
            return s.vqa_test2015 * per_question
        epochs = int(train["epochs"])
        if rule == "train_vqa_trainval":
            return 3 * (s.vqa_train + s.vqa_val) * epochs * per_question
        return (3 * s.vqa_train + s.vqa_val) * epochs * per_question


# --------------------------------------------------------------------------- the plan


@dataclass
class KindTotal:
    kind: str
    jobs: int = 0
    flops: float = 0.0
    utilisation: float = 0.0
    measured: bool = False

    @property
    def hours(self) -> float:
        if not self.flops:
            return 0.0
        return self.flops / (self.utilisation * PEAK) / 3600


PEAK = PEAK_FLOPS["H100"]


@dataclass
class Plan:
    jobs: list[JobCost]
    kinds: list[KindTotal]
    device: str
    measured_from: str | None

    @property
    def total_hours(self) -> float:
        return sum(k.hours for k in self.kinds)

    @property
    def total_flops(self) -> float:
        return sum(k.flops for k in self.kinds)


def read_throughput(path: str | os.PathLike | None) -> dict[str, float]:
    """``{kind: share of the bf16 peak}`` measured by ``benchmarks/gpu.sh`` (training_step
    writes ``throughput.json``), or nothing."""
    if path is None:
        return {}
    data = json.loads(Path(path).read_text())
    shares = data.get("utilisation", data)
    unknown = sorted(set(shares) - set(UTILISATION))
    if unknown:
        raise ValueError(f"{path}: unknown job kind(s) {unknown}; known: {sorted(UTILISATION)}")
    return {k: float(v) for k, v in shares.items()}


def make_plan(jobs: Iterable[Job], config: Mapping[str, Any],
              measured: Mapping[str, float] | None = None, measured_from: str | None = None
              ) -> Plan:
    model = CostModel(config)
    costs = [model.cost(job) for job in jobs]
    measured = dict(measured or {})
    totals: dict[str, KindTotal] = {}
    for cost in costs:
        totals.setdefault(cost.kind, KindTotal(cost.kind)).jobs += 1
        for kind, value in cost.flops.items():
            totals.setdefault(kind, KindTotal(kind)).flops += value
    for total in totals.values():
        if total.kind in measured:
            total.utilisation, total.measured = measured[total.kind], True
        else:
            total.utilisation = UTILISATION.get(total.kind, 0.0)
    order = [*UTILISATION, "CPU"]
    kinds = sorted(totals.values(), key=lambda k: order.index(k.kind) if k.kind in order else 99)
    return Plan(costs, kinds, "H100 (989 TFLOP/s bf16 dense)", measured_from)


def format_plan(plan: Plan, config_names: Sequence[str], budget_hours: float = 24.0) -> str:
    lines = [f"GPU-hours of every job `snakemake -n` plans for {' + '.join(config_names)} "
             f"({len(plan.jobs)} jobs), on one {plan.device}:", "",
             "| job kind | jobs | PFLOP | share of bf16 peak | H100-hours |",
             "|---|---:|---:|---:|---:|"]
    for k in plan.kinds:
        share = (f"{k.utilisation:.0%} (measured)" if k.measured else
                 f"{k.utilisation:.0%} (assumed)") if k.flops else "-"
        jobs = str(k.jobs) if k.jobs else "(in the XE jobs)"
        lines.append(f"| {k.kind} | {jobs} | {k.flops / 1e15:,.1f} | {share} | "
                     f"{k.hours:,.1f} |")
    lines.append(f"| **total** | {len(plan.jobs)} | {plan.total_flops / 1e15:,.1f} | | "
                 f"**{plan.total_hours:,.1f}** |")
    lines += ["", "Assumptions: forward FLOPs counted on the meta device at the config's sizes; "
              "a training step = 3 forwards (the CNN's frozen layers: 1); teacher-forced "
              f"captions of {CAPTION_TOKENS} tokens; Karpathy COCO 113,287 train images x 5 "
              "captions, 5,000 val (validated every epoch), 5,000 test; VQA v2 443,757 train / "
              "214,354 val / 447,793 test2015 questions; shares of the peak "
              + ("measured by benchmarks/gpu.sh where marked, " if plan.measured_from else "")
              + "assumed elsewhere (`mia plan --throughput FILE` takes the measured ones: "
              "benchmarks/gpu.sh writes throughput.json). CPU jobs count no GPU-hours."]
    top = sorted((k for k in plan.kinds if k.hours), key=lambda k: -k.hours)
    if top:
        where = ", ".join(f"{k.kind} {k.hours / plan.total_hours:.0%}" for k in top[:3])
        lines += ["", f"Where the hours go: {where}."]
    if plan.total_hours > budget_hours:
        lines += ["", f"Above {budget_hours:g} H100-hours. Options (each changes the recipe; "
                  "the config keeps the reference's defaults):",
                  "* `seeds.default: [123]` is one seed per run; every seed added repeats it;",
                  "* `captioning.baselines.<b>.model.fine_tune_cnn_after_epoch: null` keeps the "
                  "precomputed grid features (no CNN fine-tuning; the released recipe tunes "
                  "from epoch 9);",
                  "* `captioning.train.epochs` / `captioning.baselines.<b>.scst.epochs` below "
                  "the reference's 30 / 20-35;",
                  "* `captioning.scst.decode_step: fixed` or `compiled` (same recipe, fewer "
                  "host syncs; its speed-up is measured by gpu.sh)."]
    return "\n".join(lines)
