"""SCST training on the shared loop (mia.captioning.scst_train) and its workflow script.

The world: 18 training images, each a (size, colour, shape) triple whose 4 region features
encode it, with three captions ("a big red circle", "a red circle", "a big circle"); the val split
holds copies of them under other ids. Stores are built through the real preprocessing
(``dataset_coco.json`` -> ``captions.h5``), the reward's document frequencies through the
workflow's command (``python -m mia.captioning.scst``), and the starting models through the XE
trainer, stopped early so that SCST has room to improve.

Run as a script (``python tests/test_scst_train.py WORLD OUT``), this file trains SCST in a fresh
process, which the resume test starts, signals and restarts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mia.captioning.config import TrainConfig
from mia.captioning.decode import decode_split, load_captioner
from mia.captioning.models import build_captioner
from mia.captioning.scst import (
    SCSTConfig,
    main,
    write_store_document_frequency,
    write_training_document_frequency,
)
from mia.captioning.scst_train import PlateauSchedule, SCSTTask, loop_settings, train_scst
from mia.captioning.train import train_captioner
from mia.data import store
from mia.data.loaders import CaptionData
from mia.data.preprocess import CaptionPreprocessConfig, build_caption_store
from mia.evaluation.cider import CiderD, DocumentFrequency
from mia.evaluation.cider_df import read_document_frequency, save_document_frequency
from mia.training import PREEMPTED_EXIT_CODE, Preempted, fit, load_checkpoint

SCRIPTS = Path(__file__).resolve().parent.parent / "workflow_scripts"
TRIPLES = list(itertools.product(["big", "small"], ["red", "blue", "green"],
                                 ["circle", "square", "star"]))
STEPS_PER_EPOCH = 3  # 18 training images, 6 a batch
# The toy's learning margins (below) were measured with nn.LayerNorm; the reference LayerNorm is
# tested in test_captioning_transformer.py.
OPTIONS = {"updown": {"rnn_size": 32},
           "transformer": {"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 32,
                           "layer_norm": "torch"}}


@pytest.fixture(autouse=True)
def one_thread():
    """As in the subprocesses, so float sums run in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the world


def write_world(root: Path) -> dict[str, Path]:
    """Karpathy file, captions/features/concepts stores and the document-frequency file."""
    root.mkdir(parents=True, exist_ok=True)
    images, sentid = [], 0
    for split, first_id in (("train", 1000), ("val", 2000)):
        for i, (size, colour, shape) in enumerate(TRIPLES):
            sentences = []
            for text in (f"a {size} {colour} {shape}", f"a {colour} {shape}", f"a {size} {shape}"):
                sentences.append({"tokens": text.split(), "raw": text, "sentid": sentid})
                sentid += 1
            karpathy_split = "restval" if split == "train" and i == 5 else split
            images.append({"cocoid": first_id + i, "filepath": "images",
                           "filename": f"{first_id + i}.jpg", "split": karpathy_split,
                           "sentences": sentences})
    karpathy = root / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": images}))
    captions = build_caption_store(karpathy, root / "captions.h5", root,
                                   CaptionPreprocessConfig(count_threshold=1))
    with store.open_store(captions, "captions") as f:
        ids = f["image_ids"][()]
    rng = np.random.default_rng(0)
    words = sorted({w for t in TRIPLES for w in t})
    codes = {w: rng.normal(size=8) for w in words}
    feats = np.stack([np.stack([codes[w] for w in (s, c, h, c)]) for s, c, h in TRIPLES])
    feats = feats + 0.1 * rng.normal(size=feats.shape)
    features = store.write_store(
        root / "features.h5", kind="grid_features", image_ids=ids,
        datasets={"features": np.concatenate([feats, feats]).astype(np.float16)},
        attrs={"backbone": "toy", "pretrained": False, "image_size": 8})
    concept_ids = np.array([[words.index(w) for w in (h, c, s)] for s, c, h in TRIPLES] * 2,
                           dtype=np.int32)
    concepts = store.write_store(
        root / "concepts.h5", kind="concepts", image_ids=ids,
        datasets={"concept_ids": concept_ids,
                  "concept_probs": np.tile(np.float32([0.9, 0.5, 0.1]), (len(ids), 1))},
        attrs={"concept_words": words, "k": 3})
    df = root / "cider_df_train.npz"
    assert main(["--captions", str(captions), "--out", str(df)]) == 0
    return {"karpathy": karpathy, "captions": captions, "features": features,
            "concepts": concepts, "df": df}


