"""Self-critical sequence training (SCST): the pieces one training step needs.

What ruotianluo/self-critical.pytorch does (captioning/modules/loss_wrapper.py, losses.py
``RewardCriterion``, utils/rewards.py, scripts/prepro_ngrams.py), reproduced here:

* k = 5 captions sampled per image (multinomial, train mode, dropout on), with the
  log-probability of every token, ``<eos>`` included, tokens after ``<eos>`` padded and masked;
* baseline ``greedy`` ("sc", Rennie et al.): the greedy caption decoded in EVAL mode under
  ``no_grad`` (then train mode again); or ``mean_of_others`` ("new self-critical"): for sample i
  the mean score of the other k-1 samples of its image;
* reward = CIDEr-D(sample) - baseline, the same number for every token of the sample;
* loss = ``-sum(logp(token) * reward * mask) / sum(mask)``: one mean over every kept token of
  the batch (not per caption), the mask keeping each caption up to and including ``<eos>``.

The CIDEr-D reward (``get_self_critical_reward`` with ruotianluo/cider's ``CiderD``):

* document frequencies and the log reference count come from the TRAINING references
  (train + restval, ``prepro_ngrams.py --split train``), every caption with ALL its tokens
  (uncut), words outside the vocabulary as the unknown token, and ``<eos>`` appended;
* the references of a batch are its label rows (``prepro_labels.py``: out-of-vocabulary words as
  the unknown token, cut at 16 words), written as token ids up to and including the first end
  token (``array_to_str``): a caption shorter than 16 words ends with ``<eos>``, one of 16 words
  or more (its row is full) has none (:func:`reward_references`);
* candidates likewise: up to and including the first ``<eos>``; a sample that ran to the length
  limit has no ``<eos>``;
* so ``<eos>`` is an ordinary word for the n-grams ("w <eos>" bigrams reward good endings) and
  for the length penalty; CIDEr-D itself is coco-caption's (sigma 6, clipped counts, x10).

What a model must provide (the decoder protocol, shared with beam search and
:mod:`mia.captioning.sampling`; docs/CONTRACTS.md): ``model.encode(batch)`` -> an encoded image;
``model.decoder.prepare(encoded)`` -> a context with ``memory`` (B, n, d) and
``repeat_interleave(k)``; ``model.decoder.init_state(ctx)`` -> a tuple of batch-first tensors;
``model.decoder.step(words (B,), state, ctx)`` -> (logits (B, V), new state). Every captioner of
:mod:`mia.captioning.models` does.

Public pieces: :func:`scst_rewards` (the samples of one batch with every sample's CIDEr-D,
baseline and reward, for analysis), :func:`scst_step` (the loss built from them),
:func:`baseline_scores`, :func:`reward_loss`, :class:`SCSTScorer`.

Here the scorer is :class:`mia.evaluation.cider.CiderD`, built ONCE per run from these
references with the document frequencies of a file computed once per captions store
(:func:`write_store_document_frequency`, the workflow's ``cider_document_frequency`` rule:
``python -m mia.captioning.scst --captions captions.h5 --out cider_df_train.npz``). The
training run itself is :mod:`mia.captioning.scst_train`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mia.captioning.sampling import EOS, PAD, Rollout, greedy_captions, sample_captions
from mia.captioning.step_capture import check_step_mode
from mia.config import from_dict
from mia.data.karpathy import KarpathyImage, read_karpathy
from mia.evaluation.cider import CiderD, CiderDConfig, DocumentFrequency
from mia.evaluation.cider_df import load_document_frequency, save_document_frequency
from mia.training.precision import check_precision, float32_region
from mia.training.sync_count import host_array

EOS_WORD, UNK_WORD = "<eos>", "<unk>"
Baseline = Literal["greedy", "mean_of_others"]


@dataclass
class SCSTConfig:
    """One SCST phase, started from the cross-entropy model (:mod:`mia.captioning.scst_train`).

    Defaults: configs/updown/updown_sc.yml with the reference's option defaults (Adam 0.9/0.999,
    eps 1e-8, gradients clamped at 0.1, 10 images x 5 samples a batch, lr 5e-5 constant for the
    epochs 30..50 = 20). The Transformer recipe (configs/transformer/transformer_sc.yml) differs
    in ``lr`` (1e-5), ``lr_schedule`` ("plateau") and ``epochs`` (35: 15..50).

    ``plateau``: torch's ReduceLROnPlateau as the reference calls it (mode "min" on -CIDEr-D,
    threshold 1e-4 relative, no cooldown), stepped after each validation. The reference validates
    every 3,000 iterations and waits ``patience`` 3 bad validations: a reduction after ~12,000
    iterations without improvement, about one epoch of 11,329 (113,287 images / 10). Here
    validation is per epoch, so ``plateau_patience`` counts epochs and its default 0 (reduce
    after the first epoch without improvement) is the nearest translation.

    Validation (selection of ``best.pt``): val CIDEr-D of beam search with ``val_beam_size`` (the
    reference: 1, greedy) and ``max_length`` steps. ``checkpoint_every``, ``log_every``,
    ``progress``, ``max_nonfinite_steps``, ``precision``: as
    :class:`mia.captioning.config.TrainConfig`.

    ``optimizer_state``: ``carry`` (the reference) starts Adam from the XE optimiser's state saved
    with the XE model (moments, step counts, and its betas/eps/weight decay, as
    ``optimizer.load_state_dict`` restores them in self-critical.pytorch; ``betas``, ``eps`` and
    ``weight_decay`` here then only apply to ``fresh``); ``fresh`` starts a new Adam.

    ``decode_step``: how the token loops of sampling, the greedy baseline and validation run
    (:mod:`mia.captioning.step_capture`): ``eager`` (a host check per token, the reference's
    loop), ``fixed`` (all ``max_length`` steps, no host check: one synchronisation per step, to
    score the samples) or ``compiled`` (``fixed`` with the decoder step compiled).
    """

    samples_per_image: int = 5  # train_sample_n
    baseline: Baseline = "greedy"  # "sc"; "mean_of_others" = new self-critical (nsc)
    lr: float = 5e-5
    epochs: int = 20  # self_critical_after 30 .. max_epochs 50
    batch_size: int = 10  # images per step
    max_length: int = 20  # tokens a sample may have, <eos> included (reference max_length)
    temperature: float = 1.0
    grad_clip_mode: Literal["value", "norm"] = "value"
    grad_clip: float = 0.1  # 0 disables clipping
    lr_schedule: Literal["constant", "plateau"] = "constant"
    plateau_factor: float = 0.5  # reduce_on_plateau_factor, on validation CIDEr-D
    plateau_patience: int = 0  # epochs without improvement before a reduction (see above)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    optimizer_state: Literal["carry", "fresh"] = "carry"  # the XE Adam state (reference) or new
    seed: int = 123
    val_beam_size: int = 1
    val_batch_size: int = 100
    checkpoint_every: int = 1000  # steps between last.pt snapshots (0: only at epoch ends)
    log_every: int = 100  # steps between progress lines in the log (0: none)
    max_nonfinite_steps: int = 5
    device: str = "auto"  # "auto" = cuda when available
    progress: bool | Literal["auto"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    decode_step: Literal["eager", "fixed", "compiled"] = "eager"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # YAML gives a list
        if len(self.betas) != 2:
            raise ValueError(f"scst.betas: expected two numbers, got {list(self.betas)}")
        check_precision(self.precision, "scst.precision")
        check_step_mode(self.decode_step, "scst.decode_step")
        if self.baseline not in ("greedy", "mean_of_others"):
            raise ValueError(f"scst.baseline: {self.baseline!r} is not 'greedy' or "
                             "'mean_of_others'")
        if self.samples_per_image < 1:
            raise ValueError(f"scst.samples_per_image: must be >= 1, got "
                             f"{self.samples_per_image}")
        if self.baseline == "mean_of_others" and self.samples_per_image < 2:
            raise ValueError("scst.samples_per_image: the scst.baseline 'mean_of_others' needs "
                             "samples_per_image >= 2 (each sample's baseline is the mean reward "
                             f"of the others), got {self.samples_per_image}")
        for name in ("epochs", "batch_size", "max_length", "val_beam_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"scst.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("plateau_patience", "checkpoint_every", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"scst.{name}: must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"scst.lr and scst.temperature must be > 0, got lr={self.lr}, "
                             f"temperature={self.temperature}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"scst.plateau_factor: must be in (0, 1), got {self.plateau_factor}")
        if self.grad_clip < 0:
            raise ValueError(f"scst.grad_clip: must be >= 0 (0 disables), got {self.grad_clip}")
        if self.grad_clip_mode not in ("value", "norm"):
            raise ValueError(f"scst.grad_clip_mode: {self.grad_clip_mode!r} is not 'value' or "
                             "'norm'")
        if self.optimizer_state not in ("carry", "fresh"):
            raise ValueError(f"scst.optimizer_state: {self.optimizer_state!r} is not 'carry' (the "
                             "XE optimiser's state, as the reference) or 'fresh'")
        if self.lr_schedule not in ("constant", "plateau"):
            raise ValueError(f"scst.lr_schedule: {self.lr_schedule!r} is not 'constant' or "
                             "'plateau'")
        if self.progress not in (True, False, "auto"):
            raise ValueError(f"scst.progress: {self.progress!r} is not true, false or 'auto'")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "scst") -> SCSTConfig:
        return from_dict(cls, values, where)


# ---------------------------------------------------------------------------- references


def reward_references(references: Mapping[Hashable, Sequence[str]],
                      max_length: int | None = 16,
                      vocab: Sequence[str] | None = None) -> dict[Hashable, list[str]]:
    """The batch references of the reference's reward, from space-joined captions.

    ruotianluo's references are the rows of its label file (``prepro_labels.py``, 16 words):
    words outside ``vocab`` as ``<unk>`` (when ``vocab`` is given), cut at ``max_length`` words,
    and, written by ``array_to_str``, followed by ``<eos>`` only when the caption was shorter
    than ``max_length`` (a full row has no end token). ``max_length=None``: nothing is cut and
    every caption ends with ``<eos>``.
    """
    known = None if vocab is None else set(vocab)
    out: dict[Hashable, list[str]] = {}
    for key, sentences in references.items():
        rows = []
        for sentence in sentences:
            words = sentence.split()
            if known is not None:
                words = [w if w in known else UNK_WORD for w in words]
            if max_length is not None and len(words) >= max_length:
                rows.append(" ".join(words[:max_length]))
            else:
                rows.append(" ".join([*words, EOS_WORD]))
        out[key] = rows
    return out


def document_frequency_references(references: Mapping[Hashable, Sequence[str]],
                                  vocab: Sequence[str]) -> dict[Hashable, list[str]]:
    """What ``prepro_ngrams.py`` counts, from space-joined whole captions: every token (uncut),
    words outside ``vocab`` as ``<unk>``, then ``<eos>``."""
    known = set(vocab)
    return {key: [" ".join([t if t in known else UNK_WORD for t in s.split()] + [EOS_WORD])
                  for s in sentences] for key, sentences in references.items()}


def karpathy_training_references(images: Iterable[KarpathyImage], vocab: Sequence[str]
                                 ) -> dict[int, list[str]]:
    """``prepro_ngrams.py --split train``: every train/restval caption of ``dataset_coco.json``
    (:func:`document_frequency_references`), keyed by COCO id."""
    whole = {img.cocoid: [" ".join(s.tokens) for s in img.sentences] for img in images
             if img.split in ("train", "restval")}
    if not whole:
        raise ValueError("no train/restval images: the document frequencies need training "
                         "references")
    return document_frequency_references(whole, vocab)  # type: ignore[return-value]


def store_training_references(captions_h5: str | os.PathLike
                              ) -> tuple[dict[Hashable, list[str]], list[str]]:
    """The same references from a captions store (its ``train`` split is Karpathy's train +
    restval; ``caption_text`` holds the whole captions), and the store's vocabulary."""
    from mia.data.loaders import CaptionData

    data = CaptionData.from_stores(captions_h5)
    words = [str(w) for w in data.vocab.words]
    whole = data.references("train")
    if not whole:
        raise ValueError(f"{captions_h5}: no training images: the SCST document frequencies "
                         "need training references; rebuild the captions store")
    return document_frequency_references(whole, words), words


