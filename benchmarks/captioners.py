"""Training-step time of every registered captioner, base against w/ MIA, at the paper's sizes.

One step = forward (teacher forcing), label-smoothed cross-entropy, backward, Adam update, on a
batch of 80 captions of 16 words (17 decoder steps with ``<bos>``/``<eos>``), vocabulary 10,000,
d = 512, over 49 grid features (2048-d, Visual/Concept Attention and Condition) or 36 region
features (2048-d, Visual Regional Attention and the Table 2 models), with 49 / 36 concepts. Every
baseline in :data:`mia.captioning.models.BASELINES` is measured, so Up-Down and the Transformer
appear when their modules are importable; each is built from ``CaptionerConfig`` defaults (d 512
everywhere, its ``options`` at their defaults), which is not each paper's width (Up-Down: 1000).

The ratios are the result on a CPU: ``MIA / base`` is what MIA adds to one step of that
baseline, ``vs VA`` is a base model's step against Visual Attention's. Absolute milliseconds are
meaningful on a GPU only (``--device cuda``: synchronised timings and peak memory).

Run: ``python benchmarks/captioners.py [--device auto|cpu|cuda] [--repeats R] [--warmup W]
[--only NAME ...] [--quick]`` (``--quick``: batch 8, vocabulary 1,000, 1 repeat: a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mia.captioning.beam import BOS, EOS, PAD
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import BASELINES, build_captioner

GRID_BASELINES = ("visual_attention", "concept_attention", "visual_condition",
                  "concept_condition")


@dataclass(frozen=True)
class Sizes:
    batch: int = 80
    words: int = 16
    vocab: int = 10_000
    feature_dim: int = 2048
    grid: int = 49
    regions: int = 36
    seed: int = 0
    model: tuple[tuple[str, object], ...] = ()  # CaptionerConfig overrides (--check: tiny)


@dataclass(frozen=True)
class Row:
    baseline: str
    features: str
    base_ms: float
    mia_ms: float
    base_params: int
    mia_params: int
    base_mb: float | None
    mia_mb: float | None
    note: str = ""


def make_batch(sizes: Sizes, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(sizes.seed)
    b, length = sizes.batch, sizes.words + 2
    captions = torch.randint(4, sizes.vocab, (b, length), generator=g)
    captions[:, 0], captions[:, -1] = BOS, EOS
    batch = {
        "image_ids": torch.arange(b),
        "features": torch.randn(b, n, sizes.feature_dim, generator=g),
        "feature_mask": torch.ones(b, n, dtype=torch.bool),
        "concepts": torch.randint(4, sizes.vocab, (b, n), generator=g),
        "concept_mask": torch.ones(b, n, dtype=torch.bool),
        "captions": captions,
        "caption_lengths": torch.full((b,), length),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          batch: dict[str, torch.Tensor]) -> None:
    logits = model(batch)
    targets = batch["captions"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=PAD, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(baseline: str, sizes: Sizes, device: torch.device, warmup: int, repeats: int
            ) -> Row:
    kind = "grid" if baseline in GRID_BASELINES else "regions"
    n = sizes.grid if kind == "grid" else sizes.regions
    batch = make_batch(sizes, n, device)
    models, optimizers = {}, {}
    for variant in ("base", "mia"):
        torch.manual_seed(sizes.seed)
        overrides = dict(sizes.model)
        if overrides and baseline == "updown":
            overrides["options"] = {"rnn_size": overrides["d_model"]}
        cfg = CaptionerConfig(baseline=baseline, variant=variant, feature_dim=sizes.feature_dim,
                              **overrides)
        models[variant] = build_captioner(cfg, sizes.vocab).to(device).train()
        optimizers[variant] = torch.optim.Adam(models[variant].parameters(), lr=5e-4,
                                               betas=(0.8, 0.999))
    times: dict[str, list[float]] = {"base": [], "mia": []}
    peaks: dict[str, float | None] = {"base": None, "mia": None}
    for i in range(warmup + repeats):
        for variant in ("base", "mia"):  # interleaved: load changes hit both alike
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            _step(models[variant], optimizers[variant], batch)
            _sync(device)
            if i >= warmup:
                times[variant].append((time.perf_counter() - start) * 1e3)
                if device.type == "cuda":
                    peaks[variant] = torch.cuda.max_memory_allocated(device) / 2**20
    params = {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()}
    return Row(baseline, f"{n} {kind}", statistics.median(times["base"]),
               statistics.median(times["mia"]), params["base"], params["mia"], peaks["base"],
               peaks["mia"])


def format_table(rows: list[Row], device: torch.device) -> str:
    va = next((r.base_ms for r in rows if r.baseline == "visual_attention"), None)
    gpu = device.type == "cuda"
    head = ["baseline", "features", "base ms", "MIA ms", "**MIA / base**", "base vs VA",
            "params base (M)", "params MIA (M)"] + (["peak MB base", "peak MB MIA"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.note:
            lines.append(f"| {r.baseline} | {r.features} | {r.note} |" + " |" * (len(head) - 3))
            continue
        cells = [r.baseline, r.features, f"{r.base_ms:.1f}", f"{r.mia_ms:.1f}",
                 f"**{r.mia_ms / r.base_ms:.2f}x**",
                 f"{r.base_ms / va:.2f}x" if va else "-",
                 f"{r.base_params / 1e6:.2f}", f"{r.mia_params / 1e6:.2f}"]
        if gpu:
            cells += [f"{r.base_mb:.0f}", f"{r.mia_mb:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per model (default 3 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--only", nargs="*", default=None, help="baselines to measure")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 8, vocabulary 1,000, 1 repeat, no warm-up")
    parser.add_argument("--check", action="store_true",
                        help="tiny models, 1 step: does it run (benchmarks/gpu.sh --check)")
    args = parser.parse_args(argv)
    args.quick = args.quick or args.check
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    gpu = device.type == "cuda"
    sizes = Sizes(batch=8, vocab=1000) if args.quick else Sizes()
    if args.check:
        sizes = Sizes(batch=2, words=4, vocab=50, feature_dim=16, grid=4, regions=4, model=(
            ("d_model", 16), ("embed_dim", 16), ("attention_dim", 8), ("mia_heads", 2),
            ("mia_d_ff", 16)))
    repeats = args.repeats or (1 if args.quick else 20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 5 if gpu else 1)
    baselines = args.only or sorted(BASELINES)
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        parser.error(f"unknown baseline(s) {unknown}; registered: {sorted(BASELINES)}")
    print(f"Captioner training step: batch {sizes.batch} captions of {sizes.words} words, vocab "
          f"{sizes.vocab}, d 512, {sizes.feature_dim}-d features, forward+loss+backward+Adam, "
          f"median of {repeats} interleaved after {warmup} warm-up; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name(device)}" if gpu else ", cpu"), flush=True)
    rows = []
    for baseline in baselines:
        try:
            rows.append(measure(baseline, sizes, device, warmup, repeats))
        except Exception as err:  # one broken baseline should not hide the others' numbers
            rows.append(Row(baseline, "-", 0, 0, 0, 0, None, None,
                            f"failed: {type(err).__name__}: {err}"))
        print(f"  measured {baseline}", flush=True)
    print()
    print(format_table(rows, device))
    if not gpu:
        print("\nCPU: absolute ms depend on this machine and its load; the ratios are the result.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
