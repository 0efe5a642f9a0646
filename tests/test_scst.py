"""SCST: config, baselines and loss by hand, <eos> masking, the CIDEr-D reward against CiderD,
pycocoevalcap and the reference's conventions, the document-frequency file, and one optimiser
step moving probability towards better-rewarded samples.

The reward was also checked once (not part of the suite) against ruotianluo/cider's own
``CiderD(df=<prepro_ngrams-style pickle>)`` on 72 captions: largest difference 2.2e-16.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_captioning_updown import tiny_batch
from torch import Tensor, nn

from mia.captioning.config import CaptionerConfig
from mia.captioning.models import build_captioner
from mia.captioning.sampling import BOS, EOS, PAD, greedy_captions, sample_captions
from mia.captioning.scst import (
    SCSTConfig,
    SCSTScorer,
    baseline_scores,
    candidate_ids,
    karpathy_training_references,
    reward_loss,
    reward_references,
    scst_step,
    token_mask,
    training_references,
    write_training_document_frequency,
)
from mia.data.karpathy import read_karpathy
from mia.evaluation.cider import CiderD, DocumentFrequency
from mia.evaluation.cider_df import (
    load_document_frequency,
    read_document_frequency,
    save_document_frequency,
)
from mia.evaluation.cider_reference import (
    pycocoevalcap_cider_d,
    pycocoevalcap_document_frequency,
)

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "blue", "circle", "square", "on",
         "the", "left", "right", "two", "star", "green"]
IDS = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encode(sentence: str) -> list[int]:
    return [IDS[w] for w in sentence.split()]


# A small training set: image 0 is the one scored; the others give the n-grams varied idf.
TRAIN = {
    0: ["a red circle on the left", "a red circle", "red circle on the left"],
    1: ["a blue square on the right", "a blue square"],
    2: ["two green stars", "a green star on the left", "two stars"],
    3: ["a red square on the right", "red square"],
    4: ["a blue circle", "blue circle on the left"],
}


def scorer_for(train: dict = TRAIN, max_length: int | None = None) -> SCSTScorer:
    df_refs = {k: [f"{s} <eos>" for s in v] for k, v in train.items()}
    df = DocumentFrequency(df_refs, vocab=WORDS)
    return SCSTScorer(reward_references(train, max_length), df)


# ---------------------------------------------------------------- a toy policy


@dataclass
class ToyContext:
    memory: Tensor  # (B, 1, 1): only its batch size matters

    def repeat_interleave(self, k: int) -> ToyContext:
        return ToyContext(self.memory.repeat_interleave(k, dim=0))


class TableDecoder(nn.Module):
    """Next-word logits that depend only on the position: a learnable (T, V) table."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def prepare(self, enc: SimpleNamespace) -> ToyContext:
        return ToyContext(enc.memory)

    def init_state(self, ctx: ToyContext) -> tuple[Tensor]:
        return (torch.zeros(ctx.memory.shape[0], dtype=torch.long),)

    def step(self, words: Tensor, state: tuple[Tensor], ctx: ToyContext):
        return self.table[state[0]], (state[0] + 1,)


class TablePolicy(nn.Module):
    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.decoder = TableDecoder(table)

    def encode(self, batch, need_weights=False):
        return SimpleNamespace(memory=torch.zeros(len(batch["image_ids"]), 1, 1))


def toy_policy(max_length: int = 6) -> TablePolicy:
    """Leaning towards "a red circle on the left <eos>", with room for other words."""
    table = torch.zeros(max_length, len(WORDS))
    for t, word in enumerate(["a", "red", "circle", "on", "the", "left"][:max_length - 1]):
        table[t, IDS[word]] = 2.0
    table[3:, EOS] = 1.5
    return TablePolicy(table)


def sequence_log_probs(policy: TablePolicy, tokens: Tensor) -> Tensor:
    """log p of each row (through <eos>) under the table, computed independently."""
    logp = policy.decoder.table.detach().clone()
    logp[:, [PAD, BOS]] = float("-inf")
    logp = logp.log_softmax(-1)
    mask = token_mask(tokens)
    picked = logp[torch.arange(tokens.shape[1]), tokens.clamp(min=0)]
    return torch.where(mask, picked, torch.zeros_like(picked)).sum(1)


# ---------------------------------------------------------------- configuration


