"""Bottom-up region features of a list of images: the detector, the selection rule, the store.

:func:`extract_bottom_up_features` runs the whole extraction the way a cluster job needs it:

* images are decoded and resized in DataLoader workers and batched only with images of the same
  resized size (no padding, so each image's regions are those it gets alone, as
  ``generate_tsv.py`` ran them one by one);
* on CUDA the convolutions run channels-last, in bf16 when ``bf16`` is set (the RPN's boxes, the
  RoI pooling coordinates and the classifiers stay in float32);
* the images are processed in chunks of ``chunk_size``; each finished chunk is written at once
  (atomically) to ``<store>.parts/``, so a job killed or preempted (SIGTERM: it stops at the next
  batch and exits 75, "try again") resumes after its last finished chunk. The folder carries a
  fingerprint of the config, the image list and the weights file: anything else is cleared, never
  resumed. The store itself appears only when every chunk is done;
* progress (images, images/s, ETA) goes to the log every ``log_every`` images.

The store is a ``region_features`` store (docs/CONTRACTS.md) with ``source: bottom_up``, zero
padding past ``num_boxes`` and, per box, the detector's top class and attribute with their
probabilities (``class_ids``, ``class_scores``, ``attribute_ids``, ``attribute_scores``; names in
the ``class_names`` / ``attribute_names`` attributes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mia.data.store import atomic_h5
from mia.features.bottom_up.config import BottomUpConfig
from mia.features.bottom_up.model import Detections, at_least_float32
from mia.features.bottom_up.preprocess import DetectorImages, Prepared, SameSizeBatches, pad_batch
from mia.features.bottom_up.selection import keep_boxes, max_confidence
from mia.features.bottom_up.vocab import attribute_names, class_names
from mia.features.bottom_up.weights import build_model
from mia.features.images import BadImage, BadImagesError, ImageList, check_image_list
from mia.features.region_store import PADDING_ZEROS, BoxLabels, RegionStoreWriter
from mia.io import atomic_open
from mia.training.lifecycle import Preempted, RunDirectory, StopSignals, fingerprint

log = logging.getLogger(__name__)
SOURCE = "bottom_up"
#: Settings that change how fast, not what: a changed value still resumes the parts.
_SPEED_ONLY = ("batch_size", "num_workers", "log_every")


@dataclass
class ImageRegions:
    """One image's kept regions (rows by the selection rule's order) in its own pixels."""

    image_id: int
    width: int
    height: int
    features: np.ndarray  # (n, C) float32
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    labels: BoxLabels


def select_regions(detections: Sequence[Detections], network_sizes: Sequence[tuple[int, int]],
                   original_sizes: Sequence[tuple[int, int]], cfg: BottomUpConfig
                   ) -> list[tuple[torch.Tensor, torch.Tensor, BoxLabels]]:
    """The selection rule over a batch: per image, the kept indices into its proposals, the
    proposals in original pixels (all of them) and the labels of the kept ones.

    Boxes go back to the original image per axis (``original / network`` size, as the LXMERT
    port scales them); the per-class NMS runs in those pixels, as ``generate_tsv.py`` does.
    """
    k = cfg.model.num_classes
    counts = [len(d.boxes) for d in detections]
    rois = max(counts)
    dtype = at_least_float32(detections[0].boxes.dtype)
    device = detections[0].boxes.device
    boxes = torch.zeros(len(detections), rois, 4, dtype=dtype, device=device)
    scores = torch.zeros(len(detections), rois, k, dtype=dtype, device=device)
    valid = torch.zeros(len(detections), rois, dtype=torch.bool, device=device)
    originals = []
    for i, (det, net, orig) in enumerate(zip(detections, network_sizes, original_sizes,
                                             strict=True)):
        scale = torch.true_divide(torch.tensor(orig), torch.tensor(net)).to(device)  # (y, x)
        scaled = det.boxes.to(dtype) * scale[[1, 0, 1, 0]].to(dtype)
        originals.append(scaled)
        boxes[i, : counts[i]] = scaled
        scores[i, : counts[i]] = det.class_probs[:, :k].to(dtype)
        valid[i, : counts[i]] = True
    confidence = max_confidence(boxes, scores, cfg.nms_threshold, valid)
    out = []
    for i, det in enumerate(detections):
        keep = keep_boxes(confidence[i, : counts[i]], cfg.score_threshold, cfg.min_boxes,
                          cfg.max_boxes)
        class_scores, class_ids = det.class_probs[keep, :k].max(dim=1)
        # Caffe's attr_prob: softmax over the attributes and "none"; the top real attribute.
        attr_probs = F.softmax(det.attribute_logits[keep].to(dtype), dim=1)
        attr_scores, attr_ids = attr_probs[:, :-1].max(dim=1)
        labels = BoxLabels(class_ids.int().cpu().numpy(), class_scores.float().cpu().numpy(),
                           attr_ids.int().cpu().numpy(), attr_scores.float().cpu().numpy())
        out.append((keep, originals[i], labels))
    return out


class BottomUpExtractor:
    """The detector on its device: a batch of prepared images -> their regions."""

    def __init__(self, cfg: BottomUpConfig, weights: str | os.PathLike | None,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg.model, weights, cfg.weights_format, device, dtype)
        self.cuda = device.type == "cuda"
        self.channels_last = self.cuda and cfg.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bf16 = self.cuda and cfg.bf16

    def __call__(self, batch: Sequence[Prepared]) -> list[ImageRegions]:
        dtype = next(self.model.parameters()).dtype
        images = pad_batch([p.pixels for p in batch]).to(self.device, dtype=dtype,
                                                          non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        sizes = [tuple(p.pixels.shape[1:]) for p in batch]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            detections = self.model(images, sizes)
        chosen = select_regions(detections, sizes, [(p.height, p.width) for p in batch],
                                self.cfg)
        out = []
        for p, det, (keep, boxes, labels) in zip(batch, detections, chosen, strict=True):
            out.append(ImageRegions(p.image_id, p.width, p.height,
                                    det.features[keep].float().cpu().numpy(),
                                    boxes[keep].float().cpu().numpy(), labels))
        return out


# --------------------------------------------------------------------------- parts on disk


def _images_digest(items: Sequence[tuple[int, str]]) -> str:
    h = hashlib.sha256()
    for image_id, path in items:
        h.update(f"{image_id}\t{path}\n".encode())
    return h.hexdigest()


class _Parts:
    """``<store>.parts/``: one ``chunk_NNNNNN.npz`` per finished chunk (no pickles)."""

    def __init__(self, out_h5: Path, stamp: dict) -> None:
        self.run = RunDirectory(Path(f"{out_h5}.parts"), stamp)
        self.path = self.run.path

    def file(self, chunk: int) -> Path:
        return self.path / f"chunk_{chunk:06d}.npz"

    def done(self, chunk: int) -> bool:
        path = self.file(chunk)
        if not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as data:
                return "image_ids" in data.files
        except (OSError, ValueError) as err:
            log.warning("%s is unreadable (%s): extracting that chunk again", path, err)
            path.unlink()
            return False

    def write(self, chunk: int, regions: list[ImageRegions], skipped: list[BadImage],
              max_boxes: int, channels: int) -> None:
        n = len(regions)
        arrays = {
            "image_ids": np.array([r.image_id for r in regions], dtype=np.int64),
            "image_w": np.array([r.width for r in regions], dtype=np.int32),
            "image_h": np.array([r.height for r in regions], dtype=np.int32),
            "num_boxes": np.array([len(r.boxes) for r in regions], dtype=np.int32),
            "features": np.zeros((n, max_boxes, channels), dtype=np.float32),
            "boxes": np.zeros((n, max_boxes, 4), dtype=np.float32),
            "class_ids": np.full((n, max_boxes), -1, dtype=np.int32),
            "class_scores": np.zeros((n, max_boxes), dtype=np.float32),
            "attribute_ids": np.full((n, max_boxes), -1, dtype=np.int32),
            "attribute_scores": np.zeros((n, max_boxes), dtype=np.float32),
            "skipped_ids": np.array([b.image_id for b in skipped], dtype=np.int64),
            "skipped_files": np.array([str(b.path) for b in skipped], dtype=str),
            "skipped_reasons": np.array([b.reason for b in skipped], dtype=str),
        }
        for row, r in enumerate(regions):
            m = len(r.boxes)
            arrays["features"][row, :m] = r.features
            arrays["boxes"][row, :m] = r.boxes
            for name in ("class_ids", "class_scores", "attribute_ids", "attribute_scores"):
                arrays[name][row, :m] = getattr(r.labels, name)
        with atomic_open(self.file(chunk), "wb") as f:
            np.savez(f, **arrays)


def _merge(parts: _Parts, chunks: int, out_h5: Path, cfg: BottomUpConfig,
           config: dict) -> Path:
    """Every part, in order, into the final store (atomically); then the parts go."""
    skipped = []
    with atomic_h5(out_h5, kind="region_features", config=config,
                   attrs={"source": SOURCE}) as f:
        writer = RegionStoreWriter(f, cfg.max_boxes, None, source=SOURCE, padding=PADDING_ZEROS,
                                   class_names=class_names(cfg.model.num_classes),
                                   attribute_names=attribute_names(cfg.model.num_attributes))
        for chunk in range(chunks):
            with np.load(parts.file(chunk), allow_pickle=False) as data:
                part = {name: data[name] for name in data.files}
            for row, image_id in enumerate(part["image_ids"]):
                labels = BoxLabels(*(part[name][row] for name in (
                    "class_ids", "class_scores", "attribute_ids", "attribute_scores")))
                writer.put(int(image_id), part["features"][row], part["boxes"][row],
                           int(part["num_boxes"][row]), int(part["image_w"][row]),
                           int(part["image_h"][row]), labels=labels)
            skipped += [{"image_id": int(i), "file": str(p), "reason": str(r)} for i, p, r in
                        zip(part["skipped_ids"], part["skipped_files"], part["skipped_reasons"],
                            strict=True)]
        writer.finish(skipped)
    shutil.rmtree(parts.path)
    return out_h5


# --------------------------------------------------------------------------- the driver


def _progress(done: int, total: int, started: float, first: int) -> str:
    rate = (done - first) / max(time.monotonic() - started, 1e-9)
    eta = (total - done) / rate if rate > 0 else float("inf")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
    return f"{done}/{total} images, {rate:.2f} images/s, ETA {eta_text}"


def extract_bottom_up_features(images: ImageList, out_h5: str | os.PathLike,
                               cfg: BottomUpConfig, weights: str | os.PathLike | None,
                               device: str | torch.device | None = None) -> Path:
    """The ``region_features`` store of ``images`` (``(image_id, path)`` pairs, kept in order)
    from the bottom-up Faster R-CNN with ``weights`` (see the module for resuming)."""
    from mia.runtime import resolve_device

    items = check_image_list(images)
    out_h5 = Path(out_h5)
    if weights is None or not Path(weights).is_file():
        raise FileNotFoundError(
            f"features.regions.bottom_up: weights file {weights!r} does not exist; the workflow "
            f"downloads downloads.{cfg.weights} (or set features.regions.bottom_up.weights_path "
            f"to a local pytorch_model.bin / faster_rcnn_from_caffe_attr.pkl)")
    device = torch.device(device) if device is not None else resolve_device(cfg.device)
    config = {k: v for k, v in asdict(cfg).items() if k not in _SPEED_ONLY}
    stamp = fingerprint({"bottom_up": config, "images": _images_digest(items),
                         "device": device.type}, {"weights": weights})
    parts = _Parts(out_h5, stamp)
    attempt = parts.run.prepare()
    chunks = [range(s, min(s + cfg.chunk_size, len(items)))
              for s in range(0, len(items), cfg.chunk_size)]
    pending = [k for k in range(len(chunks)) if not parts.done(k)]
    done_images = sum(len(chunks[k]) for k in range(len(chunks)) if k not in pending)
    extractor = BottomUpExtractor(cfg, weights, device)
    log.info("bottom-up regions of %d images: %d chunks of %d, attempt %d%s; %s on %s "
             "(bf16 %s), %d-%d boxes per image", len(items), len(chunks), cfg.chunk_size,
             attempt, f", resuming after {len(chunks) - len(pending)} finished chunks "
             f"({done_images} images)" if done_images else "", weights, device,
             extractor.bf16, cfg.min_boxes, cfg.max_boxes)
    if pending:
        _run_chunks(extractor, items, chunks, pending, parts, cfg, done_images)
    log.info("all %d chunks done; writing %s", len(chunks), out_h5)
    return _merge(parts, len(chunks), out_h5, cfg, {**config, "weights_file": str(weights)})


def _run_chunks(extractor: BottomUpExtractor, items: list[tuple[int, str]],
                chunks: list[range], pending: list[int], parts: _Parts, cfg: BottomUpConfig,
                done_images: int) -> None:
    sampler = SameSizeBatches(items, [chunks[k] for k in pending], cfg.batch_size,
                              cfg.min_size, cfg.max_size)
    loader = DataLoader(DetectorImages(items, cfg.min_size, cfg.max_size, cfg.model.pixel_mean),
                        batch_sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=_keep_list, pin_memory=extractor.cuda,
                        prefetch_factor=4 if cfg.num_workers > 0 else None)
    results: dict[int, ImageRegions | BadImage] = {}
    row_of = {image_id: i for i, (image_id, _) in enumerate(items)}
    current = iter(pending)
    chunk = next(current)
    started, first, logged = time.monotonic(), done_images, done_images
    channels = cfg.model.res5_channels
    with StopSignals() as signals:
        for batch in loader:
            bad = [b for b in batch if isinstance(b, BadImage)]
            if bad and not cfg.skip_bad_images:
                raise BadImagesError(bad, "features.regions.bottom_up.skip_bad_images")
            results.update({row_of[b.image_id]: b for b in bad})
            good = [b for b in batch if isinstance(b, Prepared)]
            if good:
                results.update({p.index: r for p, r in zip(good, extractor(good), strict=True)})
            done_images += len(batch)
            while chunk is not None and all(i in results for i in chunks[chunk]):
                finished = [results.pop(i) for i in chunks[chunk]]
                parts.write(chunk, [r for r in finished if isinstance(r, ImageRegions)],
                            [r for r in finished if isinstance(r, BadImage)], cfg.max_boxes,
                            channels)
                chunk = next(current, None)
            if done_images - logged >= cfg.log_every:
                logged = done_images
                log.info("regions bottom_up: %s", _progress(done_images, len(items), started,
                                                            first))
            if signals.requested:
                raise Preempted(f"stopped on a signal after {done_images} of {len(items)} "
                                f"images; finished chunks are kept in {parts.path}",
                                signals.signum)
    log.info("regions bottom_up: %s", _progress(done_images, len(items), started, first))


def _keep_list(batch: list) -> list:
    return batch
