"""Region features: 36 boxes x C per image, from one of four sources (``features.regions.source``).

* ``bottom_up_tsv``: import Anderson et al.'s released Faster R-CNN features (``trainval_36``),
  what the paper used for its region baselines. Streams the ~25 GB of TSV one row at a time.
* ``bottom_up``: run that Faster R-CNN (Visual Genome, public converted weights) on the images
  ourselves, in plain PyTorch (:mod:`mia.features.bottom_up`): the features without the TSVs,
  which can no longer be downloaded.
* ``detectron2``: run a Visual Genome Faster R-CNN (ResNet-101 C4) with the bottom-up selection
  rule (:mod:`mia.features.detectron2_backend`), for images the released TSVs do not cover.
* ``boxes``: RoIAlign over given boxes (COCO instances, or the demo world's shapes) on the last
  conv map of the grid backbone. No detector needed: the demo world and CPU machines use it.

All of them write the same store layout (:mod:`mia.features.region_store`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mia.data.bottomup_tsv import iter_bottomup_tsv
from mia.data.coco import read_coco_instances
from mia.data.store import atomic_h5
from mia.features.backbone import STRIDE, build_resnet_trunk
from mia.features.images import (
    BadImage,
    BadImagesError,
    Decoded,
    ImageList,
    check_image_list,
    default_workers,
    image_loader,
    images_from_karpathy,
    resize_shorter_side,
)
from mia.features.region_store import (
    PADDING_GRID,
    PADDING_ZEROS,
    RegionStoreWriter,
    pad_with_grid_boxes,
)
from mia.features.roi_align import roi_align as vectorised_roi_align
from mia.features.roi_align import roi_mean, roi_mean_batch
from mia.progress import track
from mia.runtime import resolve_device
from mia.vision import USING_FALLBACK, torchvision

log = logging.getLogger(__name__)
SOURCES = ("bottom_up_tsv", "bottom_up", "boxes", "detectron2")


@dataclass(frozen=True)
class RegionFeatureConfig:
    """``features.regions`` of the workflow config.

    ``boxes`` source: ``backbone``/``pretrained``/``weights``/``weights_path`` as for the grid;
    images keep their aspect (shorter side ``image_size``, longer at most ``max_size``); each box
    is RoIAligned to ``roi_size`` x ``roi_size`` (``sampling_ratio`` fixed, ``aligned=True``) and
    mean-pooled. ``detectron2`` source: ``detectron2_config``/``detectron2_weights`` of a VG
    Faster R-CNN, selection by ``score_threshold``/``nms_threshold``, ``num_boxes`` kept.
    ``bottom_up_tsv``: ``feature_dim`` is the TSV's feature width (2048). ``bottom_up``: the
    detector's settings in ``bottom_up`` (:class:`mia.features.bottom_up.BottomUpConfig`), whose
    ``max_boxes`` must be ``num_boxes``.
    """

    source: str = "bottom_up_tsv"
    num_boxes: int = 36
    backbone: str = "resnet152"
    pretrained: bool = True
    weights: str = "IMAGENET1K_V1"
    weights_path: str | None = None
    image_size: int = 448
    max_size: int = 1000
    roi_size: int = 7
    sampling_ratio: int = 2
    batch_size: int = 8
    num_workers: int = field(default_factory=default_workers)  # min(4, cores)
    device: str = "auto"
    bf16: bool = True
    seed: int = 0
    skip_bad_images: bool = False
    progress: bool = True
    feature_dim: int = 2048
    detectron2_config: str | None = None
    detectron2_weights: str | None = None
    score_threshold: float = 0.2
    nms_threshold: float = 0.3
    bottom_up: dict | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"features.regions.source: {self.source!r} is not one of {SOURCES}")
        if self.source == "bottom_up":
            from mia.features.bottom_up.config import bottom_up_config

            max_boxes = bottom_up_config(self.bottom_up).max_boxes
            if max_boxes != self.num_boxes:
                raise ValueError(
                    f"features.regions.num_boxes ({self.num_boxes}) is the store's width and "
                    f"must equal features.regions.bottom_up.max_boxes ({max_boxes})")
        for key in ("num_boxes", "image_size", "max_size", "roi_size", "sampling_ratio",
                    "batch_size", "feature_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"features.regions.{key} must be >= 1, got {getattr(self, key)}")


#: The name the workflow scripts use.
RegionConfig = RegionFeatureConfig


# --------------------------------------------------------------------------- bottom-up TSV


def import_bottomup_tsv(tsv_paths: Sequence[str | os.PathLike], out_h5: str | os.PathLike,
                        cfg: RegionFeatureConfig,
                        image_ids: Sequence[int] | None = None) -> Path:
    """Import bottom-up-attention TSV files into a ``region_features`` store, streaming.

    With ``image_ids`` the store has exactly those images in that order (rows for other images
    are ignored; a missing one is an error); without, every row in file order. Boxes beyond
    ``num_boxes`` are dropped (the TSV lists them by confidence), fewer are zero-padded.
    """
    paths = [Path(p) for p in tsv_paths]
    if not paths:
        raise FileNotFoundError("no bottom-up TSV files given (features.regions.source: "
                                "bottom_up_tsv reads {root}/bottom_up/trainval_36/*.tsv*)")
    row_of = None if image_ids is None else {int(i): r for r, i in enumerate(image_ids)}
    written: dict[int, str] = {}
    with atomic_h5(out_h5, kind="region_features", config=asdict(cfg),
                   attrs={"source": "bottom_up_tsv"}) as f:
        writer = RegionStoreWriter(f, cfg.num_boxes, None if row_of is None else len(row_of),
                                   source="bottom_up_tsv", padding=PADDING_ZEROS)
        for path in paths:
            for rec in track(iter_bottomup_tsv(path, cfg.feature_dim), f"bottom-up {path.name}",
                             None, unit="images", logger=log, bar=cfg.progress):
                if rec.image_id in written:
                    raise ValueError(f"{path}: image_id {rec.image_id} appears again (first in "
                                     f"{written[rec.image_id]}); the TSV files overlap")
                if row_of is not None and rec.image_id not in row_of:
                    continue
                written[rec.image_id] = path.name
                writer.put(rec.image_id, rec.features, rec.boxes, rec.num_boxes, rec.image_w,
                           rec.image_h, row=None if row_of is None else row_of[rec.image_id])
        if row_of is not None:
            missing = [i for i in row_of if i not in written]
            if missing:
                raise ValueError(
                    f"{len(missing)} image(s) of the split have no row in {[p.name for p in paths]}"
                    f" (first: {missing[:10]}); use the TSVs that cover the split's images, or "
                    f"features.regions.source: boxes/detectron2")
        writer.finish()
    return Path(out_h5)


# --------------------------------------------------------------------------- given boxes


def boxes_from_instances(instances_paths: Iterable[str | os.PathLike]
                         ) -> dict[int, np.ndarray]:
    """``{image_id: (n, 4) x1,y1,x2,y2}`` from COCO instance files, largest area first (ties by
    annotation id), so that truncating to 36 keeps the largest objects."""
    out: dict[int, np.ndarray] = {}
    for path in instances_paths:
        instances = read_coco_instances(path)
        for image_id, boxes in instances.by_image().items():
            ordered = sorted(boxes, key=lambda b: (-b.area, b.id))
            out[image_id] = np.array([b.bbox_xyxy for b in ordered], dtype=np.float32)
    return out


def roi_align(fmap: torch.Tensor, boxes: torch.Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (aligned=True) of one image's (n, 4) boxes -> (n, C, r, r).

    Without torchvision's compiled ops (CPU torch here, see :mod:`mia.vision`) its Python
    fallback is slow (and wrapped in ``torch.compile``, which recompiles for every feature-map
    size): :func:`mia.features.roi_align.roi_align` computes the same numbers, vectorised.
    """
    if USING_FALLBACK:
        return vectorised_roi_align(fmap, boxes, output_size, spatial_scale, sampling_ratio)
    return torchvision.ops.roi_align(fmap, [boxes], output_size=output_size,
                                     spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                                     aligned=True)


