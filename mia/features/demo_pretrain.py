"""Pre-training the demo world's backbone: its ImageNet / Visual Genome step.

The paper's grid features come from a ResNet pre-trained on ImageNet and its region features
from a Faster R-CNN trained on Visual Genome's objects and attributes: networks that learned to
see on OTHER labelled images. The demo world has neither, and a randomly initialised CNN gives
features that carry almost nothing of the picture (every captioner then learns one caption for
all images). So the demo trains its own, small, on the world's pre-training scenes
(:mod:`mia.data.demo_pretrain`: same generator, disjoint images, object labels only), with the
two objectives that give the paper's two feature kinds their meaning:

* **grid** (ImageNet's role, but local): a 1x1 convolution on the layer4 map predicts, for each
  map cell, which shapes and colours are in it (multi-label, 5 + 7 bits; none = empty). An
  object is in a cell when at least ``cell_threshold`` of its box's area falls inside it;
* **regions** (Visual Genome's role): each object's box is pooled from the same map by
  :func:`mia.features.regions.pool_boxes`, the RoIAlign the region extractor uses, and a linear
  head predicts its shape, colour, size and 3x3 position (the words captions use);
* **background** (black or white) from the mean of the map.

Only the trunk (``conv1`` .. ``layer4``) is kept: its ``state_dict`` is what the grid and
region extractors load (``weights_path``); the heads are thrown away as ImageNet's classifier
is. The last ``held_out_fraction`` of the scenes are never trained on: the accuracy of every
head on them, beside the majority-class rate, goes into the log, the checkpoint and a JSON the
report's cost section shows.

Seeded and deterministic on CPU for a fixed thread count (weights, order of batches).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mia.data.demo_pretrain import LABEL_SPACE, LABELS_FILE
from mia.features.backbone import DEMO_TRUNKS, backbone_channels, build_backbone_model
from mia.features.images import IMAGENET_MEAN, IMAGENET_STD
from mia.features.regions import RegionFeatureConfig, pool_boxes
from mia.io import write_json
from mia.runtime import resolve_device
from mia.training.checkpoint import atomic_save
from mia.training.progress import format_duration

log = logging.getLogger(__name__)

#: Box heads, in the order of their logits: (label, classes).
BOX_HEADS = ("shape", "color", "size", "position")
#: Cell labels: one bit per shape, then one per colour.
CELL_LABELS = [*LABEL_SPACE["shape"], *LABEL_SPACE["color"]]


@dataclass(frozen=True)
class PretrainConfig:
    """``pretrain.train`` of the demo config.

    ``roi_size``/``sampling_ratio`` should be ``features.regions``' own (the workflow passes
    them), so that boxes are pooled in pre-training exactly as in extraction.
    """

    backbone: str = "demo_resnet"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-4
    held_out_fraction: float = 0.1
    cell_threshold: float = 0.25
    cell_weight: float = 1.0
    roi_size: int = 7
    sampling_ratio: int = 2
    seed: int = 0
    device: str = "cpu"
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.backbone not in DEMO_TRUNKS:
            raise ValueError(f"pretrain.train.backbone: {self.backbone!r} is not a demo trunk "
                             f"({sorted(DEMO_TRUNKS)})")
        for key in ("epochs", "batch_size", "roi_size", "sampling_ratio"):
            if getattr(self, key) < 1:
                raise ValueError(f"pretrain.train.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"pretrain.train.held_out_fraction must be in (0, 1), got "
                             f"{self.held_out_fraction}")
        if not 0 < self.cell_threshold <= 1:
            raise ValueError(f"pretrain.train.cell_threshold must be in (0, 1], got "
                             f"{self.cell_threshold}")


# --------------------------------------------------------------------------- data


@dataclass
class PretrainSet:
    """The scenes in memory: ``images`` (N, 3, H, W) uint8, per-image background index, and
    per-object rows in image order: ``object_image`` (M,) image row, ``boxes`` (M, 4) x1, y1,
    x2, y2 pixels, ``object_labels`` (M, 4) indices of :data:`BOX_HEADS`."""

    image_ids: np.ndarray
    images: Tensor
    background: Tensor
    object_image: np.ndarray
    boxes: Tensor
    object_labels: Tensor

    def __len__(self) -> int:
        return len(self.image_ids)

    def __post_init__(self) -> None:
        counts = np.bincount(self.object_image, minlength=len(self.image_ids))
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._cells: dict[tuple[int, int, float], Tensor] = {}

    def objects_of(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """The objects of images ``rows``: boxes (n, 4), the position in ``rows`` of each one's
        image (n,), labels (n, 4)."""
        picks = [np.arange(self._offsets[r], self._offsets[r + 1]) for r in rows]
        index = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        local = np.repeat(np.arange(len(rows)), [len(p) for p in picks])
        return self.boxes[index], torch.from_numpy(local), self.object_labels[index]

    def cell_targets(self, rows: np.ndarray, map_size: tuple[int, int], threshold: float
                     ) -> Tensor:
        """(len(rows), 12, h, w) cell labels (:func:`cell_targets`), computed once per map size."""
        key = (*map_size, threshold)
        if key not in self._cells:
            self._cells[key] = cell_targets(self.boxes, torch.from_numpy(self.object_image),
                                            self.object_labels, len(self),
                                            tuple(self.images.shape[2:]), map_size, threshold)
        return self._cells[key][rows]


def load_pretrain_set(root: str | os.PathLike) -> PretrainSet:
    """Decode every scene of ``root`` (:func:`mia.data.demo_pretrain.generate_pretrain_scenes`)."""
    root = Path(root)
    path = root / LABELS_FILE
    try:
        data = json.loads(path.read_text())
        records = data["images"]
        space = data["label_space"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a pre-training labels file of mia.data.demo_pretrain "
                         f"({type(err).__name__}: {err}); regenerate it") from err
    if space != LABEL_SPACE:
        raise ValueError(f"{path}: label_space {space} differs from this version's "
                         f"{LABEL_SPACE}; regenerate the pre-training scenes")
    index = {head: {name: i for i, name in enumerate(LABEL_SPACE[head])}
             for head in (*BOX_HEADS, "background")}
    images, background, object_image, boxes, labels = [], [], [], [], []
    for row, rec in enumerate(records):
        with Image.open(root / "images" / rec["file_name"]) as img:
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
        background.append(index["background"][rec["background"]])
        for obj in rec["objects"]:
            x, y, w, h = obj["bbox"]
            object_image.append(row)
            boxes.append((x, y, x + w, y + h))
            labels.append([index[head][obj[head]] for head in BOX_HEADS])
    if not images or len({im.shape for im in images}) != 1:
        raise ValueError(f"{root}: pre-training scenes must be non-empty and of one size")
    return PretrainSet(
        image_ids=np.array([r["image_id"] for r in records], dtype=np.int64),
        images=torch.from_numpy(np.stack(images)), background=torch.tensor(background),
        object_image=np.array(object_image, dtype=np.int64),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        object_labels=torch.tensor(labels, dtype=torch.long).reshape(-1, len(BOX_HEADS)))


def normalise(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 with ImageNet statistics, as the extractors' decoding
    (:func:`mia.features.images.to_normalised_tensor`) does."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def cell_targets(boxes: Tensor, object_image: Tensor, labels: Tensor, num_images: int,
                 image_size: tuple[int, int], map_size: tuple[int, int], threshold: float
                 ) -> Tensor:
    """(num_images, 12, h, w) 0/1: the shape and colour bits of the objects in each map cell.

    Map cell (i, j) covers the image pixels ``[j W / w, (j + 1) W / w) x [i H / h, ...)``; an
    object (box (4,), its image, its labels) is in it when at least ``threshold`` of its box's
    area lies there."""
    height, width = image_size
    h, w = map_size
    ys = torch.linspace(0, height, h + 1)
    xs = torch.linspace(0, width, w + 1)
    x1, y1, x2, y2 = boxes.unbind(1)  # (M,)
    over_y = (torch.minimum(ys[1:], y2[:, None]) - torch.maximum(ys[:-1], y1[:, None])).clamp(min=0)
    over_x = (torch.minimum(xs[1:], x2[:, None]) - torch.maximum(xs[:-1], x1[:, None])).clamp(min=0)
    area = ((x2 - x1) * (y2 - y1)).clamp(min=1e-6)
    inside = (over_y[:, :, None] * over_x[:, None, :] / area[:, None, None] >= threshold).float()
    out = torch.zeros(num_images, len(CELL_LABELS), h, w)
    n_shapes = len(LABEL_SPACE["shape"])
    out.index_put_((object_image, labels[:, 0]), inside, accumulate=True)
    out.index_put_((object_image, n_shapes + labels[:, 1]), inside, accumulate=True)
    return out.clamp(max=1.0)


# --------------------------------------------------------------------------- model


class PretrainNet(nn.Module):
    """The demo trunk with its pre-training heads (cells, boxes, background)."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone_model(cfg.backbone, cfg.seed, "pretrain.train")
        channels = backbone_channels(cfg.backbone)
        self.trunk = self.backbone.trunk()
        self.cells = nn.Conv2d(channels, len(CELL_LABELS), 1)
        self.sizes = [len(LABEL_SPACE[h]) for h in BOX_HEADS]
        self.box = nn.Linear(channels, sum(self.sizes))
        self.background = nn.Linear(channels, len(LABEL_SPACE["background"]))

    def forward(self, pixels: Tensor, boxes: Tensor, image_index: Tensor
                ) -> tuple[Tensor, list[Tensor], Tensor]:
        """(B, 3, H, W) pixels, boxes (M, 4) of images ``image_index`` (M,) -> cell logits
        (B, 12, h, w), per box head (M, classes), background (B, 2)."""
        fmap = self.trunk(pixels)
        feats = pool_boxes(fmap, boxes, self.cfg.roi_size, self.cfg.sampling_ratio,
                           image_index=image_index)
        box_logits = list(self.box(feats).split(self.sizes, dim=1))
        return self.cells(fmap), box_logits, self.background(fmap.mean(dim=(2, 3)))


