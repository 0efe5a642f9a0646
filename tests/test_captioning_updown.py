"""Up-Down on regions (Table 2): the reference's step re-derived, masks, MIA wiring, scheduled
sampling, beam search over its batch-first state, and an overfit run on 8 demo images.

Tiny sizes (d = 16..32, 2 heads) and one thread, so the file runs in seconds.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from mia.captioning.beam import beam_search
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import BASELINES, build_captioner
from mia.captioning.region_encoder import masked_mean
from mia.captioning.sampling import BOS, EOS, PAD, greedy_captions
from mia.captioning.updown import UpDownOptions, build_updown, scheduled_sampling_probability
from mia.data.demo_language import make_captions
from mia.data.demo_scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, sample_scene
from mia.data.karpathy import tokenize_caption

VOCAB = 14
MIA_VARIANTS = ["mia", "mia_visual", "mia_concepts", "self_attention", "mia_n1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops run faster on one thread than fighting over two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(variant: str = "base", **kw) -> CaptionerConfig:
    values = dict(baseline="updown", variant=variant, feature_dim=8, d_model=16, embed_dim=12,
                  attention_dim=10, dropout=0.0, mia_heads=2, mia_d_ff=32, mia_dropout=0.0,
                  options={"rnn_size": 20})
    return CaptionerConfig(**{**values, **kw})


def tiny_batch(b: int = 3, n: int = 5, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Loader-contract batch: image 0 has a padded region, image 1 a missing concept."""
    g = torch.Generator().manual_seed(seed)
    feature_mask = torch.ones(b, n, dtype=torch.bool)
    feature_mask[0, -1] = False
    concept_mask = torch.ones(b, n + 1, dtype=torch.bool)
    concept_mask[1, 2] = False
    captions = torch.randint(4, VOCAB, (b, length), generator=g)
    captions[:, 0] = BOS
    captions[0, -1] = EOS
    captions[1, 4], captions[1, 5:] = EOS, PAD
    return {"image_ids": torch.arange(b) + 10, "features": torch.randn(b, n, 8, generator=g),
            "feature_mask": feature_mask,
            "concepts": torch.randint(4, VOCAB, (b, n + 1), generator=g),
            "concept_mask": concept_mask, "captions": captions}