class BoxPooler:
    """Trunk + RoIAlign: one image (3, H, W) and boxes in its own pixels -> (n, C) features."""

    def __init__(self, cfg: RegionFeatureConfig) -> None:
        trunk, self.channels = build_resnet_trunk(
            cfg.backbone, cfg.pretrained, cfg.seed, weights=cfg.weights,
            weights_path=cfg.weights_path, config_prefix="features.regions")
        self.device = resolve_device(cfg.device)
        self.trunk = trunk.to(self.device)
        self.cfg = cfg

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, boxes: np.ndarray, scale_x: float, scale_y: float
                 ) -> np.ndarray:
        x = pixels.unsqueeze(0).to(self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda" and self.cfg.bf16):
            fmap = self.trunk(x).float()  # (1, C, h, w)
        scaled = torch.from_numpy(boxes * np.array([scale_x, scale_y, scale_x, scale_y],
                                                   dtype=np.float32)).to(self.device)
        return pool_boxes(fmap, scaled, self.cfg.roi_size, self.cfg.sampling_ratio).cpu().numpy()


def pool_boxes(fmap: torch.Tensor, boxes: torch.Tensor, roi_size: int, sampling_ratio: int,
               image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Region features: the mean of each box's ``roi_size`` x ``roi_size`` RoIAlign bins on its
    stride-32 map. ``fmap`` (1, C, h, w), ``boxes`` (n, 4) x1, y1, x2, y2 in the pixels the map
    was computed from -> (n, C); with ``image_index`` (n,), ``fmap`` (B, C, h, w) holds several
    images and box i is pooled from map ``image_index[i]``. Differentiable in ``fmap``: the demo
    backbone is pre-trained through this same function (mia.features.demo_pretrain)."""
    if image_index is not None:
        if USING_FALLBACK:
            return roi_mean_batch(fmap, boxes, image_index, roi_size, 1.0 / STRIDE,
                                  sampling_ratio)
        rois = torch.cat([image_index.to(boxes.dtype)[:, None], boxes], dim=1)
        return torchvision.ops.roi_align(fmap, rois, output_size=roi_size,
                                         spatial_scale=1.0 / STRIDE,
                                         sampling_ratio=sampling_ratio,
                                         aligned=True).mean(dim=(2, 3))
    if USING_FALLBACK:  # the mean of the bins as one matrix product (mia.features.roi_align)
        return roi_mean(fmap, boxes, roi_size, 1.0 / STRIDE, sampling_ratio)
    pooled = roi_align(fmap, boxes, roi_size, 1.0 / STRIDE, sampling_ratio)  # (n, C, r, r)
    return pooled.mean(dim=(2, 3))


def extract_box_features(images: ImageList, boxes_by_image: Mapping[int, np.ndarray],
                         out_h5: str | os.PathLike, cfg: RegionFeatureConfig) -> Path:
    """RoIAlign features of given boxes (an image without boxes gets only padding boxes).

    Each image's boxes (largest first, at most ``num_boxes``) are followed by the whole image
    and grid cells, so all ``num_boxes`` rows hold real features; ``num_boxes`` records how many
    were given.
    """
    items = check_image_list(images)
    pooler = BoxPooler(cfg)
    loader = image_loader(items, resize_shorter_side(cfg.image_size, cfg.max_size),
                          cfg.batch_size, cfg.num_workers)
    skipped: list[BadImage] = []
    with atomic_h5(out_h5, kind="region_features", config=asdict(cfg),
                   attrs={"source": "boxes"}) as f:
        writer = RegionStoreWriter(f, cfg.num_boxes, len(items), source="boxes",
                                   padding=PADDING_GRID)
        for batch in track(loader, f"region features ({cfg.backbone})", len(items),
                           unit="images", size=len, logger=log, bar=cfg.progress):
            bad = [d for d in batch if isinstance(d, BadImage)]
            if bad and not cfg.skip_bad_images:
                raise BadImagesError(bad, "features.regions.skip_bad_images")
            skipped += bad
            for d in batch:
                if not isinstance(d, Decoded):
                    continue
                given = boxes_by_image.get(d.image_id, np.zeros((0, 4), np.float32))
                boxes, count = pad_with_grid_boxes(given, d.width, d.height, cfg.num_boxes)
                height, width = d.pixels.shape[1:]
                feats = pooler(d.pixels, boxes, width / d.width, height / d.height)
                writer.put(d.image_id, feats, boxes, count, d.width, d.height)
        writer.finish([{"image_id": b.image_id, "file": b.path, "reason": b.reason}
                       for b in skipped])
    return Path(out_h5)


# --------------------------------------------------------------------------- dispatch


def _tsv_files(tsv_dir: str | os.PathLike) -> list[Path]:
    paths = sorted(p for p in Path(tsv_dir).glob("*.tsv*") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"{tsv_dir}: no *.tsv files; unpack trainval_36.zip there "
                                f"(features.regions.source: bottom_up_tsv)")
    return paths


def extract_region_features(cfg: RegionFeatureConfig, out_h5: str | os.PathLike, *,
                            karpathy_json: str | os.PathLike, root: str | os.PathLike,
                            instances: Sequence[str | os.PathLike] = (),
                            tsv_dir: str | os.PathLike | None = None,
                            weights: str | os.PathLike | None = None) -> Path:
    """The region store of every Karpathy image under ``root``, from ``cfg.source``.

    ``instances`` (COCO instance files) feed the ``boxes`` source; ``tsv_dir`` (default
    ``{root}/bottom_up/trainval_36``) the ``bottom_up_tsv`` source; ``weights`` (default
    ``bottom_up.weights_path``) the ``bottom_up`` source.
    """
    return extract_region_features_of(images_from_karpathy(karpathy_json, root), cfg, out_h5,
                                      instances=instances,
                                      tsv_dir=tsv_dir or Path(root) / "bottom_up" / "trainval_36",
                                      weights=weights)


def extract_region_features_of(images: ImageList, cfg: RegionFeatureConfig,
                               out_h5: str | os.PathLike, *,
                               instances: Sequence[str | os.PathLike] = (),
                               tsv_dir: str | os.PathLike | None = None,
                               weights: str | os.PathLike | None = None) -> Path:
    """The region store of ``images`` (``(image_id, path)`` pairs, kept in order) from
    ``cfg.source``: the Karpathy images above, or another image set (the evaluation server's
    test2015 images, whose TSVs are ``test2015_36``)."""
    if cfg.source == "bottom_up":
        from mia.features.bottom_up import bottom_up_config, extract_bottom_up_features

        bottom_up = bottom_up_config(cfg.bottom_up)
        return extract_bottom_up_features(images, out_h5, bottom_up,
                                          weights or bottom_up.weights_path)
    if cfg.source == "bottom_up_tsv":
        if tsv_dir is None:
            raise ValueError("features.regions.source: bottom_up_tsv needs the folder of the "
                             "images' TSV files (bottom_up/trainval_36 or bottom_up/test2015_36)")
        return import_bottomup_tsv(_tsv_files(tsv_dir), out_h5, cfg,
                                   image_ids=[i for i, _ in images])
    if cfg.source == "boxes":
        if not instances:
            raise ValueError("features.regions.source: boxes needs COCO instance files "
                             "({root}/annotations/instances_*2014.json)")
        return extract_box_features(images, boxes_from_instances(instances), out_h5, cfg)
    from mia.features.detectron2_backend import extract_detectron2_features

    return extract_detectron2_features(images, out_h5, cfg)
