"""The training rule's script outside Snakemake: preemption, resume on retry, atomic outputs.

Snakemake deletes a failed job's outputs and retries it (`retries:`); workflow_scripts/
train_captioner.py must therefore keep its checkpoints outside the outputs, exit 75 when
preempted, resume on the next attempt, write the outputs only at the end, and never resume a
checkpoint made with another config. Run with a stand-in `snakemake` object on tiny real-format
stores (coco-mini captions, random features and concepts).
"""

from __future__ import annotations

import json
import os
import runpy
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from coco_mini_fixtures import write_karpathy

from mia.data import store
from mia.data.preprocess import CaptionPreprocessConfig, build_caption_store
from mia.runlog import stop_job_logging

SCRIPTS = Path(__file__).resolve().parent.parent / "workflow_scripts"
MODEL = {"d_model": 32, "embed_dim": 32, "attention_dim": 32, "dropout": 0.1, "mia_heads": 2,
         "mia_d_ff": 64}
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 2e-3, "checkpoint_every": 2, "device": "cpu",
         "progress": False, "val_batch_size": 8, "max_length": 8}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("mia.evaluation.cider", reason="mia.evaluation.cider (validation "
                        "CIDEr-D during training) is not written yet")
    root = tmp_path_factory.mktemp("stores")
    karpathy = write_karpathy(root / "dataset_coco.json")
    captions = build_caption_store(karpathy, root / "captions.h5", root,
                                   CaptionPreprocessConfig(count_threshold=2, max_length=12))
    with store.open_store(captions, "captions") as f:
        ids = f["image_ids"][()]
        vocab = store.read_attrs(f)["vocab"]
    rng = np.random.default_rng(0)
    grid = store.write_store(root / "grid.h5", kind="grid_features", image_ids=ids,
                             datasets={"features": rng.normal(size=(len(ids), 9, 16))
                                       .astype(np.float16)},
                             attrs={"backbone": "random", "pretrained": False, "image_size": 0})
    words = vocab[4:24]
    concepts = store.write_store(
        root / "concepts.h5", kind="concepts", image_ids=ids,
        datasets={"concept_ids": rng.integers(0, len(words), (len(ids), 9)).astype(np.int32),
                  "concept_probs": np.sort(rng.random((len(ids), 9)), 1)[:, ::-1]
                  .astype(np.float32)},
        attrs={"concept_words": words, "k": 9})
    return {"captions": str(captions), "features": str(grid), "concepts": str(concepts)}


def fake_snakemake(stores: dict[str, str], run_dir: Path, train: dict) -> SimpleNamespace:
    """The attributes of Snakemake's `snakemake` object that the script reads."""
    return SimpleNamespace(
        input=SimpleNamespace(**stores), rule="train_captioner", threads=1, attempt=1,
        output=SimpleNamespace(model=str(run_dir / "model.pt"),
                               history=str(run_dir / "history.json"),
                               run=str(run_dir / "run.json")),
        params=SimpleNamespace(model=MODEL, train=train, keep_optimizer_state=False,
                               checkpoints=str(run_dir / "checkpoints"), images_root="images",
                               data_root="."),
        wildcards=SimpleNamespace(baseline="visual_attention", variant="mia", seed="7"),
        log=[str(run_dir / "train.log")])


def run_script(smk: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    Path(smk.output.model).parent.mkdir(parents=True, exist_ok=True)
    try:
        runpy.run_path(str(SCRIPTS / "train_captioner.py"), init_globals={"snakemake": smk},
                       run_name="__main__")
    finally:
        stop_job_logging()  # the script tees stderr into its log; give pytest its stderr back


def preempt_at_batch(monkeypatch: pytest.MonkeyPatch, epoch: int, batch: int) -> None:
    """SIGTERM this process (as Slurm does before the time limit) during one training batch."""
    from mia.data.loaders import CaptionData

    original = CaptionData.train_batches

    def batches(self, ep, *args, **kwargs):
        for i, b in enumerate(original(self, ep, *args, **kwargs), start=kwargs.get("start", 0)):
            if (ep, i) == (epoch, batch):
                os.kill(os.getpid(), signal.SIGTERM)
            yield b

    monkeypatch.setattr(CaptionData, "train_batches", batches)


def test_preempted_attempt_resumes_and_matches_uninterrupted(
        stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = fake_snakemake(stores, tmp_path / "straight", TRAIN)
    run_script(straight, monkeypatch)

    smk = fake_snakemake(stores, tmp_path / "preempted", TRAIN)
    with monkeypatch.context() as m:
        preempt_at_batch(m, epoch=1, batch=3)
        with pytest.raises(SystemExit) as stop:
            run_script(smk, m)
    assert stop.value.code == 75  # EX_TEMPFAIL: the scheduler retries, not a crash
    assert not Path(smk.output.model).exists() and not Path(smk.output.history).exists()
    assert (tmp_path / "preempted/checkpoints/last.pt").exists()

    run_script(smk, monkeypatch)  # the retry
    assert "resuming at epoch 1" in Path(smk.log[0]).read_text()
    resumed = json.loads(Path(smk.output.history).read_text())
    expected = json.loads(Path(straight.output.history).read_text())
    assert [r["epoch"] for r in resumed] == [1, 2]
    for got, want in zip(resumed, expected, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["val_cider"] == pytest.approx(want["val_cider"], rel=1e-6)


def test_changed_config_does_not_resume_stale_checkpoints(
        stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smk = fake_snakemake(stores, tmp_path / "run", TRAIN)
    with monkeypatch.context() as m:
        preempt_at_batch(m, epoch=1, batch=2)
        with pytest.raises(SystemExit):
            run_script(smk, m)
    changed = fake_snakemake(stores, tmp_path / "run", {**TRAIN, "lr": 1e-3})
    run_script(changed, monkeypatch)
    log = Path(smk.log[0]).read_text()
    assert "config or inputs changed" in log
    assert "resuming" not in log.split("config or inputs changed", 1)[1]
    assert json.loads((tmp_path / "run/checkpoints/fingerprint.json").read_text()
                      )["config"]["lr"] == 1e-3
    assert Path(changed.output.model).exists()


@pytest.mark.parametrize("where", ["values", "structure", "superblock"])
def test_corrupted_feature_store_fails_the_job_naming_the_store(
        stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        where: str) -> None:
    """Bytes of the feature store overwritten with 0xFF (NaN in float16) used to train with
    loss=nan to "best val CIDEr-D 0.0" and exit 0. Now the job stops before training, naming
    the store and how to rebuild it, whether the bytes hit the values, HDF5's own structures or
    the file's first bytes."""
    import h5py

    from mia.data.store import StoreError

    damaged = tmp_path / "grid.h5"
    damaged.write_bytes(Path(stores["features"]).read_bytes())
    with h5py.File(damaged, "r") as f:  # the features' first chunk: values, not structure
        chunk = f["features"].id.get_chunk_info(0)
        values_at, values_bytes = chunk.byte_offset, chunk.size
    offset, length = {"values": (values_at + values_bytes // 4, values_bytes // 2),
                      "structure": (damaged.stat().st_size // 3, 400_000),
                      "superblock": (0, 64)}[where]
    with damaged.open("r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * length)
    smk = fake_snakemake({**stores, "features": str(damaged)}, tmp_path / "run", TRAIN)
    with pytest.raises(StoreError, match=r"grid\.h5.*rebuild it: delete"):
        run_script(smk, monkeypatch)
    assert not Path(smk.output.model).exists() and not Path(smk.output.history).exists()