def load_data(world: dict[str, Path]) -> CaptionData:
    return CaptionData.from_stores(world["captions"], world["features"], world["concepts"])


def train_xe(world: dict[str, Path], baseline: str, epochs: int = 3) -> Path:
    """A captioner stopped early by cross-entropy training; its best.pt."""
    captioner = {"baseline": baseline, "variant": "base", "feature_dim": 8, "d_model": 32,
                 "embed_dim": 32, "attention_dim": 16, "dropout": 0.1,
                 "options": OPTIONS[baseline]}
    cfg = TrainConfig.from_dict({
        "captioner": captioner, "epochs": epochs, "batch_size": 4, "lr": 5e-3, "seed": 3,
        "checkpoint_every": 0, "log_every": 0, "max_length": 8, "val_batch_size": 8,
        "progress": False, "device": "cpu", "keep_optimizer_state": True})
    out = world["captions"].parent / f"xe_{baseline}"
    train_captioner(cfg, load_data(world), out)
    return out / "best.pt"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    paths = write_world(tmp_path_factory.mktemp("world"))
    for baseline in OPTIONS:
        paths[f"xe_{baseline}"] = train_xe(paths, baseline)
    return paths


def scst_config(**overrides) -> SCSTConfig:
    values = {"lr": 1e-3, "epochs": 3, "batch_size": 6, "max_length": 8, "seed": 5,
              "checkpoint_every": 2, "log_every": 1, "val_batch_size": 8, "progress": False,
              "device": "cpu"}
    return SCSTConfig.from_dict({**values, **overrides})


def _strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(("wall_s", "_ms"))}
            for row in history]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- learning


def test_scst_raises_val_cider_where_xe_left_room(world, tmp_path):
    data = load_data(world)
    xe = load_checkpoint(world["xe_transformer"])
    result = train_scst(scst_config(epochs=6, optimizer_state="fresh"), data,
                        world["xe_transformer"], tmp_path, world["df"])
    ciders = [row["val_cider"] for row in result.history]
    # XE stopped at ~3.2 here; SCST reaches ~4.2 (greedy val CIDEr-D, the reference's choice).
    # A fresh Adam: with the XE state carried over (the default) the toy reaches ~3.8 in these
    # 6 epochs (the carried second moments of the XE gradients damp the first RL steps).
    assert result.best_score > xe["val_cider"] + 0.5, (xe["val_cider"], ciders)
    assert result.best_score == max(ciders) and result.best_epoch == ciders.index(max(ciders)) + 1
    for row in result.history:
        assert {"train_reward", "train_baseline", "train_sample_cider", "train_greedy_cider",
                "train_sample_tokens", "lr"} <= set(row)
        # the greedy baseline is the batch's greedy CIDEr-D: reward = sample - baseline
        assert row["train_reward"] == pytest.approx(
            row["train_sample_cider"] - row["train_greedy_cider"])
    # best.pt is a captioner checkpoint: decode_split reads it and reproduces its score.
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch and best["scst"]["lr"] == 1e-3
    assert best["xe_model"] == {"epoch": xe["epoch"], "val_cider": xe["val_cider"]}
    results = decode_split(tmp_path / "best.pt", data, "val", beam_size=1, max_length=8)
    score, _ = CiderD(data.references("val")).score({r["image_id"]: r["caption"]
                                                     for r in results})
    assert score == pytest.approx(result.best_score)
    model, vocab = load_captioner(tmp_path / "best.pt")
    assert vocab == list(data.vocab.words) and model.cfg.baseline == "transformer"


