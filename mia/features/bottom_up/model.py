"""The bottom-up-attention Faster R-CNN (Anderson et al., 2018) in plain PyTorch.

ResNet C4 backbone (stem with Caffe's ceil-mode max pool, res2-res4) -> RPN on the res4 map
(anchors of 4 sizes x 3 ratios, top ``rpn_pre_nms_topk`` by objectness, clipped, NMS 0.7, top
``rpn_post_nms_topk``) -> RoIPool 14 x 14 of each proposal -> res5 (stride 1, dilation 2) ->
mean over the 14 x 14 cells: the 2048-d region feature -> classes (1,600 + background, LAST as
in the converted weights) and attributes (400 + "none", last; conditioned on an embedding of the
top class, background included, as in the Caffe model).

Module and parameter names are those of the public checkpoints (``backbone.res4.22.conv2.norm
.running_var``, ``roi_heads.box_predictor.attr_score.weight``, ...), so
:mod:`mia.features.bottom_up.weights` loads them by name. Every layer runs in the dtype of its
parameters: float64 for the reference comparison, float32, or bf16 under autocast on a GPU.

What the extractor needs is the region feature, the class and attribute scores of every
proposal, and the proposals themselves: ``generate_tsv.py`` keeps the proposal boxes, not the
regressed ones, so the class-specific box regression (``bbox_pred``) is loaded but not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mia.features.bottom_up.boxes import (
    apply_deltas,
    cell_anchors,
    clip_boxes,
    grid_anchors,
    nonempty,
)
from mia.features.bottom_up.config import FEATURE_STRIDE, FasterRCNNConfig
from mia.features.bottom_up.roi_pool import roi_pool
from mia.vision import torchvision

RPN_DELTA_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """Box coordinates and scores never go below float32 (bf16 would move a box by pixels)."""
    return torch.promote_types(dtype, torch.float32)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics (the checkpoint's ``weight, bias, running_mean,
    running_var``): ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its frozen batch norm (``conv.weight``,
    ``conv.norm.*``: the checkpoint's layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, eps: float,
                 stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the width changes. The stride sits in
    the first 1x1 (the MSRA/Caffe ResNet: ``STRIDE_IN_1X1``)."""

    def __init__(self, in_channels: int, bottleneck: int, out_channels: int, *, stride: int,
                 dilation: int, eps: float) -> None:
        super().__init__()
        self.shortcut = (ConvNorm(in_channels, out_channels, 1, stride=stride, eps=eps)
                         if in_channels != out_channels else None)
        self.conv1 = ConvNorm(in_channels, bottleneck, 1, stride=stride, eps=eps)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, padding=dilation, dilation=dilation,
                              eps=eps)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


def _stage(count: int, in_channels: int, bottleneck: int, out_channels: int, *, stride: int,
           dilation: int, eps: float) -> nn.Sequential:
    blocks = [Bottleneck(in_channels if i == 0 else out_channels, bottleneck, out_channels,
                         stride=stride if i == 0 else 1, dilation=dilation, eps=eps)
              for i in range(count)]
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    def __init__(self, out_channels: int, eps: float) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # Caffe's pooling rounds the output size up (ceil_mode) and pads nothing.
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=0,
                            ceil_mode=True)


