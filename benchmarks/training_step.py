"""The training step on the device: host synchronisations per step, bf16 autocast against
fp32, and the per-token decoding loops (eager, fixed, compiled).

* Syncs per step: whole epochs of XE captioning, VQA and SCST through :func:`mia.training.fit`
  (validation replaced by a constant), every host read of a tensor value counted: on CUDA by
  ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronisation), on the CPU by
  :class:`mia.training.sync_count.SyncCounter` (reads of host data and the loop's flushes at
  log lines and epoch ends are listed apart). Target: 0 per step on the common path; SCST needs
  1 (its sampled tokens go to the host for the CIDEr-D reward) with ``decode_step: fixed``.
* Precision: one training step of Up-Down (d 1000, batch 50) and Visual Attention w/ MIA
  (d 512, batch 80) at the paper's sizes, fp32 against bf16 autocast (CUDA only; a CPU's bf16
  is no faster than its fp32).
* Decoding: greedy and beam search (K = 3) of a batch of 100 images, eager against fixed and
  compiled (``mia.captioning.step_capture``; compiled on CUDA only, CUDA graphs).

Run: ``python benchmarks/training_step.py [--device cpu|cuda] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the toy worlds of the tests

from test_captioning_train import ToyCaptionData, toy_config  # noqa: E402
from test_training_step import ToyVQAData, step_syncs, vqa_config  # noqa: E402

from mia.captioning.config import CaptionerConfig  # noqa: E402
from mia.captioning.models import build_captioner  # noqa: E402
from mia.training.precision import resolve_precision  # noqa: E402
from mia.training.sync_count import SyncCounter  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Counting:
    """Syncs of a block: CUDA's own sync-debug warnings, or the CPU counter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = 0

    def __enter__(self) -> _Counting:
        if self.device.type == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self._log = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._counter = SyncCounter().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(*exc)
            self.count = sum("synchroniz" in str(w.message) for w in self._log)
        else:
            self._counter.__exit__(*exc)
            self.count = len(step_syncs(self._counter, allow_cpu_optimizer_counters=True))


def syncs_per_step(device: torch.device) -> list[tuple[str, int, int]]:
    """(task, steps, syncs outside the flushes) of one epoch of each task."""
    from mia.captioning.scst import SCSTConfig
    from mia.captioning.train import CaptionXETask, loop_settings
    from mia.training import loop
    from mia.vqa.train import VQATask
    from mia.vqa.train import loop_settings as vqa_settings

    class XE(CaptionXETask):
        def validate(self, epoch, should_stop):
            return {"val_cider": 0.0}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = toy_config(epochs=1, checkpoint_every=0, log_every=0, max_length=4,
                         device=str(device))
        task = XE(cfg, ToyCaptionData())
        plain = loop._flush
        quiet = {"on": False}

        def flush(*args):  # the loop's own reads at log lines and epoch ends: not counted
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
            plain(*args)
            if device.type == "cuda" and quiet["on"]:
                torch.cuda.set_sync_debug_mode("warn")

        loop._flush = flush
        try:
            with _Counting(device) as c:
                quiet["on"] = True
                loop.fit(task, loop_settings(cfg), Path(tmp) / "xe")
                quiet["on"] = False
            rows.append(("XE captioning (VA w/ MIA)", 4, c.count))
            vcfg = vqa_config("ban", device=str(device))
            with _Counting(device) as c:
                quiet["on"] = True
                loop.fit(VQATask(vcfg, ToyVQAData()), vqa_settings(vcfg), Path(tmp) / "vqa")
                quiet["on"] = False
            rows.append(("VQA (BAN w/ MIA)", 2, c.count))
            for mode in ("eager", "fixed"):
                rows.append((f"SCST step (Up-Down), decode_step {mode}", 1,
                             _scst_syncs(device, SCSTConfig(decode_step=mode, max_length=6))))
        finally:
            loop._flush = plain
    return rows


def _scst_syncs(device: torch.device, cfg) -> int:
    from mia.captioning.scst import SCSTScorer, reward_references, scst_step
    from mia.evaluation.cider import DocumentFrequency

    data = ToyCaptionData()
    torch.manual_seed(0)
    model = build_captioner(CaptionerConfig(baseline="updown", variant="base", feature_dim=8,
                                            d_model=32, embed_dim=32, attention_dim=16,
                                            options={"rnn_size": 32}), len(data.vocab))
    model = model.to(device).train()
    refs = {i: list(t) for i, t in data.texts.items()}
    df = DocumentFrequency({k: [f"{s} <eos>" for s in v] for k, v in refs.items()},
                           vocab=data.vocab)
    scorer = SCSTScorer(reward_references(refs, 16), df)
    batch = next(data.eval_batches("train", 8))
    ids = batch["image_ids"].tolist()
    batch = {k: v.to(device) for k, v in batch.items()}
    generator = torch.Generator(device=device).manual_seed(0)
    scst_step(model, batch, scorer, cfg, generator, image_ids=ids)  # warm-up
    with _Counting(device) as c:
        loss, _ = scst_step(model, batch, scorer, cfg, generator, image_ids=ids)
        loss.backward()
    return c.count


