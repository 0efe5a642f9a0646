"""Region pooling of the ``boxes`` source: torchvision's RoIAlign fallback against ours.

On a CPU-only torch the compiled ``torchvision::roi_align`` is missing and torchvision runs a
pure-Python version (per-corner fancy indexing of every channel at every sampling point).
``mia.features.roi_align.roi_align`` is the same arithmetic with one gather per corner;
``roi_mean`` exploits that a region feature is the MEAN of the bins, which is linear in the map:
per-box weights over the map's cells, then one matrix product. All three give the same numbers
(checked before timing; tests/test_features_regions.py checks them against torchvision and a
transcription of its kernel).

Sizes: one image's feature map from ResNet at the demo's 128 px (4 x 4 cells, 512 channels) and
at COCO's ~600 px (19 x 19, 2048 channels), 36 boxes, 7 x 7 bins, sampling ratio 2.

Run: ``python benchmarks/roi_pooling.py [--repeats R]``. CPU times depend on the machine and its
load: compare the ratios. (On a GPU torchvision's compiled kernel is used instead.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from mia.features.roi_align import roi_align, roi_mean
from mia.vision import torchvision  # noqa: F401 (registers the fallback when ops are missing)


def _time(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = sys.modules["torchvision.ops.roi_align"]
    fallback = getattr(getattr(module, "_roi_align", None), "__wrapped__", None)
    print(f"threads {args.threads}, median of {args.repeats}\n")
    print("| map | boxes | torchvision python ms | ours gather ms | ours weights@map ms | "
          "speed-up gather | speed-up weights |")
    print("|---|---|---|---|---|---|---|")
    for c, side, pixels in ((512, 4, 128), (2048, 19, 600)):
        fmap = torch.randn(1, c, side, side)
        boxes = torch.rand(36, 4) * pixels / 2
        boxes[:, 2:] += boxes[:, :2]
        rois = torch.cat([boxes.new_zeros(36, 1), boxes], dim=1)
        ours = roi_mean(fmap, boxes, 7, 1 / 32, 2)
        torch.testing.assert_close(roi_align(fmap, boxes, 7, 1 / 32, 2).mean((2, 3)), ours,
                                   rtol=1e-4, atol=1e-5)
        if fallback is not None:
            ref = fallback(fmap, rois, 1 / 32, 7, 7, 2, True).mean((2, 3))
            torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-5)
            t_ref = _time(lambda f=fmap, r=rois: fallback(f, r, 1 / 32, 7, 7, 2, True), args.repeats)
        else:
            t_ref = float("nan")  # compiled torchvision ops present: no Python fallback to time
        t_gather = _time(lambda f=fmap, b=boxes: roi_align(f, b, 7, 1 / 32, 2), args.repeats)
        t_mean = _time(lambda f=fmap, b=boxes: roi_mean(f, b, 7, 1 / 32, 2), args.repeats)
        print(f"| {c} x {side} x {side} | 36 | {t_ref:.1f} | {t_gather:.1f} | {t_mean:.2f} | "
              f"{t_ref / t_gather:.1f}x | {t_ref / t_mean:.0f}x |")


if __name__ == "__main__":
    main()
