"""The question side of both VQA baselines: word embedding(s) -> one-layer GRU.

Questions arrive as (B, 14) ids into the ``vqa.h5`` ``question_vocab``, padded with 0 at the end
(docs/CONTRACTS.md). The embedding's padding row is id 0: a zero vector that never trains, as
the references' ``padding_idx`` row.

Pads (``vqa.model.question_pads``):

* ``masked``: the GRU reads the end-padded question; ``last`` is the state after the last real
  word (``gather`` at ``length - 1``) and ``mask`` marks the real words, so nothing a model
  computes depends on how many pads a question has.
* ``reference``: what each reference does. Up-Down (hengyuan-hu/bottom-up-attention-vqa) pads at
  the FRONT and reads ``output[:, -1]``: the GRU first runs over the pad tokens (zero vectors);
  here the ids are re-padded at the front (``front=True``). BAN (jnhwkim/ban-vqa) pads at the
  end and lets every position, pads included, into its attention and its final sum: the mask is
  all True (``mask_pads=False``).

BAN's ``--op c`` (``tfidf=True``): a second embedding of the same size, concatenated to the
first (the GRU reads 2 x ``embed_dim``), trainable, initialised by :meth:`init_tfidf` as
``T @ E`` (T: :mod:`mia.data.tfidf`, E: the first embedding after GloVe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mia.data.tfidf import SparseMatrix

PAD_ID = 0


@dataclass
class QuestionStates:
    """GRU ``states`` (B, L, h), word ``mask`` (B, L) True = a position the model reads,
    ``last`` (B, h): the question vector (see the module docstring)."""

    states: Tensor
    mask: Tensor
    last: Tensor


def front_padded(questions: Tensor) -> Tensor:
    """End-padded ids (B, L) -> the same words with the pads in front (Up-Down's layout)."""
    length = questions.shape[1]
    real = (questions != PAD_ID).sum(dim=1, keepdim=True)  # (B, 1)
    source = torch.arange(length, device=questions.device) - (length - real)  # (B, L)
    return torch.where(source >= 0, questions.gather(1, source.clamp(min=0)),
                       torch.zeros_like(questions))


class QuestionEncoder(nn.Module):
    """Embedding (``embed_dim``, GloVe-initialisable, see :mod:`mia.vqa.glove`) [+ the tf-idf
    embedding] -> GRU(hidden); pads as the module docstring says."""

    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden: int = 1024,
                 tfidf: bool = False, front: bool = False, mask_pads: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.tfidf_embedding = (nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
                                if tfidf else None)
        self.gru = nn.GRU(embed_dim * (2 if tfidf else 1), hidden, num_layers=1,
                          batch_first=True)
        self.hidden = hidden
        self.front, self.mask_pads = front, mask_pads

    def embed(self, questions: Tensor) -> Tensor:
        x = self.embedding(questions)
        if self.tfidf_embedding is not None:
            x = torch.cat([x, self.tfidf_embedding(questions)], dim=-1)  # BAN: (emb, emb_)
        return x

    def forward(self, questions: Tensor) -> QuestionStates:
        questions = questions.long()
        if self.front:
            questions = front_padded(questions)
            states, _ = self.gru(self.embed(questions))  # (B, L, h), pads first
            mask = torch.ones_like(questions, dtype=torch.bool)
            return QuestionStates(states, mask, states[:, -1])
        mask = questions != PAD_ID  # (B, L)
        states, _ = self.gru(self.embed(questions))  # (B, L, h)
        last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
        index = last[:, None, None].expand(-1, 1, states.shape[-1])
        if not self.mask_pads:
            mask = torch.ones_like(mask)
        return QuestionStates(states, mask, states.gather(1, index).squeeze(1))

    @torch.no_grad()
    def init_tfidf(self, matrix: SparseMatrix) -> None:
        """The second embedding := T @ (the first embedding), as ban-vqa's ``init_embedding``
        (``tfidf.matmul(glove)``); call after the GloVe initialisation."""
        if self.tfidf_embedding is None:
            raise ValueError("this question encoder has no tf-idf embedding "
                             "(vqa.model.tfidf_embedding is false)")
        weight = self.embedding.weight
        if matrix.size != weight.shape[0]:
            raise ValueError(f"tf-idf matrix over {matrix.size} words, question embedding of "
                             f"{weight.shape[0]}: built from another vqa.h5?")
        index = torch.from_numpy(np.stack([matrix.rows, matrix.cols]))
        t = torch.sparse_coo_tensor(index, torch.from_numpy(matrix.values), (matrix.size,) * 2,
                                    check_invariants=True)
        out = torch.sparse.mm(t, weight.detach().double().cpu())
        self.tfidf_embedding.weight.copy_(out.to(weight.dtype))
        self.tfidf_embedding.weight[PAD_ID] = 0.0