def precision_rows(device: torch.device, repeats: int, check: bool) -> list[tuple[str, float,
                                                                                  float]]:
    from mia.captioning.train import caption_loss

    cases = [("updown", "base", 1000, 50, {"rnn_size": 1000}), ("visual_attention", "mia", 512,
                                                                 80, {})]
    if check:
        cases = [("updown", "base", 32, 4, {"rnn_size": 32})]
    rows = []
    for baseline, variant, d, batch_size, options in cases:
        torch.manual_seed(0)
        feats = 8 if check else 2048
        n = 36 if baseline == "updown" else 49
        cfg = CaptionerConfig(baseline=baseline, variant=variant, feature_dim=feats, d_model=d,
                              embed_dim=d, attention_dim=512 if not check else 16,
                              options=options)
        vocab = 100 if check else 9487
        model = build_captioner(cfg, vocab).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = {"features": torch.randn(batch_size, n, feats, device=device),
                 "feature_mask": torch.ones(batch_size, n, dtype=torch.bool, device=device),
                 "concepts": torch.randint(4, vocab, (batch_size, n), device=device),
                 "concept_mask": torch.ones(batch_size, n, dtype=torch.bool, device=device),
                 "captions": torch.randint(4, vocab, (batch_size, 17), device=device)}
        times = {}
        for name in ("fp32", "bf16"):
            precision = resolve_precision(name, device)
            samples = []
            with precision.training():
                for i in range(repeats + 1):
                    _sync(device)
                    t0 = time.perf_counter()
                    with precision.autocast():
                        logits = model(batch)
                    loss = caption_loss(logits.float(), batch["captions"][:, 1:], 0.1)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    _sync(device)
                    if i:
                        samples.append(time.perf_counter() - t0)
            times[name] = 1e3 * statistics.median(samples)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(batch)
        achieved = 3 * counter.get_total_flops() / (times["bf16"] / 1e3)  # FLOP/s, fwd + bwd
        rows.append((f"{baseline}/{variant}, d {d}, batch {batch_size}", times["fp32"],
                     times["bf16"], achieved))
    return rows


def decoding_rows(device: torch.device, repeats: int, check: bool) -> list[tuple[str, ...]]:
    from mia.captioning.beam import beam_search, greedy_decode

    torch.manual_seed(0)
    d, feats, vocab, b = (32, 8, 100, 4) if check else (1000, 2048, 9487, 100)
    cfg = CaptionerConfig(baseline="updown", variant="base", feature_dim=feats, d_model=d,
                          embed_dim=d, attention_dim=16 if check else 512,
                          options={"rnn_size": d})
    model = build_captioner(cfg, vocab).to(device).eval()
    batch = {"features": torch.randn(b, 36, feats, device=device),
             "feature_mask": torch.ones(b, 36, dtype=torch.bool, device=device)}
    modes = ["eager", "fixed"] + (["compiled"] if device.type == "cuda" else [])
    rows = []
    for name, fn in (("greedy", lambda m: greedy_decode(model, batch, 16, m)),
                     ("beam 3", lambda m: beam_search(model, batch, 3, 16, m))):
        ms = {}
        for mode in modes:
            samples = []
            for i in range(repeats + 2):  # two warm-ups: compiling, then recording graphs
                _sync(device)
                t0 = time.perf_counter()
                out = fn(mode)
                _sync(device)
                if i >= 2:
                    samples.append(time.perf_counter() - t0)
            ms[mode] = (1e3 * statistics.median(samples), out.tokens)
        same = all(torch.equal(ms["eager"][1], ms[m][1]) for m in modes)
        rows.append((f"Up-Down d {d}, {b} images, {name}", *(f"{ms[m][0]:.1f}" for m in modes),
                     "yes" if same else "NO"))
    return rows, modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--check", action="store_true", help="tiny sizes: does it run")
    parser.add_argument("--throughput", type=Path, default=None,
                        help="CUDA: write the measured share of the bf16 peak here (JSON)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    repeats = args.repeats or (1 if args.check else 10 if gpu else 2)
    torch.set_num_threads(1 if args.check else torch.get_num_threads())
    print(f"Training step on {torch.cuda.get_device_name(device) if gpu else 'cpu'}; torch "
          f"{torch.__version__}; median of {repeats}\n")
    print("| task | steps | host syncs in the steps | per step |")
    print("|---|---|---|---|")
    for task, steps, count in syncs_per_step(device):
        print(f"| {task} | {steps} | {count} | {count / steps:.1f} |")
    print("\n(the loop's one read per log line / checkpoint / epoch end is not in these counts)")
    if gpu or args.check:
        print("\n| one XE training step | fp32 ms | bf16 autocast ms | fp32 / bf16 | bf16 TFLOP/s |")
        print("|---|---|---|---|---|")
        rows = precision_rows(device, repeats, args.check)
        for case, fp32, bf16, achieved in rows:
            print(f"| {case} | {fp32:.1f} | {bf16:.1f} | **{fp32 / bf16:.2f}x** | "
                  f"{achieved / 1e12:.1f} |")
        if gpu and args.throughput:
            from mia.plan import PEAK

            share = statistics.mean(r[3] for r in rows) / PEAK
            args.throughput.write_text(json.dumps({
                "device": torch.cuda.get_device_name(device), "utilisation": {
                    "captioning XE: LSTM decoders + MIA": round(share, 4)}}, indent=1))
            print(f"\nshare of the bf16 peak written to {args.throughput} (mia plan "
                  "--throughput)")
    rows, modes = decoding_rows(device, repeats, args.check or not gpu)
    print("\n| decoding (16 steps) | " + " | ".join(f"{m} ms" for m in modes)
          + " | same captions |")
    print("|---" * (len(modes) + 2) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if not gpu:
        print("\nCPU: no host syncs exist to save here and graphs are CUDA's; the CPU run checks "
              "the counts and that every mode gives the same captions.")


if __name__ == "__main__":
    main()
