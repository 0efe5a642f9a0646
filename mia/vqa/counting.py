"""The counting component of Zhang, Hare and Prügel-Bennett (ICLR 2018), as BAN uses it.

Soft attention blends the features of all attended boxes, so "how many" is lost: two cats
attended with weight 0.5 each look like one cat. The counter recovers a count from the boxes and
their attention alone. It builds a graph whose vertices are the top ``objects`` boxes and whose
edge weights are the products of their attention (relevancy ``A_ij = a_i a_j``), removes edges
between boxes of the same object (intra-object: scaled by a function of ``1 - IoU``), divides out
duplicates of the same object (inter-object: boxes whose rows of the scaled graph and whose
attention are alike count once), and reads the count as ``sqrt(sum of the graph)``: k separate,
fully attended objects give a complete graph with k^2 entries (diagonal included), so sqrt = k.

Every non-linearity is a learned monotone piecewise-linear function on [0, 1] with ``f(0) = 0``
and ``f(1) = 1`` (:class:`PiecewiseLinear`, 16 pieces). At initialisation each is the identity,
so an untrained counter already counts well-separated, fully attended boxes exactly.

The functions are held as in the reference (Cyanogenoid/vqa-counting ``vqa-v2/counting.py``,
copied unchanged into jnhwkim/ban-vqa): ``f`` is a ``ModuleList`` of SIXTEEN functions, of which
the reference uses the first eight:

====  ==============================================================
f[0]  relevancy of an edge (and of a vertex, for the diagonal)
f[1]  distance ``1 - IoU`` of an edge: suppresses same-object edges
f[2]  similarity of two vertices (rows of the dedup graph, attention)
f[3]  relevancy, for the dedup graph
f[4]  distance, for the dedup graph
f[5]  attention confidence ``|f5(a) - 0.5|``
f[6]  distance confidence ``|f6(D) - 0.5|``
f[7]  output confidence, scaling the whole count vector
====  ==============================================================

f[8]..f[15] are created but never called; they are kept (frozen: ``requires_grad=False``) so a
state dict of the reference loads into this module key for key (``f.{i}.weight``, 17 values each)
and gives the same counts. Unlike the reference, fewer boxes than ``objects`` are accepted (the
graph is then built over all of them); the output keeps ``objects + 1`` entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The reference creates 16 functions and uses f[0]..f[7].
NUM_FUNCTIONS = 16
USED_FUNCTIONS = 8


class PiecewiseLinear(nn.Module):
    """A monotone increasing function on [0, 1] made of ``pieces`` linear segments.

    ``weight`` holds ``pieces + 1`` values: |weight| normalised to sum to one are the rises of
    the segments (``weight[0]`` is the rise before 0, initialised to 0, so ``f(0) = 0``; abs has
    a zero gradient there, so it stays 0 in training); their cumulative sum gives ``f`` at the
    knots ``0, 1/pieces, ..., 1``, with ``f(1) = 1``. All ones elsewhere: the identity.
    """

    def __init__(self, pieces: int = 16) -> None:
        super().__init__()
        self.pieces = pieces
        weight = torch.ones(pieces + 1)
        weight[0] = 0
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        rises = self.weight.abs()
        rises = rises / rises.sum()  # (pieces + 1,), sums to one
        knots = rises.cumsum(0)  # f at 0, 1/pieces, ..., 1
        y = self.pieces * x
        # Segment index truncated toward zero and its fraction, as the reference computes them
        # (trunc, not floor: an input a rounding error below 0 stays on the first segment).
        seg = y.detach().long().clamp(0, self.pieces)
        return knots[seg] + y.frac() * rises[(seg + 1).clamp(max=self.pieces)]


def box_iou(boxes: Tensor) -> Tensor:
    """IoU of every pair of boxes: (B, 4, k) as x1, y1, x2, y2 -> (B, k, k)."""
    top_left = torch.maximum(boxes[:, :2, :, None], boxes[:, :2, None, :])  # (B, 2, k, k)
    bottom_right = torch.minimum(boxes[:, 2:, :, None], boxes[:, 2:, None, :])
    sides = (bottom_right - top_left).clamp(min=0)
    inter = sides[:, 0] * sides[:, 1]
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    area = wh[:, 0] * wh[:, 1]  # (B, k)
    return inter / (area[:, :, None] + area[:, None, :] - inter + 1e-12)


class Counter(nn.Module):
    """Count features ``(B, objects + 1)`` from boxes and per-box attention.

    Args:
        objects: how many of the highest-attended boxes form the graph (10 in BAN and in the
            counting paper's VQA model); also the largest count.
        already_sigmoided: attention is already in [0, 1]; otherwise (the default) it is a
            logit and goes through a sigmoid.
    """

    def __init__(self, objects: int = 10, already_sigmoided: bool = False) -> None:
        super().__init__()
        if objects < 1:
            raise ValueError(f"Counter: objects must be >= 1, got {objects}")
        self.objects = objects
        self.already_sigmoided = already_sigmoided
        self.f = nn.ModuleList(PiecewiseLinear(16) for _ in range(NUM_FUNCTIONS))
        for unused in self.f[USED_FUNCTIONS:]:
            # Never called: frozen, so DistributedDataParallel needs no find_unused_parameters.
            unused.weight.requires_grad_(False)

    def forward(self, boxes: Tensor, attention: Tensor) -> Tensor:
        """``boxes`` (B, 4, m) as x1, y1, x2, y2 (any consistent unit; BAN normalises by the
        image size), ``attention`` (B, m) -> a soft one-hot count times a confidence."""
        if boxes.dim() != 3 or boxes.shape[1] != 4 or attention.shape != (boxes.shape[0],
                                                                          boxes.shape[2]):
            raise ValueError(f"Counter expects boxes (B, 4, m) and attention (B, m), got "
                             f"{tuple(boxes.shape)} and {tuple(attention.shape)}")
        f = self.f
        # Low-attention boxes hardly change the count: keep the top ones only.
        attention, top = attention.topk(min(self.objects, attention.shape[1]), dim=1,
                                        sorted=False)
        boxes = boxes.gather(2, top[:, None, :].expand(-1, 4, -1))  # (B, 4, k)
        if not self.already_sigmoided:
            attention = attention.sigmoid()

        relevancy = attention[:, :, None] * attention[:, None, :]  # (B, k, k) a_i a_j
        distance = 1 - box_iou(boxes)  # (B, k, k)
        score = f[0](relevancy) * f[1](distance)  # edges within one object are removed

        # Duplicates of one object: vertices whose dedup rows and attention are alike.
        dedup = f[3](relevancy) * f[4](distance)  # (B, k, k)
        row_gap = (dedup[:, :, :, None] - dedup[:, :, None, :]).abs()  # (B, i, j, l)
        att_gap = (attention[:, :, None] - attention[:, None, :]).abs()  # (B, j, l)
        similar = f[2](1 - row_gap).prod(dim=1) * f[2](1 - att_gap)  # (B, j, l)
        copies = similar.sum(dim=2)  # (B, k): how many vertices stand for the same object

        score = score / (copies[:, :, None] * copies[:, None, :])
        diagonal = f[0](attention * attention) / copies  # the self-loops, scaled alike
        total = score.sum(dim=(1, 2)) + diagonal.sum(dim=1)  # (B,)
        count = (total + 1e-20).sqrt()

        att_conf = (f[5](attention) - 0.5).abs().mean(dim=1)
        dist_conf = (f[6](distance) - 0.5).abs().mean(dim=(1, 2))
        confidence = f[7](att_conf + dist_conf)  # (B,)
        return self._soft_one_hot(count) * confidence[:, None]

    def _soft_one_hot(self, count: Tensor) -> Tensor:
        """Linear interpolation between the two nearest integers: 2.75 -> 0.25 @ 2 + 0.75 @ 3."""
        count = count.clamp(min=0, max=self.objects)
        low = count.detach().long()
        frac = count.frac()[:, None]
        # Comparisons with arange, not F.one_hot: on the CPU one_hot checks its indices on the
        # host, and the same code path must not read the device anywhere (a GPU sync).
        classes = torch.arange(self.objects + 1, device=count.device)
        below = (low[:, None] == classes).to(count.dtype)
        above = ((low + 1).clamp(max=self.objects)[:, None] == classes).to(count.dtype)
        return (1 - frac) * below + frac * above
