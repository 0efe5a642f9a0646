"""Training a Table 3 VQA model on the shared loop (:mod:`mia.training.loop`).

What is particular to VQA lives here: Adamax with the references' learning rates, the soft-score
BCE loss, and validation by the OFFICIAL VQA accuracy of the val answers
(:func:`mia.evaluation.vqa.evaluate_vqa` against the raw val questions and annotations), so the
number that selects ``best.pt`` is the number the paper's tables report. Checkpoints, resume,
signals, gradient clipping, the non-finite guard and ``history.json`` are the loop's.

The two references:

* Up-Down (hengyuan-hu/bottom-up-attention-vqa ``train.py``): ``Adamax(params)`` at PyTorch's
  default rate 2e-3, gradient norm clipped at 0.25, 30 epochs, batch 512, validation every epoch,
  the best epoch kept: ``lr_schedule: constant``.
* BAN (jnhwkim/ban-vqa ``train.py``): Adamax 1e-3 with a gradual warm-up (x0.5, 1, 1.5, 2 over
  the first four epochs), then x0.25 at its 0-based epochs 10, 12, 14, 16, 18; clip 0.25;
  13 epochs; batch 256: ``lr_schedule: warmup_step`` (:func:`learning_rate`).

Two modes, chosen by ``train_splits``:

* ``[train]``: the local runs. After each epoch the val answers are scored; ``history.json``
  gets ``val_accuracy`` (overall, percent) and ``val_accuracy_<answer type>`` (``yes/no``,
  ``number``, ``other``), plus the references' soft score ``val_soft_score``; ``best.pt`` is the
  epoch of the best ``val_accuracy`` (ties keep the earlier epoch).
* ``[train, val]`` (BAN's ``--use_both``; the evaluation-server runs): no split is left to
  validate on, so nothing is selected: every epoch "validates" by returning
  ``trainval_epoch`` = its number, the loop's selection key, which grows each epoch, so
  ``best.pt`` always holds the LAST epoch, as the reference submits its final model. The history
  then has no ``val_*`` keys, only ``train_soft_score`` (both modes record it: the mean soft
  score of the argmax answers over the epoch's training batches, in train mode, as the
  references' "train score").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mia.config import from_dict
from mia.data.errors import load_json
from mia.data.loaders import prefetch
from mia.evaluation.vqa import evaluate_vqa
from mia.runtime import move_batch, resolve_device, seed_everything
from mia.training.loop import FitResult, LoopSettings, TrainingTask, ValidationInterrupted, fit
from mia.training.precision import check_precision, float32_region
from mia.training.step import adamax_options
from mia.vqa.config import VQAModelConfig
from mia.vqa.models import build_vqa_model, soft_accuracy
from mia.vqa.predict import predict, results_list

log = logging.getLogger(__name__)

#: The splits a run may train on (``test`` has no answers).
TRAIN_SPLITS = ("train", "val")
#: The selection key of each mode (see the module docstring).
VAL_SCORE_KEY = "val_accuracy"
TRAINVAL_SCORE_KEY = "trainval_epoch"


@dataclass
class VQATrainConfig:
    """One VQA training run (``vqa.train`` of the workflow config, with the baseline's overrides).

    Learning rate (Adamax, ``betas``/``eps``/``weight_decay`` as ``torch.optim.Adamax``'s
    defaults):

    * ``constant``: ``lr`` throughout (Up-Down: ``Adamax(params)``, i.e. 2e-3);
    * ``warmup_step``: in 1-based epoch e <= len(warmup_factors), ``warmup_factors[e-1] * lr``;
      afterwards the last warm-up rate, multiplied by ``lr_decay_factor`` at the start of each
      epoch listed in ``lr_decay_epochs`` (1-based; BAN's ``range(10, 20, 2)`` over 0-based
      epochs is ``[11, 13, 15, 17, 19]`` here). A decay epoch inside the warm-up is ignored,
      as the reference's ``if warm-up ... elif decay`` ignores it.

    ``train_splits``: ``[train]`` validates on val each epoch and keeps the best epoch;
    ``[train, val]`` trains on both, validates nothing and keeps the last epoch.
    """

    model: VQAModelConfig = field(default_factory=VQAModelConfig)
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3  # torch.optim.Adamax's default, what Up-Down's reference trains with
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "warmup_step"] = "constant"
    warmup_factors: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # warmup_step only
    lr_decay_epochs: tuple[int, ...] = (11, 13, 15, 17, 19)  # warmup_step only, 1-based
    lr_decay_factor: float = 0.25  # warmup_step only
    grad_clip_norm: float = 0.25  # both references; 0 disables
    train_splits: tuple[str, ...] = ("train",)
    seed: int = 123
    val_batch_size: int = 512  # validation and answering
    prefetch_batches: int = 2  # batches gathered ahead by a background thread (0: none)
    checkpoint_every: int = 1000  # steps between last.pt snapshots (0: only at epoch ends)
    log_every: int = 100  # steps between progress lines in the log (0: none)
    max_nonfinite_steps: int = 5  # non-finite loss/gradient steps skipped before training fails
    device: str = "auto"  # "auto" = cuda when available
    progress: bool | Literal["auto"] = "auto"  # progress bars: on a terminal only by default
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # YAML gives lists
        check_precision(self.precision, "vqa.train.precision")
        self.warmup_factors = tuple(self.warmup_factors)
        self.lr_decay_epochs = tuple(self.lr_decay_epochs)
        self.train_splits = tuple(self.train_splits)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"vqa.train.betas: expected two numbers in [0, 1), got {self.betas}")
        for name in ("epochs", "batch_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"vqa.train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("prefetch_batches", "checkpoint_every", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"vqa.train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.eps <= 0 or self.lr_decay_factor <= 0:
            raise ValueError("vqa.train.lr, eps and lr_decay_factor must be > 0, got "
                             f"{self.lr}, {self.eps}, {self.lr_decay_factor}")
        if self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise ValueError("vqa.train.weight_decay and grad_clip_norm must be >= 0")
        if self.lr_schedule not in ("constant", "warmup_step"):
            raise ValueError(f"vqa.train.lr_schedule: {self.lr_schedule!r} is not 'constant' "
                             "(Up-Down) or 'warmup_step' (BAN)")
        if any(f <= 0 for f in self.warmup_factors):
            raise ValueError(f"vqa.train.warmup_factors: must be > 0, got {self.warmup_factors}")
        if any(e < 1 for e in self.lr_decay_epochs):
            raise ValueError(f"vqa.train.lr_decay_epochs: 1-based epochs, got "
                             f"{self.lr_decay_epochs}")
        bad = [s for s in self.train_splits if s not in TRAIN_SPLITS]
        if bad or not self.train_splits or len(set(self.train_splits)) != len(self.train_splits):
            raise ValueError(f"vqa.train.train_splits: {list(self.train_splits)} must be distinct "
                             f"names of {list(TRAIN_SPLITS)}, e.g. [train] (validated on val) or "
                             "[train, val] (the evaluation-server runs)")
        if self.progress not in (True, False, "auto"):
            raise ValueError(f"vqa.train.progress: {self.progress!r} is not true, false or auto")

    @property
    def validates(self) -> bool:
        """Whether val is held out (and scored each epoch) or trained on."""
        return "val" not in self.train_splits

    @property
    def score_key(self) -> str:
        return VAL_SCORE_KEY if self.validates else TRAINVAL_SCORE_KEY

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "vqa.train") -> VQATrainConfig:
        values = dict(values)
        model = values.pop("model", {})
        if not isinstance(model, VQAModelConfig):
            model = VQAModelConfig.from_dict(model, f"{where}.model")
        return from_dict(cls, {**values, "model": model}, where)


def learning_rate(cfg: VQATrainConfig, epoch: int) -> float:
    """The Adamax rate of 1-based ``epoch`` (constant within an epoch, as in both references)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warmup = cfg.warmup_factors
    if epoch <= len(warmup):
        return warmup[epoch - 1] * cfg.lr
    peak = cfg.lr * (warmup[-1] if warmup else 1.0)
    decays = sum(1 for d in cfg.lr_decay_epochs if len(warmup) < d <= epoch)
    return peak * cfg.lr_decay_factor ** decays




def loop_settings(cfg: VQATrainConfig) -> LoopSettings:
    return LoopSettings(epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every,
                        log_every=cfg.log_every, progress=cfg.progress,
                        grad_clip_norm=cfg.grad_clip_norm,
                        max_nonfinite_steps=cfg.max_nonfinite_steps, score_key=cfg.score_key,
                        score_name=(f"{cfg.score_key} (%)" if "accuracy" in cfg.score_key
                                    else ""),
                        precision=cfg.precision)


class VQATask(TrainingTask):
    """Soft-score BCE on ``VQAData`` batches of ``train_splits``; selection as the module says.

    ``val_questions``/``val_annotations``: the raw VQA v2 val files (paths or parsed dicts), read
    once; required when the run validates.
    """

    def __init__(self, cfg: VQATrainConfig, data: Any, inputs: str = "the input stores",
                 glove: str | os.PathLike | None = None,
                 val_questions: str | os.PathLike | Mapping[str, Any] | None = None,
                 val_annotations: str | os.PathLike | Mapping[str, Any] | None = None,
                 fresh: bool = True) -> None:
        self.cfg = cfg
        self.data = data
        self.inputs = inputs
        if cfg.model.uses_mia and data.concept_words is None:
            raise ValueError(f"vqa/{cfg.model.baseline}/{cfg.model.variant} needs concepts: "
                             "build VQAData with a concept store (concepts_h5=...)")
        self.concept_words = list(data.concept_words) if cfg.model.uses_mia else None
        seed_everything(cfg.seed)
        model = build_vqa_model(cfg.model, len(data.question_vocab), data.n_answers,
                                len(self.concept_words) if self.concept_words else None)
        if glove is not None and fresh:  # a resumed run has trained embeddings in last.pt
            found = model.init_word_vectors(glove, data.question_vocab, self.concept_words)
            log.info("GloVe %s: %s", glove, found)
        if cfg.model.tfidf_embedding and fresh:
            if getattr(data, "tfidf", None) is None:
                raise ValueError(f"vqa/{cfg.model.baseline}: vqa.model.tfidf_embedding needs the "
                                 "question co-occurrence matrix in vqa.h5; set "
                                 "preprocess.vqa.tfidf_questions (e.g. [train, val, test2015]) "
                                 "and rebuild the store")
            model.question.init_tfidf(data.tfidf)
            log.info("tf-idf question embedding: T @ the %s embedding (%d co-occurrences)",
                     "GloVe" if glove is not None else "initial", len(data.tfidf.values))
        self.model = model.to(resolve_device(cfg.device))
        place = getattr(data, "place", None)
        if callable(place):  # features on the GPU when they fit (mia.data.loaders)
            log.info("features: %s", place(self.device))
        self.optimizer = torch.optim.Adamax(
            [p for p in self.model.parameters() if p.requires_grad], lr=learning_rate(cfg, 1),
            betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
            **adamax_options(self.device))
        self.questions = self.annotations = None
        if cfg.validates:
            if val_questions is None or val_annotations is None:
                raise ValueError("vqa.train.train_splits leaves val out, so every epoch is scored "
                                 "on it: pass val_questions and val_annotations (the raw VQA v2 "
                                 "val files)")
            self.questions = (val_questions if isinstance(val_questions, Mapping)
                              else load_json(val_questions))
            self.annotations = (val_annotations if isinstance(val_annotations, Mapping)
                                else load_json(val_annotations))
        # Training soft score of the epoch so far (saved in last.pt: a resumed epoch continues it).
        # The sum stays on the device between checkpoints: reading it per step would be a sync.
        self._score_epoch, self._score_sum, self._score_count = 0, 0.0, 0
        self._score_pending: list[Tensor] = []

    def meta(self) -> dict[str, Any]:
        return {"vqa_model": dataclasses.asdict(self.cfg.model),
                "question_vocab": list(self.data.question_vocab),
                "answer_vocab": list(self.data.answer_vocab),
                "concept_words": self.concept_words,
                "train_splits": list(self.cfg.train_splits)}

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        batches = self.data.train_batches(epoch, self.cfg.batch_size, self.cfg.seed, start=start,
                                          splits=self.cfg.train_splits)
        depth = self.cfg.prefetch_batches
        return prefetch(batches, depth) if depth else batches

    def num_batches(self, epoch: int) -> int | None:
        return self.data.num_train_batches(self.cfg.batch_size, self.cfg.train_splits)

    def set_learning_rate(self, epoch: int, global_step: int) -> float:
        lr = learning_rate(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def loss(self, batch: Any, epoch: int) -> tuple[Tensor, dict[str, float]]:
        batch = move_batch(batch, self.device)
        logits = self.model(batch)  # (B, n_answers)
        target = batch["target"]
        with float32_region(logits.device.type):
            score = soft_accuracy(logits.detach().float(), target)  # (B,)
            loss = self.model.loss(logits.float(), target)
        if epoch != self._score_epoch:
            self._score_epoch, self._score_sum, self._score_count = epoch, 0.0, 0
            self._score_pending = []
        self._score_pending.append(score.sum())
        self._score_count += len(score)
        return loss, {"soft_score": score.mean()}

    def _settle_scores(self) -> None:
        """Add the pending per-step score sums, in step order, on the host (one transfer)."""
        if self._score_pending:
            for value in torch.stack(self._score_pending).tolist():
                self._score_sum += value
            self._score_pending = []

    def _train_score(self, epoch: int) -> float:
        self._settle_scores()
        if epoch != self._score_epoch or not self._score_count:
            return float("nan")
        return 100.0 * self._score_sum / self._score_count

    def validate(self, epoch: int, should_stop: Callable[[], bool]) -> dict[str, float]:
        metrics = {"train_soft_score": self._train_score(epoch)}
        if not self.cfg.validates:
            return {**metrics, TRAINVAL_SCORE_KEY: float(epoch)}
        preds = predict(self.model, self.data, "val", self.cfg.val_batch_size, should_stop)
        if preds is None:
            raise ValidationInterrupted
        accuracy = evaluate_vqa(self.questions, self.annotations,  # type: ignore[arg-type]
                                results_list(preds, self.data.answer_vocab))
        metrics[VAL_SCORE_KEY] = float(accuracy["overall"])
        for answer_type, value in sorted(accuracy["perAnswerType"].items()):
            metrics[f"{VAL_SCORE_KEY}_{answer_type}"] = float(value)
        metrics["val_soft_score"] = 100.0 * float(preds.soft_scores.mean())
        return metrics

    def best_checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {"model": self.model.state_dict(), **self.meta(), "epoch": epoch,
                "metrics": {k: float(v) for k, v in metrics.items()}}

    def extra_state(self) -> dict[str, Any]:
        self._settle_scores()
        return {"score_epoch": self._score_epoch, "score_sum": self._score_sum,
                "score_count": self._score_count}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._score_epoch = int(state.get("score_epoch", 0))
        self._score_sum = float(state.get("score_sum", 0.0))
        self._score_count = int(state.get("score_count", 0))
        self._score_pending = []

    def describe_inputs(self) -> str:
        return self.inputs

    def batch_description(self, batch: Any) -> str:
        ids = batch["question_ids"].tolist()
        return f"question ids {ids[:8]}{' ...' if len(ids) > 8 else ''}"


def train_vqa(cfg: VQATrainConfig, data: Any, out_dir: str | os.PathLike,
              glove: str | os.PathLike | None = None, inputs: str = "the input stores",
              val_questions: str | os.PathLike | Mapping[str, Any] | None = None,
              val_annotations: str | os.PathLike | Mapping[str, Any] | None = None
              ) -> FitResult:
    """Train ``cfg.model`` on ``data`` (a :class:`mia.data.loaders.VQAData`) into ``out_dir``.

    Resumes from ``out_dir/last.pt``; raises :class:`mia.training.Preempted` on a stop signal.
    ``glove``: a GloVe text file initialising the question (and concept) word embeddings, read
    on a fresh start only. ``inputs`` names the stores for error messages.
    """
    out_dir = Path(out_dir)
    task = VQATask(cfg, data, inputs, glove, val_questions, val_annotations,
                   fresh=not (out_dir / "last.pt").exists())
    return fit(task, loop_settings(cfg), out_dir)
