"""Batches per second of ``mia.data.loaders`` against a naive per-item HDF5 ``Dataset``.

The naive loader is the common first attempt: a ``torch.utils.data.Dataset`` whose
``__getitem__`` opens the HDF5 files, reads one row and closes them, batched by a ``DataLoader``
(batch 80). The stores are synthetic but of realistic shapes (49 x 2048 float16 grid features,
5 captions per image; 36 x 2048 region features and 3,129 answers for VQA), written to a temp dir.

Run: ``python benchmarks/dataloader.py [--images 2000] [--batches 40] [--workers 0]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mia.data.loaders import CaptionData, LoaderConfig, VQAData, prefetch
from mia.data.store import atomic_h5, write_store


@dataclass(frozen=True)
class BenchConfig:
    images: int = 2000
    captions_per_image: int = 5
    questions_per_image: int = 5
    grid: int = 49
    regions: int = 36
    channels: int = 2048
    vocab: int = 10_000
    answers: int = 3129
    batch_size: int = 80
    batches: int = 40
    workers: int = 0
    seed: int = 0


def _write_features(path: Path, kind: str, ids: np.ndarray, n: int, cfg: BenchConfig,
                    rng: np.random.Generator, regions: bool) -> None:
    with atomic_h5(path, kind=kind) as f:
        f.create_dataset("image_ids", data=ids)
        ds = f.create_dataset("features", (len(ids), n, cfg.channels), np.float16,
                              chunks=(1, n, cfg.channels))
        for s in range(0, len(ids), 250):  # stream: never the whole array in one temporary
            block = rng.random((min(250, len(ids) - s), n, cfg.channels), dtype=np.float32)
            ds[s:s + len(block)] = block.astype(np.float16)
        if regions:
            f.create_dataset("num_boxes", data=rng.integers(10, n + 1, len(ids)).astype(np.int32))
            f.create_dataset("boxes", data=np.zeros((len(ids), n, 4), np.float32))


def make_stores(root: Path, cfg: BenchConfig) -> dict[str, Path]:
    rng = np.random.default_rng(cfg.seed)
    ids = rng.choice(600_000, cfg.images, replace=False).astype(np.int64)
    m = cfg.images * cfg.captions_per_image
    lengths = rng.integers(8, 19, m).astype(np.int32)
    captions = rng.integers(4, cfg.vocab, (m, 18)).astype(np.int32)
    captions[:, 0] = 1
    captions[np.arange(m), lengths - 1] = 2
    captions[np.arange(18)[None] >= lengths[:, None]] = 0
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(cfg.vocab - 4)]
    split = (rng.random(cfg.images) < 0.1).astype(np.uint8)
    write_store(root / "captions.h5", kind="captions", image_ids=ids,
                datasets={"split": split, "captions": captions,
                          "caption_image_index": np.repeat(np.arange(cfg.images),
                                                           cfg.captions_per_image),
                          "caption_lengths": lengths},
                attrs={"vocab": vocab, "max_length": 16, "count_threshold": 5})
    q = cfg.images * cfg.questions_per_image
    labels = np.full((q, 10), -1, np.int32)
    labels[:, :3] = np.sort(rng.choice(cfg.answers, (q, 3)), axis=1)
    write_store(root / "vqa.h5", kind="vqa", image_ids=ids,
                datasets={"question_ids": np.arange(q, dtype=np.int64),
                          "question_image_index": np.repeat(np.arange(cfg.images),
                                                            cfg.questions_per_image),
                          "questions": rng.integers(1, 5000, (q, 14)).astype(np.int32),
                          "split": (rng.random(q) < 0.1).astype(np.uint8),
                          "answer_labels": labels,
                          "answer_scores": np.where(labels >= 0, 0.3, 0).astype(np.float32)},
                attrs={"question_vocab": ["<pad>", "<unk>"] + [f"q{i}" for i in range(4998)],
                       "answer_vocab": [f"a{i}" for i in range(cfg.answers)]})
    order = rng.permutation(ids)  # feature stores in another row order than the annotations
    _write_features(root / "grid.h5", "grid_features", order, cfg.grid, cfg, rng, False)
    _write_features(root / "regions.h5", "region_features", order, cfg.regions, cfg, rng, True)
    return {"captions": root / "captions.h5", "vqa": root / "vqa.h5", "grid": root / "grid.h5",
            "regions": root / "regions.h5"}


class NaiveCaptions(Dataset):
    """Opens both files per item and reads one row: the pattern the fast loader replaces."""

    def __init__(self, captions: Path, features: Path) -> None:
        self.captions, self.features = captions, features
        with h5py.File(captions, "r") as f:
            self.index = f["caption_image_index"][()]
            image_ids = f["image_ids"][()]
        with h5py.File(features, "r") as f:
            self.row_of = {int(i): r for r, i in enumerate(f["image_ids"][()])}
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image_id = int(self.image_ids[self.index[i]])
        with h5py.File(self.captions, "r") as f:
            caption = f["captions"][i].astype(np.int64)
            length = int(f["caption_lengths"][i])
        with h5py.File(self.features, "r") as f:
            feats = f["features"][self.row_of[image_id]].astype(np.float32)
        return {"image_ids": torch.tensor(image_id), "features": torch.from_numpy(feats),
                "captions": torch.from_numpy(caption), "caption_lengths": torch.tensor(length)}


class NaiveVQA(Dataset):
    def __init__(self, vqa: Path, regions: Path) -> None:
        self.vqa, self.regions = vqa, regions
        with h5py.File(vqa, "r") as f:
            self.image_ids = f["image_ids"][()][f["question_image_index"][()]]
            self.n_answers = len(json.loads(f.attrs["answer_vocab"]))
        with h5py.File(regions, "r") as f:
            self.row_of = {int(i): r for r, i in enumerate(f["image_ids"][()])}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        with h5py.File(self.vqa, "r") as f:
            question = f["questions"][i].astype(np.int64)
            labels, scores = f["answer_labels"][i], f["answer_scores"][i]
        with h5py.File(self.regions, "r") as f:
            row = self.row_of[int(self.image_ids[i])]
            feats = f["features"][row].astype(np.float32)
            n = int(f["num_boxes"][row])
        target = np.zeros(self.n_answers, np.float32)
        target[labels[labels >= 0]] = scores[labels >= 0]
        return {"questions": torch.from_numpy(question), "features": torch.from_numpy(feats),
                "feature_mask": torch.arange(feats.shape[0]) < n,
                "target": torch.from_numpy(target)}


def _rate(batches: Iterable, limit: int) -> float:
    """Batches per second over ``limit`` batches, after one warm-up batch."""
    it = iter(batches)
    next(it)
    start, done = time.perf_counter(), 0
    for _ in it:
        done += 1
        if done == limit:
            break
    return done / (time.perf_counter() - start)


def _timed(build: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = build()
    return out, time.perf_counter() - start


def run(cfg: BenchConfig) -> list[tuple[str, float, float, float]]:
    rows: list[tuple[str, float, float, float]] = []  # loader, setup s, batches/s, ratio
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_stores(Path(tmp), cfg)
        b = cfg.batch_size
        naive, t = _timed(lambda: DataLoader(NaiveCaptions(paths["captions"], paths["grid"]), b,
                                             shuffle=True, num_workers=cfg.workers,
                                             generator=torch.Generator().manual_seed(cfg.seed)))
        base = _rate(naive, cfg.batches)
        rows.append(("captions: naive per-item h5py + DataLoader", t, base, 1.0))
        variants = [("CaptionData (RAM)", LoaderConfig(), False),
                    ("CaptionData (RAM) + prefetch thread", LoaderConfig(), True),
                    ("CaptionData (RAM, float16 out)", LoaderConfig(float32_features=False), False),
                    ("CaptionData (in_memory=False)", LoaderConfig(in_memory=False), False)]
        for name, lc, ahead in variants:
            data, t = _timed(lambda lc=lc: CaptionData.from_stores(paths["captions"], paths["grid"],
                                                                   cfg=lc))
            batches = data.train_batches(0, b, cfg.seed)
            rate = _rate(prefetch(batches) if ahead else batches, cfg.batches)
            rows.append((f"captions: {name}", t, rate, rate / base))
        naive, t = _timed(lambda: DataLoader(NaiveVQA(paths["vqa"], paths["regions"]), b,
                                             shuffle=True, num_workers=cfg.workers,
                                             generator=torch.Generator().manual_seed(cfg.seed)))
        base = _rate(naive, cfg.batches)
        rows.append(("vqa: naive per-item h5py + DataLoader", t, base, 1.0))
        vqa, t = _timed(lambda: VQAData.from_stores(paths["vqa"], paths["regions"]))
        rate = _rate(vqa.train_batches(0, b, cfg.seed), cfg.batches)
        rows.append(("vqa: VQAData (RAM)", t, rate, rate / base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in BenchConfig.__dataclass_fields__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default.default)
    cfg = BenchConfig(**vars(parser.parse_args()))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run(cfg)
    print(f"images={cfg.images} batch={cfg.batch_size} grid={cfg.grid}x{cfg.channels} "
          f"regions={cfg.regions}x{cfg.channels} float16, workers={cfg.workers}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"| {'loader':<46} | {'setup s':>8} | {'batches/s':>10} | {'vs naive':>8} |")
    print(f"|{'-' * 48}|{'-' * 9}:|{'-' * 11}:|{'-' * 9}:|")
    for name, setup, rate, ratio in rows:
        print(f"| {name:<46} | {setup:>8.2f} | {rate:>10.1f} | {ratio:>7.1f}x |")


if __name__ == "__main__":
    main()
