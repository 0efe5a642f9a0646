"""MutualIterativeAttention against a float64 re-derivation of Eq. (1)-(7) of the MIA paper.

The reference below is written from the paper (Section 2.2, footnote 3), not from the module: it
reads the learned matrices out of the module's ``state_dict`` and recomputes every head, every
sub-layer and every iteration with plain tensor ops, so a wrong shortcut, a swapped query/source,
a missing LayerNorm or per-iteration parameters in the module all show up as a mismatch.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from mia import MIAOutput, MutualIterativeAttention
from mia.attention import MutualAttentionLayer

TOL = 1e-10  # float64: the module and the derivation differ only by summation order
EPS = 1e-5  # LayerNorm epsilon (nn.LayerNorm default; the paper's Transformer [28] value)

Params = dict[str, Tensor]


# ----------------------------------------------------------------------------------------------
# The derivation, from the paper.
# ----------------------------------------------------------------------------------------------

def _layer_norm(x: Tensor, gain: Tensor, bias: Tensor) -> Tensor:
    """LayerNorm [4] written out: per position, mean and BIASED variance over the features."""
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.shape[-1]
    return (x - mean) / torch.sqrt(var + EPS) * gain + bias


def _right(p: Params, name: str) -> Tensor:
    """A linear map as the paper writes it, X W (nn.Linear stores W transposed)."""
    return p[name].T


def _identity(x: Tensor) -> Tensor:
    return x


def _multi_head(p: Params, pre: str, query: Tensor, source: Tensor, heads: int,
                key_mask: Tensor | None, weight_drop: Callable[[Tensor], Tensor] = _identity
                ) -> tuple[Tensor, Tensor]:
    """Eq. (1)-(2): per head i, softmax(Q W_i^Q (S W_i^K)^T / sqrt(d_k)) S W_i^V; concat; W^O.

    ``weight_drop`` is what the released code applies to the softmax weights of all heads at
    once, (B, heads, m, n), before they multiply the values (dropout; the identity in the paper).
    """
    d = query.shape[-1]
    d_k = d // heads
    w_q = _right(p, f"{pre}.w_q.weight")  # (d_h, d_h) = [W_1^Q .. W_k^Q]
    w_kv = _right(p, f"{pre}.w_kv.weight")  # (d_h, 2 d_h) = [W_1^K .. W_k^K | W_1^V .. W_k^V]
    w_k, w_v = w_kv[:, :d], w_kv[:, d:]
    w_o = _right(p, f"{pre}.w_o.weight")
    b_q = p.get(f"{pre}.w_q.bias", torch.zeros(d, dtype=query.dtype))
    b_kv = p.get(f"{pre}.w_kv.bias", torch.zeros(2 * d, dtype=query.dtype))
    b_o = p.get(f"{pre}.w_o.bias", torch.zeros(d, dtype=query.dtype))
    outputs, weights = [], []
    for i in range(heads):
        cols = slice(i * d_k, (i + 1) * d_k)
        q = query @ w_q[:, cols] + b_q[cols]  # (B, m, d_k)
        k = source @ w_k[:, cols] + b_kv[:d][cols]  # (B, n, d_k)
        scores = q @ k.transpose(1, 2) / math.sqrt(d_k)  # (B, m, n)
        if key_mask is not None:  # padded source positions are not keys
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        att = torch.exp(scores - scores.max(-1, keepdim=True).values)
        att = att / att.sum(-1, keepdim=True)
        weights.append(att)
    dropped = weight_drop(torch.stack(weights, dim=1))  # (B, heads, m, n)
    for i in range(heads):
        cols = slice(i * d_k, (i + 1) * d_k)
        v = source @ w_v[:, cols] + b_kv[d:][cols]  # (B, n, d_k)
        outputs.append(dropped[:, i] @ v)
    return torch.cat(outputs, dim=-1) @ w_o + b_o, torch.stack(weights, dim=1)


def _fcn(p: Params, pre: str, x: Tensor) -> Tensor:
    """Eq. (3): max(0, X W1 + b1) W2 + b2."""
    hidden = torch.clamp(x @ _right(p, f"{pre}.w_1.weight") + p[f"{pre}.w_1.bias"], min=0.0)
    return hidden @ _right(p, f"{pre}.w_2.weight") + p[f"{pre}.w_2.bias"]


def _mutual_layer(p: Params, pre: str, query: Tensor, source: Tensor, heads: int,
                  layer_shortcut: bool, key_mask: Tensor | None,
                  drop: Callable[[Tensor], Tensor] = _identity,
                  weight_drop: Callable[[Tensor], Tensor] = _identity,
                  layer_dropout: bool = True) -> tuple[Tensor, Tensor]:
    """One mutual-attention layer; ``drop`` stands for dropout (the identity in eval mode).

    Attention sub-layer: shortcut from the SOURCE (footnote 3). FCN sub-layer: ordinary shortcut.
    Layer post-processing (2.2.2): the same dropout-shortcut-LayerNorm, shortcut from the layer's
    input (the source features being refined); the released code leaves out that dropout
    (``layer_dropout=False``) and, on the textual side, the whole step (``layer_shortcut``).
    """
    att, weights = _multi_head(p, f"{pre}.attention", query, source, heads, key_mask,
                               weight_drop)
    h = _layer_norm(source + drop(att), p[f"{pre}.norm_attention.weight"],
                    p[f"{pre}.norm_attention.bias"])
    h = _layer_norm(h + drop(_fcn(p, f"{pre}.ffn", h)), p[f"{pre}.norm_ffn.weight"],
                    p[f"{pre}.norm_ffn.bias"])
    if layer_shortcut:
        h = _layer_norm(source + (drop(h) if layer_dropout else h),
                        p[f"{pre}.norm_layer.weight"], p[f"{pre}.norm_layer.bias"])
    if key_mask is not None:
        h = h * key_mask[..., None]
    return h, weights


def reference_mia(p: Params, image: Tensor, text: Tensor, iterations: int, heads: int,
                  mode: str = "mutual", order: str = "visual_first",
                  textual_layer_shortcut: bool = True,
                  drop: Callable[[Tensor], Tensor] = _identity,
                  weight_drop: Callable[[Tensor], Tensor] = _identity,
                  layer_dropout: bool = True) -> dict[str, object]:
    """Eq. (4)-(7) with ONE visual and ONE textual layer reused at every iteration.

    mutual, visual first (the paper): I_k = layer_v(Q=T_{k-1}, S=I_{k-1}),
    T_k = layer_t(Q=I_k, S=T_{k-1}). Concepts first (the reversed order of 2.2.1): T_k from
    (Q=I_{k-1}, S=T_{k-1}), then I_k from (Q=T_k, S=I_{k-1}). Self (3.3): each modality queries
    itself. MIA = LayerNorm(I_N + T_N).
    """

    drops = dict(drop=drop, weight_drop=weight_drop, layer_dropout=layer_dropout)

    def visual(i: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _mutual_layer(p, "visual_layer", t if mode == "mutual" else i, i, heads, True,
                             None, **drops)

    def textual(i: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _mutual_layer(p, "textual_layer", i if mode == "mutual" else t, t, heads,
                             textual_layer_shortcut, None, **drops)

    steps, attention = [], []
    i, t = image, text
    for _ in range(iterations):
        if order == "visual_first":
            i, w_v = visual(i, t)
            t, w_t = textual(i, t)
        else:
            t, w_t = textual(i, t)
            i, w_v = visual(i, t)
        steps.append((i, t))
        attention.append((w_v, w_t))
    fused = _layer_norm(i + t, p["norm_fused.weight"], p["norm_fused.bias"])
    return {"visual": i, "concepts": t, "fused": fused, "steps": steps, "attention": attention}


# ----------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------

def _module(d: int = 32, heads: int = 4, d_ff: int = 48, iterations: int = 2,
            dropout: float = 0.1, seed: int = 0, **options: object) -> MutualIterativeAttention:
    """A float64 module in eval mode with non-trivial LayerNorm gains/biases.

    LayerNorm starts at gain 1 / bias 0, which would hide a swapped gain and bias; every
    parameter is redrawn so that each one matters.
    """
    torch.manual_seed(seed)
    m = MutualIterativeAttention(d_model=d, heads=heads, d_ff=d_ff, iterations=iterations,
                                 dropout=dropout, **options).double().eval()
    with torch.no_grad():
        for name, param in m.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param) if name.endswith("weight")
                            else 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    return m


def _inputs(b: int = 3, n: int = 7, d: int = 32, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, d, generator=g, dtype=torch.float64),
            torch.randn(b, n, d, generator=g, dtype=torch.float64))


def _close(a: Tensor, b: Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= tol)


def _assert_matches(out: MIAOutput, ref: dict[str, object], iterations: int,
                    weights: bool) -> None:
    assert _close(out.visual, ref["visual"]), "I_N differs from Eq. (6)"
    assert _close(out.concepts, ref["concepts"]), "T_N differs from Eq. (6)"
    assert _close(out.fused, ref["fused"]), "MIA(I, T) differs from Eq. (7)"
    assert len(out.steps) == iterations
    for k, ((i_k, t_k), (ri, rt)) in enumerate(zip(out.steps, ref["steps"], strict=True), 1):
        assert _close(i_k, ri), f"I_{k} differs"
        assert _close(t_k, rt), f"T_{k} differs"
    if weights:
        assert out.attention is not None and len(out.attention) == iterations
        for k, ((w_v, w_t), (rw_v, rw_t)) in enumerate(
                zip(out.attention, ref["attention"], strict=True), 1):
            assert _close(w_v, rw_v), f"visual-layer attention weights of iteration {k} differ"
            assert _close(w_t, rw_t), f"textual-layer attention weights of iteration {k} differ"
    else:
        assert out.attention is None


def _loss(x: Tensor, seed: int = 5) -> Tensor:
    """A random linear read-out: sum() alone is blind to a LayerNorm output with gain 1, since
    the normalised features of every position sum to zero."""
    g = torch.Generator().manual_seed(seed)
    return (x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum()


# ----------------------------------------------------------------------------------------------
# Eq. (1)-(7).
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("heads", [1, 4, 8])
@pytest.mark.parametrize("need_weights", [False, True])
def test_matches_paper_derivation(iterations: int, heads: int, need_weights: bool) -> None:
    m = _module(d=32, heads=heads, iterations=iterations)
    image, text = _inputs(d=32)
    with torch.no_grad():
        out = m(image, text, need_weights=need_weights)
    ref = reference_mia(m.state_dict(), image, text, iterations, heads)
    _assert_matches(out, ref, iterations, need_weights)


def test_attention_weights_are_distributions_over_the_source() -> None:
    m = _module(iterations=2)
    image, text = _inputs()
    with torch.no_grad():
        out = m(image, text, need_weights=True)
    for w_v, w_t in out.attention:
        for w in (w_v, w_t):
            assert w.shape == (3, 4, 7, 7)
            assert (w >= 0).all() and _close(w.sum(-1), torch.ones(3, 4, 7))


@pytest.mark.parametrize(("options", "kwargs"), [
    ({"mode": "self"}, {"mode": "self"}),
    ({"order": "concepts_first"}, {"order": "concepts_first"}),
    ({"textual_layer_shortcut": False}, {"textual_layer_shortcut": False}),
    ({"mode": "self", "order": "concepts_first"}, {"mode": "self", "order": "concepts_first"}),
    ({"attention_bias": True}, {}),  # the derivation reads the Q/K/V/O biases from state_dict
])
@pytest.mark.parametrize("iterations", [1, 2])
def test_options_match_their_derivation(options: dict, kwargs: dict, iterations: int) -> None:
    m = _module(iterations=iterations, **options)
    image, text = _inputs()
    with torch.no_grad():
        out = m(image, text, need_weights=True)
    ref = reference_mia(m.state_dict(), image, text, iterations, heads=4, **kwargs)
    _assert_matches(out, ref, iterations, weights=True)


def _run_with(params: Params, iterations: int, **options: object) -> MIAOutput:
    """The same weights in a module built with other options (missing keys stay unused)."""
    m = _module(iterations=iterations, **options)
    m.load_state_dict(params, strict=False)
    image, text = _inputs()
    with torch.no_grad():
        return m(image, text)


def test_variants_differ_from_the_paper_default() -> None:
    params = _module(iterations=2).state_dict()
    default = _run_with(params, 2)
    for options in ({"mode": "self"}, {"order": "concepts_first"}):
        variant = _run_with(params, 2, **options)
        for name in ("visual", "concepts", "fused"):
            assert not torch.allclose(getattr(default, name), getattr(variant, name),
                                      atol=1e-3), f"{options} leaves {name} unchanged"
    released = _run_with(params, 2, textual_layer_shortcut=False)
    assert not torch.allclose(default.concepts, released.concepts, atol=1e-3)
    assert not torch.allclose(default.visual, released.visual, atol=1e-3)  # via T_1 in round 2
    # Only the textual layer changes: with one round, I_1 is computed before any textual layer.
    one_default = _run_with(params, 1)
    one_released = _run_with(params, 1, textual_layer_shortcut=False)
    assert _close(one_default.visual, one_released.visual)
    assert not torch.allclose(one_default.concepts, one_released.concepts, atol=1e-3)


class _Scale(nn.Module):
    """A deterministic stand-in for dropout in training mode: x -> c x (counts its calls)."""

    def __init__(self, c: float, p: float) -> None:
        super().__init__()
        self.c, self.p, self.calls = c, p, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.c * x


class _FixedMask(nn.Module):
    """A deterministic stand-in for dropout on the attention weights: the same 0 / (1/0.7) mask
    for every tensor of a given shape (drawn from a fixed seed), like inverted dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.calls = p, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        g = torch.Generator().manual_seed(1234)
        keep = torch.rand(x.shape, generator=g, dtype=x.dtype) > 0.3
        return x * keep / 0.7