def test_config_is_strict_and_follows_the_reference():
    cfg = SCSTConfig()
    assert (cfg.samples_per_image, cfg.baseline, cfg.lr, cfg.batch_size, cfg.max_length,
            cfg.temperature, cfg.grad_clip_mode, cfg.grad_clip) == \
        (5, "greedy", 5e-5, 10, 20, 1.0, "value", 0.1)
    assert SCSTConfig.from_dict({"baseline": "mean_of_others", "betas": [0.9, 0.98]}).betas \
        == (0.9, 0.98)
    with pytest.raises(ValueError, match=r"sample_n.*SCSTConfig"):
        SCSTConfig.from_dict({"sample_n": 5})
    with pytest.raises(ValueError, match="samples_per_image >= 2"):
        SCSTConfig(baseline="mean_of_others", samples_per_image=1)
    with pytest.raises(ValueError, match="'greedy' or 'mean_of_others'"):
        SCSTConfig(baseline="sc")


# ---------------------------------------------------------------- baselines and loss by hand


def test_baselines_by_hand():
    scores = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.6]])
    others = baseline_scores(scores, "mean_of_others")
    np.testing.assert_allclose(others, [[2.5, 2.0, 1.5], [0.3, 0.3, 0.0]])
    np.testing.assert_allclose(scores - others, [[-1.5, 0.0, 1.5], [-0.3, -0.3, 0.6]])
    greedy = baseline_scores(scores, "greedy", np.array([2.0, 0.5]))
    np.testing.assert_allclose(scores - greedy, [[-1.0, 0.0, 1.0], [-0.5, -0.5, 0.1]])
    with pytest.raises(ValueError, match="greedy scores"):
        baseline_scores(scores, "greedy")


def test_loss_by_hand_and_its_sign():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards = torch.tensor([2.0, -1.0])
    loss = reward_loss(log_probs, mask, rewards)
    # -(2*(-1 - 2) + (-1)*(-0.5 - 1 - 4)) / 5 tokens: one mean over the batch's tokens.
    assert loss.item() == pytest.approx(-(2 * -3.0 + -1 * -5.5) / 5)
    loss.backward()
    # Descending the loss raises log p where the reward is positive, lowers it where negative.
    assert (log_probs.grad[0, :2] < 0).all() and (log_probs.grad[1] > 0).all()
    assert log_probs.grad[0, 2] == 0
    positive = reward_loss(torch.tensor([[-1.0]]), torch.tensor([[True]]), torch.tensor([1.0]))
    assert positive.item() > 0


def test_eos_masking():
    tokens = torch.tensor([[5, 6, EOS, PAD, PAD], [5, EOS, PAD, PAD, PAD], [5, 6, 7, 8, 9]])
    mask = token_mask(tokens)
    assert mask.tolist() == [[True, True, True, False, False], [True, True, False, False, False],
                             [True] * 5]
    log_probs = torch.full(tokens.shape, -1.0, requires_grad=True)
    reward_loss(log_probs, mask, torch.ones(3)).backward()
    grad = log_probs.grad
    assert grad[0, 2] != 0 and grad[1, 1] != 0  # <eos> itself is trained
    assert (grad[0, 3:] == 0).all() and (grad[1, 2:] == 0).all()  # nothing after it
    assert candidate_ids(tokens) == [[5, 6, EOS], [5, EOS], [5, 6, 7, 8, 9]]


def test_sampled_rows_pad_after_eos_and_never_pick_pad_or_bos():
    table = torch.zeros(6, len(WORDS))
    table[:, [PAD, BOS]] = 50.0  # would dominate if they were allowed
    table[:, EOS] = 1.0
    policy = TablePolicy(table)
    batch = {"image_ids": torch.arange(4)}
    rows = sample_captions(policy, batch, 8, 6, generator=torch.Generator().manual_seed(0))
    assert rows.tokens.shape == (32, 6)
    assert not ((rows.tokens == BOS).any()) and torch.equal(rows.mask, token_mask(rows.tokens))
    assert torch.equal(rows.tokens == PAD, ~rows.mask)
    assert (rows.log_probs[~rows.mask] == 0).all() and (rows.log_probs[rows.mask] < 0).all()
    ended = (rows.tokens == EOS).any(1)
    assert ended.any() and (~ended).any()  # some stopped early, some ran to the limit
    expected = sequence_log_probs(policy, rows.tokens)
    torch.testing.assert_close(rows.log_probs.sum(1), expected)


