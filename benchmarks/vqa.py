"""Training-step time and memory of the Table 3 VQA models, base against MIA, at the paper's sizes.

One training step is what the references' ``train.py`` does per batch: forward, BCE-with-logits x
n_answers, backward, gradient-norm clip at 0.25, Adamax step. Sizes are the paper's: Up-Down batch
512 (hidden 1024), BAN batch 256 (hidden 1280, 8 glimpses, counter of 10), 36 boxes of 2048-d,
14-word questions over a 19,901-word vocabulary (the references' VQA v2 dictionary), 3,129
answers; MIA with d = 512, 8 heads, FFN 2048, N = 2 over 36 concepts from a 1,000-word concept
vocabulary. Inputs are random but shaped and masked as real batches (all 36 boxes real,
questions of 4-14 words).

"Peak MB" means:
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it
  (parameters, optimizer state and inputs excluded; activations, temporaries, gradients included).
* CPU: the bytes of the tensors autograd SAVES for backward (each storage once, parameters
  excluded): the activation memory a step holds at the end of its forward pass. No allocator peak
  exists on the CPU.

Run: ``python benchmarks/vqa.py [--device auto|cpu|cuda] [--quick] [--repeats R] [--warmup W]``
(CPU: 2 timed steps after 1 warm-up, base and MIA interleaved; CUDA: 20 after 5, float32 and bf16
autocast). ``--quick`` shrinks batch and sizes for a smoke run. On the CPU, compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mia.vqa import VQAModelConfig, build_vqa_model


@dataclass(frozen=True)
class Sizes:
    updown_batch: int = 512
    ban_batch: int = 256
    boxes: int = 36
    feature_dim: int = 2048
    words: int = 14
    question_vocab: int = 19_901
    answers: int = 3_129
    concept_vocab: int = 1_000
    seed: int = 0


QUICK = Sizes(updown_batch=32, ban_batch=16, question_vocab=2_000, answers=500)
CHECK = Sizes(updown_batch=4, ban_batch=4, boxes=4, feature_dim=16, words=4, question_vocab=50,
              answers=20, concept_vocab=20)


@dataclass(frozen=True)
class Row:
    case: str
    batch: int
    params_m: float
    step_ms: float
    spread: tuple[float, float]
    mb: float


def make_batch(sizes: Sizes, batch: int, device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(sizes.seed)
    m, n_words = sizes.boxes, sizes.words
    lengths = torch.randint(4, n_words + 1, (batch,), generator=g)
    questions = torch.randint(2, sizes.question_vocab, (batch, n_words), generator=g)
    questions = questions * (torch.arange(n_words)[None, :] < lengths[:, None])
    corner = torch.rand(batch, m, 2, generator=g) * 0.7
    boxes = torch.cat([corner, corner + 0.05 + 0.25 * torch.rand(batch, m, 2, generator=g)], 2)
    target = torch.zeros(batch, sizes.answers)
    labels = torch.randint(0, sizes.answers, (batch, 3), generator=g)
    target.scatter_(1, labels, torch.tensor([1.0, 0.6, 0.3]).expand(batch, 3))
    out = {"questions": questions,
           "features": torch.randn(batch, m, sizes.feature_dim, generator=g).relu(),
           "feature_mask": torch.ones(batch, m, dtype=torch.bool), "boxes": boxes,
           "concepts": torch.randint(0, sizes.concept_vocab, (batch, m), generator=g),
           "concept_mask": torch.ones(batch, m, dtype=torch.bool), "target": target}
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _saved_bytes(exclude: set[int], total: list[int]) -> Iterator[None]:
    """Sum the bytes of the distinct storages autograd saves for backward (the CPU 'peak')."""
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in exclude:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class Trainer:
    """One model, its Adamax and its batch; ``step()`` is one training step of the references."""

    def __init__(self, cfg: VQAModelConfig, sizes: Sizes, batch: int, device: torch.device,
                 autocast: torch.dtype | None) -> None:
        torch.manual_seed(sizes.seed)
        self.model = build_vqa_model(cfg, sizes.question_vocab, sizes.answers,
                                     sizes.concept_vocab).to(device).train()
        self.optim = torch.optim.Adamax(self.model.parameters(), lr=2e-3)
        self.batch = make_batch(sizes, batch, device)
        self.device, self.autocast = device, autocast

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def step(self, wrap: Callable[[], contextlib.AbstractContextManager] | None = None) -> float:
        self.optim.zero_grad(set_to_none=True)
        with self._ctx(), (wrap() if wrap else contextlib.nullcontext()):
            loss = self.model.loss(self.model(self.batch), self.batch["target"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optim.step()
        return float(loss.detach())

    def timed(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        loss = self.step()
        _sync(self.device)
        if loss != loss:  # NaN: the numbers would time a broken step
            raise RuntimeError(f"{self.model.cfg.baseline}/{self.model.cfg.variant}: loss is NaN")
        return (time.perf_counter() - start) * 1e3

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            _sync(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            _sync(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        total = [0]
        self.step(lambda: _saved_bytes(params, total))
        return total[0] / 2**20

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.model.parameters()) / 1e6


def run_pair(baseline: str, sizes: Sizes, device: torch.device, autocast: torch.dtype | None,
             warmup: int, repeats: int) -> list[Row]:
    """Base and MIA of one baseline, timed interleaved (A B, B A, ...) so load hits both alike."""
    batch = sizes.updown_batch if baseline == "updown" else sizes.ban_batch
    tiny = {"hidden": 16, "embed_dim": 8, "concept_embed_dim": 8, "mia_d_model": 16,
            "mia_heads": 2, "mia_d_ff": 16} if sizes == CHECK else {}
    trainers = [Trainer(VQAModelConfig(baseline=baseline, variant=v,
                                       feature_dim=sizes.feature_dim, **tiny), sizes, batch,
                        device, autocast) for v in ("base", "mia")]
    for _ in range(warmup):
        for t in trainers:
            t.timed()
    times: list[list[float]] = [[], []]
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            times[i].append(trainers[i].timed())
    dtype = "bf16 autocast" if autocast else "float32"
    rows = []
    for t, variant, ms in zip(trainers, ("base", "mia"), times, strict=True):
        rows.append(Row(f"{baseline} {variant}, {dtype}, {device.type}", batch, t.params_m,
                        statistics.median(ms), (min(ms), max(ms)), t.peak_mb()))
    del trainers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def format_table(rows: list[Row], device: torch.device) -> str:
    mem = "peak MB" if device.type == "cuda" else "saved-for-backward MB"
    lines = [f"| case | batch | params (M) | train step ms | MIA/base time | {mem} | "
             "MIA/base memory |", "|" + "---|" * 7]
    for base, mia in zip(rows[::2], rows[1::2], strict=True):
        for r in (base, mia):
            ratio_t = "1.00x" if r is base else f"**{mia.step_ms / base.step_ms:.2f}x**"
            ratio_m = "1.00x" if r is base else f"**{mia.mb / base.mb:.2f}x**"
            lines.append(f"| {r.case} | {r.batch} | {r.params_m:.1f} | {r.step_ms:.0f} | "
                         f"{ratio_t} | {r.mb:.0f} | {ratio_m} |")
    lines.append("")
    lines.append("timing spread, min-max ms: " + "; ".join(
        f"{r.case}: {r.spread[0]:.0f}-{r.spread[1]:.0f}" for r in rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    parser.add_argument("--quick", action="store_true", help="small batch and vocabularies")
    parser.add_argument("--check", action="store_true",
                        help="tiny models, 1 step: does it run (benchmarks/gpu.sh --check)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per model (default 2 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--baselines", nargs="+", default=["updown", "ban"],
                        choices=["updown", "ban"])
    args = parser.parse_args(argv)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    gpu = device.type == "cuda"
    repeats = args.repeats or (20 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    sizes = QUICK if args.quick else Sizes()
    if args.check:
        sizes, repeats, warmup = CHECK, 1, 0
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 rows are float32
    print(f"VQA training-step benchmark{' (--quick)' if args.quick else ''}: {sizes}; "
          f"forward + loss + backward + clip + Adamax, median of {repeats} interleaved after "
          f"{warmup} warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name(device)}" if gpu else ""), flush=True)
    rows: list[Row] = []
    for autocast in ([None, torch.bfloat16] if gpu else [None]):
        for baseline in args.baselines:
            rows += run_pair(baseline, sizes, device, autocast, warmup, repeats)
            print(f"  {rows[-1].case}: done", flush=True)
    print(format_table(rows, device))
    if not gpu:
        print("CPU: absolute ms depend on this machine and its load; the ratios are the result. "
              "Memory = bytes of tensors saved for backward (distinct storages, parameters "
              "excluded), not an allocator peak.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
