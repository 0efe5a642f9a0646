"""Beam search: finished hypotheses are kept aside, so a better finished caption is never lost.

References: a hand-built decoder whose next-word probabilities are a table keyed by the prefix
(its best caption ends early and is known by hand and by exhaustive search), a plain-Python beam
search written from the algorithm's description, and exhaustive search on tiny random models.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_captioning_model import VOCAB, tiny_batch, tiny_model
from torch import Tensor, nn

from mia.captioning.beam import (
    BOS,
    EOS,
    PAD,
    RELEASED_MAX_STEPS,
    beam_search,
    decode,
    greedy_decode,
    sequence_log_prob,
)
from mia.captioning.decoder import DecoderContext
from mia.captioning.encoder import EncodedImage

# ----------------------------------------------------------------------------------------------
# A decoder whose step returns fixed log-probabilities from a table keyed by the prefix.
# ----------------------------------------------------------------------------------------------

A, B, C, D, E, F, G = 4, 5, 6, 7, 8, 9, 10
TABLE_VOCAB = 11
#: P(next word | words so far). The best caption is "a <eos>" (0.08 * 0.95): it ends at step 2,
#: but after "b c" four words each keep a partial score above it for one more step, then every
#: continuation ends worse.
TABLE: dict[tuple[int, ...], dict[int, float]] = {
    (): {B: 0.9, A: 0.08, C: 0.01, D: 0.006, EOS: 0.004},
    (A,): {EOS: 0.95, C: 0.02, D: 0.015, 3: 0.015},
    (B,): {C: 0.97, D: 0.01, E: 0.008, EOS: 0.006, A: 0.004, 3: 0.002},
    (B, C): {D: 0.26, E: 0.25, F: 0.24, G: 0.23, EOS: 0.02},
}
DEFAULT = {EOS: 0.3, A: 0.25, B: 0.2, C: 0.15, D: 0.1}
OPTIMUM = ([A, EOS], math.log(0.08) + math.log(0.95))
GREEDY = ([B, C, D, EOS], math.log(0.9) + math.log(0.97) + math.log(0.26) + math.log(0.3))


def table_probs(prefix: tuple[int, ...]) -> dict[int, float]:
    return TABLE.get(prefix, DEFAULT)


class TableDecoder(nn.Module):
    """The decoder interface of the captioners; the state is the prefix, padded with -1."""

    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.max_length = max_length

    def prepare(self, enc: EncodedImage) -> DecoderContext:
        return DecoderContext(enc.memory, enc.mask)

    def init_state(self, ctx: DecoderContext) -> tuple[Tensor]:
        return (torch.full((ctx.memory.shape[0], self.max_length + 1), -1, dtype=torch.long),)

    def step(self, words: Tensor, state: tuple[Tensor], ctx: DecoderContext
             ) -> tuple[Tensor, tuple[Tensor]]:
        prefix = state[0].clone()
        logits = torch.full((len(words), TABLE_VOCAB), float("-inf"))
        for row, word in enumerate(words.tolist()):
            seen = [w for w in prefix[row].tolist() if w >= 0]
            if word != BOS:
                seen.append(word)
                prefix[row, len(seen) - 1] = word
            for w, p in table_probs(tuple(seen)).items():
                logits[row, w] = math.log(p)
        return logits, (prefix,)


class TableModel(nn.Module):
    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.decoder = TableDecoder(max_length)

    def encode(self, batch: dict[str, Tensor]) -> EncodedImage:
        b = batch["image_ids"].shape[0]
        return EncodedImage(torch.zeros(b, 1, 1), torch.ones(b, 1, dtype=torch.bool), None)


def exhaustive_table_optimum(max_length: int) -> tuple[list[int], float]:
    """Depth-first search with pruning (scores only fall): the best caption of at most
    ``max_length`` tokens, ending at ``<eos>`` or cut at ``max_length``."""
    best: list = [None, -math.inf]

    def visit(prefix: tuple[int, ...], score: float) -> None:
        if score <= best[1]:
            return
        if prefix and (prefix[-1] == EOS or len(prefix) == max_length):
            best[:] = [list(prefix), score]
            return
        for w, p in table_probs(prefix).items():
            visit(prefix + (w,), score + math.log(p))

    visit((), 0.0)
    return best[0], best[1]


def grid_beam_where_finished_beams_compete(logp, k: int, max_length: int) -> float:
    """The previous algorithm, in plain Python: a finished beam keeps its slot, extended only by
    ``<pad>`` at log-probability 0, and competes with the open beams' extensions."""
    beams = [(0.0, ())]
    for _ in range(max_length):
        cands = []
        for score, seq in beams:
            if seq and seq[-1] == EOS:
                cands.append((score, seq))
                continue
            cands += [(score + lp, seq + (w,)) for w, lp in logp(seq).items()]
        beams = sorted(cands, key=lambda c: -c[0])[:k]
    return beams[0][0]


