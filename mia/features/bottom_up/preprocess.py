"""Images into the detector: BGR, resized (shorter side 600, longer at most 1000), Caffe means.

As the PyTorch port of the Caffe model does it (the LXMERT demo's ``processing_image.py`` with
its config's ``INPUT.FORMAT: BGR``): the decoded pixels (0..255) in BGR order become a float32
tensor, are resized with bilinear interpolation (``align_corners=False``, no antialiasing) to
``int(h * s + 0.5)`` x ``int(w * s + 0.5)``, where ``s`` brings the shorter side to ``min_size``
unless the longer would pass ``max_size``, and the BGR means are subtracted (no std). A batch
is zero-padded at the right and bottom, which is the mean colour in pixel space.

The LXMERT demo's own ``img_tensorize`` swaps the channels one time too many and feeds RGB to the
BGR model (huggingface/transformers#19601, #8333); we feed BGR, as Caffe and detectron2 do.
JPEGs are decoded with PIL (identical to OpenCV's ``imread`` on every coco-mini image; EXIF
orientation is not applied, as for COCO's own annotations).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from mia.features.images import MAX_PIXELS, BadImage


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after the resize: shorter side ``min_size``, longer at most ``max_size``."""
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def read_bgr(path: str) -> np.ndarray:
    """(H, W, 3) uint8 in BGR order (decompression bombs refused, as everywhere in mia)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width} x {height} pixels is more than the {MAX_PIXELS} "
                                 f"allowed (decompression bomb?)")
            rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def prepare(bgr: np.ndarray, min_size: int, max_size: int,
            pixel_mean: Sequence[float]) -> Tensor:
    """(H, W, 3) uint8 BGR -> (3, h, w) float32, resized and mean-subtracted."""
    height, width = bgr.shape[:2]
    new_h, new_w = resized_size(height, width, min_size, max_size)
    image = torch.from_numpy(bgr).float().permute(2, 0, 1).unsqueeze(0)
    image = F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(list(pixel_mean), dtype=torch.float32).view(3, 1, 1)
    return image - mean


def pad_batch(images: Sequence[Tensor]) -> Tensor:
    """Stack (3, h_i, w_i) images into (B, 3, max h, max w), zeros at the right and bottom."""
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    out = images[0].new_zeros((len(images), 3, height, width))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out


@dataclass(frozen=True)
class Prepared:
    """One decoded image: network input (3, h, w) and its original size."""

    index: int
    image_id: int
    path: str
    pixels: Tensor
    width: int
    height: int


class DetectorImages(Dataset):
    """Decodes and prepares ``(image_id, path)`` items in DataLoader workers; a file that fails
    comes back as :class:`~mia.features.images.BadImage` (named in the error or skipped)."""

    def __init__(self, images: Sequence[tuple[int, str]], min_size: int, max_size: int,
                 pixel_mean: Sequence[float]) -> None:
        self.images = list(images)
        self.min_size, self.max_size, self.pixel_mean = min_size, max_size, tuple(pixel_mean)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Prepared | BadImage:
        image_id, path = self.images[index]
        try:
            bgr = read_bgr(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return BadImage(image_id, path, f"{type(err).__name__}: {err}")
        pixels = prepare(bgr, self.min_size, self.max_size, self.pixel_mean)
        return Prepared(index, image_id, path, pixels, bgr.shape[1], bgr.shape[0])


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding; None if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError):
        return None


class SameSizeBatches(Sampler[list[int]]):
    """Batches of images that resize to the same (h, w), chunk by chunk, chunks in order.

    Images of one size need no padding, so a batched image gets exactly the features it gets
    alone (as ``generate_tsv.py`` ran them, one at a time); COCO is mostly 640 x 480 and
    480 x 640, so most batches are full. Sizes come from the file headers, read when a chunk's
    batches are first requested; an unreadable header makes a batch of one (the worker reports
    the file).
    """

    def __init__(self, images: Sequence[tuple[int, str]], chunks: Sequence[range],
                 batch_size: int, min_size: int, max_size: int) -> None:
        self.images, self.chunks, self.batch_size = images, list(chunks), batch_size
        self.min_size, self.max_size = min_size, max_size

    def chunk_batches(self, chunk: range) -> list[list[int]]:
        groups: dict[object, list[int]] = {}
        for index in chunk:
            size = header_size(self.images[index][1])
            key = (resized_size(size[1], size[0], self.min_size, self.max_size) if size
                   else ("unreadable", index))
            groups.setdefault(key, []).append(index)
        return [members[i: i + self.batch_size] for members in groups.values()
                for i in range(0, len(members), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.chunks:
            yield from self.chunk_batches(chunk)