def _write_document_frequency(references: Mapping[Hashable, Sequence[str]],
                              vocab: Sequence[str], out_path: str | os.PathLike,
                              source: str) -> DocumentFrequency:
    df = DocumentFrequency(references, CiderDConfig(), vocab=list(vocab))
    save_document_frequency(
        df, out_path, num_sentences=sum(map(len, references.values())),
        source=f"{source}: train+restval captions, uncut, out-of-vocabulary words as "
               f"{UNK_WORD}, {EOS_WORD} appended (prepro_ngrams.py --split train)")
    return df


def write_training_document_frequency(karpathy_json: str | os.PathLike, vocab: Sequence[str],
                                      out_path: str | os.PathLike) -> DocumentFrequency:
    """Compute the SCST document frequencies from ``dataset_coco.json`` and save them (once per
    dataset and vocabulary; :func:`load_document_frequency` reads them back)."""
    references = karpathy_training_references(read_karpathy(karpathy_json), vocab)
    return _write_document_frequency(references, vocab, out_path, Path(karpathy_json).name)


def write_store_document_frequency(captions_h5: str | os.PathLike,
                                   out_path: str | os.PathLike) -> DocumentFrequency:
    """The same from a captions store with its own vocabulary: what the workflow's
    ``cider_document_frequency`` rule runs (``python -m mia.captioning.scst``), once per
    captions store; every SCST run then only reads the file."""
    references, vocab = store_training_references(captions_h5)
    return _write_document_frequency(references, vocab, out_path, Path(captions_h5).name)


