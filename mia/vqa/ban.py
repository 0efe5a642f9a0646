"""Bilinear Attention Networks (Kim, Jun and Zhang, NeurIPS 2018), as jnhwkim/ban-vqa builds it.

``build_ban`` (``base_model.py``), for the GRU states Q (B, L, h) and boxes V (B, m, C):

1. Bilinear attention maps (``BiAttention`` = ``BCNet(k=3)`` with ``h_out = glimpses``): with
   V' = ReLU(WN-Linear(V)) (B, m, 3h) (dropout 0.5 after it) and Q' = ReLU(WN-Linear(Q)),
   logit[g, i, j] = sum_r p_g[r] V'_ir Q'_jr + b_g; p (glimpses, 3h) weight-normed as a whole
   (``weight_norm(name='h_mat', dim=None)``). A softmax over all (box, word) pairs per glimpse.
2. For each glimpse g, in order, with Q the CURRENT states (the attention maps are computed once,
   from the GRU states):
   * bilinear pooling (``BCNet(k=1).forward_with_weights``): f_g = sum_ij A_g[i,j] V''_i * Q''_j
     with V'' = ReLU(WN-Linear(V)), Q'' = ReLU(WN-Linear(Q)) (B, h);
   * counting (Zhang et al. 2018, :class:`~mia.vqa.counting.Counter`, 10 objects): per box the
     largest attention logit over the words, with the normalised boxes -> (B, 11);
   * residual update of every word state: Q <- Q + WN-Linear(f_g) + ReLU(WN-Linear(count)).
3. Classifier (h -> 2h -> answers) on the sum of the word states.

Masks: the reference recognises padded boxes as all-zero feature rows (adaptive 10-100 boxes,
zero-padded). MIA's LayerNorm output is never zero, so masks are explicit here: padded boxes get
logit -inf (zero attention, and zero after the counter's sigmoid). Padded WORDS follow the
question mask (:mod:`mia.vqa.question`, ``vqa.model.question_pads``): ``reference`` lets them
into the attention, the counter's max and the final sum over all 14 positions, as ban-vqa does
(its pad positions hold GRU states that ran on past the question); ``masked`` gives them logit
-inf and sums the real words only, so an item's answer does not depend on how many pads it
carries. The reference's default ``--op c`` (a second, tf-idf initialised embedding
concatenated to the GloVe one) is ``vqa.model.tfidf_embedding`` (:mod:`mia.data.tfidf`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mia.vqa.counting import Counter
from mia.vqa.layers import classifier, fc
from mia.vqa.question import QuestionStates


def pair_mask(v_mask: Tensor, q_mask: Tensor) -> Tensor:
    """(B, m, L) True where both the box and the word are real; an item with no real pair gets
    all pairs (attends uniformly instead of producing NaN)."""
    pairs = v_mask[:, :, None] & q_mask[:, None, :]
    return pairs | ~pairs.flatten(1).any(dim=1)[:, None, None]


class BilinearAttentionMaps(nn.Module):
    """``BiAttention``: ``glimpses`` low-rank bilinear attention maps over (box, word) pairs."""

    def __init__(self, v_dim: int, q_dim: int, hidden: int, glimpses: int, k: int = 3,
                 dropout: float = 0.2, attention_dropout: float = 0.5) -> None:
        super().__init__()
        self.glimpses = glimpses
        self.v_net = fc(v_dim, hidden * k, dropout=dropout)
        self.q_net = fc(q_dim, hidden * k, dropout=dropout)
        self.dropout = nn.Dropout(attention_dropout)
        # p_g of every glimpse, weight-normed jointly (one scalar g), initialised N(0, 1).
        self.h_mat_v = nn.Parameter(torch.randn(glimpses, hidden * k))
        self.h_mat_g = nn.Parameter(self.h_mat_v.detach().norm())
        self.h_bias = nn.Parameter(torch.randn(glimpses))

    def logits(self, v: Tensor, q: Tensor) -> Tensor:
        """Unmasked logits (B, glimpses, m, L) of boxes v (B, m, C) and word states q (B, L, h)."""
        v_ = self.dropout(self.v_net(v))  # (B, m, K)
        q_ = self.q_net(q)  # (B, L, K)
        p = self.h_mat_v * (self.h_mat_g / self.h_mat_v.norm())  # (G, K)
        # Scale the shorter side (L = 14 words < m = 36 boxes) by p_g: (B, G, L, K).
        weighted = q_[:, None, :, :] * p[None, :, None, :]
        logits = v_[:, None, :, :] @ weighted.transpose(-1, -2)  # (B, G, m, L)
        return logits + self.h_bias[None, :, None, None]

    def forward(self, v: Tensor, q: Tensor, v_mask: Tensor, q_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Attention maps (B, G, m, L), each summing to one over the real pairs, and the masked
        logits (-inf at padded boxes and words)."""
        logits = self.logits(v, q).masked_fill(~pair_mask(v_mask, q_mask)[:, None], float("-inf"))
        b, g, m, n = logits.shape
        return logits.flatten(2).softmax(dim=-1).view(b, g, m, n), logits