def reference_beam(logp, k: int, max_length: int) -> tuple[list[int], float]:
    """The keep-aside algorithm of mia.captioning.beam, written plainly from its docstring."""
    open_beams = [(0.0, ())]
    best: tuple[float, tuple[int, ...]] = (-math.inf, ())
    for _ in range(max_length):
        cands = sorted(((score + lp, seq + (w,)) for score, seq in open_beams
                        for w, lp in logp(seq).items()), key=lambda c: -c[0])[:2 * k]
        for rank, (score, seq) in enumerate(cands):
            if seq[-1] == EOS and rank < k and score > best[0]:
                best = (score, seq)
        open_beams = [c for c in cands if c[1][-1] != EOS][:k]
        if best[0] >= open_beams[0][0]:
            break
    if open_beams[0][0] > best[0]:
        best = open_beams[0]
    return list(best[1]), best[0]


def _table_logp(seq: tuple[int, ...]) -> dict[int, float]:
    return {w: math.log(p) for w, p in table_probs(seq).items()}


def _decoded(tokens: Tensor) -> list[int]:
    out = []
    for t in tokens.tolist():
        if t == PAD:
            break
        out.append(t)
    return out


# ----------------------------------------------------------------------------------------------
# The hand-built model.
# ----------------------------------------------------------------------------------------------

def test_table_model_optimum_by_hand_and_by_search():
    assert exhaustive_table_optimum(6) == (OPTIMUM[0], pytest.approx(OPTIMUM[1]))
    # The trap: four open beams after "b c" stay above the optimum for one more step...
    for w, p in TABLE[(B, C)].items():
        if w != EOS:
            assert math.log(0.9 * 0.97 * p) > OPTIMUM[1]
    # ...and every caption through them ends worse.
    assert GREEDY[1] < OPTIMUM[1]


@pytest.mark.parametrize("beam_size", [1, 2, 3, 4])
def test_finished_better_hypothesis_is_never_dropped(beam_size):
    max_length = 6
    model = TableModel(max_length)
    batch = {"image_ids": torch.arange(2)}  # two identical images: batched bookkeeping too
    got = beam_search(model, batch, beam_size, max_length)
    # K = 1 is greedy: "a" is never an open beam, so "a <eos>" is never seen.
    want = GREEDY if beam_size == 1 else OPTIMUM
    for row in range(2):
        assert _decoded(got.tokens[row]) == want[0]
        assert got.scores[row].item() == pytest.approx(want[1], abs=1e-6)
    assert reference_beam(_table_logp, beam_size, max_length) == (
        want[0], pytest.approx(want[1]))
    if beam_size > 1:
        # The grid where finished beams compete loses "a <eos>" at every K from 2 to 4.
        lost = grid_beam_where_finished_beams_compete(_table_logp, beam_size, max_length)
        assert lost == pytest.approx(GREEDY[1]) and lost < OPTIMUM[1]
    greedy = greedy_decode(model, batch, max_length)
    assert _decoded(greedy.tokens[0]) == GREEDY[0]


def test_captions_cut_at_max_length_compete_on_their_score():
    """With 2 steps only, "b c" (cut, no <eos>) scores above "a <eos>" and is returned."""
    got = beam_search(TableModel(2), {"image_ids": torch.arange(1)}, 3, 2)
    assert got.tokens[0].tolist() == [B, C]
    assert got.scores[0].item() == pytest.approx(math.log(0.9 * 0.97))
    assert exhaustive_table_optimum(2)[0] == [B, C]


def test_released_decode_length():
    assert RELEASED_MAX_STEPS == 19  # Generator.py: for len_dec_seq in range(1, 20)
    got = decode(TableModel(RELEASED_MAX_STEPS), {"image_ids": torch.arange(1)}, 3,
                 RELEASED_MAX_STEPS)
    assert got.tokens.shape == (1, 19)


# ----------------------------------------------------------------------------------------------
# Random tiny captioners.
# ----------------------------------------------------------------------------------------------