# ---------------------------------------------------------------------------- scoring


def candidate_ids(tokens: Tensor) -> list[list[int]]:
    """Rows of (N, T) token ids up to and including the first ``<eos>`` (all non-pad tokens
    when there is none): what ``array_to_str`` writes."""
    arr = host_array(tokens)  # a copy from the GPU only when the tokens are still there
    is_eos = arr == EOS
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, (arr != PAD).sum(axis=1))
    return [row[:n].tolist() for row, n in zip(arr, lengths, strict=True)]


class SCSTScorer:
    """CIDEr-D rewards of token-id captions: built once per run, then one call per batch.

    ``references``: ``{image_id: [caption with <eos> (see reward_references), ...]}`` of every
    training image; ``document_frequency``: the training frequencies, made with the caption
    vocabulary (so candidates can be token ids).
    """

    def __init__(self, references: Mapping[Hashable, Sequence[str]],
                 document_frequency: DocumentFrequency) -> None:
        if document_frequency.codec.vocab is None:
            raise ValueError("SCSTScorer: the document frequencies carry no caption vocabulary; "
                             "build them with vocab= (write_training_document_frequency does)")
        self.vocab = document_frequency.codec.vocab
        self.cider = CiderD(references, document_frequency=document_frequency)

    @classmethod
    def from_file(cls, references: Mapping[Hashable, Sequence[str]],
                  df_path: str | os.PathLike, vocab: Sequence[str]) -> SCSTScorer:
        return cls(references, load_document_frequency(df_path, vocab))

    def __call__(self, image_ids: Sequence[Hashable], tokens: Tensor) -> np.ndarray:
        """CIDEr-D (N,) float64 of each row of ``tokens`` (N, T) against its image's refs."""
        return self.cider.score_batch(list(image_ids), candidate_ids(tokens))