def test_xe_start_competes_as_epoch_0_and_is_kept_when_no_scst_epoch_beats_it(world, tmp_path):
    """As self-critical.pytorch (load_best_score): RL epochs must beat the XE model's val score.
    A learning rate that wrecks the model leaves best.pt = the XE weights, scored as epoch 0."""
    data = load_data(world)
    xe_path = world["xe_updown"]
    result = train_scst(scst_config(epochs=2, lr=0.5), data, xe_path, tmp_path, world["df"])
    ciders = [row["val_cider"] for row in result.history]
    assert result.best_epoch == 0 and all(c < result.best_score for c in ciders), ciders
    assert _same_weights(tmp_path / "best.pt", xe_path)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 0 and best["val_cider"] == pytest.approx(result.best_score)
    # the score is SCST's own validation of the XE weights (greedy, SCST's max_length)
    results = decode_split(xe_path, data, "val", beam_size=1, max_length=8)
    score, _ = CiderD(data.references("val")).score({r["image_id"]: r["caption"]
                                                     for r in results})
    assert score == pytest.approx(result.best_score)


def test_scst_continues_the_xe_adam_unless_told_fresh(world, tmp_path):
    """self-critical.pytorch loads the XE optimizer.pth (--start_from) or never rebuilds Adam
    (self_critical_after): the first SCST update equals one more step of the XE optimiser at
    SCST's rate; ``fresh`` starts from zero moments (issue 21, item 4)."""
    data = load_data(world)
    xe_path = world["xe_updown"]
    xe = load_checkpoint(xe_path)
    assert "optimizer" in xe  # keep_optimizer_state: the XE stage saved it with best.pt
    carried = SCSTTask(scst_config(lr=2e-4), data, xe_path, world["df"])
    fresh = SCSTTask(scst_config(lr=2e-4, optimizer_state="fresh"), data, xe_path, world["df"])
    # The XE run's own optimiser, continued by hand: its state, one step at SCST's rate.
    torch.manual_seed(0)
    by_hand = build_captioner(carried.captioner, len(carried.words))
    by_hand.load_state_dict(xe["model"])
    adam = torch.optim.Adam(by_hand.parameters(), lr=5e-3, betas=(0.8, 0.999))
    adam.load_state_dict(xe["optimizer"])
    for group in adam.param_groups:
        group["lr"] = 2e-4
    state = carried.optimizer.state_dict()
    assert state["param_groups"][0]["betas"] == (0.8, 0.999)  # the XE recipe's, not scst.betas
    assert fresh.optimizer.param_groups[0]["betas"] == (0.9, 0.999) and not fresh.optimizer.state
    grads = [torch.full_like(p, 1e-3) * (i % 3 - 1) for i, p in enumerate(by_hand.parameters())]
    for model, opt in ((by_hand, adam), (carried.model, carried.optimizer),
                       (fresh.model, fresh.optimizer)):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(by_hand.parameters(), carried.model.parameters(), strict=True):
        assert torch.equal(a, b)
    moved = [(a - b).abs().max() for a, b in zip(by_hand.parameters(), fresh.model.parameters(),
                                                  strict=True)]
    assert max(moved) > 1e-5  # a fresh Adam's first step is lr * sign(g): another update
    without = tmp_path / "no_optimizer.pt"
    torch.save({k: v for k, v in xe.items() if k != "optimizer"}, without)
    with pytest.raises(ValueError, match="keep_optimizer_state.*optimizer_state: fresh"):
        SCSTTask(scst_config(), data, without, world["df"])