BASELINES = ["visual_attention", "concept_attention", "visual_condition", "concept_condition"]


def _model_logp(model, batch):
    """Next-word log-probabilities of one image after ``seq``, by teacher forcing."""
    from mia.captioning.beam import _log_probs

    def logp(seq: tuple[int, ...]) -> dict[int, float]:
        inputs = torch.tensor([[BOS, *seq]])
        with torch.no_grad():
            row = _log_probs(model.decoder(model.encode(batch), inputs))[0, -1]
        return {w: float(row[w]) for w in range(row.shape[0]) if w not in (PAD, BOS)}

    return logp


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("variant", ["base", "mia"])
def test_beam_one_is_greedy(baseline, variant):
    model = tiny_model(baseline, variant, seed=3).eval()
    batch = tiny_batch(b=4)
    greedy = greedy_decode(model, batch, max_length=7)
    beam = beam_search(model, batch, beam_size=1, max_length=7)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.scores, greedy.scores)
    # The score is the teacher-forced log-probability of the returned words and <eos>.
    torch.testing.assert_close(sequence_log_prob(model, batch, greedy.tokens), greedy.scores,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("beam_size", [2, 3, 4])
def test_batched_beam_equals_the_plain_reference(baseline, beam_size):
    model = tiny_model(baseline, "mia", seed=2).eval()
    batch = tiny_batch(b=2, seed=4)
    got = beam_search(model, batch, beam_size, max_length=5)
    for i in range(2):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        tokens, score = reference_beam(_model_logp(model, one), beam_size, 5)
        assert _decoded(got.tokens[i]) == tokens
        assert got.scores[i].item() == pytest.approx(score, abs=1e-4)


def _exhaustive_best(model, batch, max_length):
    """Brute force: the most probable sequence over every word string up to max_length."""
    words = [w for w in range(VOCAB) if w not in (PAD, BOS)]
    candidates = []
    for length in range(1, max_length + 1):
        for seq in itertools.product(words, repeat=length):
            # A hypothesis ends at <eos>, or is cut at max_length; nothing follows <eos>.
            if EOS not in seq[:-1] and (seq[-1] == EOS or length == max_length):
                candidates.append(list(seq) + [PAD] * (max_length - length))
    tokens = torch.tensor(candidates)
    same_image = {k: v.expand(len(candidates), *v.shape[1:]) for k, v in batch.items()}
    scores = sequence_log_prob(model, same_image, tokens)
    best = int(scores.argmax())
    return float(scores[best]), tokens[best:best + 1]


@pytest.mark.parametrize("baseline", ["visual_attention", "concept_condition"])
def test_beam_search_is_exact_with_a_wide_beam_and_beats_greedy(baseline):
    model = tiny_model(baseline, "base", seed=5).eval()
    batch = {k: v[:1] for k, v in tiny_batch().items()}
    max_length, n_words = 3, VOCAB - 2
    best_score, best_tokens = _exhaustive_best(model, batch, max_length)
    beam = beam_search(model, batch, beam_size=n_words ** (max_length - 1), max_length=max_length)
    assert torch.equal(beam.tokens, best_tokens)
    assert float(beam.scores[0]) == pytest.approx(best_score, abs=1e-4)
    assert float(beam.scores[0]) >= float(greedy_decode(model, batch, max_length).scores[0]) - 1e-6


def test_beam_score_at_least_greedy_on_random_models():
    for seed in range(4):
        model = tiny_model("visual_attention", "mia", seed=seed).eval()
        batch = tiny_batch(b=4, seed=seed)
        greedy = greedy_decode(model, batch, max_length=8)
        beam = beam_search(model, batch, beam_size=4, max_length=8)
        assert torch.all(beam.scores >= greedy.scores - 1e-5), seed
        torch.testing.assert_close(sequence_log_prob(model, batch, beam.tokens), beam.scores,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_beam_equals_one_image_at_a_time(beam_size):
    model = tiny_model("concept_attention", "mia", seed=2).eval()
    batch = tiny_batch(b=3, seed=4)
    together = beam_search(model, batch, beam_size=beam_size, max_length=6)
    for i in range(3):
        alone = beam_search(model, {k: v[i:i + 1] for k, v in batch.items()}, beam_size, 6)
        assert torch.equal(alone.tokens[0], together.tokens[i])
        torch.testing.assert_close(alone.scores[0], together.scores[i], rtol=1e-5, atol=1e-5)
