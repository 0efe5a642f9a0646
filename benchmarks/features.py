"""Grid-feature extraction speed: images/s, and decoding's share of the time vs the network's.

Runs ``mia.features.grid``'s own pieces (the PIL decoding ``Dataset`` and the ``GridRunner``) on
the real coco-mini JPEGs (cycled to fill the batches): decoding in the main process
(``num_workers=0``) so the two costs can be timed apart, then end to end with decoding workers.
On CPU: ResNet-18 and ResNet-152 at 224 px, fp32. With CUDA: ResNet-152 at 224 px in bf16
autocast with channels-last tensors, the paper's setting, and the projected time for the full
COCO 2014 set (123,287 images). The first batch of each setting is a warm-up and not timed.

Run: ``python benchmarks/features.py [--cpu-batches 3] [--gpu-batches 20] [--workers 2]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mia.features.grid import GridFeatureConfig, build_grid_runner
from mia.features.images import image_loader, resize_square

REPO = Path(__file__).resolve().parent.parent
COCO_2014_IMAGES = 123_287


@dataclass(frozen=True)
class Setting:
    backbone: str
    device: str
    batch_size: int
    batches: int
    workers: int


@dataclass(frozen=True)
class Result:
    setting: Setting
    images: int
    decode_s: float
    network_s: float
    end_to_end_ips: float

    @property
    def serial_ips(self) -> float:
        return self.images / (self.decode_s + self.network_s)

    @property
    def network_ips(self) -> float:
        return self.images / self.network_s


def coco_mini_images() -> list[tuple[int, Path]]:
    root = REPO / "tests" / "data" / "coco-mini"
    images = json.loads((root / "instances.json").read_text())["images"]
    return [(im["id"], root / "images" / im["file_name"]) for im in images]


def _cycled(images: list[tuple[int, Path]], n: int) -> list[tuple[int, str]]:
    # distinct ids (the extractor's contract), the same JPEGs again
    return [(k, str(p)) for k, (_, p) in zip(range(n), itertools.cycle(images), strict=False)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(setting: Setting, images: list[tuple[int, Path]]) -> Result:
    cfg = GridFeatureConfig(backbone=setting.backbone, pretrained=False, image_size=224,
                            batch_size=setting.batch_size, device=setting.device,
                            num_workers=0, progress=False)
    runner = build_grid_runner(cfg)
    n = setting.batch_size * (setting.batches + 1)
    items = _cycled(images, n)
    resize = resize_square(cfg.image_size)

    # serial: decode and network timed apart
    decode_s = network_s = 0.0
    timed = 0
    loader = iter(image_loader(items, resize, setting.batch_size, 0))
    for step in range(setting.batches + 1):
        t0 = time.perf_counter()
        batch = next(loader)
        pixels = torch.stack([d.pixels for d in batch])
        t1 = time.perf_counter()
        runner(pixels)
        _sync(runner.device)
        t2 = time.perf_counter()
        if step > 0:
            decode_s += t1 - t0
            network_s += t2 - t1
            timed += len(batch)

    # end to end, decoding in worker processes
    loader = iter(image_loader(items, resize, setting.batch_size, setting.workers))
    runner(torch.stack([d.pixels for d in next(loader)]))
    _sync(runner.device)
    start, count = time.perf_counter(), 0
    for batch in loader:
        runner(torch.stack([d.pixels for d in batch]))
        count += len(batch)
    _sync(runner.device)
    end_to_end = count / (time.perf_counter() - start)
    return Result(setting, timed, decode_s, network_s, end_to_end)


def table(results: list[Result]) -> str:
    head = ("| backbone | device | precision | batch | images | decode s | network s | decode share"
            " | img/s serial | img/s network only | img/s with workers | 123,287 images |")
    rows = [head, "|" + "---|" * 12]
    for r in results:
        s = r.setting
        precision = "bf16 + channels_last" if s.device == "cuda" else "fp32"
        hours = COCO_2014_IMAGES / r.end_to_end_ips / 3600
        rows.append(
            f"| {s.backbone} | {s.device} | {precision} | {s.batch_size} | {r.images} | "
            f"{r.decode_s:.2f} | {r.network_s:.2f} | "
            f"{r.decode_s / (r.decode_s + r.network_s):.0%} | {r.serial_ips:.1f} | "
            f"{r.network_ips:.1f} | {r.end_to_end_ips:.1f} ({s.workers} workers) | "
            f"{hours:.2f} h |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-batches", type=int, default=3)
    parser.add_argument("--cpu-batch-size", type=int, default=8)
    parser.add_argument("--gpu-batches", type=int, default=20)
    parser.add_argument("--gpu-batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()

    images = coco_mini_images()
    settings = [Setting(b, "cpu", args.cpu_batch_size, args.cpu_batches, args.workers)
                for b in ("resnet18", "resnet152")]
    if torch.cuda.is_available():
        settings.append(Setting("resnet152", "cuda", args.gpu_batch_size, args.gpu_batches,
                                args.workers))
    results = [run(s, images) for s in settings]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"# grid features, 224 px, coco-mini JPEGs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {os.cpu_count()} cores; GPU: {device}")
    print(table(results))
    print("decode share: time decoding+resizing in the main process over decode+network "
          "(serial run); last column: 123,287 COCO 2014 images at the with-workers rate.")


if __name__ == "__main__":
    main()
