"""Captioning models: the five Table 1 baselines, their encoder variants, masks, and the released
wiring of each decoder re-derived by hand (float64, from the authors' Models/Main.py).

Everything runs on tiny random models (d=16, 2 heads) so the file takes seconds on one core.
Beam search is in test_captioning_beam.py, overfitting in test_captioning_overfit.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mia.captioning.beam import BOS, EOS, PAD
from mia.captioning.config import MIA_MODES, CaptionerConfig, TrainConfig
from mia.captioning.decoder import AdditiveAttention
from mia.captioning.models import BASELINES, build_captioner, trim_captions

VOCAB = 12
TABLE1 = ["visual_attention", "concept_attention", "visual_condition", "concept_condition",
          "visual_regional_attention"]
MIA_VARIANTS = ["mia", "mia_visual", "mia_concepts", "self_attention", "mia_n1", "mia_n3"]
ALL_VARIANTS = ["base", *MIA_VARIANTS]
#: Which modalities each baseline reads (released Models/Main.py; VRA as VA).
READS = {"visual_attention": {"visual"}, "concept_attention": {"concepts"},
         "visual_condition": {"visual", "concepts"}, "concept_condition": {"visual", "concepts"},
         "visual_regional_attention": {"visual"}}


def allowed(baseline: str, variant: str) -> bool:
    """Table 4's single-modality variants only where the baseline reads that modality."""
    need = {"mia_visual": "visual", "mia_concepts": "concepts"}.get(variant)
    return need is None or need in READS[baseline]


COMBOS = [(b, v) for b in TABLE1 for v in ALL_VARIANTS if allowed(b, v)]


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


def tiny_model(baseline: str = "visual_attention", variant: str = "base", seed: int = 0, **kw):
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
    with pytest.raises(ValueError, match=r"captioner\.cnn.*crop_size"):
        CaptionerConfig(cnn={"crop_size": 224})
    for key, value in (("mia_mode", "text"), ("concept_pooling", "max"), ("init", "xavier")):
        with pytest.raises(ValueError, match=f"captioner.{key}"):
            CaptionerConfig(**{key: value})


def test_released_recipe_is_the_default():
    """Defaults of the captioner are the authors' code (docs/RECIPE.md), option by option."""
    cfg = CaptionerConfig()
    assert (cfg.attention_dim, cfg.dropout, cfg.d_model, cfg.embed_dim) == (49, 0.5, 512, 512)
    assert (cfg.concept_pooling, cfg.init, cfg.decoder_style) == ("mean", "released", "released")
    assert cfg.fine_tune_cnn_after_epoch is None and not cfg.fine_tunes_cnn  # frozen features
    assert cfg.mia_mode == "released"
    assert (cfg.mia_attention_bias, cfg.mia_textual_layer_shortcut, cfg.mia_attention_dropout,
            cfg.mia_layer_dropout) == (True, False, 0.1, False)
    paper = CaptionerConfig(mia_mode="paper")
    assert (paper.mia_attention_bias, paper.mia_textual_layer_shortcut,
            paper.mia_attention_dropout, paper.mia_layer_dropout) == (False, True, 0.0, True)
    mixed = CaptionerConfig(mia_mode="paper", mia_attention_dropout=0.2)  # a given value wins
    assert mixed.mia_attention_dropout == 0.2 and mixed.mia_textual_layer_shortcut is True
    # Resolved values survive the round trip through a checkpoint's config dict.
    import dataclasses
    again = CaptionerConfig.from_dict(dataclasses.asdict(mixed))
    assert again == mixed
    assert TrainConfig().max_length == 19  # released decoding: range(1, 20)


@pytest.mark.parametrize("mode", sorted(MIA_MODES))
def test_mia_mode_reaches_the_module(mode):
    model = tiny_model("visual_attention", "mia", mia_mode=mode)
    mia = model.encoder.mia
    want = MIA_MODES[mode]
    for layer in (mia.visual_layer, mia.textual_layer):
        assert (layer.attention.w_q.bias is not None) == want["mia_attention_bias"]
        assert layer.attention.weight_dropout.p == want["mia_attention_dropout"]
        assert layer.layer_dropout == want["mia_layer_dropout"]
    assert (mia.textual_layer.norm_layer is not None) == want["mia_textual_layer_shortcut"]
    assert mia.visual_layer.norm_layer is not None  # the visual layer keeps its anchor in both


