"""Bottom-up region extraction: what one image costs, images/s, and bf16's effect on features.

* FLOPs of the paper-size detector (ResNet-101 C4, 300 proposals, res5 on 14 x 14 RoIs) for a
  640 x 480 COCO image (network input 600 x 800), counted by torch's FlopCounterMode on the
  meta device (shapes only: nothing is computed);
* images/s of the whole extractor (decoding in DataLoader workers, detector, selection rule) on
  the real coco-mini JPEGs, random weights in the public checkpoint's shapes: on CPU the small
  test detector and the paper-size one (float32); with CUDA the paper-size one in float32 and
  in bf16 (channels-last), with the time it projects for COCO 2014 + test2015;
* bf16 vs float32 on the same proposals: the relative error of the 2048-d region features and
  how many of the 36 kept boxes stay the same (CPU autocast here; CUDA when present).

Run: ``python benchmarks/bottom_up.py [--cpu-full-images 1] [--cuda-images 64]``
Random weights make every box a guess; speed and precision do not depend on what is detected.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mia.features.bottom_up import BottomUpConfig, BottomUpExtractor
from mia.features.bottom_up.config import FasterRCNNConfig
from mia.features.bottom_up.extract import _keep_list, select_regions
from mia.features.bottom_up.model import BottomUpFasterRCNN
from mia.features.bottom_up.preprocess import DetectorImages, SameSizeBatches, prepare, read_bgr
from mia.features.bottom_up.weights import build_model, random_state_dict, save_hub_checkpoint
from mia.vision import torchvision

box_iou = torchvision.ops.box_iou

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "tests" / "data" / "coco-mini" / "images"
#: COCO 2014 train + val (the Karpathy images) and test2015 (the VQA server's images).
COCO_IMAGES = 123_287 + 81_434
TINY = {"blocks": [3, 4, 6], "stem_channels": 8, "res2_channels": 32, "bottleneck_channels": 8,
        "rpn_channels": 16, "num_classes": 20, "num_attributes": 10}


def paper_flops() -> dict[str, float]:
    """GFLOPs (2 x multiply-adds) per 600 x 800 image with 300 proposals, per stage."""
    cfg = FasterRCNNConfig()
    with torch.device("meta"):
        model = BottomUpFasterRCNN(cfg)
        out = {}
        x = torch.empty(1, 3, 600, 800)
        with FlopCounterMode(display=False) as counter:
            features = model.backbone(x)
        out["backbone (res4)"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            model.proposal_generator.rpn_head(features)
        out["RPN head"] = counter.get_total_flops() / 1e9
        pooled = torch.empty(cfg.rpn_post_nms_topk, cfg.res4_channels, 14, 14)
        with FlopCounterMode(display=False) as counter:
            model.roi_heads.res5(pooled)
        out["res5 x 300 RoIs"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            model.roi_heads.box_predictor(torch.empty(cfg.rpn_post_nms_topk, cfg.res5_channels))
        out["classes + attributes"] = counter.get_total_flops() / 1e9
    return out


def coco_mini(n: int) -> list[tuple[int, str]]:
    paths = sorted(IMAGES.glob("*.jpg"))
    return [(i, str(paths[i % len(paths)])) for i in range(n)]


def images_per_second(cfg: BottomUpConfig, weights: Path, device: torch.device, n: int,
                      warmup: int) -> tuple[float, float]:
    """(images/s end to end, share of the time in the selection rule) over ``n`` images."""
    extractor = BottomUpExtractor(cfg, weights, device)
    items = coco_mini(n + warmup)
    sampler = SameSizeBatches(items, [range(len(items))], cfg.batch_size, cfg.min_size,
                              cfg.max_size)
    loader = torch.utils.data.DataLoader(
        DetectorImages(items, cfg.min_size, cfg.max_size, cfg.model.pixel_mean),
        batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=_keep_list,
        pin_memory=device.type == "cuda")
    done, started, selecting = 0, None, 0.0
    for batch in loader:
        if done >= warmup and started is None:
            _sync(device)
            started = time.perf_counter()
        extractor(batch)
        done += len(batch)
    _sync(device)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    # the rule alone, on the detections of one batch, repeated
    batch = next(iter(loader))
    with torch.autocast(device.type, torch.bfloat16, enabled=extractor.bf16):
        sizes = [tuple(p.pixels.shape[1:]) for p in batch]
        x = torch.stack([p.pixels for p in batch]).to(device)
        if extractor.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        detections = extractor.model(x, sizes)
    _sync(device)
    t0 = time.perf_counter()
    select_regions(detections, sizes, [(p.height, p.width) for p in batch], cfg)
    _sync(device)
    selecting = (time.perf_counter() - t0) / len(batch)
    ips = (done - warmup) / elapsed if elapsed > 0 else float("nan")
    return ips, selecting * ips


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16_agreement(model_cfg: FasterRCNNConfig, weights: Path, device: torch.device,
                   n: int) -> tuple[float, float, float]:
    """Median and 95th-percentile relative error of region features (same proposals) and the
    share of float32's 36 kept boxes that bf16 keeps too (a kept box within IoU 0.9), over
    ``n`` images."""
    model = build_model(model_cfg, weights, device=device)
    cfg = BottomUpConfig(model=model_cfg)
    errors, same = [], []
    for _, path in coco_mini(n):
        bgr = read_bgr(path)
        x = prepare(bgr, 600, 1000, model_cfg.pixel_mean)[None].to(device)
        size = [tuple(x.shape[2:])]
        det = model(x, size)[0]
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16):
            pooled = model.roi_heads(model.backbone(x), [det.boxes])
            low = model(x, size)[0]
        errors.append(((pooled - det.features).norm(dim=1) / det.features.norm(dim=1)).cpu())
        keep, boxes, _ = select_regions([det], size, [bgr.shape[:2]], cfg)[0]
        keep_low, boxes_low, _ = select_regions([low], size, [bgr.shape[:2]], cfg)[0]
        iou = box_iou(boxes[keep].float().cpu(), boxes_low[keep_low].float().cpu())
        same.append(float((iou.max(dim=1).values >= 0.9).float().mean()))
    err = torch.cat(errors)
    return float(err.median()), float(err.quantile(0.95)), sum(same) / len(same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-tiny-images", type=int, default=8)
    parser.add_argument("--cpu-full-images", type=int, default=1)
    parser.add_argument("--cuda-images", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--weights", type=Path,
                        help="the public weights (pytorch_model.bin or the detectron2 .pkl) for "
                             "the paper-size rows: bf16's agreement means something only with "
                             "them (default: random weights)")
    args = parser.parse_args()
    flops = paper_flops()
    total = sum(flops.values())
    print("| paper-size detector, 600 x 800 input, 300 proposals | GFLOPs |\n|---|---|")
    for stage, value in flops.items():
        print(f"| {stage} | {value:.0f} |")
    print(f"| total | {total:.0f} |\n")

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mia_bottom_up_bench_{os.getpid()}"
    tiny_cfg = BottomUpConfig(model=TINY, num_workers=args.workers, batch_size=4, device="cpu")
    full_cfg = BottomUpConfig(num_workers=args.workers, batch_size=2, device="cpu")
    tiny_w = save_hub_checkpoint(random_state_dict(tiny_cfg.model, 0), tmp / "tiny.bin")
    full_w = args.weights or save_hub_checkpoint(random_state_dict(full_cfg.model, 0),
                                                 tmp / "full.bin")
    rows = []
    cpu = torch.device("cpu")
    rows.append(("CPU", "small test detector", "float32", tiny_cfg.batch_size,
                 *images_per_second(tiny_cfg, tiny_w, cpu, args.cpu_tiny_images, 1)))
    if args.cpu_full_images:
        rows.append(("CPU", "paper-size", "float32", full_cfg.batch_size,
                     *images_per_second(full_cfg, full_w, cpu, args.cpu_full_images, 0)))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        for bf16, batch in ((False, 4), (True, 4), (True, 8)):
            cfg = BottomUpConfig(num_workers=args.workers, batch_size=batch, device="cuda",
                                 bf16=bf16)
            rows.append((torch.cuda.get_device_name(0), "paper-size",
                         "bf16" if bf16 else "float32", batch,
                         *images_per_second(cfg, full_w, cuda, args.cuda_images, 2 * batch)))
    print(f"| device | detector | dtype | batch | images/s | share in the selection rule | "
          f"COCO 2014 + test2015 ({COCO_IMAGES:,} images) |\n|---|---|---|---|---|---|---|")
    for device, model, dtype, batch, ips, share in rows:
        hours = COCO_IMAGES / ips / 3600
        print(f"| {device} | {model} | {dtype} | {batch} | {ips:.3f} | {share:.0%} | "
              f"{hours:,.1f} h |")
    print()
    print("| bf16 vs float32 | device | median feature error | 95th pct | kept boxes shared |"
          "\n|---|---|---|---|---|")
    tiny_model = tiny_cfg.model
    print("| small test detector, 4 images | CPU | {:.2%} | {:.2%} | {:.0%} |".format(
        *bf16_agreement(tiny_model, tiny_w, cpu, 4)))
    if torch.cuda.is_available():
        which = "public weights" if args.weights else "random weights"
        print("| paper-size ({}), 16 images | CUDA | {:.2%} | {:.2%} | {:.0%} |".format(
            which, *bf16_agreement(FasterRCNNConfig(), full_w, torch.device("cuda"), 16)))


if __name__ == "__main__":
    main()