# ---------------------------------------------------------------------------- loss


def token_mask(tokens: Tensor) -> Tensor:
    """(N, T) bool: True up to and including the first ``<eos>`` (RewardCriterion's mask)."""
    is_eos = (tokens == EOS).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


def baseline_scores(sample_scores: np.ndarray, kind: Baseline,
                    greedy_scores: np.ndarray | None = None) -> np.ndarray:
    """Baseline (B, k) for sample scores (B, k): the image's greedy score, or the mean of the
    other k-1 samples' scores."""
    b, k = sample_scores.shape
    if kind == "greedy":
        if greedy_scores is None or greedy_scores.shape != (b,):
            raise ValueError(f"greedy baseline needs ({b},) greedy scores")
        return np.repeat(greedy_scores[:, None], k, axis=1)
    if kind == "mean_of_others":
        if k < 2:
            raise ValueError("mean_of_others needs at least 2 samples per image")
        return (sample_scores.sum(axis=1, keepdims=True) - sample_scores) / (k - 1)
    raise ValueError(f"unknown SCST baseline {kind!r}")


def reward_loss(log_probs: Tensor, mask: Tensor, rewards: Tensor) -> Tensor:
    """``-sum(logp * reward * mask) / sum(mask)``: log_probs, mask (N, T), rewards (N,)."""
    weights = mask.to(log_probs.dtype)
    total = -(log_probs * rewards.to(log_probs.dtype).unsqueeze(1) * weights).sum()
    return total / weights.sum().clamp(min=1.0)


