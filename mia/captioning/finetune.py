"""Fine-tuning the ResNet of the grid captioners, as the released recipe does from epoch 9.

The authors' ``Train.py`` keeps ResNet-152 inside the model: every step decodes images (resized to
256 x 256, a random 224 crop, a random horizontal flip), runs the CNN, and from epoch
``cnn_epoch + 1 = 9`` on a second Adam (lr 1e-5, betas 0.8/0.999) trains ``children()[5:]`` of the
trunk, i.e. layer2, layer3 and layer4; conv1/bn1/layer1 are never trained. Frozen precomputed
features stay the default here (``fine_tune_cnn_after_epoch: null``); this module holds the pieces
for the recipe:

* :class:`GridCNN`: the trunk on images -> (B, h*w, C) grid features (7 x 7 = 49 at 224 px),
  attached to a captioner by :func:`attach_cnn` (``build_captioner`` does it when configured);
* :func:`load_imagenet_weights`: ImageNet weights into that trunk at the start of a fresh run;
* :func:`parameter_groups` / :func:`set_captioner_lr`: one optimiser, the captioner's group with
  the scheduled lr, the CNN's group at its own fixed lr and betas;
* :func:`cnn_epoch_start`: called at the start of every epoch, switches the CNN layers to trained
  after ``fine_tune_cnn_after_epoch``;
* the images of each batch, with crops/flips drawn from (seed, epoch, batch, position) so a
  resumed run sees the same pixels, in one of two ways:

  - :func:`with_store_images` (what the workflow uses): uint8 pixels decoded and resized ONCE
    into an :class:`~mia.captioning.image_store.ImageStore` (on the GPU when it fits), gathered
    per batch; crop, flip and normalisation run on the device in :meth:`GridCNN.featurize`
    (:func:`device_crops`), bit for bit what the per-item path gives;
  - :class:`CaptionImages` and :func:`with_images`: each item decoded from its JPEG, resized,
    cropped and flipped in ``DataLoader`` workers (the released code's per-caption path; about
    240 images/s per core, ``benchmarks/finetune_input.py``).

Batches by image (``train.batch_by: image``, the default when the CNN is fine-tuned): a batch
holds ``batch_size / 5`` training images with ALL their captions, as self-critical.pytorch's
``seq_per_img`` groups them, and :meth:`GridCNN.featurize` runs the CNN once per image and hands
each caption its image's features: 16 CNN passes for a batch of 80 captions instead of 80.
What that changes: each image gets ONE random crop and flip per step, shared by its captions
(the released loader draws one per caption row), a batch holds 16 distinct images instead of
up to 80 (a BatchNorm in training mode takes its statistics over 16 images), and an epoch visits each
image once with its captions together instead of the captions in a free order. Every caption
is still seen once per epoch; ``batch_by: caption`` restores the released grouping.

BatchNorm follows ``cnn.batchnorm``: ``train`` is the released code's (``Model.train()`` lets
every BatchNorm of the ResNet use batch statistics and update its running ones from epoch 1,
even in layers no optimiser touches), ``eval`` keeps the untrained layers at their ImageNet
statistics. A deliberate difference (docs/RECIPE.md): evaluation images are resized from the
original straight to 224 x 224 (there, from the 256 x 256 copies), which is also how the
precomputed grid features are made.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mia.captioning.config import CNNConfig
from mia.features.backbone import STRIDE, build_resnet_trunk
from mia.features.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    images_from_karpathy,
    to_normalised_tensor,
)

Batch = dict[str, Tensor]
CNN_GROUP = "cnn"
CAPTIONER_GROUP = "captioner"


class GridCNN(nn.Module):
    """A ResNet trunk (conv1 .. layer4) turning images into grid features.

    ``frozen`` = ``children()[:first_trained_child]`` never trains; ``tuned`` = the rest, trained
    once :meth:`set_trainable` is on. Until then the whole CNN runs without autograd.
    BatchNorm (``cnn.batchnorm``): ``eval`` keeps ``frozen``, and ``tuned`` until it trains, in
    eval mode (fixed ImageNet statistics), so the frozen phase changes nothing in the network;
    ``train`` (the released code's ``Model.train()``) lets the whole CNN follow the captioner's
    mode, so every BatchNorm uses batch statistics and updates its running ones from epoch 1.
    """

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        # Random weights here: a checkpoint or load_imagenet_weights fills them.
        trunk, self.channels = build_resnet_trunk(cfg.backbone, False, cfg.seed,
                                                  config_prefix="captioner.cnn")
        layers = list(trunk.children())
        self.frozen = nn.Sequential(*layers[:cfg.first_trained_child])
        self.tuned = nn.Sequential(*layers[cfg.first_trained_child:])
        self.crop = cfg.crop
        self.batchnorm = cfg.batchnorm
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def set_trainable(self, on: bool) -> None:
        """Start (or stop) training ``tuned``: gradients and train-mode BatchNorm."""
        self.trainable = on
        for p in self.tuned.parameters():
            p.requires_grad_(on)
        self.train(self.training)

    def train(self, mode: bool = True) -> GridCNN:
        # The one place that decides the BatchNorm modes of the trunk (a BatchNorm train/eval
        # switch of the recipe belongs here).
        super().train(mode)
        if self.batchnorm == "train":  # released: the whole ResNet follows Model.train()
            return self
        self.frozen.eval()
        if not self.trainable:
            self.tuned.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised images -> (B, (S/32)^2, C) grid features, row-major cells."""
        images = images.to(next(self.parameters()).dtype)  # the loader's float32 pixels
        if self.training and self.batchnorm == "train" and images.shape[0] == 1 \
                and images.shape[-1] < 2 * STRIDE:
            # torch's own message ("Expected more than 1 value per channel") names no key
            raise ValueError(
                f"captioner.cnn.batchnorm: train takes BatchNorm statistics over the batch, but "
                f"this batch holds one image whose {images.shape[-1]}-pixel crop leaves one "
                f"cell per channel; set captioner.cnn.crop >= {2 * STRIDE} (and resize above "
                f"it), or batchnorm: eval, or a train.batch_size whose last batch holds more "
                f"than one image")
        with torch.no_grad():
            x = self.frozen(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            fmap = self.tuned(x)  # (B, C, h, w)
        return fmap.flatten(2).transpose(1, 2)

    def featurize(self, batch: Batch) -> Batch:
        """The batch with ``features``/``feature_mask`` computed from its ``images``.

        ``images`` are normalised floats (B, 3, S, S), or uint8 (B, H, W, 3) pixels of an image
        store, cropped, flipped and normalised here, on the CNN's device (:func:`device_crops`,
        with ``crop_windows`` when training). With ``caption_image`` (a batch by image), the CNN
        runs once per image and each caption row gets its image's features.
        """
        if "images" not in batch:
            raise ValueError(
                "this captioner fine-tunes its CNN (captioner.fine_tune_cnn_after_epoch is set) "
                "and reads images, but the batch has none (only precomputed features); wrap the "
                "batches with mia.captioning.finetune.with_store_images (or with_images)")
        images = batch["images"]
        if images.dtype == torch.uint8:
            images = device_crops(images, batch.get("crop_windows"), self.crop)
        features = self(images)
        if "caption_image" in batch:
            features = features.index_select(0, batch["caption_image"])
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return {**batch, "features": features, "feature_mask": mask}


def attach_cnn(model: nn.Module) -> GridCNN:
    """Give ``model`` (a Captioner whose config fine-tunes the CNN) its :class:`GridCNN`."""
    cfg = model.cfg.cnn_config()
    cnn = GridCNN(cfg)
    if cnn.channels != model.cfg.feature_dim:
        raise ValueError(f"captioner.cnn.backbone {cfg.backbone} gives {cnn.channels}-d features "
                         f"but captioner.feature_dim is {model.cfg.feature_dim}")
    model.cnn = cnn
    return cnn


def _cnn_of(model: nn.Module) -> GridCNN | None:
    cnn = getattr(model, "cnn", None)
    return cnn if isinstance(cnn, GridCNN) else None


def load_imagenet_weights(model: nn.Module) -> None:
    """Load the configured ImageNet weights into the captioner's CNN (fresh runs only; a resumed
    run gets them from its checkpoint). Does nothing when the CNN is not pretrained/present."""
    cnn = _cnn_of(model)
    cfg = model.cfg.cnn_config()
    if cnn is None or not cfg.pretrained:
        return
    trunk, _ = build_resnet_trunk(cfg.backbone, True, cfg.seed, weights=cfg.weights,
                                  weights_path=cfg.weights_path, config_prefix="captioner.cnn")
    layers = list(trunk.children())
    cnn.frozen.load_state_dict(nn.Sequential(*layers[:len(cnn.frozen)]).state_dict())
    cnn.tuned.load_state_dict(nn.Sequential(*layers[len(cnn.frozen):]).state_dict())


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Optimiser groups: the captioner's parameters at ``lr`` (the scheduled one), and, when the
    CNN is fine-tuned, its ``tuned`` layers at ``cnn.lr`` with ``cnn.betas``. The frozen CNN
    layers are in no group. Pass the result to ``torch.optim.Adam(groups, betas=...)``."""
    cnn = _cnn_of(model)
    cnn_ids = {id(p) for p in cnn.parameters()} if cnn is not None else set()
    groups: list[dict[str, Any]] = [{
        "name": CAPTIONER_GROUP, "lr": lr,
        "params": [p for p in model.parameters() if id(p) not in cnn_ids]}]
    if cnn is not None:
        cfg = model.cfg.cnn_config()
        groups.append({"name": CNN_GROUP, "lr": cfg.lr, "betas": cfg.betas,
                       "params": list(cnn.tuned.parameters())})
    return groups


def set_captioner_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the scheduled learning rate on every group except the CNN's (fixed, released)."""
    for group in optimizer.param_groups:
        if group.get("name") != CNN_GROUP:
            group["lr"] = lr


def cnn_epoch_start(model: nn.Module, epoch: int) -> bool:
    """Call at the start of every (1-based) epoch, fresh or resumed: the CNN trains from epoch
    ``fine_tune_cnn_after_epoch + 1`` on. Returns whether it trains this epoch."""
    cnn = _cnn_of(model)
    if cnn is None:
        return False
    on = epoch > model.cfg.fine_tune_cnn_after_epoch
    cnn.set_trainable(on)
    return on


# ----------------------------------------------------------------------------- images


def image_paths_from_karpathy(karpathy_json: str | os.PathLike, root: str | os.PathLike
                              ) -> dict[int, str]:
    """``{cocoid: path}`` of every image of ``dataset_coco.json`` under ``{root}/images``."""
    return {int(i): str(p) for i, p in images_from_karpathy(karpathy_json, root)}


class CaptionImages(Dataset):
    """Images by ``(image_id, seed)``: the training transform (square resize, random crop and
    flip drawn from ``seed``) or, with ``train=False``, a plain resize to ``crop`` x ``crop``."""

    def __init__(self, paths: Mapping[int, str], cfg: CNNConfig, train: bool) -> None:
        self.paths = dict(paths)
        self.cfg = cfg
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        image_id, seed = key
        if image_id not in self.paths:
            raise KeyError(f"image_id {image_id} has no image file in the image list; build it "
                           "from the same dataset_coco.json as the captions store")
        cfg = self.cfg
        with Image.open(self.paths[image_id]) as img:
            img = img.convert("RGB")
            if not self.train:
                return to_normalised_tensor(img.resize((cfg.crop, cfg.crop), Image.BILINEAR))
            img = img.resize((cfg.resize, cfg.resize), Image.BILINEAR)
        top, left, flip = crop_window(seed, cfg)
        img = img.crop((left, top, left + cfg.crop, top + cfg.crop))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalised_tensor(img)


def crop_window(seed: int, cfg: CNNConfig) -> tuple[int, int, bool]:
    """(top, left, flip) of the training crop drawn from ``seed``: the draws of
    :class:`CaptionImages`, so both paths crop the same window."""
    rng = np.random.default_rng(seed)
    left, top = (int(v) for v in rng.integers(0, cfg.resize - cfg.crop + 1, size=2))
    flip = bool(cfg.flip and rng.random() < 0.5)
    return top, left, flip


def _item_seeds(seed: int, epoch: int, number: int, count: int) -> np.ndarray:
    """Per-position seeds of batch ``number`` of ``epoch`` (both image paths draw these)."""
    return np.random.SeedSequence([seed, epoch, number]).generate_state(count, dtype=np.uint64)


_MEAN_STD: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def device_crops(pixels: Tensor, windows: Tensor | None, crop: int) -> Tensor:
    """uint8 (B, H, W, 3) pixels -> normalised float32 (B, 3, crop, crop), on their device.

    ``windows`` (B, 3) int64 = (top, left, flip) per image picks each crop: one row gather of
    all the batch's crop pixels (mirrored where ``flip``); None takes the pixels as they are (an
    evaluation store already holds ``crop`` x ``crop`` images). The arithmetic is
    :func:`to_normalised_tensor`'s (x / 255 - mean) / std in float32, element by element, so
    the result equals the per-item path bit for bit; it runs on channel planes (a broadcast over
    the last axis of 3 is several times slower on a CPU).
    """
    b, height, width, _ = pixels.shape
    device = pixels.device
    if windows is not None:
        steps = torch.arange(crop, device=device)
        rows = windows[:, :1] + steps  # (B, crop)
        flip = windows[:, 2:].bool()
        cols = windows[:, 1:2] + torch.where(flip, crop - 1 - steps, steps)  # (B, crop)
        first = torch.arange(b, device=device)[:, None, None] * (height * width)
        index = (first + rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
        pixels = pixels.reshape(-1, 3).index_select(0, index).view(b, crop, crop, 3)
    elif (height, width) != (crop, crop):
        raise ValueError(f"images of {height} x {width} pixels without crop windows; the CNN "
                         f"reads {crop} x {crop} (build the evaluation store at that size)")
    key = (device, torch.float32)
    if key not in _MEAN_STD:
        _MEAN_STD[key] = (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
                          torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))
    mean, std = _MEAN_STD[key]
    x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32)
    return x.div_(255.0).sub_(mean).div_(std)


def with_store_images(batches: Iterator[Batch], store: Any, cfg: CNNConfig, train: bool,
                      seed: int = 0, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
    """``batches`` with the uint8 ``images`` of their images from ``store`` (an
    :class:`~mia.captioning.image_store.ImageStore`), on the store's device, and, when
    ``train``, their ``crop_windows`` (B, 3): crops happen on the device
    (:meth:`GridCNN.featurize`).

    A batch by image (``batch_image_ids``) gets one image and one window per image; a batch by
    caption one per caption row. Windows are drawn from (``seed``, ``epoch``, batch number,
    position) as :func:`with_images` draws them; ``start`` numbers the first batch (a resumed
    epoch skips the ones before), so a resumed epoch crops the same windows.
    """
    if train and store.size != cfg.resize:
        raise ValueError(f"{store.path}: training images are {store.size} px but "
                         f"captioner.cnn.resize is {cfg.resize}; build the store at that size")
    if not train and store.size != cfg.crop:
        raise ValueError(f"{store.path}: evaluation images are {store.size} px but "
                         f"captioner.cnn.crop is {cfg.crop}; build the store at that size")
    for number, batch in enumerate(batches, start):
        ids = batch.get("batch_image_ids", batch["image_ids"])
        ids = ids.numpy() if torch.is_tensor(ids) else np.asarray(ids)
        out = {**batch, "images": store.gather(store.rows(ids))}
        if train:
            windows = np.array([crop_window(int(s), cfg) for s in
                                _item_seeds(seed, epoch, number, len(ids))], dtype=np.int64)
            out["crop_windows"] = torch.from_numpy(windows.reshape(len(ids), 3))
        yield out


class _KeysOfBatches(Sampler):
    """Batch sampler that pulls the caller's batches and yields their image keys, queueing each
    batch so the consumer pairs it with its images (DataLoader keeps the order)."""

    def __init__(self, batches: Iterator[Batch], seed: int, epoch: int, start: int,
                 pending: collections.deque) -> None:
        self.batches, self.seed, self.epoch, self.start = batches, seed, epoch, start
        self.pending = pending

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for number, batch in enumerate(self.batches, self.start):
            self.pending.append(batch)
            ids = batch.get("batch_image_ids", batch["image_ids"]).tolist()
            seeds = _item_seeds(self.seed, self.epoch, number, len(ids))
            yield [(int(i), int(s)) for i, s in zip(ids, seeds, strict=True)]


def with_images(batches: Iterator[Batch], images: CaptionImages, workers: int, seed: int = 0,
                epoch: int = 0, start: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """``batches`` (from ``CaptionData.train_batches``/``eval_batches``), each with ``images``
    (B, 3, crop, crop) added, decoded by ``workers`` DataLoader processes.

    Crops and flips are drawn from (``seed``, ``epoch``, batch number, position); ``start`` is the
    number of the first batch (the batches a resumed epoch skips), so a resumed epoch gets the
    pixels the uninterrupted one had.
    """
    pending: collections.deque = collections.deque()
    sampler = _KeysOfBatches(batches, seed, epoch, start, pending)
    loader = DataLoader(images, batch_sampler=sampler, num_workers=workers,
                        collate_fn=_stack, pin_memory=pin_memory,
                        prefetch_factor=2 if workers > 0 else None)
    for pixels in loader:
        yield {**pending.popleft(), "images": pixels}


def _stack(items: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(items))


def grid_cells(cfg: CNNConfig) -> int:
    """Grid features per image at the configured crop (49 at 224 px)."""
    return (cfg.crop // STRIDE) ** 2
