"""The Transformer captioner (Table 2): cached incremental decoding equals the reference's
uncached decoding (greedy, beam 3, sampling) and teacher forcing, masks, no image positions, MIA
wiring, and an overfit run on 8 demo images.

Tiny sizes (d = 16..32, 2 layers, 2 heads) and one thread, so the file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_captioning_updown import demo_images, overfit_accuracy, tiny_batch
from torch import nn

from mia.captioning.beam import beam_search
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import BASELINES, build_captioner
from mia.captioning.sampling import greedy_captions, sample_captions
from mia.captioning.transformer import (
    PrefixDecoder,
    TransformerOptions,
    build_transformer,
    noam_learning_rate,
    sinusoidal_positions,
)

VOCAB = 14
MIA_VARIANTS = ["mia", "mia_visual", "mia_concepts", "self_attention"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(variant: str = "base", **kw) -> CaptionerConfig:
    values = dict(baseline="transformer", variant=variant, feature_dim=8, d_model=16,
                  embed_dim=16, dropout=0.0, mia_heads=2, mia_d_ff=32, mia_dropout=0.0,
                  options={"encoder_layers": 2, "decoder_layers": 2, "heads": 2, "d_ff": 32})
    return CaptionerConfig(**{**values, **kw})


def model(variant: str = "base", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_captioner(tiny_cfg(variant, **kw), VOCAB).eval()


class Uncached(nn.Module):
    """The same captioner decoded the reference's way (the whole prefix again every step)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.decoder = PrefixDecoder(net.decoder)
        self.train(net.training)

    def encode(self, batch, need_weights=False):
        return self.net.encode(batch, need_weights)


# ---------------------------------------------------------------- configuration


def test_registered_with_strict_options():
    assert BASELINES["transformer"] is build_transformer
    o = TransformerOptions()
    assert (o.encoder_layers, o.decoder_layers, o.heads, o.d_ff, o.dropout, o.tie_output) \
        == (6, 6, 8, 2048, 0.1, False)  # configs/transformer/transformer.yml
    with pytest.raises(ValueError, match=r"N_enc.*TransformerOptions"):
        build_captioner(tiny_cfg(options={"N_enc": 2}), VOCAB)
    with pytest.raises(ValueError, match="set embed_dim = d_model"):
        build_captioner(tiny_cfg(embed_dim=8), VOCAB)
    with pytest.raises(ValueError, match="divisible by options.heads"):
        build_captioner(tiny_cfg(options={"heads": 3}), VOCAB)


def test_reference_structure():
    net = build_captioner(CaptionerConfig(baseline="transformer"), 30)
    regions = net.encoder.regions.embed_regions
    assert [type(m).__name__ for m in regions] == ["Linear", "ReLU", "Dropout"]
    assert regions[0].weight.shape == (512, 2048) and regions[2].p == 0.5
    assert len(net.encoder.layers) == 6 and len(net.decoder.layers) == 6
    layer = net.decoder.layers[0]
    assert layer.self_attention.heads == 8 and layer.ffn.w_1.weight.shape == (2048, 512)
    assert layer.dropout.p == 0.1 and layer.self_attention.dropout == 0.1
    assert net.decoder.output.weight is not net.decoder.embed.lut.weight  # untied
    tied = build_captioner(tiny_cfg(options={"encoder_layers": 1, "decoder_layers": 1,
                                             "heads": 2, "d_ff": 8, "tie_output": True}), VOCAB)
    assert tied.decoder.output.weight is tied.decoder.embed.lut.weight