# ---------------------------------------------------------------- the reward


def test_reward_is_cider_d_with_the_reference_eos_convention():
    scorer = scorer_for()
    tokens = torch.tensor([encode("a red circle on the left <eos> <pad>"),
                           encode("a red circle <eos> <pad> <pad> <pad> <pad>"),
                           encode("a blue square on the right on the"),  # ran to the limit
                           encode("red <eos> <pad> <pad> <pad> <pad> <pad> <pad>")])
    image_ids = [0, 0, 1, 0]
    rewards = scorer(image_ids, tokens)
    strings = ["a red circle on the left <eos>", "a red circle <eos>",
               "a blue square on the right on the", "red <eos>"]
    refs = {k: [f"{s} <eos>" for s in v] for k, v in TRAIN.items()}
    df = DocumentFrequency(refs, vocab=WORDS)
    direct = CiderD(refs, document_frequency=df).score_batch(image_ids, strings)
    np.testing.assert_array_equal(rewards, direct)
    coco_df, log_docs = pycocoevalcap_document_frequency(refs)
    coco = pycocoevalcap_cider_d([(s, refs[i]) for s, i in zip(strings, image_ids,
                                                                strict=True)], coco_df, log_docs)
    np.testing.assert_allclose(rewards, coco, rtol=0, atol=1e-12)
    assert rewards[0] > rewards[1] > rewards[3] > 0
    # <eos> counts: the same words without it score differently.
    no_eos = CiderD(refs, document_frequency=df).score_batch([0], ["a red circle on the left"])
    assert abs(no_eos[0] - rewards[0]) > 1e-3


def test_batch_references_follow_the_label_rows():
    """prepro_labels + array_to_str: <unk> outside the vocabulary, cut at 16 words, <eos> only
    after a caption shorter than that (a full label row has no end token)."""
    refs = reward_references({7: ["a red circle", "a b c d", "a b c d e"], 8: [""]},
                             max_length=4)
    assert refs == {7: ["a red circle <eos>", "a b c d", "a b c d"], 8: ["<eos>"]}
    assert reward_references({7: ["a b c d"]}, None) == {7: ["a b c d <eos>"]}
    long = " ".join(["a"] * 20)
    data = SimpleNamespace(references=lambda split: {3: ["a scarlet circle", long]},
                           vocab=SimpleNamespace(words=tuple(WORDS)))
    assert training_references(data) == {3: ["a <unk> circle <eos>", " ".join(["a"] * 16)]}


# ---------------------------------------------------------------- document frequencies


def _karpathy_file(path) -> None:
    images = [
        {"cocoid": 1, "split": "train", "sentences": ["a red circle on the left",
                                                      "a scarlet circle"]},
        {"cocoid": 2, "split": "restval", "sentences": ["two green stars on the right side "
                                                        "of a very long sentence here"]},
        {"cocoid": 3, "split": "val", "sentences": ["a blue square"]},
        {"cocoid": 4, "split": "test", "sentences": ["a blue square"]},
    ]
    data = {"images": [{"cocoid": im["cocoid"], "filepath": "train2014",
                        "filename": f"{im['cocoid']}.jpg", "split": im["split"],
                        "sentences": [{"sentid": 10 * im["cocoid"] + j, "raw": s,
                                       "tokens": s.split()}
                                      for j, s in enumerate(im["sentences"])]}
                       for im in images]}
    path.write_text(json.dumps(data))


def test_training_references_reproduce_prepro_ngrams(tmp_path):
    path = tmp_path / "dataset_coco.json"
    _karpathy_file(path)
    refs = karpathy_training_references(read_karpathy(path), WORDS)
    # train + restval only, every token (uncut), unknown words as <unk>, then <eos>.
    assert refs == {1: ["a red circle on the left <eos>", "a <unk> circle <eos>"],
                    2: ["two green <unk> on the right <unk> <unk> a <unk> <unk> <unk> <unk> "
                        "<eos>"]}