def model(variant: str = "base", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_captioner(tiny_cfg(variant, **kw), VOCAB).eval()


# ---------------------------------------------------------------- demo images (shared)


def demo_images(num: int = 8, regions: int = 5, max_words: int = 12, seed: int = 0
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``num`` demo-world scenes as a caption batch: one region per object (attribute one-hots:
    colour, shape, size, cell, background), padded to ``regions``; concepts = the objects'
    colour/shape words; one demo caption each (at most ``max_words`` words)."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, i, "train2014", "train", 96, max_objects=regions - 1)
              for i in range(num)]
    captions = [tokenize_caption(make_captions(rng, s, 1)[0])[:max_words] for s in scenes]
    attributes = [list(COLORS), list(SHAPES), ["small", "large"], sorted(POSITIONS),
                  list(BACKGROUNDS)]
    words = sorted({w for c in captions for w in c} | set(COLORS) | set(SHAPES))
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", *words]
    index = {w: i for i, w in enumerate(vocab)}
    dim = sum(map(len, attributes))
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(num, regions, dim, generator=g)  # padding rows: noise, masked
    feature_mask = torch.zeros(num, regions, dtype=torch.bool)
    concepts = torch.zeros(num, regions, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            row, offset = torch.zeros(dim), 0
            for values, value in zip(attributes, (obj.color, obj.shape, obj.size, obj.cell,
                                                  scene.background), strict=True):
                row[offset + values.index(value)] = 1.0
                offset += len(values)
            features[i, j], feature_mask[i, j] = row, True
            concepts[i, j] = index[obj.color if j % 2 == 0 else obj.shape]
    tokens = torch.zeros(num, max(map(len, captions)) + 2, dtype=torch.long)
    for i, words_i in enumerate(captions):
        tokens[i, :len(words_i) + 2] = torch.tensor([BOS, *(index[w] for w in words_i), EOS])
    batch = {"image_ids": torch.arange(num), "features": features, "feature_mask": feature_mask,
             "concepts": concepts, "concept_mask": feature_mask.clone(), "captions": tokens}
    return batch, vocab


def overfit_accuracy(cfg: CaptionerConfig, steps: int, lr: float = 1e-2) -> float:
    """Teacher-forced next-word accuracy on the 8 demo images after ``steps`` Adam steps of
    plain cross-entropy (no label smoothing)."""
    batch, vocab = demo_images()
    cfg = CaptionerConfig(**{**cfg.__dict__, "feature_dim": batch["features"].shape[-1]})
    torch.manual_seed(0)
    net = build_captioner(cfg, len(vocab))
    optimiser = torch.optim.Adam(net.parameters(), lr)
    targets = batch["captions"][:, 1:]
    for _ in range(steps):
        net.train()
        logits = net(batch)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=PAD)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        predicted = net(batch).argmax(-1)
    keep = targets != PAD
    return float(((predicted == targets) & keep).sum() / keep.sum())


# ---------------------------------------------------------------- configuration


def test_registered_with_strict_options():
    assert BASELINES["updown"] is build_updown
    assert UpDownOptions().rnn_size == 1000  # configs/updown/updown.yml
    with pytest.raises(ValueError, match=r"rnn_siz.*UpDownOptions"):
        build_captioner(tiny_cfg(options={"rnn_siz": 8}), VOCAB)
    with pytest.raises(ValueError, match="rnn_size"):
        UpDownOptions(rnn_size=0)


def test_reference_sizes():
    """rnn 1000, input encoding 1000, attention hidden 512, 2048-d regions: the LSTM and
    attention shapes of UpDownCore ([h_lang, mean, w] -> 1000; [v_hat, h_att] -> 1000)."""
    cfg = CaptionerConfig(baseline="updown", d_model=1000, embed_dim=1000, attention_dim=512,
                          options={"rnn_size": 1000})
    net = build_captioner(cfg, 50)
    dec = net.decoder
    assert dec.att_lstm.weight_ih.shape == (4000, 1000 + 1000 + 1000)
    assert dec.lang_lstm.weight_ih.shape == (4000, 2000)
    assert dec.attention.w_memory.weight.shape == (512, 1000)
    assert dec.attention.w_hidden.weight.shape == (512, 1000)
    assert net.encoder.regions.embed_regions[0].weight.shape == (1000, 2048)
    assert net.encoder.embed_mean[0].weight.shape == (1000, 2048)
    assert [type(m).__name__ for m in dec.embed] == ["Embedding", "ReLU", "Dropout"]
    assert dec.embed[2].p == 0.5 and dec.dropout.p == 0.5


# ---------------------------------------------------------------- the step, re-derived


def _lstm(cell: torch.nn.LSTMCell, x, h, c):
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_step_equals_the_reference_equations():
    """Two steps of UpDownCore written out (eval mode): embeddings, attention LSTM on
    [h_lang, mean feature, w], softmax-then-renormalise attention over the real regions,
    language LSTM on [v_hat, h_att], logits from h_lang."""
    net = model()
    batch = tiny_batch()
    enc, dec = net.encoder, net.decoder
    feats, mask = batch["features"], batch["feature_mask"]
    lin = enc.regions.embed_regions[0]
    regions = torch.relu(feats @ lin.weight.T + lin.bias)
    mean_raw = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    fc = enc.embed_mean[0]
    pooled = torch.relu(mean_raw @ fc.weight.T + fc.bias)
    att = dec.attention
    b, r = feats.shape[0], dec.rnn_size
    h = torch.zeros(b, 2, r)
    c = torch.zeros(b, 2, r)
    with torch.no_grad():
        ctx = dec.prepare(net.encode(batch))
        state = dec.init_state(ctx)
        for t in range(2):
            words = batch["captions"][:, t]
            x = torch.relu(dec.embed[0].weight[words])
            h_att, c_att = _lstm(dec.att_lstm, torch.cat([h[:, 1], pooled, x], -1), h[:, 0],
                                 c[:, 0])
            p = regions @ att.w_memory.weight.T + att.w_memory.bias
            hid = h_att @ att.w_hidden.weight.T + att.w_hidden.bias
            scores = (torch.tanh(p + hid[:, None]) @ att.w_score.weight.T).squeeze(-1) \
                + att.w_score.bias
            weight = scores.softmax(-1) * mask
            weight = weight / weight.sum(1, keepdim=True)
            v_hat = (weight[..., None] * regions).sum(1)
            h_lang, c_lang = _lstm(dec.lang_lstm, torch.cat([v_hat, h_att], -1), h[:, 1],
                                   c[:, 1])
            expected = h_lang @ dec.logit.weight.T + dec.logit.bias
            h, c = torch.stack([h_att, h_lang], 1), torch.stack([c_att, c_lang], 1)
            logits, state = dec.step(words, state, ctx)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(state[0], h, atol=1e-5, rtol=1e-5)
        teacher = net(batch)[:, :2]
    torch.testing.assert_close(teacher[:, 1], logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- masks and MIA wiring


@pytest.mark.parametrize("variant", ["base", *MIA_VARIANTS])
def test_padded_region_changes_nothing(variant):
    net = model(variant)
    batch = tiny_batch()
    changed = {**batch, "features": batch["features"].clone()}
    changed["features"][0, -1] = 100.0  # image 0's padded region
    with torch.no_grad():
        torch.testing.assert_close(net(changed), net(batch), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(net({**batch, "features": batch["features"] * 2}), net(batch))


@pytest.mark.parametrize("variant", MIA_VARIANTS)
def test_mia_changes_only_the_image_side(variant):
    base, mia = model("base"), model(variant)
    shapes = {k: v.shape for k, v in base.decoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in mia.decoder.state_dict().items()}
    assert base.encoder.regions.mia is None and mia.encoder.regions.mia is not None
    # MIA's output replaces both the attended regions and their mean.
    assert base.encoder.embed_mean is not None and mia.encoder.embed_mean is None
    batch = tiny_batch()
    with torch.no_grad():
        enc = mia.encode(batch)
        ctx = mia.decoder.prepare(enc)
    assert ctx.memory is enc.memory
    torch.testing.assert_close(ctx.pooled, masked_mean(enc.memory, enc.mask))
    expected = {"mia": enc.mia.fused, "mia_visual": enc.mia.visual,
                "mia_concepts": enc.mia.concepts}.get(variant, enc.mia.fused)
    torch.testing.assert_close(enc.memory, expected)


def test_concepts_use_the_caption_embedding():
    net = model("mia")
    table = net.decoder.embed[0].weight
    assert net.encoder.regions.embed_concepts[0].weight is table
    assert sum(p is table for p in net.parameters()) == 1
    batch = tiny_batch()
    net.encode(batch).memory.sum().backward()  # the image side alone
    ids = batch["concepts"][:, :batch["features"].shape[1]][batch["concept_mask"][:, :5]]
    assert table.grad[ids.unique()].abs().sum() > 0


def test_too_few_concepts_names_the_fix():
    batch = tiny_batch()
    batch["concepts"], batch["concept_mask"] = batch["concepts"][:, :3], batch["concept_mask"][:, :3]
    with pytest.raises(ValueError, match="at least k=5 concepts"):
        model("mia")(batch)


# ---------------------------------------------------------------- scheduled sampling


def test_scheduled_sampling_schedule_matches_the_reference():
    # scheduled_sampling_start 0, every 5, +0.05, max 0.25; 0-based epochs as tools/train.py.
    got = [scheduled_sampling_probability(e) for e in range(0, 40, 5)]
    assert got == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.25, 0.25])
    assert scheduled_sampling_probability(4) == 0.0
    assert scheduled_sampling_probability(12, start=-1) == 0.0


def test_scheduled_sampling_feeds_the_models_own_words():
    net = model()
    batch = tiny_batch()
    other = {**batch, "captions": batch["captions"].clone()}
    other["captions"][:, 1:] = torch.randint(4, VOCAB, other["captions"][:, 1:].shape)
    net.train()
    net.decoder.ss_prob = 1.0  # every input after <bos> is a sample: ground truth unused
    torch.manual_seed(3)
    a = net(batch)
    torch.manual_seed(3)
    b = net(other)
    torch.testing.assert_close(a, b)
    net.decoder.ss_prob = 0.0
    assert not torch.allclose(net(batch), net(other))
    net.eval()
    net.decoder.ss_prob = 1.0  # ignored outside training
    assert not torch.allclose(net(batch), net(other))


# ---------------------------------------------------------------- decoding


def test_beam_over_the_batch_first_state():
    net = model("mia")
    batch = tiny_batch()
    assert [s.shape for s in net.decoder.init_state(net.decoder.prepare(net.encode(batch)))] \
        == [(3, 2, 20), (3, 2, 20)]
    greedy = greedy_captions(net, batch, 6)
    assert torch.equal(beam_search(net, batch, 1, 6).tokens, greedy.tokens)
    together = beam_search(net, batch, 3, 6)
    for i in range(3):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        alone = beam_search(net, one, 3, 6)
        assert torch.equal(alone.tokens[0], together.tokens[i])
        torch.testing.assert_close(alone.scores[0], together.scores[i])


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_overfits_eight_demo_images(variant):
    cfg = CaptionerConfig(baseline="updown", variant=variant, d_model=32, embed_dim=32,
                          attention_dim=16, dropout=0.0, mia_heads=2, mia_d_ff=64,
                          mia_dropout=0.0, options={"rnn_size": 32})
    accuracy = overfit_accuracy(cfg, steps=100)
    assert accuracy > 0.95, accuracy