@dataclass
class SCSTStats:
    """Means over the step's samples; ``greedy_cider`` is NaN under ``mean_of_others``. All
    computed on the host from the scores and the tokens the reward already brought there."""

    reward: float
    baseline: float
    sample_cider: float
    greedy_cider: float
    sample_tokens: float  # tokens per sample, <eos> included
    reward_ms: float  # CIDEr-D scoring time

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class SCSTRewards:
    """One image batch's samples, their scores and rewards (:func:`scst_rewards`).

    Rows are image-major: sample j of image i is row ``i * k + j`` of ``samples`` and
    ``[i, j]`` of the score arrays. ``greedy`` / ``greedy_scores`` are None under the
    ``mean_of_others`` baseline. ``reward_ms`` is the CIDEr-D scoring time; ``tokens`` the
    sampled tokens already on the host (B*k, T).
    """

    image_ids: list[Hashable]
    samples: Rollout  # (B*k, T): tokens, log_probs (with the graph), mask
    sample_scores: np.ndarray  # (B, k) CIDEr-D of each sample
    baseline: np.ndarray  # (B, k) what each sample is compared with
    rewards: np.ndarray  # (B, k) sample_scores - baseline: the per-sample SCST reward
    greedy: Rollout | None = None  # (B, T) the greedy captions of the "sc" baseline
    greedy_scores: np.ndarray | None = None  # (B,)
    reward_ms: float = 0.0
    tokens: Tensor | None = None  # the samples' tokens on the host


