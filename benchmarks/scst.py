"""Time and peak memory of one SCST step: ours against a plain implementation of the same step.

One SCST step = greedy baseline + k samples per image + CIDEr-D rewards + loss + backward, at
the paper's sizes: 10 images x 5 samples, 36 regions of 2,048 features, a 9,487-word vocabulary
(COCO's at count threshold 5) + 4 specials, 16 tokens a caption. Transformer: 6+6 layers,
d 512, d_ff 2048, 8 heads; Up-Down: rnn 1000, d 1000, words 1000, attention 512. Train mode
(dropout on), greedy baseline, as configs/*/..._sc.yml.

* ours: :func:`mia.captioning.scst.scst_step`: the greedy caption decoded under ``no_grad`` in
  eval mode; the Transformer decodes incrementally (cached keys/values, one position per step);
  rewards from the fast CIDEr-D built ONCE per run (document frequencies of the training
  references, the batch references pre-tokenised).
* plain, in the style of the reference implementations users report trouble with: the greedy
  pass decoded with autograd on (its graph kept until the step ends); the Transformer decodes
  without a cache, re-running the whole prefix through every layer at every step (as
  ``TransformerModel.core``); CIDEr-D by pycocoevalcap's ``CiderScorer`` arithmetic with the
  cached training document frequencies installed, every reference re-cooked for every batch
  (as ruotianluo/cider's ``CiderD.compute_score``). (ruotianluo/self-critical.pytorch today wraps
  its greedy pass in ``no_grad``; the plain step models the versions without it.)

Both sides compute the same function: before timing, the sampled tokens and log-probabilities
(eval mode, same sampling seed) and the rewards are compared and the differences printed.

Captions are synthetic (Zipfian words, 8-16 words, 5 references per image, 2,000 training
images for the document frequencies); the model is untrained, so samples run to the length limit:
the slowest case for both sides.

"Peak MB": CUDA: ``max_memory_allocated`` during the step minus what was allocated before;
CPU: bytes of the tensors autograd saves for backward (distinct storages, parameters excluded;
see benchmarks/mia_module.py), the activation memory a step holds at the end of its forward.

Run: ``python benchmarks/scst.py [--device cpu|cuda] [--repeats R] [--warmup W] [--threads T]
[--quick]``
(``--quick``: 1 timed step, no warm-up, and only the Transformer). CPU: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.models import build_captioner
from mia.captioning.sampling import greedy_chooser, multinomial_chooser, rollout
from mia.captioning.scst import (
    SCSTConfig,
    SCSTScorer,
    baseline_scores,
    candidate_ids,
    reward_loss,
    reward_references,
    scst_step,
)
from mia.captioning.transformer import PrefixDecoder
from mia.evaluation.cider import CiderD, DocumentFrequency

try:  # the plain side's reward; the GPU machine has no pycocoevalcap (benchmarks/gpu.sh)
    from mia.evaluation.cider_reference import (
        pycocoevalcap_cider_d,
        pycocoevalcap_document_frequency,
    )
except ImportError as missing:
    PYCOCOEVALCAP_MISSING: str | None = f"{missing}"
else:
    PYCOCOEVALCAP_MISSING = None


@dataclass(frozen=True)
class BenchConfig:
    images: int = 10
    samples: int = 5
    regions: int = 36
    feature_dim: int = 2048
    words: int = 9487
    max_length: int = 16
    train_images: int = 2000
    seed: int = 0
    width: int | None = None  # --check: every model this wide (tiny)


MODELS = {
    "transformer": dict(baseline="transformer", d_model=512, embed_dim=512),
    "updown": dict(baseline="updown", d_model=1000, embed_dim=1000, attention_dim=512,
                   options={"rnn_size": 1000}),
}


# ----------------------------------------------------------------------------------- data


def synthetic_references(cfg: BenchConfig, vocab: list[str]) -> dict[int, list[str]]:
    """5 Zipfian captions of 8-16 words per training image; image i's batch row is image i."""
    rng = np.random.default_rng(cfg.seed)
    p = 1.0 / np.arange(1, cfg.words + 1) ** 1.1
    p /= p.sum()
    words = np.array(vocab[4:])
    return {i: [" ".join(words[rng.choice(cfg.words, size=int(rng.integers(8, 17)), p=p)])
                for _ in range(5)] for i in range(cfg.train_images)}