class BilinearPooling(nn.Module):
    """``BCNet(k=1).forward_with_weights``: f = sum_ij A_ij V''_i * Q''_j, (B, h)."""

    def __init__(self, v_dim: int, q_dim: int, hidden: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.v_net = fc(v_dim, hidden, dropout=dropout)
        self.q_net = fc(q_dim, hidden, dropout=dropout)

    def forward(self, v: Tensor, q: Tensor, attention: Tensor) -> Tensor:
        v_ = self.v_net(v)  # (B, m, h)
        q_ = self.q_net(q)  # (B, L, h)
        return (v_ * (attention @ q_)).sum(dim=1)  # einsum('bvk,bvq,bqk->bk')


class BANAnswerer(nn.Module):
    """Everything of BAN after the question encoder: attention, glimpses with counting, classifier.

    ``forward`` needs ``boxes`` (B, m, 4) as x1, y1, x2, y2 normalised by the image size
    (``VQAData`` batches carry them).
    """

    def __init__(self, v_dim: int, hidden: int, n_answers: int, glimpses: int = 8, k: int = 3,
                 objects: int = 10, dropout: float = 0.2, attention_dropout: float = 0.5,
                 classifier_dropout: float = 0.5) -> None:
        super().__init__()
        self.glimpses = glimpses
        self.attention = BilinearAttentionMaps(v_dim, hidden, hidden, glimpses, k, dropout,
                                               attention_dropout)
        self.pool = nn.ModuleList(BilinearPooling(v_dim, hidden, hidden, dropout)
                                  for _ in range(glimpses))
        self.q_prj = nn.ModuleList(fc(hidden, hidden, relu=False, dropout=dropout)
                                   for _ in range(glimpses))
        self.c_prj = nn.ModuleList(fc(objects + 1, hidden) for _ in range(glimpses))
        self.counter = Counter(objects)
        self.classifier = classifier(hidden, 2 * hidden, n_answers, classifier_dropout)

    def forward(self, question: QuestionStates, v: Tensor, v_mask: Tensor,
                boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Answer logits (B, n_answers) and the attention maps (B, glimpses, m, L)."""
        if boxes is None:
            raise ValueError("BAN's counting module needs 'boxes' (B, m, 4) in the batch: the "
                             "region store must have boxes, image_w and image_h "
                             "(docs/CONTRACTS.md)")
        q, q_mask = question.states, question.mask
        attention, logits = self.attention(v, q, v_mask, q_mask)
        # Padded boxes become zero boxes, as the reference's zero-padded spatials are: IoU 0
        # with every box, so whatever a store pads with never changes a count or confidence.
        # Counting runs in (at least) float32 even under autocast: counts are sqrt(sum) of IoUs.
        exact = torch.promote_types(self.counter.f[0].weight.dtype, torch.float32)
        corners = (boxes * v_mask[:, :, None]).transpose(1, 2).to(exact)  # (B, 4, m)
        for g in range(self.glimpses):
            pooled = self.pool[g](v, q, attention[:, g])  # (B, h)
            count = self.counter(corners, logits[:, g].amax(dim=2).to(exact))  # per box: best word
            q = q + self.q_prj[g](pooled)[:, None, :] + self.c_prj[g](count)[:, None, :]
        summed = (q * q_mask[:, :, None].to(q.dtype)).sum(dim=1)  # real words only
        return self.classifier(summed), attention