def scst_rewards(model: nn.Module, batch: dict[str, Tensor], scorer: SCSTScorer,
                 cfg: SCSTConfig, generator: torch.Generator | None = None,
                 image_ids: Sequence[Hashable] | None = None) -> SCSTRewards:
    """Sample ``cfg.samples_per_image`` captions per image and return every sample's reward.

    What :func:`scst_step` optimises, exposed for analysis (reward distributions, baselines):
    the samples are drawn in the mode the model is in (train, dropout on), with
    ``cfg.max_length`` steps, ``cfg.temperature`` and ``generator``; the greedy baseline
    (``cfg.baseline == "greedy"``) is decoded in eval mode without a graph and the mode
    restored; reward = CIDEr-D(sample) - baseline (:func:`baseline_scores`). The model must
    follow the decoder protocol (``encode``, ``decoder.prepare``/``init_state``/``step``; see
    docs/CONTRACTS.md). Call it under ``torch.no_grad()`` when only the numbers are wanted.

    ``image_ids``: the batch's ids as host values when the caller has them (else read from
    ``batch``). The sampled and greedy tokens come to the host in ONE transfer, the step's only
    synchronisation under ``decode_step: fixed`` or ``compiled``: the reward needs them there.
    """
    k = cfg.samples_per_image
    image_ids = list(batch["image_ids"].tolist() if image_ids is None else image_ids)
    greedy = None
    if cfg.baseline == "greedy":
        greedy = greedy_captions(model, batch, cfg.max_length, cfg.decode_step)
    samples = sample_captions(model, batch, k, cfg.max_length, cfg.temperature, generator,
                              cfg.decode_step)
    rows = samples.tokens.shape[0]
    host = (samples.tokens if greedy is None else
            torch.cat([samples.tokens, _pad_columns(greedy.tokens, samples.tokens.shape[1])])
            ).cpu()

    start = time.perf_counter()
    keys = [i for i in image_ids for _ in range(k)]
    sample_scores = scorer(keys, host[:rows]).reshape(len(image_ids), k)
    greedy_scores = None if greedy is None else scorer(image_ids, host[rows:])
    reward_ms = (time.perf_counter() - start) * 1e3

    baseline = baseline_scores(sample_scores, cfg.baseline, greedy_scores)
    return SCSTRewards(image_ids, samples, sample_scores, baseline, sample_scores - baseline,
                       greedy, greedy_scores, reward_ms, host[:rows])


def scst_step(model: nn.Module, batch: dict[str, Tensor], scorer: SCSTScorer, cfg: SCSTConfig,
              generator: torch.Generator | None = None,
              image_ids: Sequence[Hashable] | None = None) -> tuple[Tensor, SCSTStats]:
    """The SCST loss of one image batch (call ``backward`` on it) and its statistics.

    :func:`scst_rewards` draws and scores the samples; the loss is :func:`reward_loss` of their
    log-probabilities weighted by the per-sample rewards, in float32 whatever the forward ran
    in. The statistics come from host values: no further synchronisation.
    """
    out = scst_rewards(model, batch, scorer, cfg, generator, image_ids)
    samples, rewards = out.samples, out.rewards
    device = samples.log_probs.device
    reward_tensor = torch.from_numpy(rewards.reshape(-1))
    if device.type == "cuda":
        reward_tensor = reward_tensor.pin_memory()
    with float32_region(device.type):
        loss = reward_loss(samples.log_probs.float(), samples.mask,
                           reward_tensor.to(device, non_blocking=True))
    stats = SCSTStats(
        reward=float(rewards.mean()), baseline=float(out.baseline.mean()),
        sample_cider=float(out.sample_scores.mean()),
        greedy_cider=math.nan if out.greedy_scores is None else float(out.greedy_scores.mean()),
        sample_tokens=float(np.mean([len(c) for c in candidate_ids(out.tokens)])),
        reward_ms=out.reward_ms)
    return loss, stats


def _pad_columns(tokens: Tensor, width: int) -> Tensor:
    """``tokens`` (N, T) padded with ``<pad>`` (or cut) to ``width`` columns."""
    if tokens.shape[1] >= width:
        return tokens[:, :width]
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=PAD)


def training_references(data: Any, max_length: int = 16) -> dict[Hashable, list[str]]:
    """:func:`reward_references` of every training image of a ``CaptionData``, from its whole
    captions (``references("train")``) and its vocabulary; ``max_length`` = the reference's
    label length (16), whatever length the captions store keeps."""
    words = [str(w) for w in getattr(data.vocab, "words", data.vocab)]
    return reward_references(data.references("train"), max_length, words)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mia.captioning.scst --captions captions.h5 --out cider_df_train.npz``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(
        prog="python -m mia.captioning.scst",
        description="Compute the CIDEr-D document frequencies of the SCST reward from the "
                    "training captions of a captions store (once; every SCST run reads them).")
    parser.add_argument("--captions", required=True, help="captions.h5")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    started = time.perf_counter()
    df = write_store_document_frequency(args.captions, args.out)
    logging.getLogger(__name__).info(
        "%s: %d n-grams from the references of %d training images (%.1f s)", args.out, len(df),
        df.num_docs, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
