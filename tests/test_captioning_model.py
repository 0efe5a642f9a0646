"""Captioning models: encoder variants, the attention decoder, masks, MIA wiring, beam search.

Everything runs on tiny random models (d=16, 2 heads) so the file takes seconds on one core.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mia.captioning.beam import BOS, EOS, PAD, beam_search, greedy_decode, sequence_log_prob
from mia.captioning.config import CaptionerConfig, TrainConfig
from mia.captioning.models import BASELINES, build_captioner

VOCAB = 12
MIA_VARIANTS = ["mia", "mia_visual", "mia_concepts", "self_attention", "mia_n1", "mia_n3"]
ALL_VARIANTS = ["base", *MIA_VARIANTS]


def tiny_cfg(baseline: str = "visual_attention", variant: str = "base", **kw) -> CaptionerConfig:
    base = dict(baseline=baseline, variant=variant, feature_dim=8, d_model=16, embed_dim=16,
                attention_dim=16, dropout=0.1, mia_heads=2, mia_d_ff=32)
    return CaptionerConfig(**{**base, **kw})


def tiny_batch(b: int = 3, n: int = 4, k: int = 5, length: int = 6, seed: int = 0,
               vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    """A batch in the loader contract's layout, with some padded regions and concepts."""
    g = torch.Generator().manual_seed(seed)
    feature_mask = torch.ones(b, n, dtype=torch.bool)
    feature_mask[0, -1] = False  # image 0 has one region fewer
    concept_mask = torch.ones(b, k, dtype=torch.bool)
    concept_mask[1, 1] = False  # image 1 has a missing concept inside the first n
    captions = torch.randint(4, vocab, (b, length), generator=g)
    captions[:, 0] = BOS
    lengths = torch.tensor([length, length - 1, length - 2][:b] + [length] * max(0, b - 3))
    for i, n_tokens in enumerate(lengths.tolist()):
        captions[i, n_tokens - 1] = EOS
        captions[i, n_tokens:] = PAD
    return {
        "image_ids": torch.arange(b) + 100,
        "features": torch.randn(b, n, 8, generator=g),
        "feature_mask": feature_mask,
        "concepts": torch.randint(3, vocab, (b, k), generator=g),
        "concept_mask": concept_mask,
        "captions": captions,
        "caption_lengths": lengths,
    }


def _model(baseline: str = "visual_attention", variant: str = "base", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_captioner(tiny_cfg(baseline, variant, **kw), VOCAB)


# ---------------------------------------------------------------- configuration and registry


def test_config_from_dict_names_unknown_keys():
    cfg = TrainConfig.from_dict({"epochs": 2, "betas": [0.9, 0.99],
                                 "captioner": {"variant": "mia_n4", "d_model": 64}})
    assert cfg.captioner.iterations == 4 and cfg.betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="lr_decay_strat"):
        TrainConfig.from_dict({"lr_decay_strat": 3})
    with pytest.raises(ValueError, match=r"train\.captioner.*varient"):
        TrainConfig.from_dict({"captioner": {"varient": "mia"}})
    with pytest.raises(ValueError, match="unknown variant"):
        CaptionerConfig(variant="mia_n0")


def test_registry_names_known_baselines():
    assert {"visual_attention", "concept_attention"} <= set(BASELINES)
    with pytest.raises(ValueError, match="visual_attention"):
        build_captioner(tiny_cfg(baseline="no_such_model"), VOCAB)


# ---------------------------------------------------------------- encoder variants


