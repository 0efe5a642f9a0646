"""Visual Condition and Concept Condition (paper section 3.1, baselines 3 and 4): no attention.

As the authors' ``Models/Main.py`` builds them: the LSTM starts from a zero state and is first
PRIMED with one step on one modality's pooled vector, whose output is discarded; every following
step reads the word embedding plus the OTHER modality's pooled vector; logits = W_o dropout(h_t).

* Visual Condition: primed with t_a = mean T (the concepts "at the first decoding step"), then
  x_t = E w_t + v_a with v_a = W_a dropout(mean V).
* Concept Condition: primed with v_a, then x_t = E w_t + t_a.

t_a has no linear map and no dropout (``concept_pooling: mean``, the released form). With MIA,
V and T are both the fused output LayerNorm(I_N + T_N), so the two models read the same pooled
vector in both slots. They are still not the same function: the linear map W_a sits on the word
inputs in Visual Condition and on the priming step in Concept Condition, exactly as in the released
code. (The paper's Table 1 prints identical rows for them w/ MIA; docs/RECIPE.md discusses it.)
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.decoder import (
    DecoderContext,
    State,
    pooled_input,
    released_output_init_,
    run_lstm,
)
from mia.captioning.encoder import EncodedImage

First = Literal["concepts", "visual"]


class ConditionDecoder(nn.Module):
    """LSTM conditioned on pooled image vectors only; ``first`` is the priming modality."""

    def __init__(self, cfg: CaptionerConfig, vocab_size: int, first: First) -> None:
        super().__init__()
        if first not in ("concepts", "visual"):
            raise ValueError(f"first must be 'concepts' or 'visual', got {first!r}")
        if cfg.decoder_style != "released":
            raise ValueError(f"captioner.decoder_style: {cfg.decoder_style!r} is an attention "
                             f"wiring; {cfg.baseline!r} has no attention (use 'released')")
        self.first = first
        d, e = cfg.d_model, cfg.embed_dim
        self.embedding = nn.Embedding(vocab_size, e, padding_idx=0)
        self.visual_pool = pooled_input(cfg, "visual")  # v_a = W_a dropout(mean V)
        self.concept_pool = pooled_input(cfg, "concepts")  # t_a = mean T
        self.lstm = nn.LSTM(e, d, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(d, vocab_size)

    def released_init_(self) -> None:
        self.visual_pool.released_init_()
        self.concept_pool.released_init_()
        released_output_init_(self.output)

    def prepare(self, enc: EncodedImage) -> DecoderContext:
        if enc.visual is None or enc.concepts is None:
            raise ValueError("the Condition models read both visual features and concepts; the "
                             "encoder must be built with source='both'")
        v_a = self.visual_pool(enc.visual, enc.visual_mask)  # (B, e)
        t_a = self.concept_pool(enc.concepts, enc.concept_mask)  # (B, e)
        prime, addend = (t_a, v_a) if self.first == "concepts" else (v_a, t_a)
        return DecoderContext(enc.memory, enc.mask, addend=addend, prime=prime)

    def init_state(self, ctx: DecoderContext) -> State:
        """The primed state: one LSTM step from zeros on ``ctx.prime``; its output is unused."""
        zeros = ctx.prime.new_zeros(ctx.prime.shape[0], self.lstm.hidden_size)  # type: ignore
        _, state = run_lstm(self.lstm, ctx.prime.unsqueeze(1), (zeros, zeros))  # type: ignore
        return state

    def step(self, words: Tensor, state: State, ctx: DecoderContext) -> tuple[Tensor, State]:
        """Previous words (B,) -> next-word logits (B, V) and the new state."""
        x = self.embedding(words) + ctx.addend  # type: ignore[operator]
        out, state = run_lstm(self.lstm, x.unsqueeze(1), state)
        return self.output(self.dropout(out.squeeze(1))), state

    def forward(self, enc: EncodedImage, inputs: Tensor) -> Tensor:
        """Teacher forcing: input words (B, T) -> logits (B, T, V); one LSTM call after priming."""
        ctx = self.prepare(enc)
        x = self.embedding(inputs) + ctx.addend.unsqueeze(1)  # type: ignore[union-attr]
        hiddens, _ = run_lstm(self.lstm, x, self.init_state(ctx))
        return self.output(self.dropout(hiddens))