def test_xe_model_of_another_vocabulary_is_refused(world, tmp_path):
    ck = load_checkpoint(world["xe_updown"])
    torch.save({**ck, "vocab": [*ck["vocab"][:-1], "zebra"]}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: trained with another vocabulary"):
        SCSTTask(scst_config(), load_data(world), tmp_path / "other.pt", world["df"])


# ---------------------------------------------------------------- document frequencies


def test_document_frequency_file_from_the_store_equals_prepro_ngrams_on_karpathy(world,
                                                                                 tmp_path):
    """The rule's file (from captions.h5) = the frequencies of dataset_coco.json's train +
    restval captions (prepro_ngrams.py's references), with the store's vocabulary."""
    from_store, info = read_document_frequency(world["df"])
    vocab = list(info.vocab)
    from_json = write_training_document_frequency(world["karpathy"], vocab, tmp_path / "k.npz")
    assert (info.num_docs, info.num_sentences) == (18, 54)  # the restval image counts
    np.testing.assert_array_equal(from_store.keys, from_json.keys)
    np.testing.assert_array_equal(from_store.counts, from_json.counts)
    again = write_store_document_frequency(world["captions"], tmp_path / "again.npz")
    np.testing.assert_array_equal(again.keys, from_store.keys)


def test_trainer_reads_the_document_frequency_file_and_never_recomputes_it(world, tmp_path,
                                                                           monkeypatch):
    # A file whose frequencies differ from the training references': those of 9 images only.
    data = load_data(world)
    vocab = list(data.vocab.words)
    half = {k: [f"{s} <eos>" for s in v] for k, v in data.references("train").items() if k < 1009}
    doctored = DocumentFrequency(half, vocab=vocab)
    save_document_frequency(doctored, tmp_path / "df.npz", num_sentences=27, source="test")
    built: list[list[int]] = []
    original = DocumentFrequency.__init__

    def spy(self, references, *args, **kwargs):
        built.append(sorted(references))
        original(self, references, *args, **kwargs)

    monkeypatch.setattr(DocumentFrequency, "__init__", spy)
    for name in ("write_store_document_frequency", "store_training_references",
                 "karpathy_training_references", "document_frequency_references"):
        monkeypatch.setattr(f"mia.captioning.scst.{name}", None)  # calling one would fail
    cfg = scst_config(epochs=1)
    task = SCSTTask(cfg, data, world["xe_updown"], tmp_path / "df.npz")
    fit(task, loop_settings(cfg), tmp_path / "run")
    assert task.scorer.cider.df.num_docs == 9
    np.testing.assert_array_equal(task.scorer.cider.df.keys, doctored.keys)
    np.testing.assert_array_equal(task.scorer.cider.df.counts, doctored.counts)
    # No frequencies over training images were computed (validation's are over val images).
    assert all(min(keys) >= 2000 for keys in built), built


# ---------------------------------------------------------------- learning rate on plateau


def test_plateau_schedule_is_torchs_reduce_on_plateau_on_negated_cider():
    """self-critical.pytorch: ReduceLROnPlateau(mode='min') stepped with -CIDEr."""
    scores = [1.0, 0.9, 0.8, 1.2, 1.19995, 1.1, 1.1, 1.3, 0.5, 0.5, 0.5, 0.5]
    for factor, patience in ((0.5, 0), (0.5, 1), (0.2, 3)):
        ours_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        torch_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        ours = PlateauSchedule(factor, patience)
        theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, "min", factor, patience)
        for score in scores:
            ours.step(score, ours_opt)
            theirs.step(-score)
            assert ours_opt.param_groups[0]["lr"] == torch_opt.param_groups[0]["lr"]
            assert ours.bad_epochs == theirs.num_bad_epochs and -ours.best == -theirs.best
    # 1.19995 after 1.2 counts as an improvement (within the relative threshold): kept quirk.
    sched = PlateauSchedule(0.5, 0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched.step(1.2, opt)
    assert not sched.step(1.19995, opt) and sched.best == -1.19995


class _ScriptedValidation(SCSTTask):
    """Validation scores fixed per epoch, so the plateau schedule's decisions are known."""

    SCORES = {0: 0.5, 1: 1.0, 2: 0.9, 3: 0.8, 4: 1.2, 5: 1.1}  # 0: the XE starting point
    _validating = 0

    def val_cider(self, should_stop):
        return self.SCORES[self._validating]

    def validate(self, epoch, should_stop):
        self._validating = epoch
        return super().validate(epoch, should_stop)


def test_plateau_state_survives_resume(world, tmp_path, monkeypatch):
    cfg = scst_config(epochs=5, lr_schedule="plateau", plateau_patience=1, plateau_factor=0.5)

    def run(out: Path):
        task = _ScriptedValidation(cfg, load_data(world), world["xe_updown"], world["df"])
        return fit(task, loop_settings(cfg), out)

    straight = run(tmp_path / "straight")
    # 0.9 is one bad epoch (patience 1), 0.8 the second: the rate halves for epoch 4 on.
    assert [row["lr"] for row in straight.history] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4]
    # Stopped in epoch 3, after epoch 2's validation counted one bad epoch: a resume that lost
    # the count would take 0.8 for an improvement and never reduce the rate.
    with monkeypatch.context() as m:
        signal_at_step(m, 2 * STEPS_PER_EPOCH + 1)
        with pytest.raises(Preempted):
            run(tmp_path / "resumed")
    extra = load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]
    assert extra["plateau"] == {"best": -1.0, "bad_epochs": 1}
    resumed = run(tmp_path / "resumed")
    assert _strip_timing(resumed.history) == _strip_timing(straight.history)
    assert _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")


