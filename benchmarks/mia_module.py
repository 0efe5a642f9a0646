"""Forward+backward time and peak memory of ``MutualIterativeAttention`` against a plain version.

The plain reference is what one writes straight from Eq. (1)-(7): a Python loop over the heads,
each head its own Q/K/V matmuls, an explicit softmax and a matmul with the values, then the
concatenation and W^O; same sub-layers, shortcuts, LayerNorms, dropout and iterations. It reads
the MIA module's own parameters, so both compute the same function (checked before timing) and
the same gradients; only the attention kernel and the head batching differ.

Sizes are the paper's: batch 80, n = 49 grid cells or 36 regions, d = 512, 8 heads, d_ff = 2048,
N = 2, dropout 0.1 (train mode). Each timed step is forward, a backward of a random linear
read-out of the fused output, and the parameter gradients.

"Peak MB" means:
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it
  (parameters and inputs excluded; activations, temporaries and gradients included).
* CPU: there is no allocator peak counter, so it is the bytes of the tensors autograd SAVES for
  backward (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once and the
  parameters' storages excluded: the activation memory that a training step must hold at the
  end of the forward pass, which is what dominates the peak; short-lived temporaries are not seen.

Run: ``python benchmarks/mia_module.py [--device cpu|cuda] [--repeats R] [--warmup W]``
(defaults: the GPU when there is one, else the CPU; 3 repeats and 1 warm-up on the CPU, 20 and 5
on a GPU). CPU times depend on the machine and its load: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from mia import MutualIterativeAttention
from mia.attention import MutualAttentionLayer


@dataclass(frozen=True)
class BenchConfig:
    batch: int = 80
    d_model: int = 512
    heads: int = 8
    d_ff: int = 2048
    iterations: int = 2
    dropout: float = 0.1
    positions: tuple[int, ...] = (49, 36)
    seed: int = 0


@dataclass(frozen=True)
class Row:
    case: str
    ref_ms: float
    mia_ms: float
    ref_mb: float
    mia_mb: float
    ref_range: tuple[float, float]  # min, max ms of the timed steps: how noisy the run was
    mia_range: tuple[float, float]


# ----------------------------------------------------------------------------------------------
# The plain reference: one head at a time.
# ----------------------------------------------------------------------------------------------

def _plain_attention(layer: MutualAttentionLayer, query: Tensor, source: Tensor) -> Tensor:
    att = layer.attention
    d, d_k = query.shape[-1], att.d_k
    w_q, w_kv = att.w_q.weight, att.w_kv.weight  # (d, d), (2d, d): rows are output features
    heads = []
    for i in range(att.heads):
        rows = slice(i * d_k, (i + 1) * d_k)
        q = query @ w_q[rows].T  # (B, m, d_k) = Q W_i^Q
        k = source @ w_kv[:d][rows].T  # S W_i^K
        v = source @ w_kv[d:][rows].T  # S W_i^V
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d_k), dim=-1)
        heads.append(weights @ v)
    return torch.cat(heads, dim=-1) @ att.w_o.weight.T  # [head_1 .. head_k] W^O


def _plain_layer(layer: MutualAttentionLayer, query: Tensor, source: Tensor) -> Tensor:
    p, training = layer.dropout.p, layer.training
    d = (source.shape[-1],)

    def norm(x: Tensor, ln: torch.nn.LayerNorm) -> Tensor:
        return F.layer_norm(x, d, ln.weight, ln.bias, ln.eps)

    h = norm(source + F.dropout(_plain_attention(layer, query, source), p, training),
             layer.norm_attention)
    ffn = F.linear(F.relu(F.linear(h, layer.ffn.w_1.weight, layer.ffn.w_1.bias)),
                   layer.ffn.w_2.weight, layer.ffn.w_2.bias)
    h = norm(h + F.dropout(ffn, p, training), layer.norm_ffn)
    return norm(source + F.dropout(h, p, training), layer.norm_layer)


def plain_mia(model: MutualIterativeAttention, image: Tensor, text: Tensor) -> Tensor:
    """Eq. (4)-(7), visual first, the same two layers at every iteration; returns MIA(I, T)."""
    for _ in range(model.iterations):
        image = _plain_layer(model.visual_layer, text, image)
        text = _plain_layer(model.textual_layer, image, text)
    norm = model.norm_fused
    return F.layer_norm(image + text, (image.shape[-1],), norm.weight, norm.bias, norm.eps)


# ----------------------------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _saved_bytes(exclude: set[int], total: list[int]) -> Iterator[None]:
    """Sum the bytes of the distinct storages autograd saves for backward (CPU 'peak')."""
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


def _step(forward: Callable[[], Tensor], model: torch.nn.Module, readout: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    (forward() * readout).sum().backward()


def _peak_mb(forward: Callable[[], Tensor], model: torch.nn.Module, readout: Tensor,
             device: torch.device, ctx: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Peak MB of one forward+backward step (see the module docstring for what 'peak' is)."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with ctx():
            _step(forward, model, readout)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = [0]
    with _saved_bytes(params, total), ctx():
        _step(forward, model, readout)
    return total[0] / 2**20


def measure_pair(forwards: tuple[Callable[[], Tensor], ...], model: torch.nn.Module,
                 readout: Tensor, device: torch.device, autocast: torch.dtype | None,
                 warmup: int, repeats: int) -> list[tuple[list[float], float]]:
    """Milliseconds of each timed forward+backward step and the peak MB, per implementation.

    The implementations are timed INTERLEAVED (A B, B A, A B, ...), so a change of machine load
    during the run hits both alike instead of biasing the ratio.
    """

    def ctx() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=autocast) if autocast else (
            contextlib.nullcontext())

    def timed(forward: Callable[[], Tensor]) -> float:
        _sync(device)
        start = time.perf_counter()
        with ctx():
            _step(forward, model, readout)
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        for forward in forwards:
            timed(forward)
    times: list[list[float]] = [[] for _ in forwards]
    for r in range(repeats):
        order = range(len(forwards)) if r % 2 == 0 else reversed(range(len(forwards)))
        for i in order:
            times[i].append(timed(forwards[i]))
    return [(t, _peak_mb(f, model, readout, device, ctx))
            for t, f in zip(times, forwards, strict=True)]


def _mia_fused(model: MutualIterativeAttention, image: Tensor, text: Tensor) -> Tensor:
    return model(image, text).fused


def _check_same_function(model: MutualIterativeAttention, image: Tensor, text: Tensor) -> float:
    """Both implementations compute the same MIA(I, T) (eval mode, so no dropout)."""
    model.eval()
    with torch.no_grad():
        diff = (model(image, text).fused - plain_mia(model, image, text)).abs().max().item()
    model.train()
    return diff


def run_benchmark(cfg: BenchConfig, device: torch.device, warmup: int,
                  repeats: int) -> list[Row]:
    torch.manual_seed(cfg.seed)
    model = MutualIterativeAttention(cfg.d_model, cfg.heads, cfg.d_ff, cfg.iterations,
                                     cfg.dropout).to(device).train()
    dtypes: list[torch.dtype | None] = [None]
    if device.type == "cuda":
        dtypes.append(torch.bfloat16)
    rows = []
    for n in cfg.positions:
        g = torch.Generator(device=device).manual_seed(cfg.seed + n)
        shape = (cfg.batch, n, cfg.d_model)
        image, text, readout = (torch.randn(shape, generator=g, device=device) for _ in range(3))
        diff = _check_same_function(model, image, text)
        if diff > 1e-3:
            raise RuntimeError(f"plain reference and MIA disagree by {diff:.2e} at n={n}: the "
                               "benchmark would compare two different functions")
        print(f"n={n}: reference vs MIA max |difference| in MIA(I, T) = {diff:.1e} (float32)",
              flush=True)
        for autocast in dtypes:
            results = measure_pair((partial(plain_mia, model, image, text),
                                    partial(_mia_fused, model, image, text)),
                                   model, readout, device, autocast, warmup, repeats)
            dtype = "bf16 autocast" if autocast else "float32"
            (ref_t, ref_mb), (mia_t, mia_mb) = results
            rows.append(Row(f"n={n}, {dtype}, {device.type}", statistics.median(ref_t),
                            statistics.median(mia_t), ref_mb, mia_mb,
                            (min(ref_t), max(ref_t)), (min(mia_t), max(mia_t))))
    return rows


def format_table(rows: list[Row], device: torch.device) -> str:
    mem = "peak MB" if device.type == "cuda" else "saved-for-backward MB"
    head = (f"| case | reference ms | MIA ms | speed-up (ref/MIA) | reference {mem} | MIA {mem} "
            "| memory ratio (ref/MIA) |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r.case} | {r.ref_ms:.1f} | {r.mia_ms:.1f} | "
                     f"**{r.ref_ms / r.mia_ms:.2f}x** | {r.ref_mb:.1f} | {r.mia_mb:.1f} | "
                     f"**{r.ref_mb / r.mia_mb:.2f}x** |")
    lines.append("")
    lines.append("timing spread, min-max ms: " + "; ".join(
        f"{r.case}: reference {r.ref_range[0]:.0f}-{r.ref_range[1]:.0f}, "
        f"MIA {r.mia_range[0]:.0f}-{r.mia_range[1]:.0f}" for r in rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per case (default 3 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 1 on CPU, 5 on GPU)")
    parser.add_argument("--batch", type=int, default=BenchConfig.batch)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    gpu = device.type == "cuda"
    repeats = args.repeats or (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    cfg = BenchConfig(batch=args.batch)
    print(f"MIA module benchmark: B={cfg.batch}, d={cfg.d_model}, heads={cfg.heads}, "
          f"d_ff={cfg.d_ff}, N={cfg.iterations}, dropout={cfg.dropout} (train mode), "
          f"forward+backward, median of {repeats} interleaved after {warmup} warm-up; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name(device)}" if gpu else ""), flush=True)
    rows = run_benchmark(cfg, device, warmup, repeats)
    print(format_table(rows, device))
    if not gpu:
        print("CPU: absolute ms depend on this machine and its load; the ratios are the result. "
              "Memory = bytes of tensors saved for backward (distinct storages, parameters "
              "excluded), not an allocator peak.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
