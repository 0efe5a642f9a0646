"""The CUDA paths of training, run where a GPU is (``benchmarks/gpu.sh`` runs them on the lent
machine): no host synchronisation in a training step (``torch.cuda.set_sync_debug_mode``), bf16
autocast and TF32, features and images held on the GPU, crops on the GPU equal to the CPU's,
the in-kernel skip of fused Adam, and compiled (CUDA-graph) decoding equal to eager.

Imports only what the GPU machine's image has (benchmarks/device_env/packages.txt): no
jsonschema, snakemake or pycocoevalcap. Without CUDA every test here is skipped (the reason is
printed); the CPU halves of these checks are in test_training_step.py, test_captioning_finetune.py
and test_data_loaders.py. Each takes seconds on an H100 (compiled decoding: up to a minute).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_captioning_train import ToyCaptionData, toy_config

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


def _xe_task(**overrides):
    from mia.captioning.train import CaptionXETask

    class NoDecode(CaptionXETask):
        def validate(self, epoch, should_stop):
            return {"val_cider": float(epoch)}

    return NoDecode(toy_config(device="cuda", **overrides), ToyCaptionData())


def test_a_training_step_never_synchronises_on_cuda(tmp_path, monkeypatch):
    """Every step of an epoch under set_sync_debug_mode("error"): any .item(), bool(),
    nonzero or D2H copy in the step raises. The loop's flush (one per epoch here) is allowed."""
    from mia.captioning.train import loop_settings
    from mia.training import loop

    task = _xe_task(epochs=1, checkpoint_every=0, log_every=0, max_length=4)
    plain_batches, plain_flush = task.batches, loop._flush

    def batches(epoch, start):
        for batch in plain_batches(epoch, start):
            torch.cuda.set_sync_debug_mode("error")
            yield batch

    def flush(*args):
        torch.cuda.set_sync_debug_mode(0)
        plain_flush(*args)

    monkeypatch.setattr(task, "batches", batches)
    monkeypatch.setattr(loop, "_flush", flush)
    try:
        result = loop.fit(task, loop_settings(task.cfg), tmp_path)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.history[0]["steps"] == 4 and np.isfinite(result.history[0]["train_loss"])


def test_bf16_autocast_and_tf32_on_cuda(tmp_path):
    from mia.captioning.train import train_captioner

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    bf16 = train_captioner(toy_config(device="cuda", epochs=2), ToyCaptionData(),
                           tmp_path / "auto")  # auto = bf16 on CUDA
    fp32 = train_captioner(toy_config(device="cuda", epochs=2, precision="fp32"),
                           ToyCaptionData(), tmp_path / "fp32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert bf16.history[1]["train_loss"] == pytest.approx(fp32.history[1]["train_loss"], rel=0.05)


def test_fused_adam_skips_a_nonfinite_step_in_kernel(cuda):
    from mia.training.step import adam_options, step_if

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, device=cuda))
    opt = torch.optim.Adam([p], lr=0.1, **adam_options(cuda))
    p.grad = torch.randn_like(p)
    step_if(opt, torch.tensor(True, device=cuda))
    state = [p.detach().clone(), *(v.clone() for v in opt.state[p].values())]
    p.grad = torch.full_like(p, float("nan"))
    torch.cuda.set_sync_debug_mode("error")
    try:
        step_if(opt, torch.isfinite(p.grad).all())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    after = [p.detach(), *opt.state[p].values()]
    assert all(torch.equal(a, b) for a, b in zip(state, after, strict=True))


def test_feature_store_on_the_gpu_gives_the_host_batches(tmp_path, cuda):
    from test_captioning_train import write_toy_stores

    from mia.data.loaders import CaptionData, LoaderConfig

    captions, grid, concepts = write_toy_stores(tmp_path)
    host = CaptionData.from_stores(captions, grid, concepts)
    for residency in ("device", "host"):
        placed = CaptionData.from_stores(captions, grid, concepts,
                                         LoaderConfig(pin_memory=True, residency=residency))
        assert placed.place(cuda) != "host"
        a, b = next(host.train_batches(1, 4, 0)), next(placed.train_batches(1, 4, 0))
        assert b["features"].device.type == "cuda"
        assert torch.equal(a["features"], b["features"].cpu())
        assert torch.equal(a["feature_mask"], b["feature_mask"].cpu())


def test_crops_on_the_gpu_equal_the_cpu_crops(tmp_path, cuda):
    from mia.captioning.finetune import device_crops

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8))
    windows = torch.tensor([[t, t + 1, t % 2] for t in range(6)])
    cpu = device_crops(pixels, windows, 32)
    gpu = device_crops(pixels.to(cuda), windows.to(cuda), 32)
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.parametrize("baseline", ["updown", "transformer"])
def test_compiled_decoding_equals_eager_on_cuda(cuda, baseline):
    """CUDA-graph replays (torch.compile, reduce-overhead) of the per-token step give the
    eager captions; SCST sampling with the compiled step runs and back-propagates."""
    from mia.captioning.beam import beam_search, greedy_decode
    from mia.captioning.config import CaptionerConfig
    from mia.captioning.models import build_captioner
    from mia.captioning.sampling import sample_captions

    options = ({"rnn_size": 32} if baseline == "updown" else
               {"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 32})
    torch.manual_seed(0)
    cfg = CaptionerConfig(baseline=baseline, variant="mia", feature_dim=8, d_model=32,
                          embed_dim=32, attention_dim=32, mia_heads=2, mia_d_ff=64,
                          options=options)
    model = build_captioner(cfg, len(ToyCaptionData().vocab)).to(cuda).eval()
    batch = {k: v.to(cuda) for k, v in next(ToyCaptionData().eval_batches("val", 8)).items()}
    for _ in range(2):  # the second call replays the recorded graphs
        eager = greedy_decode(model, batch, 6)
        compiled = greedy_decode(model, batch, 6, step_mode="compiled")
        assert torch.equal(eager.tokens, compiled.tokens)
        assert torch.equal(beam_search(model, batch, 3, 6).tokens,
                           beam_search(model, batch, 3, 6, step_mode="compiled").tokens)
    model.train()
    rollout = sample_captions(model, batch, 5, 6, step_mode="compiled")
    (rollout.log_probs.sum()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