def _forward(net: PretrainNet, data: PretrainSet, rows: np.ndarray, cfg: PretrainConfig,
             device: torch.device) -> tuple[tuple[Tensor, list[Tensor], Tensor], Tensor, Tensor]:
    """The heads' outputs on images ``rows``, their box labels and their cell targets."""
    boxes, image_index, labels = data.objects_of(rows)
    out = net(normalise(data.images[rows]).to(device), boxes.to(device), image_index.to(device))
    targets = data.cell_targets(rows, tuple(out[0].shape[2:]), cfg.cell_threshold)
    return out, labels.to(device), targets.to(device)


def _loss(net: PretrainNet, data: PretrainSet, rows: np.ndarray, cfg: PretrainConfig,
          device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    (cell_logits, box_logits, bg_logits), labels, targets = _forward(net, data, rows, cfg, device)
    parts = {head: F.cross_entropy(logits, labels[:, k])
             for k, (head, logits) in enumerate(zip(BOX_HEADS, box_logits, strict=True))}
    parts["cells"] = cfg.cell_weight * F.binary_cross_entropy_with_logits(cell_logits, targets)
    parts["background"] = F.cross_entropy(bg_logits, data.background[rows].to(device))
    return sum(parts.values()), parts


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate_backbone(net: PretrainNet, data: PretrainSet, rows: np.ndarray, train_rows: np.ndarray,
                      cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    """Accuracy of every head on ``rows``, each beside the majority-class rate (the label most
    frequent in ``train_rows``: what a backbone that sees nothing reaches)."""
    net.eval()
    hits = {h: 0 for h in (*BOX_HEADS, "object", "background")}
    cell_bits = cell_exact = cell_count = objects = 0
    majority_cells = 0
    occupied_codes: list[Tensor] = []  # the label set of each held-out cell with an object
    occupied_right: list[Tensor] = []
    bits = 2 ** torch.arange(len(CELL_LABELS))
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start:start + cfg.batch_size]
        (cell_logits, box_logits, bg_logits), labels, targets = _forward(net, data, batch, cfg,
                                                                         device)
        labels, targets = labels.cpu(), targets.cpu()
        predicted = torch.stack([lg.argmax(1).cpu() for lg in box_logits], dim=1)  # (M, 4)
        right = predicted == labels
        for k, head in enumerate(BOX_HEADS):
            hits[head] += int(right[:, k].sum())
        hits["object"] += int(right[:, :2].all(1).sum())  # shape and colour both right
        objects += len(labels)
        hits["background"] += int((bg_logits.argmax(1).cpu() == data.background[batch]).sum())
        guess = (cell_logits.cpu() > 0).float()
        cell_bits += int((guess == targets).sum())
        cell_exact += int((guess == targets).all(1).sum())
        majority_cells += int((targets.sum(1) == 0).sum())  # "empty" is every cell's majority
        cell_count += targets.shape[0] * targets.shape[2] * targets.shape[3]
        occupied = targets.sum(1) > 0  # (B, h, w)
        occupied_codes.append((targets.movedim(1, -1)[occupied] * bits).sum(-1))
        occupied_right.append((guess == targets).all(1)[occupied])

    train_objects = np.isin(data.object_image, train_rows)
    test_objects = np.isin(data.object_image, rows)
    metrics: dict[str, Any] = {"held_out_images": int(len(rows)), "held_out_objects": objects}
    for k, head in enumerate(BOX_HEADS):
        metrics[f"box_{head}_accuracy"] = hits[head] / max(objects, 1)
        common = int(np.bincount(data.object_labels[train_objects, k].numpy()).argmax())
        metrics[f"box_{head}_chance"] = float(
            (data.object_labels[test_objects, k].numpy() == common).mean())
    shape_colour = data.object_labels[:, :2].numpy()
    pairs = shape_colour[:, 0] * 100 + shape_colour[:, 1]
    common_pair = np.bincount(pairs[train_objects]).argmax()
    metrics["box_object_accuracy"] = hits["object"] / max(objects, 1)
    metrics["box_object_chance"] = float((pairs[test_objects] == common_pair).mean())
    bg = data.background.numpy()
    common_bg = int(np.bincount(bg[train_rows]).argmax())
    metrics["background_accuracy"] = hits["background"] / max(len(rows), 1)
    metrics["background_chance"] = float((bg[rows] == common_bg).mean())
    metrics["cell_label_accuracy"] = cell_bits / max(cell_count * len(CELL_LABELS), 1)
    metrics["cell_exact_accuracy"] = cell_exact / max(cell_count, 1)
    metrics["cell_exact_chance"] = majority_cells / max(cell_count, 1)
    # Cells with an object: the exact set, against always naming the commonest training set.
    train_targets = data.cell_targets(train_rows, tuple(cell_logits.shape[2:]),
                                      cfg.cell_threshold)
    train_occupied = train_targets.sum(1) > 0
    train_codes = (train_targets.movedim(1, -1)[train_occupied] * bits).sum(-1)
    codes, right = torch.cat(occupied_codes), torch.cat(occupied_right)
    common = torch.bincount(train_codes.long()).argmax()
    metrics["cell_occupied_accuracy"] = float(right.float().mean()) if len(right) else math.nan
    metrics["cell_occupied_chance"] = float((codes == common).float().mean()) if len(codes) \
        else math.nan
    return metrics


# --------------------------------------------------------------------------- training


@dataclass
class PretrainResult:
    """The trained trunk's ``state_dict`` and its held-out metrics."""

    state_dict: dict[str, Tensor]
    metrics: dict[str, Any]


def split_rows(n: int, held_out_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): the last ``held_out_fraction`` of the scenes are held out
    (scenes are i.i.d. draws, so the last ones are as good a sample as any)."""
    held = max(1, round(n * held_out_fraction))
    if held >= n:
        raise ValueError(f"pretrain: {n} scenes leave none for training with held_out_fraction "
                         f"{held_out_fraction}")
    return np.arange(n - held), np.arange(n - held, n)


def pretrain_backbone(data: PretrainSet, cfg: PretrainConfig) -> PretrainResult:
    """Train the demo trunk and its heads on the training scenes of ``data``; score the held-out
    ones after every epoch (logged) and return the final trunk and metrics."""
    device = resolve_device(cfg.device)
    train_rows, held_rows = split_rows(len(data), cfg.held_out_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = PretrainNet(cfg).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    # Cosine decay to 0 over the run: a short run ends at a settled point.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    generator = torch.Generator().manual_seed(cfg.seed)
    log.info("pre-training %s on %d scenes (%d held out), %d epochs x %d steps, batch %d",
             cfg.backbone, len(train_rows), len(held_rows), cfg.epochs, steps_per_epoch,
             cfg.batch_size)
    start = time.monotonic()
    step = 0
    metrics: dict[str, Any] = {}
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        running: dict[str, float] = {}
        for s in range(steps_per_epoch):
            rows = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            loss, parts = _loss(net, data, rows, cfg, device)
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretrain: loss is {loss.item()} at step {step + 1}; lower "
                                   f"pretrain.train.lr (now {cfg.lr})")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            for name, value in parts.items():
                running[name] = running.get(name, 0.0) + value.item()
            if cfg.log_every and (step % cfg.log_every == 0 or step == total):
                elapsed = time.monotonic() - start
                rate = step / max(elapsed, 1e-9)
                log.info("epoch %d/%d step %d/%d loss %.4f (%s) lr %.2e %.2f steps/s ETA %s",
                         epoch, cfg.epochs, step, total, loss.item(),
                         " ".join(f"{k} {v / (s + 1):.3f}" for k, v in running.items()),
                         schedule.get_last_lr()[0], rate, format_duration((total - step) / rate))
        metrics = evaluate_backbone(net, data, held_rows, train_rows, cfg, device)
        log.info("epoch %d held-out: %s", epoch, _summary(metrics))
    metrics.update(train_images=int(len(train_rows)), epochs=cfg.epochs, steps=step,
                   seconds=round(time.monotonic() - start, 1))
    state = {k: v.detach().cpu().clone() for k, v in net.backbone.state_dict().items()}
    return PretrainResult(state, metrics)


def _summary(metrics: Mapping[str, Any]) -> str:
    keys = [("box_shape", "shape"), ("box_color", "colour"), ("box_size", "size"),
            ("box_position", "position"), ("box_object", "shape+colour"),
            ("background", "background"), ("cell_exact", "cell (exact set)"),
            ("cell_occupied", "occupied cell (exact set)")]
    return ", ".join(f"{name} {metrics[f'{k}_accuracy']:.1%} (chance "
                     f"{metrics[f'{k}_chance']:.1%})" for k, name in keys)


def save_pretrained(result: PretrainResult, cfg: PretrainConfig, checkpoint: str | os.PathLike,
                    metrics_json: str | os.PathLike) -> None:
    """The trunk's checkpoint (``{"state_dict", "backbone", "config", "metrics"}``, read by
    :func:`mia.features.backbone.build_resnet_trunk` with ``weights_only=True``) and the
    held-out metrics as JSON, each written atomically."""
    payload = {"state_dict": result.state_dict, "backbone": cfg.backbone,
               "config": asdict(cfg), "metrics": result.metrics}
    atomic_save(payload, checkpoint)
    write_json(metrics_json, {"backbone": cfg.backbone, **result.metrics})


def pretrain_demo_backbone(scenes_root: str | os.PathLike, cfg: PretrainConfig,
                           checkpoint: str | os.PathLike, metrics_json: str | os.PathLike
                           ) -> PretrainResult:
    """Load the scenes, train, save: what the workflow's ``pretrain_demo_backbone`` runs."""
    data = load_pretrain_set(scenes_root)
    result = pretrain_backbone(data, cfg)
    save_pretrained(result, cfg, checkpoint, metrics_json)
    log.info("demo backbone %s: held-out %s; %s -> %s", cfg.backbone, _summary(result.metrics),
             format_duration(result.metrics["seconds"]), checkpoint)
    return result


def pretrain_config_for(train: Mapping[str, Any], regions: RegionFeatureConfig) -> PretrainConfig:
    """``pretrain.train`` of a config, pooling boxes as its region extractor does
    (``features.regions.roi_size``/``sampling_ratio``)."""
    return PretrainConfig(**{**train, "roi_size": regions.roi_size,
                             "sampling_ratio": regions.sampling_ratio})