# ---------------------------------------------------------------- stop and resume


def signal_at_step(monkeypatch: pytest.MonkeyPatch, step: int,
                   signum: int = signal.SIGTERM) -> None:
    """Send this process ``signum`` while global training step ``step`` (1-based) runs."""
    plain = CaptionData.train_image_batches

    def batches(self, epoch, batch_size, seed, start=0):
        for i, batch in enumerate(plain(self, epoch, batch_size, seed, start)):
            if (epoch - 1) * STEPS_PER_EPOCH + start + i + 1 == step:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(CaptionData, "train_image_batches", batches)


def _run(world_dir: Path, out_dir: Path, stop: tuple[int, int] | None = None
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MIA_TEST_SIGNAL_AT_STEP", None)
    if stop is not None:
        env["MIA_TEST_SIGNAL_AT_STEP"] = f"{stop[0]}:{int(stop[1])}"
    return subprocess.run([sys.executable, __file__, str(world_dir), str(out_dir)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigterm_then_resume_equals_uninterrupted_run(world, tmp_path):
    straight = train_scst(scst_config(), load_data(world), world["xe_updown"],
                          tmp_path / "straight", world["df"])
    run_dir = tmp_path / "interrupted"
    world_dir = world["captions"].parent
    # SIGTERM mid-epoch 2, then Slurm's warning signal on the last batch of epoch 2.
    for step, signum, batch in ((4, signal.SIGTERM, 1), (6, signal.SIGUSR1, 3)):
        stopped = _run(world_dir, run_dir, (step, signum))
        assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr
        state = load_checkpoint(run_dir / "last.pt")["state"]
        assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (step, 2, batch)
    resumed = _run(world_dir, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, batch 3" in resumed.stderr
    assert "reward" in resumed.stderr and "sample_cider" in resumed.stderr  # progress extras
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 3 and _strip_timing(history) == _strip_timing(straight.history)
    for name in ("last.pt", "best.pt"):
        assert _same_weights(tmp_path / "straight" / name, run_dir / name), name
    generators = [load_checkpoint(d / "last.pt")["extra"]["generator"]
                  for d in (tmp_path / "straight", run_dir)]
    assert torch.equal(*generators)


def _main(world_dir: str, out_dir: str) -> int:
    """Train SCST in this process; signal itself at the step named in the environment."""
    import logging

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    root = Path(world_dir)
    world = {"captions": root / "captions.h5", "features": root / "features.h5",
             "concepts": root / "concepts.h5"}
    stop = os.environ.get("MIA_TEST_SIGNAL_AT_STEP")
    if stop is not None:
        step, signum = (int(x) for x in stop.split(":"))
        signal_at_step(pytest.MonkeyPatch(), step, signum)
    try:
        train_scst(scst_config(), load_data(world), root / "xe_updown" / "best.pt", out_dir,
                   root / "cider_df_train.npz")
    except Preempted as preempted:
        logging.info("preempted: %s", preempted)
        return preempted.exit_code
    return 0


# ---------------------------------------------------------------- the workflow script


def fake_snakemake(world: dict[str, Path], run_dir: Path, scst: dict) -> SimpleNamespace:
    """The attributes of Snakemake's `snakemake` object that the script reads."""
    return SimpleNamespace(
        input=SimpleNamespace(captions=str(world["captions"]), features=str(world["features"]),
                              concepts=str(world["concepts"]),
                              xe_model=str(world["xe_updown"]),
                              document_frequency=str(world["df"])),
        rule="train_captioner_scst", threads=1, attempt=1,
        output=SimpleNamespace(model=str(run_dir / "model.pt"),
                               history=str(run_dir / "history.json")),
        params=SimpleNamespace(scst=scst, checkpoints=str(run_dir / "checkpoints")),
        wildcards=SimpleNamespace(baseline="updown", variant="base", seed="5"),
        log=[str(run_dir / "scst.log")])


def run_script(smk: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    from mia.runlog import stop_job_logging

    monkeypatch.syspath_prepend(str(SCRIPTS))
    Path(smk.output.model).parent.mkdir(parents=True, exist_ok=True)
    try:
        runpy.run_path(str(SCRIPTS / "train_captioner_scst.py"),
                       init_globals={"snakemake": smk}, run_name="__main__")
    finally:
        stop_job_logging()  # the script tees stderr into its log; give pytest its stderr back


SCRIPT_SCST = {k: v for k, v in dataclasses.asdict(scst_config(epochs=2)).items()
               if k != "seed"}


def test_workflow_script_resumes_a_preempted_run_and_never_a_stale_one(world, tmp_path,
                                                                      monkeypatch):
    smk = fake_snakemake(world, tmp_path / "run", SCRIPT_SCST)
    with monkeypatch.context() as m:
        signal_at_step(m, 2)
        with pytest.raises(SystemExit) as stop:
            run_script(smk, m)
    assert stop.value.code == PREEMPTED_EXIT_CODE
    assert not Path(smk.output.model).exists() and not Path(smk.output.history).exists()
    fingerprint = json.loads((tmp_path / "run/checkpoints/fingerprint.json").read_text())
    assert set(fingerprint["inputs"]) == {"captions", "features", "concepts", "xe_model",
                                          "document_frequency"}
    assert fingerprint["config"]["seed"] == 5  # the run's seed wildcard

    run_script(smk, monkeypatch)  # the retry resumes
    log = Path(smk.log[0]).read_text()
    assert "attempt 2" in log and "resuming at epoch 1, batch 2" in log
    history = json.loads(Path(smk.output.history).read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    model = load_checkpoint(smk.output.model)
    assert model["scst"]["seed"] == 5 and model["captioner"]["baseline"] == "updown"

    # A changed SCST config: the folder of a preempted run is cleared, nothing of it resumed.
    stale = fake_snakemake(world, tmp_path / "stale", SCRIPT_SCST)
    with monkeypatch.context() as m:
        signal_at_step(m, 2)
        with pytest.raises(SystemExit):
            run_script(stale, m)
    changed = fake_snakemake(world, tmp_path / "stale", {**SCRIPT_SCST, "lr": 5e-4})
    run_script(changed, monkeypatch)
    log = Path(changed.log[0]).read_text().split("config or inputs changed", 1)
    assert len(log) == 2 and "resuming" not in log[1]
    fingerprint = json.loads((tmp_path / "stale/checkpoints/fingerprint.json").read_text())
    assert fingerprint["config"]["lr"] == 5e-4
    assert (tmp_path / "stale/checkpoints/attempts").read_text() == "1"
    assert load_checkpoint(changed.output.model)["scst"]["lr"] == 5e-4
    assert math.isfinite(json.loads(Path(changed.output.history).read_text())[-1]["val_cider"])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