def test_document_frequency_file_round_trip(tmp_path):
    karpathy = tmp_path / "dataset_coco.json"
    _karpathy_file(karpathy)
    out = tmp_path / "cider_df.npz"
    df = write_training_document_frequency(karpathy, WORDS, out)
    loaded, info = read_document_frequency(out, WORDS)
    assert (info.num_docs, info.num_sentences, info.vocab) == (2, 3, tuple(WORDS))
    assert "train+restval" in info.source
    refs = karpathy_training_references(read_karpathy(karpathy), WORDS)
    coco_df, log_docs = pycocoevalcap_document_frequency(refs)
    assert loaded.log_docs == pytest.approx(log_docs) == pytest.approx(math.log(2))
    assert len(loaded) == len(coco_df) == len(df)
    np.testing.assert_array_equal(loaded.keys, df.keys)
    np.testing.assert_array_equal(loaded.counts, df.counts)
    grams = [tuple(g.split()) for g in ("a", "circle <eos>", "a red circle on", "<unk>")]
    for gram in grams:
        key = loaded.codec.ngrams(np.array([loaded.codec.ids[w] for w in gram]),
                                  np.zeros(len(gram), dtype=np.int64))[0][-1:]
        assert loaded.idf(key)[0] == pytest.approx(log_docs - math.log(coco_df[gram]))
    # Scores through the loaded file equal those through the freshly computed frequencies.
    batch_refs = reward_references(TRAIN, None)
    tokens = torch.tensor([encode("a red circle on the left <eos>"),
                           encode("two green circle <eos> <pad> <pad> <pad>")])
    np.testing.assert_array_equal(SCSTScorer(batch_refs, loaded)([0, 2], tokens),
                                  SCSTScorer(batch_refs, df)([0, 2], tokens))


def test_document_frequency_file_errors_name_the_fix(tmp_path):
    df = DocumentFrequency({1: ["a red circle <eos>"]}, vocab=WORDS)
    path = save_document_frequency(df, tmp_path / "df.npz", num_sentences=1, source="test")
    with pytest.raises(ValueError, match="different caption vocabulary"):
        load_document_frequency(path, WORDS[:-1])
    with pytest.raises(FileNotFoundError, match="write_store_document_frequency"):
        load_document_frequency(tmp_path / "missing.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "old.npz", **{**arrays, "version": np.array(0)})
    with pytest.raises(ValueError, match="compute the file again"):
        load_document_frequency(tmp_path / "old.npz")
    no_vocab = DocumentFrequency({1: ["a red circle <eos>"]})
    with pytest.raises(ValueError, match="vocab="):
        SCSTScorer({1: ["a red circle <eos>"]}, no_vocab)


# ---------------------------------------------------------------- one SCST step


def test_one_step_moves_probability_towards_higher_reward():
    torch.manual_seed(0)
    policy = toy_policy()
    cfg = SCSTConfig(samples_per_image=8, baseline="mean_of_others", max_length=6)
    batch = {"image_ids": torch.tensor([0])}
    scorer = scorer_for()
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    loss, stats = scst_step(policy, batch, scorer, cfg, generator)
    generator.set_state(state)
    rows = sample_captions(policy, batch, 8, 6, generator=generator)  # the same samples
    scores = scorer([0] * 8, rows.tokens)
    rewards = scores - baseline_scores(scores[None], "mean_of_others")[0]
    assert stats.sample_cider == pytest.approx(scores.mean())
    assert stats.reward == pytest.approx(0.0, abs=1e-12)  # mean of others: zero-mean rewards
    assert math.isnan(stats.greedy_cider) and stats.reward_ms >= 0
    assert rewards.max() > 0 > rewards.min()
    before = sequence_log_probs(policy, rows.tokens)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.05)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    change = (sequence_log_probs(policy, rows.tokens) - before).numpy()
    best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
    assert change[best] > 0 > change[worst], (rewards, change)