def test_registry_names_the_table1_baselines():
    assert set(TABLE1) <= set(BASELINES)
    with pytest.raises(ValueError, match="visual_attention"):
        build_captioner(tiny_cfg(baseline="no_such_model"), VOCAB)


@pytest.mark.parametrize(("baseline", "variant"), [
    ("visual_attention", "mia_concepts"), ("concept_attention", "mia_visual"),
    ("visual_regional_attention", "mia_concepts")])
def test_meaningless_single_modality_variant_is_refused(baseline, variant):
    with pytest.raises(ValueError, match=f"{variant}.*{baseline}.*base model"):
        tiny_model(baseline, variant)


def test_regional_attention_refuses_cnn_fine_tuning():
    with pytest.raises(ValueError, match="fine_tune_cnn_after_epoch.*region"):
        tiny_model("visual_regional_attention", fine_tune_cnn_after_epoch=8)


# ---------------------------------------------------------------- shapes, ties, structure


@pytest.mark.parametrize(("baseline", "variant"), COMBOS)
def test_logits_shape_and_tied_embedding(baseline, variant):
    model = tiny_model(baseline, variant).eval()
    batch = tiny_batch()
    logits = model(batch)
    assert logits.shape == (3, batch["captions"].shape[1] - 1, VOCAB)
    assert torch.isfinite(logits).all()
    # The concept embedding IS the caption word embedding (one parameter, not a copy).
    emb = model.decoder.embedding
    assert model.encoder.word_embedding is emb
    assert sum(p is emb.weight for p in model.parameters()) == 1
    if model.encoder.needs_concepts:
        n = batch["features"].shape[1]
        _, _, concepts, _ = model.encoder._inputs(batch)
        torch.testing.assert_close(concepts, emb.weight[batch["concepts"][:, :n]])


@pytest.mark.parametrize("baseline", TABLE1)
def test_mia_variants_change_only_the_image_side(baseline):
    """Every MIA variant adds ``encoder.mia`` and nothing else: the decoder (and the rest of the
    encoder) has the same parameters, and with the same weights and the same encoded image the
    decoder computes the same logits."""
    base = tiny_model(baseline, "base").eval()
    batch = tiny_batch()
    base_shapes = {n: p.shape for n, p in base.named_parameters()}
    for variant in MIA_VARIANTS:
        if not allowed(baseline, variant):
            continue
        model = tiny_model(baseline, variant, seed=1).eval()
        shapes = {n: p.shape for n, p in model.named_parameters() if ".mia." not in n}
        decoder_shapes = {n: s for n, s in base_shapes.items() if n.startswith("decoder.")}
        assert {n: s for n, s in shapes.items() if n.startswith("decoder.")} == decoder_shapes
        model.decoder.load_state_dict(base.decoder.state_dict())
        enc = model.encode(batch)
        torch.testing.assert_close(model.decoder(enc, batch["captions"][:, :-1]),
                                   base.decoder(enc, batch["captions"][:, :-1]))
        # The encoder beyond MIA: the same modules (visual projection only where V is read).
        extra = {n for n in shapes if n.startswith("encoder.")} - set(base_shapes)
        assert extra <= {"encoder.visual_proj.1.weight", "encoder.visual_proj.1.bias"}, extra


@pytest.mark.parametrize("baseline", ["visual_condition", "concept_condition"])
@pytest.mark.parametrize("variant", ["base", "mia"])
def test_condition_models_have_no_attention(baseline, variant):
    model = tiny_model(baseline, variant)
    decoder_names = [n for n, _ in model.decoder.named_parameters()]
    assert not any("attention" in n for n in decoder_names), decoder_names
    assert not any(isinstance(m, AdditiveAttention) for m in model.modules())
    assert sorted(decoder_names) == sorted([
        "embedding.weight", "visual_pool.linear.weight", "visual_pool.linear.bias",
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0",
        "output.weight", "output.bias"])  # t_a is a plain mean: no parameters


@pytest.mark.parametrize("baseline", ["visual_attention", "concept_attention",
                                      "visual_regional_attention"])
def test_attention_is_the_released_block(baseline):
    """Hidden size 49 by default (Linear(512, 49), Linear(49, 1)), no biases anywhere."""
    torch.manual_seed(0)
    model = build_captioner(CaptionerConfig(baseline=baseline, feature_dim=8), VOCAB)
    att = model.decoder.attention
    assert (att.w_memory.in_features, att.w_memory.out_features) == (512, 49)
    assert (att.w_hidden.in_features, att.w_hidden.out_features) == (512, 49)
    assert (att.w_score.in_features, att.w_score.out_features) == (49, 1)
    assert att.w_memory.bias is None and att.w_hidden.bias is None and att.w_score.bias is None
    pool = model.decoder.pool
    assert (pool.linear is None) == (baseline == "concept_attention")  # t_a: no linear


