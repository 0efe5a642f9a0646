"""The training step on the device (mia.training.step, .precision): no host synchronisation on
the common path, an exact skip of non-finite steps without one, and bf16 autocast that trains
the same models within a stated tolerance.

Host synchronisations are counted on the CPU by :class:`mia.training.sync_count.SyncCounter`
(every ``.item()``/``bool``/``float``/``.tolist()``/``.numpy()`` and value-sized operator, with
the code that asked); on CUDA, ``tests/test_gpu_paths.py`` checks the same with
``torch.cuda.set_sync_debug_mode("error")``. Each test takes a second or two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_captioning_train import ToyCaptionData, toy_config

from mia.captioning.train import CaptionXETask, train_captioner
from mia.training.loop import fit
from mia.training.precision import resolve_precision
from mia.training.step import StepRecord, _masked_step, adam_options, step_if
from mia.training.sync_count import SyncCounter
from mia.vqa.train import VQATask, VQATrainConfig

REPO = Path(__file__).resolve().parent.parent
#: Host reads that are not device synchronisations in a GPU run: the loaders' host batches, and
#: torch's own reads of CPU step counters of non-capturable optimisers (on CUDA the optimisers
#: are fused or capturable: adam_options, adamax_options).
HOST_DATA = (str(REPO / "mia" / "data"), str(REPO / "tests"))


pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


def step_syncs(counter: SyncCounter, allow_cpu_optimizer_counters: bool = False) -> list[str]:
    """The host reads made during training steps: all of them except the loop's flushes (log
    lines, checkpoints, epoch ends) and host data."""
    out = []
    for call in counter.calls:
        functions = {func for _, func in call.frames}
        if functions & {"_flush", "_mean_loss", "_settle_scores"}:
            continue
        if call.caller[0].startswith(HOST_DATA):
            continue
        if allow_cpu_optimizer_counters and any(p.startswith("optim/") for p in call.via_torch):
            continue
        out.append(call.describe())
    return out


class _NoDecodeXE(CaptionXETask):
    """XE captioning whose validation returns a constant: only the training steps are counted
    (validation decodes with its own, documented, syncs)."""

    def validate(self, epoch, should_stop):
        return {"val_cider": float(epoch)}


def test_an_xe_captioning_step_never_synchronises(tmp_path):
    cfg = toy_config(epochs=2, checkpoint_every=0, log_every=0, max_length=4)
    task = _NoDecodeXE(cfg, ToyCaptionData())
    assert task.optimizer.defaults.get("fused")  # adam_options: the in-kernel skip
    with SyncCounter() as counter:
        fit(task, _settings(cfg), tmp_path)
    assert step_syncs(counter) == []
    flushes = [c for c in counter.calls if any(f == "_flush" for _, f in c.frames)]
    assert len(flushes) == 2  # one transfer per epoch end (no log line, no checkpoint)


def test_a_log_line_every_n_steps_reads_the_device_once_per_line(tmp_path):
    cfg = toy_config(epochs=1, checkpoint_every=0, log_every=2, max_length=4)
    with SyncCounter() as counter:
        fit(_NoDecodeXE(cfg, ToyCaptionData()), _settings(cfg), tmp_path)
    assert step_syncs(counter) == []
    flushes = [c for c in counter.calls if any(f == "_flush" for _, f in c.frames)]
    assert len(flushes) == 2  # steps 2 and 4 (4 steps an epoch); at the epoch's end nothing
    lines = [c for c in counter.calls if any(f == "_mean_loss" for _, f in c.frames)]
    assert len(lines) == 2  # the log lines' mean loss


def _settings(cfg):
    from mia.captioning.train import loop_settings

    return loop_settings(cfg)


# ---------------------------------------------------------------- VQA


class ToyVQAData:
    """The VQA loader contract in memory (8 questions a batch, 2 batches an epoch)."""

    question_vocab = [f"q{i}" for i in range(20)]
    answer_vocab = [f"a{i}" for i in range(6)]
    concept_words = [f"c{i}" for i in range(10)]
    n_answers = 6

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        n = 16
        self.questions = torch.from_numpy(rng.integers(1, 20, (n, 5)))
        self.features = torch.from_numpy(rng.normal(size=(n, 4, 12)).astype(np.float32))
        self.concepts = torch.from_numpy(rng.integers(0, 10, (n, 4)))
        self.target = torch.zeros(n, 6)
        self.target[torch.arange(n), torch.from_numpy(rng.integers(0, 6, n))] = 1.0

    def num_train_batches(self, batch_size, splits=("train",)):
        return -(-16 // batch_size)

    def train_batches(self, epoch, batch_size, seed, start=0, splits=("train",)):
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(16))
        for b in range(start, self.num_train_batches(batch_size)):
            rows = order[b * batch_size:(b + 1) * batch_size]
            yield {"question_ids": rows, "image_ids": rows, "questions": self.questions[rows],
                   "features": self.features[rows],
                   "feature_mask": torch.ones(len(rows), 4, dtype=torch.bool),
                   "concepts": self.concepts[rows],
                   "concept_mask": torch.ones(len(rows), 4, dtype=torch.bool),
                   "boxes": torch.rand(len(rows), 4, 4).sort(-1).values,
                   "target": self.target[rows]}


def vqa_config(baseline: str = "updown", **train) -> VQATrainConfig:
    model = {"baseline": baseline, "variant": "mia", "feature_dim": 12, "hidden": 16,
             "embed_dim": 8, "concept_embed_dim": 8, "mia_d_model": 16, "mia_heads": 2,
             "mia_d_ff": 16, "glimpses": 2}
    values = {"model": model, "epochs": 1, "batch_size": 8, "lr": 5e-3, "seed": 5,
              "checkpoint_every": 0, "log_every": 0, "progress": False, "device": "cpu",
              "train_splits": ["train", "val"], "prefetch_batches": 0, **train}
    return VQATrainConfig.from_dict(values)


@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_a_vqa_step_never_synchronises(tmp_path, baseline):
    from mia.vqa.train import loop_settings

    cfg = vqa_config(baseline, epochs=2)
    task = VQATask(cfg, ToyVQAData())
    with SyncCounter() as counter:
        result = fit(task, loop_settings(cfg), tmp_path)
    # Adamax has no fused kernel; on the CPU torch reads its step counters on the host (a GPU
    # run makes it capturable: counters on the device, read by the kernels).
    assert step_syncs(counter, allow_cpu_optimizer_counters=True) == []
    assert all(math.isfinite(row["train_soft_score"]) for row in result.history)


# ---------------------------------------------------------------- the exact skip


def _adamax_and_adam():
    torch.manual_seed(0)
    out = []
    for make in (lambda p: torch.optim.Adamax(p, lr=0.1),
                 lambda p: torch.optim.Adam(p, lr=0.1, **adam_options("cpu")),
                 lambda p: torch.optim.Adam(p, lr=0.1)):
        params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
        out.append((params, make(params)))
    return out


def _state(params, optimizer):
    copy = [p.detach().clone() for p in params]
    for p in params:
        for _, value in sorted(optimizer.state.get(p, {}).items()):
            copy.append(value.clone() if torch.is_tensor(value) else torch.tensor(value))
    return copy


@pytest.mark.parametrize("case", [0, 1, 2], ids=["adamax-masked", "adam-fused", "adam-masked"])
def test_a_skipped_step_changes_nothing_and_a_kept_one_equals_a_plain_step(case):
    params, optimizer = _adamax_and_adam()[case]
    twin_params, twin = _adamax_and_adam()[case]
    for step in range(4):
        for p, q in zip(params, twin_params, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:  # a non-finite gradient: skipped, nothing changes
            params[0].grad[0, 0] = float("nan")
            before = _state(params, optimizer)
            step_if(optimizer, torch.tensor(False))
            after = _state(params, optimizer)
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
            continue
        if case == 2:  # the masked path, forced, against Adam's own step
            _masked_step(optimizer, torch.tensor(True))
        else:
            step_if(optimizer, torch.tensor(True))
        twin.step()
        a, b = _state(params, optimizer), _state(twin_params, twin)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), step


def test_a_skipped_first_step_leaves_the_state_as_new():
    params, optimizer = _adamax_and_adam()[0]
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    before = [p.detach().clone() for p in params]
    _masked_step(optimizer, torch.tensor(False))
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for p in params:  # state made by the skipped step: Adamax's initial zeros
        state = optimizer.state[p]
        assert float(state["step"]) == 0 and not state["exp_avg"].any()
        assert not state["exp_inf"].any()


def test_a_nonfinite_gradient_with_a_finite_loss_is_named_and_skipped(tmp_path, caplog):
    """A finite loss whose gradient overflows: the step is skipped and the warning says
    'gradient', as before the guard moved to the device."""
    import logging

    class _Overflow(_NoDecodeXE):
        def loss(self, batch, epoch):
            loss, extras = super().loss(batch, epoch)
            if epoch == 1 and self.calls == 0:
                weight = next(self.model.parameters()).sum()
                loss = loss + torch.sqrt(weight - weight.detach())  # 0, with an infinite slope
            self.calls += 1
            return loss, extras

    cfg = toy_config(epochs=1, checkpoint_every=0, max_nonfinite_steps=3)
    task = _Overflow(cfg, ToyCaptionData())
    task.calls = 0
    with caplog.at_level(logging.WARNING):
        result = fit(task, _settings(cfg), tmp_path)
    assert result.history[0]["nonfinite_steps"] == 1
    assert "non-finite gradient at epoch 1, step 1" in caplog.text
    assert "step skipped (1 of at most 3" in caplog.text


def test_step_record_reads_all_steps_in_one_transfer():
    record = StepRecord()
    from mia.training.step import PendingStep

    for i, (loss, ok) in enumerate([(1.5, True), (float("nan"), False), (2.5, True)], 1):
        record.add(PendingStep(1, i, i, {}), torch.tensor(loss), torch.tensor(ok),
                   torch.tensor(ok))
    with SyncCounter() as counter:
        done = record.flush()
    assert len(counter.calls) == 1
    assert [d.applied for d in done] == [True, False, True]
    assert done[0].loss == 1.5 and math.isnan(done[1].loss) and done[2].loss == 2.5


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("baseline, variant", [
    ("visual_attention", "mia"), ("updown", "mia"), ("transformer", "base")])
def test_bf16_autocast_loss_and_gradients_match_fp32_on_cpu(baseline, variant):
    """The same captioner and batch with and without CPU bf16 autocast. Tolerance: the loss
    within 0.5% (relative) and the gradient's direction within cosine 0.999 (measured: 0.03%
    and 0.9999 at most): bf16 keeps 8 bits of mantissa (~0.4% per rounding), averaged over the
    products of each sum."""
    from mia.captioning.config import CaptionerConfig
    from mia.captioning.models import build_captioner, trim_captions
    from mia.captioning.train import caption_loss

    options = ({"rnn_size": 32} if baseline == "updown" else
               {"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 32}
               if baseline == "transformer" else {})
    torch.manual_seed(0)
    cfg = CaptionerConfig(baseline=baseline, variant=variant, feature_dim=8, d_model=32,
                          embed_dim=32, attention_dim=32, dropout=0.0, mia_heads=2, mia_d_ff=64,
                          mia_dropout=0.0, options=options)
    model = build_captioner(cfg, len(ToyCaptionData().vocab)).train()
    batch = trim_captions(next(ToyCaptionData().train_batches(1, 16, 0)))

    def loss_and_grad(precision: str) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks (MIA's attention dropout) in both
        with resolve_precision(precision, "cpu").autocast():
            logits = model(batch)
            loss = caption_loss(logits.float(), batch["captions"][:, 1:], 0.1)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        return float(loss.detach()), grad

    loss32, grad32 = loss_and_grad("fp32")
    loss16, grad16 = loss_and_grad("bf16")
    assert resolve_precision("auto", "cpu").dtype is None  # auto is fp32 on the CPU
    assert loss16 == pytest.approx(loss32, rel=0.005)
    cosine = float(torch.nn.functional.cosine_similarity(grad32, grad16, dim=0))
    assert cosine > 0.999, cosine
    assert loss16 != loss32  # autocast did run in bf16


@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_bf16_autocast_vqa_loss_matches_fp32_on_cpu(baseline):
    from mia.vqa.models import build_vqa_model

    data = ToyVQAData()
    cfg = vqa_config(baseline).model
    torch.manual_seed(0)
    model = build_vqa_model(cfg, len(data.question_vocab), data.n_answers,
                            len(data.concept_words)).eval()
    batch = next(data.train_batches(1, 16, 0))

    def loss_of(precision: str) -> float:
        with resolve_precision(precision, "cpu").autocast():
            logits = model(batch)
        return float(model.loss(logits.float(), batch["target"]))

    a, b = loss_of("fp32"), loss_of("bf16")
    assert b == pytest.approx(a, rel=0.005) and a != b


def test_a_bf16_run_trains_and_resumes_like_any_run(tmp_path):
    cfg = toy_config(epochs=2, precision="bf16")
    result = train_captioner(cfg, ToyCaptionData(), tmp_path / "bf16")
    fp32 = train_captioner(toy_config(epochs=2), ToyCaptionData(), tmp_path / "fp32")
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[1]["train_loss"] == pytest.approx(fp32.history[1]["train_loss"],
                                                            rel=0.05)
    with pytest.raises(ValueError, match="train.precision"):
        toy_config(precision="fp16")


# ---------------------------------------------------------------- decoding loops


@pytest.mark.parametrize("baseline", ["updown", "visual_attention", "transformer"])
def test_every_decode_step_mode_gives_the_eager_captions(baseline, monkeypatch):
    """fixed (no host check per token) and compiled (torch.compile of the step; here its
    aot_eager backend: dynamo's capture without a C++ build) decode the eager captions, greedy
    and beam; sampling without the per-token check draws valid captions."""
    from mia.captioning import step_capture
    from mia.captioning.beam import beam_search, greedy_decode
    from mia.captioning.config import CaptionerConfig
    from mia.captioning.models import build_captioner
    from mia.captioning.sampling import sample_captions

    monkeypatch.setattr(step_capture, "BACKEND", "aot_eager")
    options = ({"rnn_size": 32} if baseline == "updown" else
               {"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 32}
               if baseline == "transformer" else {})
    torch.manual_seed(0)
    cfg = CaptionerConfig(baseline=baseline, variant="mia", feature_dim=8, d_model=32,
                          embed_dim=32, attention_dim=32, mia_heads=2, mia_d_ff=64,
                          options=options)
    model = build_captioner(cfg, len(ToyCaptionData().vocab)).eval()
    batch = next(ToyCaptionData().eval_batches("val", 8))
    eager = greedy_decode(model, batch, 6)
    for mode in ("fixed", "compiled"):
        assert torch.equal(greedy_decode(model, batch, 6, mode).tokens, eager.tokens), mode
        assert torch.equal(beam_search(model, batch, 3, 6, mode).tokens,
                           beam_search(model, batch, 3, 6).tokens), mode
    model.train()
    with SyncCounter() as counter:
        rollout = sample_captions(model, batch, 2, 6, step_mode="fixed")
    assert step_syncs(counter) == []  # no per-token check
    assert rollout.tokens.shape == (16, 6) and torch.isfinite(rollout.log_probs).all()
    with pytest.raises(ValueError, match="decode_step"):
        greedy_decode(model, batch, 6, "graphs")


# ---------------------------------------------------------------- features on the device


def test_batches_by_image_hold_every_caption_once_and_point_at_their_image(tmp_path):
    from test_captioning_train import write_toy_stores

    from mia.data.loaders import CaptionData

    captions, grid, concepts = write_toy_stores(tmp_path)
    data = CaptionData.from_stores(captions, grid, concepts)
    assert data.captions_per_image == 2
    seen = []
    batches = list(data.train_batches_by_image(3, 3, seed=1))
    assert len(batches) == data.num_train_image_batches(3) == 3
    for batch in batches:
        ids = batch["batch_image_ids"]
        assert torch.equal(ids[batch["caption_image"]], batch["image_ids"])
        assert len(set(ids.tolist())) == len(ids)
        seen += [(int(i), tuple(c.tolist())) for i, c in zip(batch["image_ids"],
                                                              batch["captions"], strict=True)]
    every = [(int(i), tuple(c.tolist())) for b in data.train_batches(3, 100, seed=1)
             for i, c in zip(b["image_ids"], b["captions"], strict=True)]
    assert sorted(seen) == sorted(every)  # each training caption exactly once
    resumed = list(data.train_batches_by_image(3, 3, seed=1, start=1))
    assert all(torch.equal(a["captions"], b["captions"]) for a, b in
               zip(batches[1:], resumed, strict=True))
    assert data.place("cpu") == "host"  # nothing moves on a CPU run


@pytest.mark.skipif(os.environ.get("MIA_COMPILE_TESTS") != "1",
                    reason="inductor builds C++ for the compiled CPU step: 1-3 minutes on 2 cores "
                           "(set MIA_COMPILE_TESTS=1 to run it; ran 2026-12-06: equal captions). "
                           "The aot_eager test above covers the capture, gpu.sh the CUDA graphs")
def test_inductor_compiled_step_equals_eager_on_cpu():
    from mia.captioning.beam import greedy_decode
    from mia.captioning.config import CaptionerConfig
    from mia.captioning.models import build_captioner

    torch.manual_seed(0)
    cfg = CaptionerConfig(baseline="updown", variant="base", feature_dim=8, d_model=32,
                          embed_dim=32, attention_dim=32, options={"rnn_size": 32})
    model = build_captioner(cfg, len(ToyCaptionData().vocab)).eval()
    batch = next(ToyCaptionData().eval_batches("val", 8))
    assert torch.equal(greedy_decode(model, batch, 6, "compiled").tokens,
                       greedy_decode(model, batch, 6).tokens)


def test_a_fused_adam_that_loaded_a_for_each_state_still_skips_exactly():
    """scst.optimizer_state: carry loads the XE run's Adam; from an older, for-each XE run its
    groups say fused=False, and the guard falls back to the masked step."""
    params = [torch.nn.Parameter(torch.randn(5))]
    old = torch.optim.Adam(params, lr=0.1)
    params[0].grad = torch.randn(5)
    old.step()
    fused = torch.optim.Adam(params, lr=0.1, **adam_options("cpu"))
    fused.load_state_dict(old.state_dict())
    assert not fused.param_groups[0]["fused"]
    params[0].grad = torch.full((5,), float("nan"))
    before = _state(params, fused)
    step_if(fused, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, _state(params, fused), strict=True))
