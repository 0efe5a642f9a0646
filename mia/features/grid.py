"""CNN grid features: a ResNet's last conv map pooled to 7 x 7 = 49 cells of C channels.

The paper's grid baselines (Visual Attention, Concept Attention, ...) attend over the 49 cells of
an ImageNet ResNet-152 at 224 x 224 (C = 2048). Every image is resized to a square (aspect not
kept, as in the Show-Attend-Tell line of work), normalised with ImageNet statistics, and its
layer4 map average-pooled to ``grid_size`` x ``grid_size`` (the identity at 224 px; other sizes
still give 49 cells). Features are stored as float16 (half the disk; the models compute in fp32).

On CUDA the forward pass runs in bf16 autocast with channels-last tensors, the fast path of
tensor cores; on CPU it runs in fp32, which is also what makes results bit-reproducible there.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.store import atomic_h5
from mia.features.backbone import build_resnet_trunk
from mia.features.images import (
    BadImage,
    BadImagesError,
    Decoded,
    ImageList,
    check_image_list,
    default_workers,
    image_loader,
    images_from_karpathy,
    resize_square,
)
from mia.progress import track
from mia.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridFeatureConfig:
    """``features.grid`` of the workflow config.

    ``pretrained: true`` loads torchvision's ImageNet ``weights`` (from ``weights_path`` when
    set, else torchvision's cache/download); ``seed`` only matters for random weights.
    ``bf16``/``channels_last`` apply on CUDA only.
    """

    backbone: str = "resnet152"
    pretrained: bool = True
    weights: str = "IMAGENET1K_V1"
    weights_path: str | None = None
    image_size: int = 224
    grid_size: int = 7
    batch_size: int = 64
    num_workers: int = field(default_factory=default_workers)  # min(4, cores)
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    seed: int = 0
    skip_bad_images: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("image_size", "grid_size", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"features.grid.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ValueError(f"features.grid.num_workers must be >= 0, got {self.num_workers}")


#: The name the workflow scripts use.
GridConfig = GridFeatureConfig


class GridModel(nn.Module):
    """ResNet trunk + adaptive average pooling: (B, 3, S, S) -> (B, grid_size**2, C) float32."""

    def __init__(self, trunk: nn.Module, channels: int, grid_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.channels = channels
        self.grid_size = grid_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk(pixels)  # (B, C, h, w)
        pooled = F.adaptive_avg_pool2d(fmap, self.grid_size)  # (B, C, g, g)
        return pooled.flatten(2).transpose(1, 2).float()  # (B, g*g, C), row-major cells


@dataclass
class GridRunner:
    """A model placed on its device, with the precision settings of the config."""

    model: GridModel
    device: torch.device
    autocast: bool
    channels_last: bool

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, g*g, C) float32 on CPU."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = pixels.to(self.device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.autocast):
            out = self.model(x)
        return out.float().cpu()


def build_grid_runner(cfg: GridFeatureConfig) -> GridRunner:
    trunk, channels = build_resnet_trunk(cfg.backbone, cfg.pretrained, cfg.seed,
                                         weights=cfg.weights, weights_path=cfg.weights_path,
                                         config_prefix="features.grid")
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    model = GridModel(trunk, channels, cfg.grid_size).eval()
    model = model.to(device, memory_format=torch.channels_last if cuda and cfg.channels_last
                     else torch.preserve_format)
    return GridRunner(model, device, autocast=cuda and cfg.bf16,
                      channels_last=cuda and cfg.channels_last)


def _skipped_attr(skipped: Sequence[BadImage]) -> str:
    return json.dumps([{"image_id": b.image_id, "file": b.path, "reason": b.reason}
                       for b in skipped])


def extract_grid_features(images: ImageList, out_h5: str | os.PathLike,
                          cfg: GridFeatureConfig) -> Path:
    """Write a ``grid_features`` store for ``images`` (``(image_id, path)`` pairs, kept in order).

    A batch with undecodable images stops the run with :class:`BadImagesError` naming them (at
    once, rather than after hours of GPU time); with ``skip_bad_images`` they are left out and
    listed in the ``skipped_images`` attribute. Nothing is left at ``out_h5`` on failure.
    """
    items = check_image_list(images)
    runner = build_grid_runner(cfg)
    n, cells, channels = len(items), cfg.grid_size ** 2, runner.model.channels
    loader = image_loader(items, resize_square(cfg.image_size), cfg.batch_size, cfg.num_workers)
    attrs = {"backbone": cfg.backbone, "pretrained": cfg.pretrained,
             "image_size": cfg.image_size, "grid_size": cfg.grid_size}
    skipped: list[BadImage] = []
    with atomic_h5(out_h5, kind="grid_features", config=asdict(cfg), attrs=attrs) as f:
        ids = f.create_dataset("image_ids", shape=(n,), maxshape=(n,), dtype=np.int64,
                               chunks=(min(n, 4096),))
        feats = f.create_dataset("features", shape=(n, cells, channels), dtype=np.float16,
                                 chunks=(1, cells, channels), maxshape=(n, cells, channels))
        row = 0
        for batch in track(loader, f"grid features ({cfg.backbone})", n, unit="images",
                           size=len, logger=log, bar=cfg.progress):
            good = [d for d in batch if isinstance(d, Decoded)]
            bad = [d for d in batch if isinstance(d, BadImage)]
            if bad and not cfg.skip_bad_images:
                raise BadImagesError(bad, "features.grid.skip_bad_images")
            for b in bad:
                log.warning("skipping image_id %d: %s (%s)", b.image_id, b.path, b.reason)
            skipped += bad
            if not good:
                continue
            out = runner(torch.stack([d.pixels for d in good]))  # (B, g*g, C)
            feats[row:row + len(good)] = out.numpy().astype(np.float16)
            ids[row:row + len(good)] = [d.image_id for d in good]
            row += len(good)
        if row == 0:
            raise RuntimeError(f"{out_h5}: every one of the {n} images failed to decode "
                               f"(first: {skipped[0].path}: {skipped[0].reason}); check the "
                               f"images root")
        if row < n:
            feats.resize(row, axis=0)
            ids.resize(row, axis=0)
        f.attrs["skipped_images"] = _skipped_attr(skipped)
    log.info("grid features: %d images x %d cells x %d channels -> %s (%d skipped)",
             row, cells, channels, out_h5, len(skipped))
    return Path(out_h5)


def extract_grid_features_from_karpathy(karpathy_json: str | os.PathLike,
                                        root: str | os.PathLike, out_h5: str | os.PathLike,
                                        cfg: GridFeatureConfig) -> Path:
    """Grid features of every image of ``dataset_coco.json`` under ``{root}/images``."""
    return extract_grid_features(images_from_karpathy(karpathy_json, root), out_h5, cfg)
