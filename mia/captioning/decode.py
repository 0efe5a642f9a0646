"""Decode a split with a trained checkpoint into the COCO caption results format.

The output, ``[{"image_id": int, "caption": str}, ...]``, is what coco-caption's ``loadRes`` and
``mia evaluate captions`` read; captions are the generated words joined by spaces (the vocabulary
is already lower-cased and tokenised, so there is nothing else to undo).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mia.captioning.beam import EOS, PAD, decode
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import build_captioner
from mia.io import write_json
from mia.progress import Progress
from mia.runtime import move_batch, resolve_device
from mia.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def vocab_words(vocab: Any) -> list[str]:
    """The id -> word list of a loader's ``.vocab`` (a list, or an object with ``.words``)."""
    words = getattr(vocab, "words", vocab)
    return [str(w) for w in words]


def tokens_to_words(tokens: Iterable[int], words: Sequence[str]) -> list[str]:
    """Ids up to (not including) the first ``<eos>``; ``<pad>`` skipped."""
    out = []
    for token in tokens:
        if token == EOS:
            break
        if token != PAD:
            out.append(words[token])
    return out






@torch.no_grad()
def caption_split(model: torch.nn.Module, data: Any, split: str, beam_size: int, max_length: int,
                  batch_size: int = 100, should_stop: Callable[[], bool] | None = None,
                  images: Any = None, step_mode: str = "eager") -> dict[int, str] | None:
    """``{image_id: caption}`` for every image of ``split`` (model put in eval mode).

    ``step_mode``: how the token loop runs (:mod:`mia.captioning.step_capture`); the captions
    are the same in every mode.

    ``images``: a ``finetune.CaptionImages`` (evaluation transform) for captioners that fine-tuned
    their CNN and so read images; ignored otherwise.

    ``should_stop`` is asked between batches (a training job told to stop mid-validation);
    when it says yes, decoding ends and None is returned.
    """
    was_training = model.training
    model.eval()
    words = vocab_words(data.vocab)
    device = next(model.parameters()).device
    captions: dict[int, str] = {}
    batches = data.eval_batches(split, batch_size)
    if getattr(model, "cnn", None) is not None:  # a fine-tuned CNN reads images, not features
        if images is None:
            raise ValueError("this captioner fine-tuned its CNN, so it captions from images: pass "
                             "images=CaptionImages(paths, cfg.cnn_config(), train=False) "
                             "(mia.captioning.finetune)")
        from mia.captioning.finetune import with_images, with_store_images

        if hasattr(images, "gather"):  # an ImageStore of evaluation images (crop x crop)
            batches = with_store_images(batches, images, model.cfg.cnn_config(), train=False)
        else:
            batches = with_images(batches, images, images.cfg.workers)
    rows = getattr(data, "split_rows", None)
    total = len(rows(split)) if callable(rows) else None
    with Progress(f"decoding {split} (beam {beam_size})", total, unit="images",
                  logger=log) as progress:
        for batch in batches:
            if should_stop is not None and should_stop():
                model.train(was_training)
                return None
            decoded = decode(model, move_batch(batch, device), beam_size, max_length, step_mode)
            for image_id, tokens in zip(batch["image_ids"].tolist(), decoded.tokens.tolist(),
                                        strict=True):
                captions[int(image_id)] = " ".join(tokens_to_words(tokens, words))
            progress.update(len(batch["image_ids"]))
    model.train(was_training)
    return captions


def load_captioner(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, list[str]]:
    """Rebuild the model a ``best.pt``/``last.pt`` was trained with; returns it and its vocab."""
    ck = load_checkpoint(checkpoint, map_location="cpu")
    cfg = CaptionerConfig.from_dict(ck["captioner"], f"{checkpoint}: captioner")
    model = build_captioner(cfg, len(ck["vocab"]))
    model.load_state_dict(ck["model"])
    return model.to(resolve_device(device)).eval(), list(ck["vocab"])


def decode_split(checkpoint: str | os.PathLike, data: Any, split: str, beam_size: int = 3,
                 max_length: int = 19, out_path: str | os.PathLike | None = None,
                 device: str = "auto", batch_size: int = 100,
                 image_paths: Mapping[int, str] | None = None,
                 step_mode: str = "eager",
                 image_store: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Caption every image of ``split``; optionally write the COCO results JSON to ``out_path``.

    ``max_length`` counts decoding steps, ``<eos>`` included (the released ``range(1, 20)``: 19).
    ``image_store`` (an evaluation :class:`~mia.captioning.image_store.ImageStore` file) or
    ``image_paths`` (``{image_id: file}``, e.g. ``finetune.image_paths_from_karpathy``) is needed
    only for a captioner that fine-tuned its CNN.
    """
    model, vocab = load_captioner(checkpoint, device)
    if vocab != vocab_words(data.vocab):
        raise ValueError(f"{checkpoint}: the checkpoint's vocabulary differs from the data's; "
                         "decode with the captions store the model was trained on")
    images = None
    if getattr(model, "cnn", None) is not None:
        if image_store is not None:
            from mia.captioning.image_store import ImageStore

            images = ImageStore(image_store, next(model.parameters()).device)
        elif image_paths is not None:
            from mia.captioning.finetune import CaptionImages

            images = CaptionImages(image_paths, model.cfg.cnn_config(), train=False)
        else:
            raise ValueError(f"{checkpoint}: this captioner fine-tuned its CNN and captions from "
                             "images; pass image_store (the evaluation images_eval_*.h5) or "
                             "image_paths (finetune.image_paths_from_karpathy)")
    captions = caption_split(model, data, split, beam_size, max_length, batch_size,
                             images=images, step_mode=step_mode)
    results = [{"image_id": image_id, "caption": caption} for image_id, caption in
               captions.items()]
    if out_path is not None:
        write_results(results, out_path)
    return results


def write_results(results: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the COCO results JSON atomically (temp file + rename)."""
    return write_json(path, results, indent=None)
