"""Bottom-up-attention region features with a detectron2 Visual Genome Faster R-CNN.

Reproduces the feature extraction of Anderson et al. (``generate_tsv.py``) and its detectron2
port (bottom-up-attention.pytorch): a ResNet-101 C4 Faster R-CNN trained on Visual Genome's 1,600
object classes; for each of its ~300 proposals, the mean-pooled res5 output (2048-d) and the
class scores; per-class NMS (IoU ``nms_threshold`` = 0.3) over the proposals, each proposal
keeping its best score among the classes for which it survives NMS; proposals whose best score
reaches ``score_threshold`` (0.2) are kept, topped up or cut, by score, to exactly
``num_boxes`` (min = max = 36, the ``trainval_36`` setting): the rule of
:mod:`mia.features.bottom_up.selection`.

detectron2 is not on PyPI, so it is imported only when this source is used; see
``envs/detectron2.yaml``. ``features.regions.source: bottom_up`` runs the same model without
detectron2 (plain PyTorch, tested on real images against its reference): prefer it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mia.data.store import atomic_h5
from mia.features.bottom_up.selection import select_boxes
from mia.features.images import BadImage, BadImagesError, ImageList, check_image_list
from mia.features.region_store import PADDING_ZEROS, RegionStoreWriter
from mia.progress import track

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "detectron2 is not on PyPI: create the conda env in envs/detectron2.yaml (snakemake "
    "--use-conda does this for the extract_region_features rule), or pip install "
    "'git+https://github.com/facebookresearch/detectron2.git@v0.6' next to a CUDA PyTorch; "
    "or use features.regions.source: bottom_up_tsv (the released features) or boxes")


class Detectron2UnavailableError(ImportError):
    """The detectron2 source was chosen but detectron2 cannot be imported."""


def import_detectron2() -> Any:
    """The ``detectron2`` module, or :class:`Detectron2UnavailableError` saying how to get it."""
    try:
        import detectron2  # noqa: F401
        import detectron2.checkpoint
        import detectron2.config
        import detectron2.data.transforms
        import detectron2.modeling
    except ImportError as err:
        raise Detectron2UnavailableError(
            f"features.regions.source is 'detectron2' but it cannot be imported ({err}). "
            f"{INSTALL_HINT}") from err
    return detectron2


class Detectron2RegionExtractor:
    """A VG Faster R-CNN from a detectron2 config + weights; one image -> boxes and features."""

    def __init__(self, config_file: str, weights: str, device: str, proposals: int = 300) -> None:
        d2 = import_detectron2()
        for key, path in (("detectron2_config", config_file), ("detectron2_weights", weights)):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(
                    f"features.regions.{key}: {path!r} is not a file; give the VG Faster R-CNN "
                    f"(ResNet-101 C4) config and weights of bottom-up-attention.pytorch")
        cfg = d2.config.get_cfg()
        cfg.merge_from_file(config_file)
        cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = "cuda" if device == "auto" and torch.cuda.is_available() else (
            "cpu" if device == "auto" else device)
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = proposals
        self.cfg = cfg.freeze()
        self.model = d2.modeling.build_model(self.cfg).eval()
        d2.checkpoint.DetectionCheckpointer(self.model).load(weights)
        self.resize = d2.data.transforms.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H, W, 3) uint8 RGB -> proposals (R, 4) in original pixels, scores (R, K), feats."""
        height, width = rgb.shape[:2]
        image = rgb[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else rgb
        image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image).transpose(2, 0, 1)).float()
        inputs = [{"image": tensor, "height": height, "width": width}]
        model = self.model
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        proposal_boxes = [p.proposal_boxes for p in proposals]
        box_features = heads._shared_roi_transform(
            [features[name] for name in heads.in_features], proposal_boxes)  # (R, 2048, 7, 7)
        pooled = box_features.mean(dim=(2, 3))  # (R, 2048)
        logits = heads.box_predictor(pooled)[0]
        scores = F.softmax(logits, dim=-1)[:, :-1]  # detectron2 puts background last
        boxes = proposal_boxes[0].tensor.clone()
        boxes[:, 0::2] *= width / image.shape[1]
        boxes[:, 1::2] *= height / image.shape[0]
        return boxes, scores, pooled


def extract_detectron2_features(images: ImageList, out_h5: str | os.PathLike, cfg: Any) -> Path:
    """Write a ``region_features`` store with detectron2 (``cfg``: RegionFeatureConfig)."""
    items = check_image_list(images)
    extractor = Detectron2RegionExtractor(cfg.detectron2_config, cfg.detectron2_weights,
                                          cfg.device)
    skipped = []
    with atomic_h5(out_h5, kind="region_features", config=asdict(cfg),
                   attrs={"source": "detectron2"}) as f:
        writer = RegionStoreWriter(f, cfg.num_boxes, len(items), source="detectron2",
                                   padding=PADDING_ZEROS)
        for image_id, path in track(items, "region features (detectron2)", len(items),
                                    unit="images", logger=log, bar=cfg.progress):
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as err:
                bad = BadImage(image_id, path, f"{type(err).__name__}: {err}")
                if not cfg.skip_bad_images:
                    raise BadImagesError([bad], "features.regions.skip_bad_images") from err
                skipped.append({"image_id": image_id, "file": path, "reason": bad.reason})
                continue
            boxes, scores, feats = extractor(rgb)
            keep = select_boxes(boxes, scores, cfg.score_threshold, cfg.nms_threshold,
                                cfg.num_boxes, cfg.num_boxes)
            writer.put(image_id, feats[keep].float().cpu().numpy(),
                       boxes[keep].float().cpu().numpy(), len(keep), rgb.shape[1], rgb.shape[0])
        writer.finish(skipped)
    return Path(out_h5)
