"""The two configurations of the bottom-up extractor: the detector's shape and the extraction.

:class:`FasterRCNNConfig` is the architecture. Its defaults are the public Visual Genome model
(ResNet-101 C4, 1,600 classes, 400 attributes) as the LXMERT demo's ``unc-nlp/frcnn-vg-finetuned``
and py-bottom-up-attention's ``faster_rcnn_R_101_C4_attr_caffemaxpool.yaml`` describe it; a
smaller one (fewer blocks and channels, fewer classes) keeps every tensor name of the public
checkpoint and is what the tests run. :class:`BottomUpConfig` is ``features.regions.bottom_up``
of the workflow config: which weights, the selection rule of ``generate_tsv.py`` and how to run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Caffe's BGR pixel means (0..255), which the converted weights expect; no division by a std.
CAFFE_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
#: Stride of the res4 map the RPN and the RoI pooling read: stem 4, res3 2, res4 2.
FEATURE_STRIDE = 16


@dataclass(frozen=True)
class FasterRCNNConfig:
    """Architecture of the bottom-up Faster R-CNN (defaults: the public checkpoint).

    ``blocks``: bottleneck blocks of res2, res3, res4 (ResNet-101: 3, 4, 23); res5, the RoI head,
    always has 3 (the checkpoint's ``roi_heads.res5.{0,1,2}``). Channels double per stage from
    ``res2_channels`` (out) and ``bottleneck_channels`` (inner width); res5 has 8x res2's. The RoI
    head pools ``pooler_resolution`` x ``pooler_resolution`` cells (RoIPool, as Caffe) and runs res5
    with stride 1 and dilation 2 (the VG model's ``RES5HALVE: False``).
    """

    blocks: tuple[int, int, int] = (3, 4, 23)
    stem_channels: int = 64
    res2_channels: int = 256
    bottleneck_channels: int = 64
    rpn_channels: int = 512
    anchor_sizes: tuple[float, ...] = (64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0
    num_classes: int = 1600
    num_attributes: int = 400
    pooler_resolution: int = 14
    bn_eps: float = 1e-5
    rpn_pre_nms_topk: int = 6000
    rpn_post_nms_topk: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_min_size: float = 0.0
    pixel_mean: tuple[float, float, float] = CAFFE_PIXEL_MEAN

    def __post_init__(self) -> None:
        # YAML gives lists; the dataclass is frozen and hashable with tuples.
        for name in ("blocks", "anchor_sizes", "aspect_ratios", "pixel_mean"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.blocks) != 3 or min(self.blocks) < 1:
            raise ValueError(f"features.regions.bottom_up.model.blocks: three stage sizes >= 1 "
                             f"(res2, res3, res4), got {list(self.blocks)}")
        for name in ("stem_channels", "res2_channels", "bottleneck_channels", "rpn_channels",
                     "num_classes", "num_attributes", "pooler_resolution", "rpn_pre_nms_topk",
                     "rpn_post_nms_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"features.regions.bottom_up.model.{name} must be >= 1, "
                                 f"got {getattr(self, name)}")

    @property
    def res4_channels(self) -> int:
        return self.res2_channels * 4

    @property
    def res5_channels(self) -> int:
        """Width of a region feature (2048 for the public model)."""
        return self.res2_channels * 8

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)


@dataclass(frozen=True)
class BottomUpConfig:
    """``features.regions.bottom_up``: the extractor of ``features.regions.source: bottom_up``.

    Selection (``generate_tsv.py``): per-class NMS at ``nms_threshold`` over the proposals, keep
    confidences >= ``score_threshold``, at least ``min_boxes`` and at most ``max_boxes`` (36/36:
    the ``trainval_36`` features; 10/100: the adaptive features BAN's reference uses). Images are
    resized to a shorter side of ``min_size`` with the longer side at most ``max_size``.
    ``weights_format``: ``hub`` (``pytorch_model.bin`` of ``unc-nlp/frcnn-vg-finetuned``),
    ``detectron2`` (py-bottom-up-attention's ``faster_rcnn_from_caffe_attr.pkl``) or ``auto`` (by
    the file's suffix). ``chunk_size`` images are written per part file: a preempted job resumes
    after the last finished part. ``bf16`` (CUDA only) runs the convolutions in bf16: region
    features of the same boxes move by ~0.3% (median; benchmarks/bottom_up.py), but near-tied
    proposals and scores can then rank differently, so it is off unless asked for.
    """

    weights: str = "bottom_up_frcnn_weights"
    weights_path: str | None = None
    weights_format: str = "auto"
    min_boxes: int = 36
    max_boxes: int = 36
    score_threshold: float = 0.2
    nms_threshold: float = 0.3
    min_size: int = 600
    max_size: int = 1000
    batch_size: int = 4
    num_workers: int = 4
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True
    chunk_size: int = 1000
    skip_bad_images: bool = False
    log_every: int = 100
    model: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            unknown = sorted(set(self.model) - {f.name for f in fields(FasterRCNNConfig)})
            if unknown:
                raise ValueError(f"features.regions.bottom_up.model: unknown key(s) {unknown}; "
                                 f"known: {sorted(f.name for f in fields(FasterRCNNConfig))}")
            object.__setattr__(self, "model", FasterRCNNConfig(**self.model))
        if self.weights_format not in ("auto", "hub", "detectron2"):
            raise ValueError(f"features.regions.bottom_up.weights_format: "
                             f"{self.weights_format!r} is not one of auto, hub, detectron2")
        for name in ("min_boxes", "max_boxes", "min_size", "max_size", "batch_size",
                     "chunk_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"features.regions.bottom_up.{name} must be >= 1, "
                                 f"got {getattr(self, name)}")
        if self.min_boxes > self.max_boxes:
            raise ValueError(f"features.regions.bottom_up: min_boxes ({self.min_boxes}) is "
                             f"above max_boxes ({self.max_boxes})")
        if self.max_boxes > self.model.rpn_post_nms_topk:
            raise ValueError(f"features.regions.bottom_up.max_boxes ({self.max_boxes}) is above "
                             f"the {self.model.rpn_post_nms_topk} proposals per image "
                             f"(model.rpn_post_nms_topk)")
        for name in ("score_threshold", "nms_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"features.regions.bottom_up.{name} must be in [0, 1], "
                                 f"got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bottom_up_config(value: BottomUpConfig | dict[str, Any] | None) -> BottomUpConfig:
    """``features.regions.bottom_up`` as a :class:`BottomUpConfig` (a dict from YAML, or None)."""
    if isinstance(value, BottomUpConfig):
        return value
    value = dict(value or {})
    unknown = sorted(set(value) - {f.name for f in fields(BottomUpConfig)})
    if unknown:
        raise ValueError(f"features.regions.bottom_up: unknown key(s) {unknown}; known: "
                         f"{sorted(f.name for f in fields(BottomUpConfig))}")
    return BottomUpConfig(**value)