def test_released_initialisation():
    """``init: released`` = the authors' init_weights: zero biases on v_a, the classifier and the
    visual projection; Kaiming-normal classifier; MIA's W^Q ~ N(0, 2 / (d + d_k))."""
    torch.manual_seed(0)
    cfg = CaptionerConfig(baseline="visual_attention", variant="mia", feature_dim=256,
                          d_model=128, embed_dim=128, attention_dim=49, mia_heads=2, mia_d_ff=64)
    model = build_captioner(cfg, 2000)
    dec, enc = model.decoder, model.encoder
    for bias in (dec.output.bias, dec.pool.linear.bias, enc.visual_proj[1].bias):
        assert torch.count_nonzero(bias) == 0
    assert dec.output.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    bound = math.sqrt(6 / 256)  # Kaiming-uniform, fan in 256, gain sqrt(2)
    assert enc.visual_proj[1].weight.abs().max().item() == pytest.approx(bound, rel=0.02)
    w_q = enc.mia.visual_layer.attention.w_q.weight
    assert w_q.std().item() == pytest.approx(math.sqrt(2 / (128 + 64)), rel=0.05)
    torch.manual_seed(0)
    plain = build_captioner(CaptionerConfig(**{**cfg.__dict__, "init": "pytorch"}), 2000)
    assert torch.count_nonzero(plain.decoder.output.bias) > 0


# ---------------------------------------------------------------- encoder variants


@pytest.mark.parametrize(("baseline", "variant"), COMBOS)
def test_encoder_outputs_per_variant(baseline, variant):
    """What reaches the decoder, recomputed from the encoder's own inputs and MIA's output."""
    model = tiny_model(baseline, variant).eval()
    batch = tiny_batch()
    enc = model.encode(batch)
    n = batch["features"].shape[1]
    fm, cm = batch["feature_mask"], batch["concept_mask"][:, :n]
    visual = torch.relu(model.encoder.visual_proj[1](batch["features"])) \
        if model.encoder.visual_proj is not None else None
    concepts = model.decoder.embedding(batch["concepts"][:, :n])
    reads = READS[baseline]
    if variant == "base":
        assert model.encoder.mia is None and enc.mia is None
        want_v, want_c = (visual, fm), (concepts, cm)
    else:
        mia = model.encoder.mia
        assert mia.mode == ("self" if variant == "self_attention" else "mutual")
        expected_n = {"mia_n1": 1, "mia_n3": 3}.get(variant, 2)
        assert mia.iterations == expected_n and len(enc.mia.steps) == expected_n
        out = mia(visual, concepts, fm, cm)
        fused = (out.fused, fm | cm)
        want_v = {"mia_visual": (out.visual, fm), "mia_concepts": (visual, fm)}.get(variant, fused)
        want_c = {"mia_visual": (concepts, cm), "mia_concepts": (out.concepts, cm)}.get(
            variant, fused)
    for name, want, mask_name in (("visual", want_v, "visual_mask"),
                                  ("concepts", want_c, "concept_mask")):
        got = getattr(enc, name)
        if name.rstrip("s") not in {r.rstrip("s") for r in reads}:
            assert got is None and getattr(enc, mask_name) is None
            continue
        torch.testing.assert_close(got, want[0])
        assert torch.equal(getattr(enc, mask_name), want[1])
    source = "visual" if "visual" in reads else "concepts"
    assert enc.memory is getattr(enc, source)


@pytest.mark.parametrize("baseline", ["visual_condition", "concept_condition"])
@pytest.mark.parametrize("variant", ["mia", "self_attention", "mia_n3"])
def test_condition_models_read_the_fused_output_in_both_slots(baseline, variant):
    """``V = T = SGIR`` (released Encoder2Decoder): both pooled vectors come from the fused
    output, so VC and CC w/ MIA differ only in where the linear map W_a sits."""
    model = tiny_model(baseline, variant).eval()
    batch = tiny_batch()
    enc = model.encode(batch)
    assert enc.visual is enc.concepts is enc.mia.fused
    ctx = model.decoder.prepare(enc)
    mean = _masked_mean(enc.mia.fused, enc.visual_mask)
    linear = model.decoder.visual_pool.linear
    prime, addend = (mean, linear(mean)) if baseline == "visual_condition" else \
        (linear(mean), mean)
    torch.testing.assert_close(ctx.prime, prime)
    torch.testing.assert_close(ctx.addend, addend)


