"""Up-Down VQA (Anderson et al. 2018), as hengyuan-hu/bottom-up-attention-vqa builds it.

``build_baseline0_newatt``: the question is the GRU state after the last word, q (B, h). Top-down
attention over the boxes v (B, m, C) (``NewAttention``):

    logit_i = w^T Dropout(FC(v_i) * FC(q))           FC = weight-normed Linear + ReLU
    alpha   = softmax over boxes (padded boxes masked; the reference has 36 real boxes always)
    joint   = FC(q) * FC(sum_i alpha_i v_i)
    logits  = Linear(Dropout(ReLU(Linear(joint))))   hidden h -> 2h -> answers

Every linear layer is weight-normed with ``dim=None``. Trained with ``BCE-with-logits x
n_answers`` on soft scores (:func:`mia.vqa.models.vqa_loss`).
"""

from __future__ import annotations

from torch import Tensor, nn

from mia.vqa.layers import WeightNormLinear, classifier, fc
from mia.vqa.question import QuestionStates


class TopDownAttention(nn.Module):
    """``NewAttention``: one weight per box from the product of box and question projections."""

    def __init__(self, v_dim: int, q_dim: int, hidden: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.v_proj = fc(v_dim, hidden)
        self.q_proj = fc(q_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear = WeightNormLinear(hidden, 1)

    def forward(self, v: Tensor, q: Tensor, v_mask: Tensor) -> Tensor:
        """Weights (B, m) summing to one over the real boxes of ``v`` (B, m, C) given q (B, h)."""
        joint = self.v_proj(v) * self.q_proj(q)[:, None, :]  # (B, m, h)
        logits = self.linear(self.dropout(joint)).squeeze(-1)  # (B, m)
        # An item without any real box attends uniformly instead of producing NaN.
        v_mask = v_mask | ~v_mask.any(dim=1, keepdim=True)
        return logits.masked_fill(~v_mask, float("-inf")).softmax(dim=1)


class UpDownAnswerer(nn.Module):
    """Everything of Up-Down after the question encoder: attention, fusion, classifier."""

    def __init__(self, v_dim: int, hidden: int, n_answers: int, attention_dropout: float = 0.2,
                 classifier_dropout: float = 0.5) -> None:
        super().__init__()
        self.attention = TopDownAttention(v_dim, hidden, hidden, attention_dropout)
        self.q_net = fc(hidden, hidden)
        self.v_net = fc(v_dim, hidden)
        self.classifier = classifier(hidden, 2 * hidden, n_answers, classifier_dropout)

    def forward(self, question: QuestionStates, v: Tensor, v_mask: Tensor,
                boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Answer logits (B, n_answers) and the box attention (B, m); ``boxes`` are unused."""
        q = question.last  # (B, h)
        alpha = self.attention(v, q, v_mask)  # (B, m)
        attended = (alpha[:, :, None] * v).sum(dim=1)  # (B, C)
        joint = self.q_net(q) * self.v_net(attended)
        return self.classifier(joint), alpha