class ResNetC4(nn.Module):
    """stem, res2 (stride 1), res3 and res4 (stride 2 each): (B, 3, H, W) -> (B, C4, H/16, W/16)."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        eps, (n2, n3, n4) = cfg.bn_eps, cfg.blocks
        b, c = cfg.bottleneck_channels, cfg.res2_channels
        self.stem = Stem(cfg.stem_channels, eps)
        self.res2 = _stage(n2, cfg.stem_channels, b, c, stride=1, dilation=1, eps=eps)
        self.res3 = _stage(n3, c, 2 * b, 2 * c, stride=2, dilation=1, eps=eps)
        self.res4 = _stage(n4, 2 * c, 4 * b, 4 * c, stride=2, dilation=1, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.res4(self.res3(self.res2(self.stem(x))))


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, anchors * 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class RegionProposalNetwork(nn.Module):
    """Objectness and deltas per anchor -> per image, up to ``rpn_post_nms_topk`` proposals
    (in the resized image's pixels) sorted by objectness."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rpn_head = RPNHead(cfg.res4_channels, cfg.rpn_channels, cfg.num_anchors)
        self.register_buffer("cell_anchors", cell_anchors(cfg.anchor_sizes, cfg.aspect_ratios),
                             persistent=False)

    def forward(self, features: Tensor, image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        cfg = self.cfg
        logits, deltas = self.rpn_head(features)  # (B, A, h, w), (B, A*4, h, w)
        exact = at_least_float32(deltas.dtype)
        logits, deltas = logits.to(exact), deltas.to(exact)
        batch, anchors, height, width = logits.shape
        grid = grid_anchors(self.cell_anchors.to(deltas.dtype), height, width, FEATURE_STRIDE,
                            cfg.anchor_offset)  # (h*w*A, 4)
        # (B, A, h, w) -> (B, h*w*A), the anchors' order
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        deltas = deltas.view(batch, anchors, 4, height, width).permute(0, 3, 4, 1, 2)
        deltas = deltas.reshape(batch, -1, 4)
        topk = min(cfg.rpn_pre_nms_topk, logits.shape[1])
        proposals = []
        for i, (image_h, image_w) in enumerate(image_sizes):
            scores, order = logits[i].sort(descending=True)
            scores, order = scores[:topk], order[:topk]
            boxes = apply_deltas(deltas[i, order], grid[order], RPN_DELTA_WEIGHTS)
            boxes = clip_boxes(boxes, image_h, image_w)
            keep = nonempty(boxes, cfg.rpn_min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = torchvision.ops.nms(boxes, scores, cfg.rpn_nms_threshold)
            proposals.append(boxes[keep[: cfg.rpn_post_nms_topk]])
        return proposals


class BoxPredictor(nn.Module):
    """Region feature -> class logits (K + 1, background last), attribute logits (A + 1, "no
    attribute" last). The attribute layer sees the feature and an embedding of the top class."""

    def __init__(self, channels: int, num_classes: int, num_attributes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(channels, num_classes + 1)
        self.bbox_pred = nn.Linear(channels, num_classes * 4)  # loaded, not applied: see module
        self.cls_embedding = nn.Embedding(num_classes + 1, channels // 8)
        self.fc_attr = nn.Linear(channels + channels // 8, channels // 4)
        self.attr_score = nn.Linear(channels // 4, num_attributes + 1)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        class_logits = self.cls_score(pooled)
        embedded = self.cls_embedding(class_logits.argmax(dim=-1))
        hidden = F.relu(self.fc_attr(torch.cat([pooled, embedded.to(pooled.dtype)], dim=-1)))
        return class_logits, self.attr_score(hidden)


class RegionHead(nn.Module):
    """RoIPool of each proposal on the res4 map -> res5 -> mean: (R, C5) features."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.resolution = cfg.pooler_resolution
        # res5 keeps the 14 x 14 pooled grid (stride 1) and dilates its 3x3 convolutions instead:
        # the VG model's RES5HALVE: False.
        self.res5 = _stage(3, cfg.res4_channels, 8 * cfg.bottleneck_channels, cfg.res5_channels,
                           stride=1, dilation=2, eps=cfg.bn_eps)
        self.box_predictor = BoxPredictor(cfg.res5_channels, cfg.num_classes, cfg.num_attributes)

    def forward(self, features: Tensor, proposals: list[Tensor]) -> Tensor:
        rois = torch.cat([torch.cat([torch.full_like(boxes[:, :1], i), boxes], dim=1)
                          for i, boxes in enumerate(proposals)])
        # Pooling reads cells at the boxes' exact coordinates: in float32 at least.
        exact = at_least_float32(features.dtype)
        pooled = roi_pool(features.to(exact), rois.to(exact), self.resolution,
                          1.0 / FEATURE_STRIDE).to(features.dtype)
        return self.res5(pooled).mean(dim=(2, 3), dtype=exact)


@dataclass
class Detections:
    """One image's proposals and what the heads say about each (rows aligned).

    ``boxes`` (R, 4) in the network input's pixels; ``features`` (R, C5); ``class_probs``
    (R, K + 1) softmax, background last; ``attribute_logits`` (R, A + 1), "none" last.
    """

    boxes: Tensor
    features: Tensor
    class_probs: Tensor
    attribute_logits: Tensor


class BottomUpFasterRCNN(nn.Module):
    """Backbone + RPN + region head, with the public checkpoints' module names."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetC4(cfg)
        self.proposal_generator = RegionProposalNetwork(cfg)
        self.roi_heads = RegionHead(cfg)

    @torch.inference_mode()
    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """``images`` (B, 3, H, W) normalised, zero-padded; ``image_sizes`` each image's (h, w)
        before padding. Returns one :class:`Detections` per image."""
        features = self.backbone(images)
        proposals = self.proposal_generator(features, image_sizes)
        pooled = self.roi_heads(features, proposals)  # float32 at least (a mean of res5)
        # The classifiers are 0.1% of the compute and decide the selection: never in bf16.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            class_logits, attribute_logits = self.roi_heads.box_predictor(
                pooled.to(self.roi_heads.box_predictor.cls_score.weight.dtype))
        # The scores decide the selection: softmax in float32 at least, whatever the autocast.
        class_probs = F.softmax(class_logits.to(at_least_float32(class_logits.dtype)), dim=-1)
        counts = [len(p) for p in proposals]
        return [Detections(b, f, c, a) for b, f, c, a in zip(
            proposals, pooled.split(counts), class_probs.split(counts),
            attribute_logits.split(counts), strict=True)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BottomUpFasterRCNN", "Detections", "FrozenBatchNorm2d", "count_parameters"]