def _with_stand_ins(m: MutualIterativeAttention) -> list[nn.Module]:
    """Replace every dropout of ``m`` by its deterministic stand-in; return the stand-ins."""
    out: list[nn.Module] = []
    for layer in (m.visual_layer, m.textual_layer):
        assert isinstance(layer, MutualAttentionLayer)
        layer.dropout = _Scale(0.5, layer.dropout.p)
        layer.attention.weight_dropout = _FixedMask(layer.attention.weight_dropout.p)
        out += [layer.dropout, layer.attention.weight_dropout]
    return out


RELEASED = {"attention_bias": True, "textual_layer_shortcut": False, "attention_dropout": 0.1,
            "layer_dropout": False}


@pytest.mark.parametrize("options", [
    {},  # the paper's text, with its dropouts made deterministic
    {"attention_dropout": 0.1},
    {"layer_dropout": False},
    {"textual_layer_shortcut": False},
    {"attention_bias": True},
    RELEASED,
], ids=["paper", "attention_dropout", "no_layer_dropout", "no_textual_shortcut", "bias",
        "released"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_training_mode_dropouts_match_their_derivation(options: dict, need_weights: bool) -> None:
    """Each released option re-derived by hand in TRAINING mode, where the dropout ones act.

    Every dropout is replaced by a deterministic stand-in (sub-layer dropout: x -> 0.5 x;
    attention-weight dropout: a fixed mask), so the derivation can apply the same functions at
    the places the option says: weight dropout between the softmax and the values, and no
    dropout before the layer-level LayerNorm when ``layer_dropout`` is False.
    """
    m = _module(iterations=2, **options).train()
    stand_ins = _with_stand_ins(m)
    image, text = _inputs()
    with torch.no_grad():
        out = m(image, text, need_weights=need_weights)
    calls = [s.calls for s in stand_ins]  # before the derivation reuses the mask stand-in
    p_weights = options.get("attention_dropout", 0.0)
    ref = reference_mia(
        m.state_dict(), image, text, 2, heads=4,
        textual_layer_shortcut=options.get("textual_layer_shortcut", True),
        drop=lambda x: 0.5 * x,
        weight_drop=stand_ins[1] if p_weights > 0 else _identity,
        layer_dropout=options.get("layer_dropout", True))
    _assert_matches(out, ref, 2, weights=need_weights)
    # Per visual-layer call (2 iterations): attention and FCN sub-layers, plus the layer step
    # unless removed; the weight dropout once per attention call when p > 0, never when p = 0.
    per_call = 2 + (1 if options.get("layer_dropout", True) else 0)
    assert calls[0] == 2 * per_call
    assert calls[1] == (2 if p_weights > 0 else 0)


def test_attention_weight_dropout_acts_in_training_only() -> None:
    """Real dropout on the weights: seeded, active in training, absent in eval; the weights
    returned for Figure 5 stay distributions (taken before the dropout)."""
    m = _module(iterations=2, dropout=0.0, attention_dropout=0.5)
    image, text = _inputs()

    def run(seed: int) -> MIAOutput:
        torch.manual_seed(seed)
        with torch.no_grad():
            return m.train()(image, text, need_weights=True)

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first.fused, again.fused)
    assert not torch.allclose(first.fused, other.fused, atol=1e-3)
    for w_v, w_t in first.attention:
        assert _close(w_v.sum(-1), torch.ones_like(w_v.sum(-1)))
        assert _close(w_t.sum(-1), torch.ones_like(w_t.sum(-1)))
    with torch.no_grad():
        evaluated = m.eval()(image, text)
    assert _close(evaluated.fused, reference_mia(m.state_dict(), image, text, 2, 4)["fused"])
    # Without weight dropout, training mode with dropout 0 is the eval-mode function.
    plain = _module(iterations=2, dropout=0.0).train()
    with torch.no_grad():
        assert _close(plain(image, text).fused,
                      reference_mia(plain.state_dict(), image, text, 2, 4)["fused"])


def test_bad_attention_dropout_is_refused() -> None:
    with pytest.raises(ValueError, match="attention_dropout"):
        MutualIterativeAttention(d_model=32, heads=4, d_ff=48, attention_dropout=1.0)


def test_self_mode_never_mixes_modalities() -> None:
    """Self-attention (3.3): I_N depends on I only and T_N on T only."""
    m = _module(iterations=2, mode="self")
    image, text = _inputs()
    other_image, other_text = _inputs(seed=9)
    with torch.no_grad():
        base = m(image, text)
        new_text = m(image, other_text)
        new_image = m(other_image, text)
    assert _close(base.visual, new_text.visual) and _close(base.concepts, new_image.concepts)
    assert not torch.allclose(base.concepts, new_text.concepts, atol=1e-3)
    assert not torch.allclose(base.visual, new_image.visual, atol=1e-3)


def test_mutual_mode_values_stay_homogeneous() -> None:
    """Footnote 3 / 2.2.1: concepts act only as attention weights in the visual layer.

    If every visual feature is the same vector, any mixture of them is that vector, so I_1 cannot
    depend on the concepts at all; a query shortcut (Vaswani et al.) would inject them.
    """
    m = _module(iterations=1)
    image, text = _inputs()
    image = image[:, :1].expand_as(image).clone()
    _, other_text = _inputs(seed=4)
    with torch.no_grad():
        a, b = m(image, text), m(image, other_text)
    assert _close(a.visual, b.visual)
    assert not torch.allclose(a.concepts, b.concepts, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# One visual and one textual layer, shared across iterations.
# ----------------------------------------------------------------------------------------------

def test_parameter_count_is_two_layers_plus_fused_norm_for_any_n() -> None:
    d, d_ff = 32, 48
    per_layer = 4 * d * d + (d * d_ff + d_ff + d_ff * d + d) + 3 * 2 * d  # Eq. (1)-(3), 3 LNs
    expected = 2 * per_layer + 2 * d  # + LayerNorm of Eq. (7)
    keys = None
    for n in (1, 2, 3, 6):
        m = MutualIterativeAttention(d_model=d, heads=4, d_ff=d_ff, iterations=n)
        assert sum(p.numel() for p in m.parameters()) == expected
        keys = keys or sorted(m.state_dict())
        assert sorted(m.state_dict()) == keys


def test_visual_layer_weights_drive_every_step() -> None:
    m = _module(iterations=3)
    image, text = _inputs()
    with torch.no_grad():
        before = m(image, text)
        m.visual_layer.ffn.w_2.weight.add_(0.5 * torch.randn_like(m.visual_layer.ffn.w_2.weight))
        after = m(image, text)
    for k, ((i0, t0), (i1, t1)) in enumerate(zip(before.steps, after.steps, strict=True), 1):
        assert not torch.allclose(i0, i1, atol=1e-3), f"I_{k} ignores the shared visual layer"
        assert not torch.allclose(t0, t1, atol=1e-3), f"T_{k} ignores the refined I_{k}"


def test_textual_layer_change_leaves_first_visual_step_alone() -> None:
    """Visual first: I_1 is computed from (T_0, I_0) before any textual layer runs."""
    m = _module(iterations=2)
    image, text = _inputs()
    with torch.no_grad():
        before = m(image, text)
        m.textual_layer.attention.w_o.weight.mul_(-1.5)
        after = m(image, text)
    assert _close(before.steps[0][0], after.steps[0][0])
    assert not torch.allclose(before.steps[0][1], after.steps[0][1], atol=1e-3)
    assert not torch.allclose(before.steps[1][0], after.steps[1][0], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Padding.
# ----------------------------------------------------------------------------------------------

def _masks() -> tuple[Tensor, Tensor]:
    """Different patterns per batch item and per modality, including interior holes."""
    visual = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                           [1, 1, 1, 1, 0, 0, 0],
                           [1, 0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    concepts = torch.tensor([[1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0, 0, 0],
                             [0, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    return visual, concepts


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("options", [{}, {"mode": "self"}, {"order": "concepts_first"}])
def test_padded_values_never_reach_real_positions(need_weights: bool, options: dict) -> None:
    m = _module(iterations=2, **options)
    image, text = _inputs()
    v_mask, c_mask = _masks()
    noise_i, noise_t = _inputs(seed=11)
    image2 = torch.where(v_mask[..., None], image, 1e3 * noise_i)
    text2 = torch.where(c_mask[..., None], text, -1e3 * noise_t)
    with torch.no_grad():
        a = m(image, text, v_mask, c_mask, need_weights=need_weights)
        b = m(image2, text2, v_mask, c_mask, need_weights=need_weights)
    both = v_mask & c_mask
    assert _close(a.visual[v_mask], b.visual[v_mask], 1e-12)
    assert _close(a.concepts[c_mask], b.concepts[c_mask], 1e-12)
    assert _close(a.fused[both], b.fused[both], 1e-12)
    for (ia, ta), (ib, tb) in zip(a.steps, b.steps, strict=True):
        assert _close(ia[v_mask], ib[v_mask], 1e-12) and _close(ta[c_mask], tb[c_mask], 1e-12)
    assert (a.visual[~v_mask] == 0).all() and (a.concepts[~c_mask] == 0).all()
    assert a.visual_mask is v_mask and a.concept_mask is c_mask
    if need_weights:
        for w_v, w_t in a.attention:
            assert (w_v.permute(0, 3, 1, 2)[~v_mask] == 0).all(), "a padded region got weight"
            assert (w_t.permute(0, 3, 1, 2)[~c_mask] == 0).all(), "a padded concept got weight"
            assert _close(w_v.sum(-1), torch.ones_like(w_v.sum(-1)))


def test_suffix_padding_equals_the_unpadded_sequence() -> None:
    """Padding is invisible: an item padded from r to n positions gives the outputs of the same
    item run alone with r positions, and those are the derivation's (no padding in the paper)."""
    m = _module(iterations=2)
    image, text = _inputs()
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    with torch.no_grad():
        padded = m(image, text, mask, mask, need_weights=True)
    for item, r in enumerate((7, 4, 2)):
        ref = reference_mia(m.state_dict(), image[item:item + 1, :r], text[item:item + 1, :r],
                            iterations=2, heads=4)
        assert _close(padded.visual[item, :r], ref["visual"][0])
        assert _close(padded.concepts[item, :r], ref["concepts"][0])
        assert _close(padded.fused[item, :r], ref["fused"][0])
        for k, (w_v, w_t) in enumerate(padded.attention):
            assert _close(w_v[item, :, :r, :r], ref["attention"][k][0][0])
            assert _close(w_t[item, :, :r, :r], ref["attention"][k][1][0])


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_padded_item_stays_finite(need_weights: bool) -> None:
    """An item with no real position must not poison the batch (outputs or gradients) with NaN.

    Both attention paths must agree here too: the fused SDPA path and the explicit softmax path.
    """
    m = _module(iterations=2)
    image, text = _inputs()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1] = False
    out = m(image, text, mask, mask, need_weights=need_weights)
    assert torch.isfinite(out.fused).all() and torch.isfinite(out.visual).all()
    _loss(out.fused).backward()
    bad = [n for n, p in m.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"


# ----------------------------------------------------------------------------------------------
# The two attention paths, gradients, dropout.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_need_weights_does_not_change_outputs(dtype: torch.dtype) -> None:
    m = _module(iterations=3).to(dtype)
    image, text = (x.to(dtype) for x in _inputs())
    v_mask, c_mask = _masks()
    tol = TOL if dtype == torch.float64 else 1e-5
    for masks in ((None, None), (v_mask, c_mask)):
        with torch.no_grad():
            fast = m(image, text, *masks, need_weights=False)
            explicit = m(image, text, *masks, need_weights=True)
        for name in ("visual", "concepts", "fused"):
            assert _close(getattr(fast, name), getattr(explicit, name), tol), name
        for (i0, t0), (i1, t1) in zip(fast.steps, explicit.steps, strict=True):
            assert _close(i0, i1, tol) and _close(t0, t1, tol)


def test_gradients_reach_every_parameter() -> None:
    m = _module(iterations=2).train()
    m.visual_layer.dropout.p = m.textual_layer.dropout.p = 0.0
    image, text = _inputs()
    image.requires_grad_(True)
    text.requires_grad_(True)
    _loss(m(image, text).fused).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0

    for field in ("visual", "concepts"):  # N = 2: I_2 reads T_1, so both layers are reached
        m.zero_grad(set_to_none=True)
        _loss(getattr(m(image, text), field)).backward()
        for name, p in m.named_parameters():
            if name.startswith("norm_fused"):
                assert p.grad is None, f"{field} must not depend on the Eq. (7) LayerNorm"
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{field}: no grad {name}"


def test_one_round_visual_output_ignores_the_textual_layer() -> None:
    m = _module(iterations=1)
    image, text = _inputs()
    _loss(m(image, text).visual).backward()
    for name, p in m.named_parameters():
        reached = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert reached == name.startswith("visual_layer"), name


def test_dropout_is_seeded_and_active_in_training() -> None:
    m = _module(iterations=2, dropout=0.3).train()
    image, text = _inputs()

    def run(seed: int) -> Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return m(image, text).fused

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)
    with torch.no_grad():
        evaluated = m.eval()(image, text).fused
    assert not torch.allclose(first, evaluated, atol=1e-3)
    assert _close(evaluated, reference_mia(m.state_dict(), image, text, 2, 4)["fused"])


# ----------------------------------------------------------------------------------------------
# Errors and import.
# ----------------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error_with_the_reason() -> None:
    m = _module()
    image, text = _inputs()
    with pytest.raises(ValueError, match="same shape"):
        m(image, text[:, :5])
    with pytest.raises(ValueError, match="same shape"):
        m(image, torch.cat([text, text], dim=-1))
    good = torch.ones(3, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="visual_mask must be a bool tensor of shape"):
        m(image, text, visual_mask=good.float())
    with pytest.raises(ValueError, match="concept_mask must be a bool tensor of shape"):
        m(image, text, concept_mask=good[:, :5])
    with pytest.raises(ValueError, match="concept_mask"):
        m(image, text, concept_mask=good[None])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"d_model": 30, "heads": 4}, "not divisible"),
    ({"mode": "cross"}, "mode must be"),
    ({"order": "text_first"}, "order must be"),
    ({"iterations": 0}, "iterations must be"),
])
def test_bad_construction_raises_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MutualIterativeAttention(**{"d_model": 32, "heads": 4, "d_ff": 48, **kwargs})


def test_unbatched_or_wrong_width_input_is_named_in_the_error() -> None:
    """Errors are raised where the bad value enters (STYLE.md): a (n, d) input or features of
    the wrong width should say what MIA expects, not fail deep inside a matmul or unpacking."""
    m = _module(d=32)
    image, text = _inputs(d=32)
    with pytest.raises(ValueError, match=r"\(B, n, d"):
        m(image[0], text[0])
    wide_image, wide_text = _inputs(d=48)
    with pytest.raises(ValueError, match="d_model"):
        m(wide_image, wide_text)


def test_public_import(repo_root: Path) -> None:
    from mia import MutualIterativeAttention as Imported

    assert Imported is MutualIterativeAttention
    done = subprocess.run([sys.executable, "-c", "from mia import MutualIterativeAttention"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
