"""Captioner training: learning, LR schedule, atomic checkpoints, and exact resume after SIGTERM.

The data is a toy world held in memory behind the loader contract of docs/CONTRACTS.md ("Batches
fed to models"): 8 images, each a (size, colour, shape) triple whose features encode it, with two
captions. Run as a script (``python tests/test_captioning_train.py OUT_DIR``), this file trains in a
fresh process, which the resume test starts, signals, and restarts.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mia.captioning.beam import BOS, EOS
from mia.captioning.config import TrainConfig
from mia.captioning.decode import decode_split, load_captioner
from mia.captioning.train import PREEMPTED_EXIT_CODE, learning_rate, train_captioner
from mia.training.checkpoint import atomic_save, load_checkpoint

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "big", "small", "red", "blue", "circle",
         "square"]
BATCHES_PER_EPOCH = 4  # 16 captions, batch 4


class ToyCaptionData:
    """The caption-loader contract in memory: train_batches, eval_batches, references, vocab."""

    def __init__(self, n_regions: int = 4, feature_dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab = list(WORDS)
        self.image_ids = np.arange(8) + 1000
        triples = list(itertools.product(["big", "small"], ["red", "blue"], ["circle", "square"]))
        index = {w: i for i, w in enumerate(WORDS)}
        codes = rng.normal(size=(len(WORDS), feature_dim)).astype(np.float32)
        self.features = np.stack([
            np.stack([codes[index[w]] for w in (*t, t[1])]) for t in triples])  # (8, 4, C)
        self.features += 0.1 * rng.normal(size=self.features.shape).astype(np.float32)
        self.features = self.features.astype(np.float16).astype(np.float32)  # as stores hold them
        self.concepts = np.array([[index[w] for w in (t[2], t[1], t[0], "a")] for t in triples])
        self.texts = {i: [f"a {s} {c} {h}", f"a {c} {h}"] for i, (s, c, h) in
                      zip(self.image_ids.tolist(), triples, strict=True)}
        self.items = [(row, text) for row, i in enumerate(self.image_ids.tolist())
                      for text in self.texts[i]]

    def _batch(self, rows: list[int], texts: list[str] | None) -> dict[str, torch.Tensor]:
        batch = {
            "image_ids": torch.as_tensor(self.image_ids[rows]),
            "features": torch.as_tensor(self.features[rows]),
            "feature_mask": torch.ones(len(rows), self.features.shape[1], dtype=torch.bool),
            "concepts": torch.as_tensor(self.concepts[rows]).long(),
            "concept_mask": torch.ones(len(rows), self.concepts.shape[1], dtype=torch.bool),
        }
        if texts is not None:
            ids = [[BOS, *(self.vocab.index(w) for w in t.split()), EOS] for t in texts]
            captions = torch.zeros(len(ids), 6, dtype=torch.long)
            for r, seq in enumerate(ids):
                captions[r, :len(seq)] = torch.tensor(seq)
            batch["captions"] = captions
            batch["caption_lengths"] = torch.tensor([len(s) for s in ids])
        return batch

    def train_batches(self, epoch: int, batch_size: int, seed: int, start: int = 0):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.items))
        for b in range(start, -(-len(order) // batch_size)):
            chosen = [self.items[i] for i in order[b * batch_size:(b + 1) * batch_size]]
            yield self._batch([r for r, _ in chosen], [t for _, t in chosen])

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.items) // batch_size)

    captions_per_image = 2

    def train_batches_by_image(self, epoch: int, images_per_batch: int, seed: int,
                               start: int = 0):
        """All captions of ``images_per_batch`` images a batch (CaptionData's contract)."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.image_ids))
        for b in range(start, self.num_train_image_batches(images_per_batch)):
            rows = order[b * images_per_batch:(b + 1) * images_per_batch].tolist()
            chosen = [(r, t) for r in rows for t in self.texts[int(self.image_ids[r])]]
            batch = self._batch([r for r, _ in chosen], [t for _, t in chosen])
            batch["batch_image_ids"] = torch.as_tensor(self.image_ids[rows])
            batch["caption_image"] = torch.tensor([rows.index(r) for r, _ in chosen])
            yield batch

    def num_train_image_batches(self, images_per_batch: int) -> int:
        return -(-len(self.image_ids) // images_per_batch)

    def eval_batches(self, split: str, batch_size: int):
        rows = list(range(len(self.image_ids)))  # val and test are the training images here
        for b in range(0, len(rows), batch_size):
            yield self._batch(rows[b:b + batch_size], None)

    def references(self, split: str) -> dict[int, list[str]]:
        return {i: list(t) for i, t in self.texts.items()}


def toy_config(**overrides) -> TrainConfig:
    values = {
        "captioner": {"baseline": "visual_attention", "variant": "mia", "feature_dim": 8,
                      "d_model": 32, "embed_dim": 32, "attention_dim": 32, "dropout": 0.1,
                      "mia_heads": 2, "mia_d_ff": 64},
        "epochs": 4, "batch_size": 4, "lr": 5e-3, "lr_decay_start": 2, "lr_decay_every": 1,
        "lr_decay_factor": 0.8, "grad_clip_norm": 1.0, "seed": 7, "checkpoint_every": 3,
        "max_length": 6, "val_batch_size": 5, "progress": False, "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig.from_dict(values)


# ---------------------------------------------------------------- learning


def test_tiny_run_overfits_and_selects_on_val(tmp_path):
    torch.set_num_threads(1)
    cfg = toy_config(epochs=12, lr_decay_start=100, checkpoint_every=0, val_beam_size=2)
    result = train_captioner(cfg, ToyCaptionData(), tmp_path)
    losses = [row["train_loss"] for row in result.history]
    ciders = [row["val_cider"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert max(ciders) > ciders[0] + 1.0 and max(ciders) > 1.5, ciders
    assert result.best_score == max(ciders)
    assert result.best_epoch == ciders.index(max(ciders)) + 1
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(set(row) >= {"epoch", "train_loss", "val_cider", "lr", "wall_s"} for row in history)
    assert history == result.history
    # best.pt reproduces its recorded val score when decoded again.
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch
    out = tmp_path / "val_results.json"
    results = decode_split(tmp_path / "best.pt", ToyCaptionData(), "val", beam_size=2,
                           max_length=6, out_path=out)
    assert json.loads(out.read_text()) == results
    assert sorted(r["image_id"] for r in results) == list(range(1000, 1008))
    assert all(isinstance(r["caption"], str) and "<" not in r["caption"] for r in results)
    from mia.evaluation.cider import CiderD
    score, _ = CiderD(ToyCaptionData().references("val")).score(
        {r["image_id"]: r["caption"] for r in results})
    assert score == pytest.approx(result.best_score)


def test_learning_rate_schedule():
    released = toy_config(lr=5e-4, lr_decay_start=20, lr_decay_every=50, lr_decay_factor=0.5)
    assert learning_rate(released, 20, 10**6) == 5e-4
    assert learning_rate(released, 30, 0) == pytest.approx(5e-4 * 0.5 ** (10 / 50))
    step = toy_config(lr=1.0, lr_decay_start=3, lr_decay_every=2, lr_decay_factor=0.1,
                      lr_decay_staircase=True, warmup_steps=4)
    assert [learning_rate(step, 1, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [learning_rate(step, e, 99) for e in (3, 4, 5, 6)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1])



def test_table2_schedules_follow_self_critical_pytorch():
    from mia.captioning.train import scheduled_sampling
    from mia.captioning.transformer import noam_learning_rate

    # Up-Down: lr 5e-4 x 0.8^(e // 3) on the reference's 0-based epochs e.
    updown = toy_config(lr=5e-4, lr_decay_start=1, lr_decay_every=3, lr_decay_factor=0.8,
                        lr_decay_staircase=True, ss_start=0, ss_every=5, ss_increase=0.05,
                        ss_max=0.25)
    for epoch in range(1, 31):
        assert learning_rate(updown, epoch, 0) == pytest.approx(5e-4 * 0.8 ** ((epoch - 1) // 3))
    # Scheduled sampling: 0 in the reference's epoch 0, then +0.05 every 5 epochs up to 0.25.
    expected = {1: 0.0, 2: 0.0, 6: 0.05, 11: 0.10, 21: 0.20, 26: 0.25, 30: 0.25}
    assert {e: scheduled_sampling(updown, e) for e in expected} == pytest.approx(expected)
    assert scheduled_sampling(toy_config(), 30) == 0.0  # ss_start -1: never
    # Transformer: Noam with warmup 20,000 at d 512 (lr is ignored).
    noam = toy_config(lr_schedule="noam", warmup_steps=20000, noam_factor=1.0)
    d = noam.captioner.d_model
    for step in (0, 99, 19999, 20000, 100000):
        s = step + 1
        assert learning_rate(noam, 3, step) == pytest.approx(d ** -0.5 * min(s ** -0.5,
                                                                           s * 20000 ** -1.5))
        assert learning_rate(noam, 3, step) == noam_learning_rate(s, d, 20000, 1.0)
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        toy_config(lr_schedule="noam", warmup_steps=0)


def test_fine_tuning_trains_cnn_layers_from_the_configured_epoch(tmp_path):
    from PIL import Image

    from mia.captioning.models import build_captioner
    from mia.runtime import seed_everything

    torch.set_num_threads(1)
    data = ToyCaptionData()
    rng = np.random.default_rng(0)
    paths = {}
    for image_id in data.image_ids.tolist():
        paths[image_id] = str(tmp_path / f"{image_id}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[image_id])
    captioner = {**toy_config().captioner.__dict__, "feature_dim": 512, "variant": "base",
                 "fine_tune_cnn_after_epoch": 1,
                 "cnn": {"backbone": "resnet18", "pretrained": False, "resize": 40, "crop": 32,
                         "workers": 0, "batchnorm": "eval"}}
    cfg = toy_config(captioner=captioner, epochs=1)
    seed_everything(cfg.seed)
    initial = build_captioner(cfg.captioner, len(WORDS)).state_dict()
    train_captioner(cfg, data, tmp_path / "one", image_paths=paths)
    two = toy_config(captioner=captioner, epochs=2)
    train_captioner(two, data, tmp_path / "two", image_paths=paths)
    after_one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    after_two = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    cnn = [k for k in initial if k.startswith("cnn.")]
    tuned = [k for k in cnn if k.startswith("cnn.tuned.") and initial[k].is_floating_point()]
    assert tuned and all(torch.equal(after_one[k], initial[k]) for k in cnn)  # epoch 1: frozen
    assert any(not torch.equal(after_two[k], after_one[k]) for k in tuned)  # epoch 2: trains
    assert all(torch.equal(after_two[k], initial[k]) for k in cnn if k.startswith("cnn.frozen."))
    decoder = [k for k in initial if k.startswith("decoder.")]
    assert any(not torch.equal(after_one[k], initial[k]) for k in decoder)
    with pytest.raises(ValueError, match="pass image_stores .* or image_paths"):
        train_captioner(two, data, tmp_path / "none")


def write_toy_stores(root: Path) -> tuple[Path, Path, Path]:
    """The toy world as captions/grid/concepts stores in the CONTRACTS.md schema.

    Images 1000.. are the train split and copies of them under ids 2000.. the val split, so the
    loader yields exactly the batches of :class:`ToyCaptionData` (same caption order and seed).
    """
    from mia.data.store import write_store

    toy = ToyCaptionData()
    ids = np.concatenate([toy.image_ids, toy.image_ids + 1000])
    rows = [r for r, _ in toy.items]
    train = toy._batch(rows, [t for _, t in toy.items])
    captions = np.concatenate([train["captions"].numpy()] * 2).astype(np.int32)
    lengths = np.concatenate([train["caption_lengths"].numpy()] * 2).astype(np.int32)
    caption_image = np.concatenate([rows, np.array(rows) + len(toy.image_ids)]).astype(np.int64)
    write_store(root / "captions.h5", kind="captions", image_ids=ids, datasets={
        "split": np.repeat(np.array([0, 1], dtype=np.uint8), len(toy.image_ids)),
        "captions": captions, "caption_image_index": caption_image, "caption_lengths": lengths},
        attrs={"vocab": WORDS, "max_length": 4, "count_threshold": 1})
    write_store(root / "grid.h5", kind="grid_features", image_ids=ids,
                datasets={"features": np.concatenate([toy.features] * 2).astype(np.float16)},
                attrs={"backbone": "toy", "pretrained": False, "image_size": 8})
    concept_words = ["zebra", *WORDS[4:]]  # not the caption vocab's order; zebra -> <unk>
    concept_ids = np.array([[concept_words.index(WORDS[i]) for i in row] for row in toy.concepts])
    k = concept_ids.shape[1]
    write_store(root / "concepts.h5", kind="concepts", image_ids=ids, datasets={
        "concept_ids": np.concatenate([concept_ids] * 2).astype(np.int32),
        "concept_probs": np.tile(np.linspace(0.9, 0.1, k, dtype=np.float32), (len(ids), 1))},
        attrs={"concept_words": concept_words, "k": k})
    return root / "captions.h5", root / "grid.h5", root / "concepts.h5"


def test_training_on_real_loader_and_stores_matches_in_memory_toy(tmp_path):
    from mia.data.loaders import CaptionData

    torch.set_num_threads(1)
    data = CaptionData.from_stores(*write_toy_stores(tmp_path))
    assert data.references("val") == {i + 1000: t for i, t in ToyCaptionData().texts.items()}
    cfg = toy_config(epochs=2)
    from_stores = train_captioner(cfg, data, tmp_path / "stores")
    in_memory = train_captioner(cfg, ToyCaptionData(), tmp_path / "memory")
    assert _strip_wall(from_stores.history) == _strip_wall(in_memory.history)
    wa = load_checkpoint(tmp_path / "stores" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "memory" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    results = decode_split(tmp_path / "stores" / "best.pt", data, "val", beam_size=3,
                           max_length=6, out_path=tmp_path / "val.json")
    assert [r["image_id"] for r in results] == list(range(2000, 2008))
    assert json.loads((tmp_path / "val.json").read_text()) == results


# ---------------------------------------------------------------- checkpoints and resume


# ---------------------------------------------------------------- the released recipe's quirks


def _task_without_dropout(**overrides):
    from mia.captioning.train import CaptionXETask

    captioner = {**toy_config().captioner.__dict__, "dropout": 0.0, "mia_dropout": 0.0,
                 "mia_attention_dropout": 0.0}
    return CaptionXETask(toy_config(captioner=captioner, **overrides), ToyCaptionData())


def _manual_step(model, optimizer, batch) -> None:
    from mia.captioning.models import trim_captions
    from mia.captioning.train import caption_loss

    batch = trim_captions(batch)
    optimizer.zero_grad()
    caption_loss(model(batch), batch["captions"][:, 1:], 0.1).backward()


def test_weight_clamp_bounds_decoder_parameters_before_each_step():
    """Train.py: backward, then ``p.data.clamp_(-0.1, 0.1)`` for every decoder parameter (the word
    embedding shared with the concepts included), then Adam's step; the visual projection and
    MIA are not clamped. Worked by hand on a copy of the model."""
    import copy

    torch.manual_seed(0)
    task = _task_without_dropout(**RELEASED)
    model = task.model
    by_hand = copy.deepcopy(model)
    adam = torch.optim.Adam(by_hand.parameters(), lr=task.cfg.lr, betas=task.cfg.betas)
    assert model.decoder.embedding.weight.abs().max() > 1  # N(0, 1): far outside the bound
    assert model.encoder.word_embedding.weight is model.decoder.embedding.weight  # tied
    batch = next(iter(task.batches(1, 0)))
    task.start_epoch(1)
    task.set_learning_rate(1, 0)
    loss, _ = task.loss(batch, 1)
    task.optimizer.zero_grad()
    loss.backward()
    task.optimizer.step()

    _manual_step(by_hand, adam, batch)
    with torch.no_grad():
        for p in by_hand.decoder.parameters():
            p.clamp_(-0.1, 0.1)
    adam.step()
    for (name, a), b in zip(model.named_parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
    lr = task.cfg.lr  # Adam moves a weight by at most ~lr per step
    assert all(p.abs().max() <= 0.1 + 2 * lr for p in model.decoder.parameters())
    assert model.encoder.visual_proj[1].weight.abs().max() > 0.5  # the encoder is not clamped
    assert max(p.abs().max() for p in model.encoder.mia.parameters()) > 0.5


def test_optimizer_rebuilt_each_epoch_equals_a_new_adam():
    """Train.py builds ``torch.optim.Adam(params, ...)`` at every epoch start: zero moments and
    step counts. Resuming inside an epoch (last.pt's extra state) does not rebuild it again."""
    import copy

    from mia.captioning.train import reset_optimizer_state

    torch.manual_seed(0)
    task = _task_without_dropout(rebuild_optimizer_each_epoch=True)
    batches = list(task.batches(1, 0))
    task.start_epoch(1)
    for batch in batches[:2]:
        _manual_step(task.model, task.optimizer, batch)
        task.optimizer.step()
    assert task.optimizer.state
    resumed = task.extra_state()
    task.load_extra_state({"optimizer_epoch": 1})
    task.start_epoch(1)  # epoch 1 resumed mid-way: moments kept
    assert task.optimizer.state and resumed == {"optimizer_epoch": 1}
    by_hand = copy.deepcopy(task.model)
    task.start_epoch(2)  # a new epoch: a new Adam
    assert not task.optimizer.state
    from mia.training.step import adam_options  # the trainer's kernel (fused), not another

    new_adam = torch.optim.Adam(by_hand.parameters(), lr=task.cfg.lr, betas=task.cfg.betas,
                                **adam_options(task.device))
    for model, opt in ((task.model, task.optimizer), (by_hand, new_adam)):
        _manual_step(model, opt, batches[2])
        opt.step()
    for a, b in zip(task.model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The CNN's optimiser group (its own Adam in Train.py, built once) keeps its state.
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([{"params": [w1], "name": "captioner"},
                            {"params": [w2], "name": "cnn"}])
    (w1.sum() + w2.sum()).backward()
    opt.step()
    reset_optimizer_state(opt, skip_group="cnn")
    assert w1 not in opt.state and w2 in opt.state


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


#: The released recipe's quirks (docs/RECIPE.md): weight clamp and Adam rebuilt every epoch.
RELEASED = {"weight_clamp": 0.1, "rebuild_optimizer_each_epoch": True, "grad_clip_norm": 0.0}


def _run(out_dir: Path, stop_at_step: int | None = None, signum: int = signal.SIGTERM,
         recipe: str = "ours") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIA_TEST_RECIPE": recipe}
    if stop_at_step is not None:
        env["MIA_TEST_SIGNAL_AT_STEP"] = f"{stop_at_step}:{int(signum)}"
    return subprocess.run([sys.executable, __file__, str(out_dir)], env=env, capture_output=True,
                          text=True, timeout=300)


def _strip_wall(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("wall_s")} for row in history]


@pytest.mark.parametrize("recipe", ["ours", "released"])
def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path, recipe):
    """Also with the released recipe: a resumed epoch must not rebuild Adam a second time, and
    an epoch resumed at its start must rebuild it (the stops land at both)."""
    torch.set_num_threads(1)  # as in the subprocesses, so float sums run in the same order
    overrides = RELEASED if recipe == "released" else {}
    train_captioner(toy_config(**overrides), ToyCaptionData(), tmp_path / "straight")

    run_dir = tmp_path / "interrupted"
    # SIGTERM mid-epoch (epoch 2, batch 1), then Slurm's warning signal SIGUSR1 on the last batch
    # of epoch 3 (just before its validation).
    for stop_at, signum, epoch, batch in ((5, signal.SIGTERM, 2, 1),
                                          (12, signal.SIGUSR1, 3, BATCHES_PER_EPOCH)):
        stopped = _run(run_dir, stop_at_step=stop_at, signum=signum, recipe=recipe)
        assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr
        progress = load_checkpoint(run_dir / "last.pt")["state"]
        assert (progress["global_step"], progress["epoch"], progress["step_in_epoch"]) == (
            stop_at, epoch, batch)
        assert not list(run_dir.glob("*.tmp-*"))
    resumed = _run(run_dir, recipe=recipe)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 3, batch 4" in resumed.stderr

    a = json.loads((tmp_path / "straight" / "history.json").read_text())
    b = json.loads((run_dir / "history.json").read_text())
    assert len(a) == 4 and _strip_wall(a) == _strip_wall(b)
    for name in ("last.pt", "best.pt"):
        wa = load_checkpoint(tmp_path / "straight" / name)["model"]
        wb = load_checkpoint(run_dir / name)["model"]
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    # A finished run restarted does nothing and reports the same result.
    again = _run(run_dir, recipe=recipe)
    assert again.returncode == 0 and json.loads((run_dir / "history.json").read_text()) == b
    model, vocab = load_captioner(run_dir / "best.pt")
    assert vocab == WORDS and not model.training


def _main(out_dir: str) -> int:
    """Train the toy model in this process; signal itself at the step named in the environment."""
    import logging

    from mia.captioning.train import Preempted

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    data = ToyCaptionData()
    stop = os.environ.get("MIA_TEST_SIGNAL_AT_STEP")
    if stop is not None:
        stop_at, signum = (int(x) for x in stop.split(":"))
        plain = data.train_batches

        def train_batches(epoch, batch_size, seed, start=0):
            for i, batch in enumerate(plain(epoch, batch_size, seed, start)):
                if (epoch - 1) * BATCHES_PER_EPOCH + start + i + 1 == stop_at:
                    os.kill(os.getpid(), signum)  # a real signal, landing while this step trains
                yield batch

        data.train_batches = train_batches  # type: ignore[method-assign]
    overrides = RELEASED if os.environ.get("MIA_TEST_RECIPE") == "released" else {}
    try:
        train_captioner(toy_config(**overrides), data, out_dir)
    except Preempted as preempted:
        logging.info("preempted: %s", preempted)
        return preempted.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
