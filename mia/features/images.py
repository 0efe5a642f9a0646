"""Image lists and decoding shared by the feature extractors.

Extractors take a plain list of ``(image_id, path)`` pairs so they do not care whether the images
come from Karpathy's split, COCO's annotation files or the demo world. Decoding runs in
``DataLoader`` workers; a file that fails to decode does not kill the worker: it comes back as a
:class:`BadImage` so the caller can report every bad file by name (or skip it, when configured).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from mia.data.karpathy import read_karpathy

#: ImageNet statistics that torchvision's pretrained ResNets were trained with (RGB, 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Larger images are refused before decoding (PIL's own decompression-bomb limit, ~9459 x 9459;
#: COCO images are at most 640 x 640). A tiny file can announce 65535 x 65535 pixels and take
#: 12 GB to decode; a worker that tries is killed without a word.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

ImageList = Sequence[tuple[int, str | os.PathLike]]


class BadImagesError(ValueError):
    """One or more images could not be decoded; the message lists each id, file and reason.

    A ValueError: bad input files, which ``mia`` reports with exit status 2."""

    def __init__(self, bad: Sequence[BadImage], config_key: str) -> None:
        lines = "\n".join(f"  image_id {b.image_id}: {b.path} ({b.reason})" for b in bad)
        super().__init__(
            f"{len(bad)} image(s) could not be decoded:\n{lines}\n"
            f"Fix: replace the listed files (re-download them), or set {config_key}: true to "
            f"skip them (they are then listed in the output's 'skipped_images' attribute).")
        self.bad = list(bad)


@dataclass(frozen=True)
class BadImage:
    image_id: int
    path: str
    reason: str


@dataclass(frozen=True)
class Decoded:
    """One decoded image: ``pixels`` (3, H, W) float32, normalised; original size in pixels."""

    image_id: int
    path: str
    pixels: torch.Tensor
    width: int
    height: int


def images_from_karpathy(karpathy_json: str | os.PathLike, root: str | os.PathLike
                         ) -> list[tuple[int, Path]]:
    """``(cocoid, {root}/images/{filepath}/{filename})`` for every image, in Karpathy order."""
    images_dir = Path(root) / "images"
    return [(img.cocoid, images_dir / img.relative_path) for img in read_karpathy(karpathy_json)]


def images_from_vqa_questions(questions_json: str | os.PathLike, image_dir: str | os.PathLike,
                              subset: str = "test2015") -> list[tuple[int, Path]]:
    """``(image_id, {image_dir}/COCO_{subset}_{id:012d}.jpg)`` of every image a VQA questions
    file asks about, in order of first question: the image set of the evaluation server's
    test2015 questions, which no Karpathy JSON lists."""
    from mia.data.vqa_v2 import read_vqa_questions

    ids = dict.fromkeys(q.image_id for q in read_vqa_questions(questions_json))
    return [(i, Path(image_dir) / f"COCO_{subset}_{i:012d}.jpg") for i in ids]


def check_image_list(images: ImageList) -> list[tuple[int, str]]:
    """Normalise to ``(int, str)`` pairs and reject duplicate ids (stores index by image id)."""
    out, seen = [], set()
    for i, item in enumerate(images):
        try:
            image_id, path = item
        except (TypeError, ValueError) as err:
            raise ValueError(f"images[{i}]: expected an (image_id, path) pair, got {item!r}") from err
        image_id = int(image_id)
        if image_id in seen:
            raise ValueError(f"images[{i}]: duplicate image_id {image_id} ({path})")
        seen.add(image_id)
        out.append((image_id, str(path)))
    if not out:
        raise ValueError("no images given to extract features from")
    return out


def resize_square(size: int) -> Callable[[Image.Image], Image.Image]:
    """Resize to ``size`` x ``size`` (aspect not kept), the usual input of grid-feature CNNs."""
    return lambda img: img.resize((size, size), Image.BILINEAR)


def resize_shorter_side(size: int, max_size: int) -> Callable[[Image.Image], Image.Image]:
    """Keep the aspect: shorter side to ``size``, longer side capped at ``max_size``."""
    def _resize(img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = min(size / min(w, h), max_size / max(w, h))
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return _resize


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 with ImageNet mean/std normalisation."""
    array = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


class ImageDataset(Dataset):
    """Decodes ``(image_id, path)`` items with PIL; failures come back as :class:`BadImage`."""

    def __init__(self, images: Sequence[tuple[int, str]],
                 resize: Callable[[Image.Image], Image.Image]) -> None:
        self.images = list(images)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Decoded | BadImage:
        image_id, path = self.images[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    width, height = img.size
                    if width * height > MAX_PIXELS:
                        return BadImage(image_id, path, f"{width} x {height} pixels is more than "
                                        f"the {MAX_PIXELS} allowed (decompression bomb?)")
                    img = img.convert("RGB")  # forces a full decode: truncated files fail here
                    pixels = to_normalised_tensor(self.resize(img))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return BadImage(image_id, path, f"{type(err).__name__}: {err}")
        return Decoded(image_id, path, pixels, width, height)


#: Decoding workers wanted at most: beyond 4, JPEG decoding outruns a single GPU's ResNet pass.
MAX_DEFAULT_WORKERS = 4


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask: a Slurm job's share, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Image-decoding workers when the config says nothing: ``min(4, cores)``, so a 2-core
    laptop does not start 4 workers (and PyTorch's warning about it at every run)."""
    return min(MAX_DEFAULT_WORKERS, available_cores())


def _keep_list(batch: list) -> list:
    return batch


def image_loader(images: Sequence[tuple[int, str]], resize: Callable[[Image.Image], Image.Image],
                 batch_size: int, num_workers: int) -> DataLoader:
    """Ordered batches (lists of :class:`Decoded` / :class:`BadImage`), decoded in workers."""
    return DataLoader(ImageDataset(images, resize), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=_keep_list,
                      prefetch_factor=4 if num_workers > 0 else None)