def image_batch(cfg: BenchConfig, device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    b, n = cfg.images, cfg.regions
    batch = {"image_ids": torch.arange(b),
             "features": torch.randn(b, n, cfg.feature_dim, generator=g).relu(),
             "feature_mask": torch.ones(b, n, dtype=torch.bool),
             "concepts": torch.randint(4, cfg.words + 4, (b, n), generator=g),
             "concept_mask": torch.ones(b, n, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------- plain


class _Uncached(nn.Module):
    """A Transformer captioner decoded the reference's way (PrefixDecoder over its weights)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.decoder = PrefixDecoder(net.decoder)
        self.train(net.training)

    def encode(self, batch: dict[str, Tensor], need_weights: bool = False):
        return self.net.encode(batch, need_weights)


class PlainReward:
    """pycocoevalcap's CIDEr-D with the cached training frequencies; references re-cooked per
    call, candidates turned into strings as ``array_to_str`` does."""

    def __init__(self, references: dict[int, list[str]], df_references: dict[int, list[str]],
                 vocab: list[str]) -> None:
        self.references, self.vocab = references, vocab
        if PYCOCOEVALCAP_MISSING is None:
            self.df, self.log_docs = pycocoevalcap_document_frequency(df_references)
        else:  # same numbers (tests/test_eval_cider.py), a scorer rebuilt per call
            self.frequencies = DocumentFrequency(df_references, vocab=vocab)

    def __call__(self, image_ids: list[int], tokens: Tensor) -> np.ndarray:
        strings = [" ".join(self.vocab[t] for t in row) for row in candidate_ids(tokens)]
        if PYCOCOEVALCAP_MISSING is not None:
            refs = {k: self.references[i] for k, i in enumerate(image_ids)}
            scorer = CiderD(refs, document_frequency=self.frequencies)
            return scorer.score_batch(list(range(len(strings))), strings)
        pairs = [(s, self.references[i]) for s, i in zip(strings, image_ids, strict=True)]
        return pycocoevalcap_cider_d(pairs, self.df, self.log_docs)


def plain_scst_step(model: nn.Module, batch: dict[str, Tensor], reward: PlainReward,
                    cfg: SCSTConfig, generator: torch.Generator
                    ) -> tuple[Tensor, float, object]:
    """Greedy with its graph kept, uncached Transformer decoding, pycocoevalcap rewards.
    The greedy rollout is returned too, so its graph lives until the step's backward is done."""
    decoded = _Uncached(model) if cfg_is_transformer(model) else model
    model.eval()
    greedy = rollout(decoded, batch, 1, cfg.max_length, greedy_chooser)  # autograd on
    model.train()
    samples = rollout(decoded, batch, cfg.samples_per_image, cfg.max_length,
                      multinomial_chooser(cfg.temperature, generator))
    start = time.perf_counter()
    ids = batch["image_ids"].tolist()
    keys = [i for i in ids for _ in range(cfg.samples_per_image)]
    scores = reward(keys, samples.tokens).reshape(len(ids), -1)
    greedy_scores = reward(ids, greedy.tokens)
    reward_ms = (time.perf_counter() - start) * 1e3
    rewards = scores - baseline_scores(scores, "greedy", greedy_scores)
    loss = reward_loss(samples.log_probs, samples.mask,
                       torch.from_numpy(rewards.reshape(-1)).to(samples.log_probs.device))
    return loss, reward_ms, greedy


def cfg_is_transformer(model: nn.Module) -> bool:
    return getattr(model.cfg, "baseline", "") == "transformer"


# ----------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _saved_bytes(exclude: set[int], total: list[int]) -> Iterator[None]:
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in exclude:
            seen.add(ptr)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


Step = Callable[[], tuple[Tensor, float, object]]  # loss, reward ms, kept alive to the end


def _run(step: Step, model: nn.Module, device: torch.device,
         autocast: torch.dtype | None) -> tuple[float, float]:
    """One step (forward + backward): milliseconds and reward milliseconds."""
    model.zero_grad(set_to_none=True)
    ctx = (torch.autocast(device.type, dtype=autocast) if autocast
           else contextlib.nullcontext())
    _sync(device)
    start = time.perf_counter()
    with ctx:
        loss, reward_ms, keep = step()
    loss.backward()
    _sync(device)
    del keep
    return (time.perf_counter() - start) * 1e3, reward_ms


def _peak_mb(step: Step, model: nn.Module, device: torch.device,
             autocast: torch.dtype | None) -> float:
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _run(step, model, device, autocast)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = [0]
    with _saved_bytes(params, total):
        _run(step, model, device, autocast)
    return total[0] / 2**20


@dataclass(frozen=True)
class Row:
    case: str
    plain_ms: float
    ours_ms: float
    plain_reward_ms: float
    ours_reward_ms: float
    plain_mb: float
    ours_mb: float


def _check_same_function(model: nn.Module, batch: dict[str, Tensor], scorer: SCSTScorer,
                         plain: PlainReward, cfg: SCSTConfig) -> tuple[float, float]:
    """Max |difference| of the sampled log-probs (eval mode, same seed; tokens must be equal)
    and of the rewards between the two sides."""
    decoded = _Uncached(model) if cfg_is_transformer(model) else model
    model.eval()
    with torch.no_grad():
        ours = rollout(model, batch, 2, cfg.max_length,
                       multinomial_chooser(1.0, _generator(batch, 7)))
        theirs = rollout(decoded, batch, 2, cfg.max_length,
                         multinomial_chooser(1.0, _generator(batch, 7)))
    model.train()
    if not torch.equal(ours.tokens, theirs.tokens):
        raise RuntimeError("cached and uncached sampling disagree on the tokens: the benchmark "
                           "would compare two different functions")
    ids = [i for i in batch["image_ids"].tolist() for _ in range(2)]
    reward_diff = float(np.abs(scorer(ids, ours.tokens) - plain(ids, ours.tokens)).max())
    return float((ours.log_probs - theirs.log_probs).abs().max()), reward_diff


def _generator(batch: dict[str, Tensor], seed: int) -> torch.Generator:
    return torch.Generator(device=batch["features"].device).manual_seed(seed)


def run_case(name: str, cfg: BenchConfig, device: torch.device, warmup: int, repeats: int,
             autocast: torch.dtype | None, data: tuple) -> Row:
    vocab, scorer, plain = data
    torch.manual_seed(cfg.seed)
    model = dict(MODELS[name])
    if cfg.width:  # --check: the same models, tiny
        model.update(d_model=cfg.width, embed_dim=cfg.width, mia_heads=2, mia_d_ff=cfg.width)
        model["options"] = ({"rnn_size": cfg.width} if name == "updown" else
                            {"encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                             "d_ff": cfg.width})
        model.pop("attention_dim", None)
    captioner = CaptionerConfig(feature_dim=cfg.feature_dim, **model)
    model = build_captioner(captioner, len(vocab)).to(device).train()
    batch = image_batch(cfg, device)
    scst = SCSTConfig(samples_per_image=cfg.samples, max_length=cfg.max_length)
    if autocast is None:
        lp_diff, reward_diff = _check_same_function(model, batch, scorer, plain, scst)
        print(f"{name}: ours vs plain max |difference|: sampled log-probs {lp_diff:.1e}, "
              f"rewards {reward_diff:.1e}", flush=True)

    def ours() -> tuple[Tensor, float, object]:
        loss, stats = scst_step(model, batch, scorer, scst, _generator(batch, 1))
        return loss, stats.reward_ms, None

    def reference() -> tuple[Tensor, float, object]:
        return plain_scst_step(model, batch, plain, scst, _generator(batch, 1))

    steps = (reference, ours)
    for _ in range(warmup):
        for step in steps:
            _run(step, model, device, autocast)
    times: list[list[tuple[float, float]]] = [[], []]
    for r in range(repeats):
        for i in (range(2) if r % 2 == 0 else reversed(range(2))):
            times[i].append(_run(steps[i], model, device, autocast))
    peaks = [_peak_mb(step, model, device, autocast) for step in steps]
    med = [statistics.median(t for t, _ in ts) for ts in times]
    rew = [statistics.median(r for _, r in ts) for ts in times]
    dtype = "bf16 autocast" if autocast else "float32"
    return Row(f"{name}, {dtype}, {device.type}", med[0], med[1], rew[0], rew[1], *peaks)


def format_table(rows: list[Row], device: torch.device) -> str:
    mem = "peak MB" if device.type == "cuda" else "saved-for-backward MB"
    lines = [f"| case | plain ms | ours ms | speed-up (plain/ours) | plain reward ms | ours "
             f"reward ms | plain {mem} | ours {mem} | memory (ours/plain) |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r.case} | {r.plain_ms:.0f} | {r.ours_ms:.0f} | "
                     f"**{r.plain_ms / r.ours_ms:.2f}x** | {r.plain_reward_ms:.1f} | "
                     f"{r.ours_reward_ms:.1f} | {r.plain_mb:.0f} | {r.ours_mb:.0f} | "
                     f"**{r.ours_mb / r.plain_mb:.2f}x** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per side (default 3 on CPU, 10 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 1 on CPU, 3 on GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is faster on a "
                             "machine busy with other work")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 timed step, no warm-up, Transformer only")
    parser.add_argument("--check", action="store_true",
                        help="--quick with tiny models: does it run (benchmarks/gpu.sh --check)")
    args = parser.parse_args(argv)
    args.quick = args.quick or args.check
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats or (10 if gpu else 3)
    warmup = 0 if args.quick else (args.warmup if args.warmup is not None else (3 if gpu else 1))
    cfg = BenchConfig()
    if args.check:
        cfg = BenchConfig(images=2, samples=2, regions=4, feature_dim=16, words=40,
                          max_length=5, train_images=20, width=16)
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", *(f"w{i}" for i in range(cfg.words))]
    train = synthetic_references(cfg, vocab)
    df_refs = {k: [f"{s} <eos>" for s in v] for k, v in train.items()}
    start = time.perf_counter()
    scorer = SCSTScorer(reward_references(train, cfg.max_length),
                        DocumentFrequency(df_refs, vocab=vocab))
    built = time.perf_counter() - start
    plain = PlainReward(reward_references(train, cfg.max_length), df_refs, vocab)
    if PYCOCOEVALCAP_MISSING is not None:
        print(f"plain reward: pycocoevalcap is not installed here ({PYCOCOEVALCAP_MISSING}); "
              "the plain side scores with mia.evaluation.cider.CiderD rebuilt per batch (the "
              "same numbers; its reward ms are not pycocoevalcap's)", flush=True)
    print(f"SCST step benchmark: {cfg.images} images x {cfg.samples} samples, {cfg.regions} "
          f"regions x {cfg.feature_dim}, vocabulary {len(vocab)}, {cfg.max_length} tokens, "
          f"greedy baseline, train mode; median of {repeats} interleaved after {warmup} "
          f"warm-up; scorer built once in {built:.2f} s ({cfg.train_images} training images); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
          + (f", {torch.cuda.get_device_name(device)}" if gpu else ""), flush=True)
    rows = []
    for name in (["transformer"] if args.quick else list(MODELS)):
        for autocast in ([None, torch.bfloat16] if gpu else [None]):
            rows.append(run_case(name, cfg, device, warmup, repeats, autocast,
                                 (vocab, scorer, plain)))
            print(format_table(rows[-1:], device), flush=True)
    print()
    print(format_table(rows, device))
    if not gpu:
        print("CPU: absolute ms depend on this machine and its load; the ratios are the result. "
              "Memory = bytes of tensors saved for backward, not an allocator peak.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
