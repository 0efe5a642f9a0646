"""The question side of both VQA baselines: word embedding -> one-layer GRU.

Questions arrive as (B, 14) ids into the ``vqa.h5`` ``question_vocab``, padded with 0 at the end
(docs/CONTRACTS.md). The embedding's padding row is id 0: a zero vector that never trains, as
the references' ``padding_idx`` row.

Up-Down reads the GRU state after the last word. Its reference pads questions at the FRONT and
reads ``output[:, -1]``, so the GRU first runs over pad tokens; with our end-padding the state
after the last real word is read directly (``gather`` at ``length - 1``), which depends on the
words only and not on how many pads a question has. BAN reads every state and, here, a word mask
(True = real word); its reference pads at the end as we do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

PAD_ID = 0


@dataclass
class QuestionStates:
    """GRU ``states`` (B, L, h), word ``mask`` (B, L) True = real, ``last`` (B, h): the state
    after the last real word (after the first token for an empty question)."""

    states: Tensor
    mask: Tensor
    last: Tensor


class QuestionEncoder(nn.Module):
    """Embedding (``embed_dim``, GloVe-initialisable, see :mod:`mia.vqa.glove`) -> GRU(hidden)."""

    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden: int = 1024) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=1, batch_first=True)
        self.hidden = hidden

    def forward(self, questions: Tensor) -> QuestionStates:
        questions = questions.long()
        mask = questions != PAD_ID  # (B, L)
        states, _ = self.gru(self.embedding(questions))  # (B, L, h)
        last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
        index = last[:, None, None].expand(-1, 1, states.shape[-1])
        return QuestionStates(states, mask, states.gather(1, index).squeeze(1))