def test_too_few_concepts_is_an_error_naming_the_fix():
    batch = tiny_batch(k=3)
    with pytest.raises(ValueError, match="at least k=4"):
        tiny_model(variant="mia").encode(batch)


@pytest.mark.parametrize(("baseline", "variant"), [
    c for c in COMBOS if c[1] in ("base", "mia", "mia_visual", "mia_concepts")])
def test_gradients_reach_mia_only_when_present(baseline, variant):
    model = tiny_model(baseline, variant).train()
    batch = tiny_batch()
    model(batch).logsumexp(-1).sum().backward()
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


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(("baseline", "variant"), [
    c for c in COMBOS if c[1] in ("base", "mia", "mia_visual", "mia_concepts")])
def test_padded_positions_cannot_change_the_output(baseline, variant):
    model = tiny_model(baseline, variant).eval()
    batch = tiny_batch()
    before = model(batch)
    poked = dict(batch)
    poked["features"] = batch["features"].masked_fill(~batch["feature_mask"][..., None], 1e3)
    poked["concepts"] = batch["concepts"].masked_fill(~batch["concept_mask"], 7)
    torch.testing.assert_close(model(poked), before)
    enc = model.encode(batch)
    if hasattr(model.decoder, "attention"):  # no weight on masked memory positions
        ctx = model.decoder.prepare(enc)
        _, alpha = model.decoder.attention(ctx, torch.randn(3, 16))
        assert torch.all(alpha[~enc.mask] == 0)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(3))


def test_show_attend_tell_style_masks_too():
    model = tiny_model("visual_attention", "mia", decoder_style="show_attend_tell").eval()
    batch = tiny_batch()
    poked = dict(batch, features=batch["features"].masked_fill(
        ~batch["feature_mask"][..., None], 1e3))
    torch.testing.assert_close(model(poked), model(batch))
    with pytest.raises(ValueError, match="no attention"):
        tiny_model("visual_condition", decoder_style="show_attend_tell")


def test_image_without_any_real_concept_stays_finite():
    for baseline in ("concept_attention", "concept_condition"):
        model = tiny_model(baseline, "base").train()
        batch = tiny_batch()
        batch["concept_mask"][2] = False
        logits = model(batch)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()
                   if p.grad is not None)


# ---------------------------------------------------------------- released wiring by hand


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