def test_loss_is_reinforce_on_the_models_own_log_probs():
    """With dropout off, the sampled log-probs are the teacher-forced ones of the samples."""
    torch.manual_seed(0)
    cfg_model = CaptionerConfig(baseline="updown", feature_dim=8, d_model=16, embed_dim=12,
                                attention_dim=10, dropout=0.0, options={"rnn_size": 20})
    net = build_captioner(cfg_model, len(WORDS)).train()
    batch = tiny_batch(b=2, n=5)
    batch["image_ids"] = torch.tensor([0, 1])
    cfg = SCSTConfig(samples_per_image=3, max_length=6)
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    loss, stats = scst_step(net, batch, scorer_for(), cfg, generator)
    generator.set_state(state)
    rows = sample_captions(net, batch, 3, 6, generator=generator)
    greedy = greedy_captions(net, batch, 6)
    scorer = scorer_for()
    rewards = (scorer([0, 0, 0, 1, 1, 1], rows.tokens).reshape(2, 3)
               - scorer([0, 1], greedy.tokens)[:, None]).reshape(-1)
    inputs = torch.cat([torch.full((6, 1), BOS), rows.tokens[:, :-1]], 1)
    repeated = {k: v.repeat_interleave(3, 0) for k, v in batch.items()}
    logits = net.decoder(net.encode(repeated), inputs).clone()
    logits[..., [PAD, BOS]] = float("-inf")
    picked = logits.log_softmax(-1).gather(2, rows.tokens.unsqueeze(2)).squeeze(2)
    mask = token_mask(rows.tokens)
    expected = -(torch.where(mask, picked, 0.0).sum(1) * torch.tensor(rewards)).sum() / mask.sum()
    torch.testing.assert_close(loss, expected.float(), atol=1e-5, rtol=1e-5)
    assert stats.greedy_cider == pytest.approx(scorer([0, 1], greedy.tokens).mean())


@pytest.mark.parametrize("baseline", ["updown", "transformer"])
def test_greedy_baseline_runs_in_eval_mode_without_a_graph(baseline):
    options = ({"rnn_size": 20} if baseline == "updown" else
               {"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 16})
    torch.manual_seed(0)
    net = build_captioner(CaptionerConfig(baseline=baseline, feature_dim=8, d_model=16,
                                          embed_dim=16, dropout=0.5, options=options),
                          len(WORDS)).train()
    batch = tiny_batch(b=2, n=5)
    batch["image_ids"] = torch.tensor([0, 1])
    greedy = greedy_captions(net, batch, 6)
    assert net.training and not greedy.log_probs.requires_grad
    net.eval()
    again = greedy_captions(net, batch, 6)  # dropout off both times: the same captions
    assert torch.equal(greedy.tokens, again.tokens) and not net.training
    net.train()
    loss, stats = scst_step(net, batch, scorer_for(), SCSTConfig(max_length=6))
    loss.backward()
    assert net.training and math.isfinite(loss.item()) and stats.sample_tokens >= 1
    assert all(p.grad is not None for p in net.decoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["greedy", "mean_of_others"])
def test_per_sample_rewards_are_public_and_what_the_step_optimises(kind):
    """``scst_rewards``: every sample's CIDEr-D and reward, worked by hand with the same draws,
    and ``scst_step``'s loss is reward_loss of exactly those rewards (issue 21, item 6)."""
    from mia.captioning.scst import scst_rewards

    torch.manual_seed(0)
    net = build_captioner(CaptionerConfig(baseline="updown", feature_dim=8, d_model=16,
                                          embed_dim=12, attention_dim=10, dropout=0.0,
                                          options={"rnn_size": 16}), len(WORDS)).train()
    batch = tiny_batch(b=2, n=5)
    batch["image_ids"] = torch.tensor([0, 1])
    cfg = SCSTConfig(samples_per_image=3, max_length=6, baseline=kind)
    scorer = scorer_for()
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    out = scst_rewards(net, batch, scorer, cfg, generator)
    assert out.rewards.shape == out.sample_scores.shape == out.baseline.shape == (2, 3)
    by_hand = scorer([0, 0, 0, 1, 1, 1], out.samples.tokens).reshape(2, 3)
    np.testing.assert_array_equal(out.sample_scores, by_hand)
    if kind == "greedy":
        greedy = scorer([0, 1], greedy_captions(net, batch, 6).tokens)
        np.testing.assert_array_equal(out.greedy_scores, greedy)
        np.testing.assert_allclose(out.rewards, by_hand - greedy[:, None], rtol=0, atol=1e-12)
    else:
        assert out.greedy is None and out.greedy_scores is None
        others = (by_hand.sum(1, keepdims=True) - by_hand) / 2
        np.testing.assert_allclose(out.rewards, by_hand - others, rtol=0, atol=1e-12)
    generator.set_state(state)
    loss, stats = scst_step(net, batch, scorer, cfg, generator)
    expected = reward_loss(out.samples.log_probs, out.samples.mask,
                           torch.from_numpy(out.rewards.reshape(-1)))
    torch.testing.assert_close(loss, expected)
    assert stats.reward == pytest.approx(float(out.rewards.mean()))