@pytest.mark.parametrize("baseline", ["visual_attention", "concept_attention"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_encoder_memory_per_variant(baseline, variant):
    model = _model(baseline, variant).eval()
    batch = tiny_batch()
    enc = model.encode(batch)
    n = batch["features"].shape[1]
    assert enc.memory.shape == (3, n, 16) and enc.mask.shape == (3, n)
    # The concept embedding is the caption word embedding itself (tied, as in the released code).
    assert model.encoder.word_embedding is model.decoder.embedding
    fm, cm = batch["feature_mask"], batch["concept_mask"][:, :n]
    if variant == "base":
        assert model.encoder.mia is None
        if baseline == "visual_attention":
            ref = torch.relu(model.encoder.visual_proj[1](batch["features"]))
            torch.testing.assert_close(enc.memory, ref)
            assert torch.equal(enc.mask, fm)
        else:
            embedded = model.decoder.embedding(batch["concepts"][:, :n])
            torch.testing.assert_close(enc.memory, embedded)
            assert torch.equal(enc.mask, cm)
        return
    mia = model.encoder.mia
    assert mia.mode == ("self" if variant == "self_attention" else "mutual")
    expected_n = {"mia_n1": 1, "mia_n3": 3}.get(variant, 2)
    assert mia.iterations == expected_n and len(enc.mia.steps) == expected_n
    # Recompute MIA from the encoder's own inputs: top-n concepts, projected visual features.
    visual = torch.relu(model.encoder.visual_proj[1](batch["features"]))
    concepts = model.decoder.embedding(batch["concepts"][:, :n])
    out = mia(visual, concepts, fm, cm)
    want = {"mia_visual": (out.visual, fm), "mia_concepts": (out.concepts, cm)}.get(
        variant, (torch.nn.functional.layer_norm(out.visual + out.concepts, (16,),
                                                  mia.norm_fused.weight, mia.norm_fused.bias),
                  fm | cm))
    torch.testing.assert_close(enc.memory, want[0])
    assert torch.equal(enc.mask, want[1])


def test_too_few_concepts_is_an_error_naming_the_fix():
    batch = tiny_batch(k=3)
    with pytest.raises(ValueError, match="at least k=4"):
        _model(variant="mia").encode(batch)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_gradients_reach_mia_only_when_present(variant):
    model = _model("visual_attention", variant).train()
    batch = tiny_batch()
    logits = model(batch)
    assert logits.shape == (3, batch["captions"].shape[1] - 1, VOCAB)
    logits.logsumexp(-1).sum().backward()
    mia_params = [n for n, _ in model.named_parameters() if ".mia." in n]
    if variant == "base":
        assert mia_params == []
        return
    unused = "norm_fused" if variant in ("mia_visual", "mia_concepts") else None
    for name, p in model.named_parameters():
        if ".mia." not in name:
            continue
        if unused and unused in name:
            assert p.grad is None, name  # I_N or T_N alone never passes the fused LayerNorm
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("baseline", ["visual_attention", "concept_attention"])
@pytest.mark.parametrize("variant", ["base", "mia", "mia_visual", "mia_concepts"])
@pytest.mark.parametrize("style", ["released", "show_attend_tell"])
def test_padded_positions_cannot_change_the_output(baseline, variant, style):
    model = _model(baseline, variant, decoder_style=style).eval()
    batch = tiny_batch()
    before = model(batch)
    poked = dict(batch)
    poked["features"] = batch["features"].masked_fill(~batch["feature_mask"][..., None], 1e3)
    poked["concepts"] = batch["concepts"].masked_fill(~batch["concept_mask"], 7)
    torch.testing.assert_close(model(poked), before)
    # And the decoder's attention puts no weight on masked memory positions.
    enc = model.encode(batch)
    ctx = model.decoder.prepare(enc)
    _, alpha = model.decoder.attention(ctx, torch.randn(3, 16))
    assert torch.all(alpha[~enc.mask] == 0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3))


@pytest.mark.parametrize("style", ["released", "show_attend_tell"])
def test_teacher_forcing_equals_step_by_step(style):
    model = _model("visual_attention", "mia", decoder_style=style).eval()
    batch = tiny_batch()
    inputs = batch["captions"][:, :-1]
    full = model(batch)
    dec = model.decoder
    ctx = dec.prepare(model.encode(batch))
    state = dec.init_state(ctx)
    steps = []
    for t in range(inputs.shape[1]):
        logits, state = dec.step(inputs[:, t], state, ctx)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_mia_attention_maps_for_figure_5():
    model = _model("visual_attention", "mia_n3").eval()
    out = model.mia_attention(tiny_batch())
    assert len(out.attention) == 3
    for w_visual, w_text in out.attention:
        assert w_visual.shape == w_text.shape == (3, 2, 4, 4)
        torch.testing.assert_close(w_visual.sum(-1), torch.ones(3, 2, 4))
    assert torch.all(out.attention[0][0][0, :, :, -1] == 0)  # image 0's padded region
    with pytest.raises(ValueError, match="no MIA"):
        _model().mia_attention(tiny_batch())


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_beam_one_is_greedy(variant):
    model = _model("visual_attention", variant, seed=3).eval()
    batch = tiny_batch(b=4)
    greedy = greedy_decode(model, batch, max_length=7)
    beam = beam_search(model, batch, beam_size=1, max_length=7)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.scores, greedy.scores)
    # The score is the teacher-forced log-probability of the returned words and <eos>.
    torch.testing.assert_close(sequence_log_prob(model, batch, greedy.tokens), greedy.scores,
                               rtol=1e-4, atol=1e-4)


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


def test_beam_search_is_exact_with_a_wide_beam_and_beats_greedy():
    torch.manual_seed(0)
    model = _model("visual_attention", "base", seed=5).eval()
    batch = {k: v[:1] for k, v in tiny_batch().items()}
    max_length, n_words = 3, VOCAB - 2
    best_score, best_tokens = _exhaustive_best(model, batch, max_length)
    beam = beam_search(model, batch, beam_size=n_words ** (max_length - 1), max_length=max_length)
    assert torch.equal(beam.tokens, best_tokens)
    assert float(beam.scores[0]) == pytest.approx(best_score, abs=1e-4)
    assert float(beam.scores[0]) >= float(greedy_decode(model, batch, max_length).scores[0]) - 1e-6


def test_beam_score_at_least_greedy_on_random_models():
    for seed in range(4):
        model = _model("visual_attention", "mia", seed=seed).eval()
        batch = tiny_batch(b=4, seed=seed)
        greedy = greedy_decode(model, batch, max_length=8)
        beam = beam_search(model, batch, beam_size=4, max_length=8)
        assert torch.all(beam.scores >= greedy.scores - 1e-5), seed
        torch.testing.assert_close(sequence_log_prob(model, batch, beam.tokens), beam.scores,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_beam_equals_one_image_at_a_time(beam_size):
    model = _model("concept_attention", "mia", seed=2).eval()
    batch = tiny_batch(b=3, seed=4)
    together = beam_search(model, batch, beam_size=beam_size, max_length=6)
    for i in range(3):
        alone = beam_search(model, {k: v[i:i + 1] for k, v in batch.items()}, beam_size, 6)
        assert torch.equal(alone.tokens[0], together.tokens[i])
        torch.testing.assert_close(alone.scores[0], together.scores[i], rtol=1e-5, atol=1e-5)


def test_image_without_any_real_concept_stays_finite():
    model = _model("concept_attention", "base").train()
    batch = tiny_batch()
    batch["concept_mask"][2] = False
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