def _lstm(lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM written out (gates i, f, g, o as torch orders them); x (B, T, e)."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    outs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1), h, c


class _Scale(nn.Module):
    """Deterministic stand-in for a dropout in training mode: x -> c x."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return self.c * x


def _derive(model, batch: dict[str, Tensor], drop: dict[str, float]) -> Tensor:
    """Logits of the released wiring (Models/Main.py), written from the equations.

    ``drop`` holds the factor each dropout stands for: ``encoder`` (before W of V), ``pool``
    (before W_a), ``attention`` (on M for the keys, on h_t, on the tanh), ``output`` (before the
    classifier). 1 everywhere is eval mode.
    """
    cfg, enc_m, dec = model.cfg, model.encoder, model.decoder
    n = batch["features"].shape[1]
    fm, cm = batch["feature_mask"], batch["concept_mask"][:, :n]
    W = enc_m.visual_proj[1] if enc_m.visual_proj is not None else None
    V = torch.relu((drop["encoder"] * batch["features"]) @ W.weight.T + W.bias) \
        if W is not None else None
    E = dec.embedding.weight
    T = E[batch["concepts"][:, :n]]
    words = E[batch["captions"][:, :-1]]  # (B, L, e)
    b, hid = words.shape[0], dec.lstm.hidden_size
    zero = torch.zeros(b, hid, dtype=words.dtype)

    def v_a(pool) -> Tensor:
        return (drop["pool"] * _masked_mean(V, fm)) @ pool.linear.weight.T + pool.linear.bias

    if cfg.baseline in ("visual_condition", "concept_condition"):
        t_a = _masked_mean(T, cm)
        va = v_a(dec.visual_pool)
        prime, addend = (t_a, va) if cfg.baseline == "visual_condition" else (va, t_a)
        _, h, c = _lstm(dec.lstm, prime[:, None], zero, zero)
        hs, _, _ = _lstm(dec.lstm, words + addend[:, None], h, c)
        return (drop["output"] * hs) @ dec.output.weight.T + dec.output.bias
    M, mask = (T, cm) if cfg.baseline == "concept_attention" else (V, fm)
    addend = _masked_mean(T, cm) if cfg.baseline == "concept_attention" else v_a(dec.pool)
    hs, _, _ = _lstm(dec.lstm, words + addend[:, None], zero, zero)
    att, a = dec.attention, drop["attention"]
    keys = (a * M) @ att.w_memory.weight.T  # (B, n, 49)
    z = torch.tanh(keys[:, None] + ((a * hs) @ att.w_hidden.weight.T)[:, :, None])
    scores = ((a * z) @ att.w_score.weight.T).squeeze(-1)  # (B, L, n)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    context = scores.softmax(-1) @ M  # M itself, not its dropped-out copy
    return (drop["output"] * (context + hs)) @ dec.output.weight.T + dec.output.bias


EVAL = {"encoder": 1.0, "pool": 1.0, "attention": 1.0, "output": 1.0}


@pytest.mark.parametrize("baseline", TABLE1)
def test_released_wiring_by_hand_in_eval_mode(baseline):
    model = tiny_model(baseline, "base").double().eval()
    batch = tiny_batch()
    batch["features"] = batch["features"].double()
    with torch.no_grad():
        got = model(batch)
        want = _derive(model, batch, EVAL)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("baseline", TABLE1)
def test_released_dropout_placement_by_hand(baseline):
    """Training mode, every dropout replaced by a distinct constant factor: where each factor
    enters the derivation is where the released code applies that dropout."""
    model = tiny_model(baseline, "base").double().train()
    factors = {"encoder": 0.9, "pool": 0.8, "attention": 0.7, "output": 0.6}
    if model.encoder.visual_proj is not None:
        model.encoder.visual_proj[0] = _Scale(factors["encoder"])
    dec = model.decoder
    dec.dropout = _Scale(factors["output"])
    for pool in (getattr(dec, "pool", None), getattr(dec, "visual_pool", None),
                 getattr(dec, "concept_pool", None)):
        if pool is not None and pool.dropout is not None:
            pool.dropout = _Scale(factors["pool"])
    if hasattr(dec, "attention"):
        dec.attention.dropout = _Scale(factors["attention"])
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())  # all replaced
    batch = tiny_batch()
    batch["features"] = batch["features"].double()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), _derive(model, batch, factors),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("baseline", ["concept_attention", "concept_condition"])
def test_concept_pooling_linear_option(baseline):
    """``concept_pooling: linear`` (the pre-fix behaviour) gives t_a its own Linear + dropout."""
    model = tiny_model(baseline, "base", concept_pooling="linear").eval()
    pool = model.decoder.pool if baseline == "concept_attention" else model.decoder.concept_pool
    assert pool.linear is not None and pool.dropout is not None
    with pytest.raises(ValueError, match="concept_pooling"):
        tiny_model(baseline, "base", embed_dim=12)


# ---------------------------------------------------------------- teacher forcing = stepping


@pytest.mark.parametrize(("baseline", "style"), [
    *[(b, "released") for b in TABLE1], ("visual_attention", "show_attend_tell")])
@pytest.mark.parametrize("variant", ["base", "mia"])
def test_teacher_forcing_equals_step_by_step(baseline, style, variant):
    model = tiny_model(baseline, variant, decoder_style=style).eval()
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
    model = tiny_model("visual_attention", "mia_n3").eval()
    out = model.mia_attention(tiny_batch())
    assert len(out.attention) == 3
    for w_visual, w_text in out.attention:
        assert w_visual.shape == w_text.shape == (3, 2, 4, 4)
        torch.testing.assert_close(w_visual.sum(-1), torch.ones(3, 2, 4))
    assert torch.all(out.attention[0][0][0, :, :, -1] == 0)  # image 0's padded region
    with pytest.raises(ValueError, match="no MIA"):
        tiny_model().mia_attention(tiny_batch())


def test_trim_captions_drops_padding_columns_only():
    batch = tiny_batch(length=6)
    wide = dict(batch, captions=torch.nn.functional.pad(batch["captions"], (0, 5)))
    trimmed = trim_captions(wide)
    assert torch.equal(trimmed["captions"], batch["captions"])
    model = tiny_model().eval()
    torch.testing.assert_close(model(trimmed), model(batch))
