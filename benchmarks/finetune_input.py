"""The CNN fine-tuning input: images/s per core, and CNN passes per batch of 80 captions.

Before (the released recipe's path, ``finetune.CaptionImages`` + ``with_images``): every caption
row opens its JPEG, decodes it, resizes it to 256 x 256, crops 224, flips and normalises, on a
CPU core, and the CNN runs once per caption row. After (``image_store.ImageStore`` +
``with_store_images`` + ``GridCNN.featurize``): the images were decoded and resized once into a
uint8 store; a batch is one gather, and crop, flip and normalisation are one indexing kernel on
the training device; batches by image run the CNN once per image.

Measured on the real coco-mini JPEGs (640 px COCO images), in one process, one thread, the two
paths interleaved. Then the CNN: passes per batch of 80 captions and its forward time, by
caption against by image, on a captions store of 5 captions per image (the COCO layout).

Run: ``python benchmarks/finetune_input.py [--device cpu|cuda] [--check]``. ``--check``: tiny
sizes, to prove the script runs (gpu.sh --check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mia.captioning.config import CaptionerConfig
from mia.captioning.finetune import (
    CaptionImages,
    GridCNN,
    device_crops,
    with_images,
    with_store_images,
)
from mia.captioning.image_store import ImageStore, build_image_store
from mia.data.loaders import CaptionData
from mia.data.store import write_store

REPO = Path(__file__).resolve().parent.parent


def coco_mini_images() -> list[tuple[int, Path]]:
    root = REPO / "tests" / "data" / "coco-mini"
    images = json.loads((root / "instances.json").read_text())["images"]
    return [(im["id"], root / "images" / im["file_name"]) for im in images]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_pipeline(tmp: Path, device: torch.device, rounds: int, batch: int,
                   resize: int, crop: int) -> dict[str, float]:
    """images/s of the two input paths on one thread (same images, same windows)."""
    images = coco_mini_images()
    cfg = CaptionerConfig(fine_tune_cnn_after_epoch=0, cnn={
        "backbone": "resnet18", "pretrained": False, "resize": resize, "crop": crop,
        "workers": 0}).cnn_config()
    started = time.perf_counter()
    store_path = build_image_store(images, tmp / "images_train.h5", resize)
    build_s = time.perf_counter() - started
    store = ImageStore(store_path, device)
    per_item = CaptionImages(dict(images), cfg, train=True)
    ids = [i for i, _ in images]
    batches = [{"image_ids": torch.tensor([ids[(b * batch + k) % len(ids)] for k in range(batch)])}
               for b in range(rounds)]
    old_s, new_s = [], []
    for number, one in enumerate(batches):
        t0 = time.perf_counter()
        [b["images"] for b in with_images(iter([one]), per_item, 0, seed=1, epoch=1,
                                          start=number)]
        t1 = time.perf_counter()
        for b in with_store_images(iter([one]), store, cfg, True, seed=1, epoch=1, start=number):
            device_crops(b["images"], b["crop_windows"].to(device), crop)
        _sync(device)
        t2 = time.perf_counter()
        old_s.append(t1 - t0)
        new_s.append(t2 - t1)
    old, new = statistics.median(old_s[1:] or old_s), statistics.median(new_s[1:] or new_s)
    return {"images": len(images), "batch": batch, "old_ips": batch / old,
            "new_ips": batch / new, "build_s": build_s, "build_ips": len(images) / build_s}


def captions_store(path: Path, images: int, per_image: int = 5) -> Path:
    rng = np.random.default_rng(0)
    n = images * per_image
    captions = np.zeros((n, 12), dtype=np.int32)
    captions[:, 0], captions[:, 1:10], captions[:, 10] = 1, rng.integers(4, 50, (n, 9)), 2
    write_store(path, kind="captions", image_ids=np.arange(images) + 1, datasets={
        "split": np.zeros(images, dtype=np.uint8), "captions": captions,
        "caption_image_index": np.repeat(np.arange(images), per_image).astype(np.int64),
        "caption_lengths": np.full(n, 11, dtype=np.int32)},
        attrs={"vocab": ["<pad>", "<bos>", "<eos>", "<unk>", *[f"w{i}" for i in range(46)]],
               "max_length": 12, "count_threshold": 1})
    return path


def cnn_passes(tmp: Path, device: torch.device, backbone: str, crop: int, batch_size: int,
               batches: int) -> dict[str, float]:
    """CNN images and forward time per batch of ``batch_size`` captions, by caption and by
    image (5 captions per image)."""
    data = CaptionData.from_stores(captions_store(tmp / "captions.h5", 4 * batch_size))
    cnn = GridCNN(CaptionerConfig(fine_tune_cnn_after_epoch=0, cnn={
        "backbone": backbone, "pretrained": False, "resize": crop, "crop": crop}).cnn_config())
    cnn = cnn.to(device).eval()
    seen: list[int] = []
    cnn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    by_caption = data.train_batches(1, batch_size, 0)
    by_image = data.train_batches_by_image(1, batch_size // data.captions_per_image, 0)
    out = {}
    for name, source in (("caption", by_caption), ("image", by_image)):
        seen.clear()
        times = []
        for _, b in zip(range(batches), source, strict=False):
            images = torch.randint(0, 256, (len(b.get("batch_image_ids", b["image_ids"])), crop,
                                            crop, 3), dtype=torch.uint8, device=device)
            batch = {"images": images}
            if "caption_image" in b:
                batch["caption_image"] = b["caption_image"].to(device)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                features = cnn.featurize(batch)["features"]
            _sync(device)
            times.append(time.perf_counter() - t0)
            assert features.shape[0] == len(b["captions"])
        out[f"{name}_passes"] = statistics.mean(seen)
        out[f"{name}_ms"] = 1e3 * statistics.median(times[1:] or times)
        out["captions"] = batch_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (crops on the device)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="images per input batch")
    parser.add_argument("--cnn", default=None, help="backbone of the CNN-pass table "
                        "(default resnet18 on cpu, resnet152 on cuda)")
    parser.add_argument("--cnn-batches", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="tiny sizes: does it run")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    resize, crop, cnn_crop = 256, 224, 224 if device.type == "cuda" else 64
    backbone = args.cnn or ("resnet152" if device.type == "cuda" else "resnet18")
    if args.check:
        args.rounds, args.batch, args.cnn_batches, resize, crop, cnn_crop = 2, 4, 2, 64, 32, 32
    with tempfile.TemporaryDirectory() as tmp:
        pipe = input_pipeline(Path(tmp), device, args.rounds, args.batch, resize, crop)
        cnn = cnn_passes(Path(tmp), device, backbone, cnn_crop, 80 if not args.check else 10,
                         args.cnn_batches)
    print(f"Fine-tuning input: {pipe['images']} coco-mini JPEGs, batches of {pipe['batch']} "
          f"images, {resize} px resize, {crop} px crop + flip; one thread; torch "
          f"{torch.__version__}, device {device}\n")
    print("| input path | images/s (1 core) | vs per-item JPEG |")
    print("|---|---|---|")
    print(f"| per item: JPEG decode + resize + crop + flip + normalise (released) | "
          f"{pipe['old_ips']:.0f} | 1.0x |")
    print(f"| image store: gather + crop/flip/normalise on {device} | {pipe['new_ips']:.0f} | "
          f"**{pipe['new_ips'] / pipe['old_ips']:.1f}x** |")
    print(f"| (once per image, for the whole run: building the store) | "
          f"{pipe['build_ips']:.0f} | |\n")
    print(f"CNN per batch of {cnn['captions']} captions (5 per image), {backbone} at "
          f"{cnn_crop} px, forward, {device}:\n")
    print("| batches | CNN images per batch | forward ms | vs by caption |")
    print("|---|---|---|---|")
    print(f"| by caption (released) | {cnn['caption_passes']:.0f} | {cnn['caption_ms']:.1f} | "
          "1.0x |")
    print(f"| by image | {cnn['image_passes']:.0f} | {cnn['image_ms']:.1f} | "
          f"**{cnn['image_passes'] / cnn['caption_passes']:.2f}x passes, "
          f"{cnn['image_ms'] / cnn['caption_ms']:.2f}x time** |")
    if device.type == "cpu":
        print("\nCPU: absolute figures depend on this machine and its load; the ratios are the "
              "result.")


if __name__ == "__main__":
    main()
