"""Images decoded once, for the captioners that fine-tune their CNN: a uint8 HDF5 store.

The released recipe resizes every COCO image once to 256 x 256 (``resize_images.py``) and then
decodes those files at every step. Decoding a JPEG and resizing it costs a CPU core about 4 ms
(~240 images/s), while an H100 runs ResNet-152 forward and backward on thousands of images a
second: a fine-tuning run waited on its input. Here the images are decoded and resized ONCE, by
the workflow's ``caption_image_store`` rule, into a store every fine-tuning run shares:

* ``images_train_{S}px.h5``: the Karpathy train (+ restval) images resized to ``resize`` x
  ``resize`` (256), from which training crops its random ``crop`` x ``crop`` windows;
* ``images_eval_{S}px.h5``: the val and test images resized straight to ``crop`` x ``crop``
  (224), what evaluation feeds the CNN (docs/RECIPE.md).

Each holds ``image_ids`` and ``pixels`` (N, S, S, 3) uint8 RGB, one chunk per image: 113,287 x
256 x 256 x 3 bytes = 22.3 GB for training, 10,000 x 224 x 224 x 3 = 1.5 GB for evaluation.
The resize is PIL's bilinear resize of the decoded original, exactly what
:class:`mia.captioning.finetune.CaptionImages` does per item, so a crop of the stored pixels is
bit for bit the crop that class makes from the JPEG.

:class:`ImageStore` reads a store for a run: the whole store on the GPU when it fits
(``residency``), otherwise in host memory, batches gathered into pinned memory and copied
asynchronously. Crops, flips and normalisation then run on the device
(:func:`mia.captioning.finetune.device_crops`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from mia.data.karpathy import read_karpathy
from mia.data.loaders import align_rows
from mia.data.store import StoreError, atomic_h5, open_store, read_attrs, verify_dataset
from mia.features.images import MAX_PIXELS, BadImage, BadImagesError, check_image_list

log = logging.getLogger(__name__)

KIND = "caption_images"
Residency = Literal["auto", "device", "host"]
#: ``auto`` keeps a store on the GPU when it takes at most this share of the free memory.
DEVICE_SHARE = 0.5


class _Resized(Dataset):
    """``(image_id, path)`` -> uint8 (S, S, 3) RGB, or a :class:`BadImage`."""

    def __init__(self, images: Sequence[tuple[int, str]], size: int) -> None:
        self.images, self.size = list(images), size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray] | BadImage:
        image_id, path = self.images[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    if img.size[0] * img.size[1] > MAX_PIXELS:
                        return BadImage(image_id, path, f"{img.size[0]} x {img.size[1]} pixels "
                                        f"is more than the {MAX_PIXELS} allowed")
                    img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                    return image_id, np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return BadImage(image_id, path, f"{type(err).__name__}: {err}")


#: Karpathy splits of each store: training crops from train + restval, evaluation reads val/test.
PURPOSE_SPLITS = {"train": ("train", "restval"), "eval": ("val", "test")}


def karpathy_images(karpathy_json: str | os.PathLike, root: str | os.PathLike,
                    purpose: str) -> list[tuple[int, Path]]:
    """``(cocoid, {root}/images/{filepath}/{filename})`` of the images a store of ``purpose``
    (train or eval) holds, in Karpathy order."""
    if purpose not in PURPOSE_SPLITS:
        raise ValueError(f"image store purpose {purpose!r} is not one of {list(PURPOSE_SPLITS)}")
    images_dir = Path(root) / "images"
    return [(img.cocoid, images_dir / img.relative_path) for img in read_karpathy(karpathy_json)
            if img.split in PURPOSE_SPLITS[purpose]]


def _as_list(batch: list) -> list:
    return batch


def build_image_store(images: Sequence[tuple[int, str | os.PathLike]], out_path: str | os.PathLike,
                      size: int, workers: int = 0, batch_size: int = 64,
                      purpose: str = "train") -> Path:
    """Decode and resize ``images`` to ``size`` x ``size`` once, into a ``caption_images`` store.

    Every file that fails to decode is named in one :class:`BadImagesError` (nothing is written).
    """
    items = check_image_list(images)
    if size < 1:
        raise ValueError(f"image store size must be >= 1, got {size}")
    loader = DataLoader(_Resized(items, size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_as_list,
                        prefetch_factor=4 if workers > 0 else None)
    attrs = {"size": size, "purpose": purpose,
             "resize": "PIL bilinear resize of the decoded original to size x size, RGB"}
    bad: list[BadImage] = []
    with atomic_h5(out_path, kind=KIND, attrs=attrs) as f:
        f.create_dataset("image_ids", data=np.array([i for i, _ in items], dtype=np.int64))
        pixels = f.create_dataset("pixels", shape=(len(items), size, size, 3), dtype=np.uint8,
                                  chunks=(1, size, size, 3))
        row = 0
        for batch in loader:
            good = [item for item in batch if not isinstance(item, BadImage)]
            bad.extend(item for item in batch if isinstance(item, BadImage))
            if good and not bad:
                pixels[row:row + len(good)] = np.stack([p for _, p in good])
            row += len(batch)
            if row % (batch_size * 50) < batch_size:
                log.info("%s: %d/%d images", Path(out_path).name, row, len(items))
        if bad:
            raise BadImagesError(bad, "(no skipping for the fine-tuning image store: replace "
                                      "the files)")
    return Path(out_path)


class ImageStore:
    """A ``caption_images`` store in memory: on the GPU when it fits, else on the host.

    :meth:`gather` returns the uint8 pixels of some images on ``device``: an index into the
    resident tensor, or a gather into pinned host memory followed by an asynchronous copy.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu",
                 residency: Residency = "auto") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        with open_store(self.path, KIND) as f:
            if "pixels" not in f:
                raise StoreError(f"{self.path}: no 'pixels' dataset; rebuild it: delete the file "
                                 "and rerun the rule `caption_image_store`")
            self.image_ids = f["image_ids"][()]
            self.size = int(read_attrs(f)["size"])
            shape = f["pixels"].shape
            nbytes = int(np.prod(shape, dtype=np.int64))
            on_device = self._place(residency, nbytes)
            self.pixels = self._read(f, shape, on_device)
        self.resident = self.pixels.device.type != "cpu"
        log.info("%s: %d images of %d px, %.1f GB, held %s", self.path.name, len(self.image_ids),
                 self.size, nbytes / 1e9, f"on {self.device}" if self.resident else "in host RAM")

    def _place(self, residency: str, nbytes: int) -> bool:
        if residency not in ("auto", "device", "host"):
            raise ValueError(f"image store residency {residency!r} is not auto, device or host")
        if self.device.type != "cuda" or residency == "host":
            return False
        if residency == "device":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        return nbytes <= DEVICE_SHARE * free

    def _read(self, f, shape: tuple[int, ...], on_device: bool) -> torch.Tensor:
        """Read ``pixels`` block by block (never a second full copy in RAM when it goes to the
        GPU), checking it against its recorded checksum."""
        ds = f["pixels"]
        if not on_device:
            values = ds[()]
            verify_dataset(f, "pixels", values)
            return torch.from_numpy(values)
        out = torch.empty(shape, dtype=torch.uint8, device=self.device)
        step = max(1, (256 << 20) // max(1, int(np.prod(shape[1:]))))
        for start in range(0, shape[0], step):
            block = torch.from_numpy(ds[start:start + step]).pin_memory()
            out[start:start + len(block)].copy_(block, non_blocking=True)
        torch.cuda.synchronize(self.device)
        verify_dataset(f, "pixels")
        return out

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, image_ids: np.ndarray, needed_by: str = "the captions store") -> np.ndarray:
        """Store rows of ``image_ids``; an error names the first id the store lacks."""
        return align_rows(self.image_ids, image_ids, self.path, needed_by)

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, 3) pixels of store ``rows``, on the store's device."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if self.resident:
            return self.pixels.index_select(0, index.to(self.device, non_blocking=True))
        if self.device.type != "cuda":
            return self.pixels.index_select(0, index)
        out = torch.empty((len(index), *self.pixels.shape[1:]), dtype=torch.uint8,
                          pin_memory=True)
        torch.index_select(self.pixels, 0, index, out=out)
        return out.to(self.device, non_blocking=True)