def test_sinusoidal_positions_and_noam():
    pe = sinusoidal_positions(0, 7, 16, torch.device("cpu"))
    for pos in (0, 3, 6):
        for i in range(8):
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)),
                                                          abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(
                math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert torch.equal(sinusoidal_positions(4, 3, 16, torch.device("cpu")), pe[4:7])
    # NoamOpt.rate: d^-0.5 min(s^-0.5, s w^-1.5), peak at the warm-up's end.
    assert noam_learning_rate(20000) == pytest.approx(512 ** -0.5 * 20000 ** -0.5)
    assert noam_learning_rate(100) == pytest.approx(512 ** -0.5 * 100 * 20000 ** -1.5)
    assert noam_learning_rate(80000) == pytest.approx(noam_learning_rate(20000) / 2)


# ---------------------------------------------------------------- cached decoding


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_teacher_forcing_equals_cached_steps(variant):
    net = model(variant)
    batch = tiny_batch()
    inputs = batch["captions"][:, :-1]
    with torch.no_grad():
        teacher = net(batch)
        ctx = net.decoder.prepare(net.encode(batch))
        state = net.decoder.init_state(ctx)
        for t in range(inputs.shape[1]):
            logits, state = net.decoder.step(inputs[:, t], state, ctx)
            torch.testing.assert_close(logits, teacher[:, t], atol=1e-5, rtol=1e-5)
            # Every layer's self-attention keys and values grew by one position.
            assert len(state) == 4
            assert all(s.shape == (3, 2, t + 1, 8) for s in state)


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_cached_greedy_and_beam_equal_the_uncached_reference(variant):
    net = model(variant, seed=1)
    batch = tiny_batch(seed=1)
    plain = Uncached(net)
    cached, uncached = greedy_captions(net, batch, 7), greedy_captions(plain, batch, 7)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.log_probs, uncached.log_probs, atol=1e-5, rtol=1e-5)
    beam_cached, beam_plain = beam_search(net, batch, 3, 7), beam_search(plain, batch, 3, 7)
    assert torch.equal(beam_cached.tokens, beam_plain.tokens)
    torch.testing.assert_close(beam_cached.scores, beam_plain.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(beam_search(net, batch, 1, 7).tokens, cached.tokens)


def test_cached_sampling_equals_uncached_sampling():
    net = model("mia", seed=2)
    batch = tiny_batch(seed=2)
    a = sample_captions(net, batch, 4, 7, generator=torch.Generator().manual_seed(5))
    b = sample_captions(Uncached(net), batch, 4, 7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- masks and MIA wiring


@pytest.mark.parametrize("variant", ["base", *MIA_VARIANTS])
def test_padded_region_changes_nothing(variant):
    net = model(variant)
    batch = tiny_batch()
    changed = {**batch, "features": batch["features"].clone()}
    changed["features"][0, -1] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(net(changed), net(batch), atol=1e-5, rtol=1e-5)


def test_regions_have_no_positional_encoding():
    """Reordering an image's regions (with their mask) leaves every logit unchanged."""
    net = model("base")
    batch = tiny_batch()
    order = torch.tensor([3, 0, 4, 2, 1])
    permuted = {**batch, "features": batch["features"][:, order],
                "feature_mask": batch["feature_mask"][:, order]}
    with torch.no_grad():
        torch.testing.assert_close(net(permuted), net(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", MIA_VARIANTS)
def test_mia_changes_only_the_image_side(variant):
    base, mia = model("base"), model(variant)
    shapes = {k: v.shape for k, v in base.decoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in mia.decoder.state_dict().items()}
    assert {k: v.shape for k, v in base.encoder.layers.state_dict().items()} \
        == {k: v.shape for k, v in mia.encoder.layers.state_dict().items()}
    assert base.encoder.regions.mia is None and mia.encoder.regions.mia is not None
    # MIA's output is the encoder's input: run the encoder layers on it by hand.
    batch = tiny_batch()
    with torch.no_grad():
        enc = mia.encode(batch)
        out = mia.encoder.regions(batch)
        x = out.memory
        mask = out.mask[:, None, None, :]
        for layer in mia.encoder.layers:
            x = layer(x, mask)
        torch.testing.assert_close(enc.memory, mia.encoder.norm(x))


def test_concepts_use_the_caption_embedding():
    net = model("mia")
    lut = net.decoder.embed.lut.weight
    assert net.encoder.regions.embed_concepts.lut.weight is lut
    assert sum(p is lut for p in net.parameters()) == 1
    with torch.no_grad():
        ids = torch.tensor([[5, 6]])
        torch.testing.assert_close(net.encoder.regions.embed_concepts(ids),
                                   lut[ids] * math.sqrt(16))


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_overfits_eight_demo_images(variant):
    cfg = CaptionerConfig(baseline="transformer", variant=variant, d_model=32, embed_dim=32,
                          dropout=0.0, mia_heads=2, mia_d_ff=64, mia_dropout=0.0,
                          options={"encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                                   "d_ff": 64, "dropout": 0.0})
    accuracy = overfit_accuracy(cfg, steps=40)
    assert accuracy > 0.95, accuracy


def test_demo_images_are_eight_distinct_captions():
    batch, vocab = demo_images()
    assert batch["captions"].shape[0] == 8 and len(set(map(tuple, batch["captions"].tolist()))) == 8
    assert batch["feature_mask"].any(1).all() and not batch["feature_mask"].all()


# ---------------------------------------------------------------- LayerNorm (issue 21, item 2)


def test_reference_layer_norm_by_hand_in_float64():
    """self-critical.pytorch's LayerNorm: a (x - mean) / (unbiased std + eps) + b, worked out by
    hand; nn.LayerNorm (biased variance, eps under the root) is measurably another function."""
    from mia.captioning.transformer import ReferenceLayerNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64) * 3 + 1
    norm = ReferenceLayerNorm(8).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
        norm.bias.copy_(torch.linspace(-0.2, 0.2, 8))
    rows = x.reshape(-1, 8).tolist()
    expected = []
    for row in rows:
        mean = sum(row) / 8
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / 7)  # n - 1
        expected.append([w * (v - mean) / (std + 1e-6) + b for v, w, b in
                         zip(row, norm.weight.tolist(), norm.bias.tolist(), strict=True)])
    assert torch.allclose(norm(x).reshape(-1, 8), torch.tensor(expected, dtype=torch.float64),
                          rtol=0, atol=1e-13)
    torch_norm = nn.LayerNorm(8, eps=1e-6).double()
    torch_norm.load_state_dict(norm.state_dict())  # same parameter names: checkpoints carry over
    assert (torch_norm(x) - norm(x)).abs().max() > 1e-2  # sqrt(8/7): not a rounding difference


def test_layer_norm_option_reaches_every_norm_and_changes_the_logits():
    from mia.captioning.transformer import ReferenceLayerNorm

    assert TransformerOptions().layer_norm == "reference"
    ref = model(options={"encoder_layers": 2, "decoder_layers": 2, "heads": 2, "d_ff": 32})
    plain = model(options={"encoder_layers": 2, "decoder_layers": 2, "heads": 2, "d_ff": 32,
                           "layer_norm": "torch"})
    norms = [m for m in ref.modules() if isinstance(m, ReferenceLayerNorm)]
    # encoder: 2 per layer + final; decoder: 3 per layer + final
    assert len(norms) == 2 * 2 + 1 + 3 * 2 + 1
    assert not any(isinstance(m, nn.LayerNorm) for m in ref.modules())
    assert not any(isinstance(m, ReferenceLayerNorm) for m in plain.modules())
    plain.load_state_dict(ref.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        assert not torch.allclose(ref(batch), plain(batch), atol=1e-4)
    with pytest.raises(ValueError, match="layer_norm"):
        TransformerOptions(layer_norm="rms")
