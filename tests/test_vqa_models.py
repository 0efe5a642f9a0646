"""Up-Down and BAN, with and without MIA: masks, the image-only reach of MIA, the references'
loss and weight norm, GloVe initialisation, and overfitting 64 demo-world questions."""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter as Tally
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mia.data.demo import DemoConfig, generate_demo_world
from mia.data.loaders import VQAData
from mia.data.preprocess import VQAPreprocessConfig, build_vqa_store
from mia.data.store import write_store
from mia.vqa import MODELS, VQAModelConfig, build_vqa_model, soft_accuracy, vqa_loss
from mia.vqa.glove import init_embedding, read_glove
from mia.vqa.layers import WeightNormLinear

C, WORDS, CONCEPTS, ANSWERS = 24, 40, 20, 15


pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


def _cfg(baseline: str, variant: str = "base", **kw) -> VQAModelConfig:
    sizes = dict(feature_dim=C, hidden=32, embed_dim=16, concept_embed_dim=16, mia_d_model=16,
                 mia_heads=4, mia_d_ff=32, glimpses=3)
    return VQAModelConfig(baseline=baseline, variant=variant, **{**sizes, **kw})


def _model(baseline: str, variant: str = "base", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_vqa_model(_cfg(baseline, variant, **kw), WORDS, ANSWERS, CONCEPTS).eval()


def _batch(b: int = 5, m: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Questions of 3..11 words (end-padded), 4..m real boxes (zero-padded), valid boxes."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 11, 6, 9, 4, 7, 5, 8][:b])
    words = torch.arange(14)[None, :] < lengths[:, None]
    questions = torch.randint(2, WORDS, (b, 14), generator=g) * words
    num_boxes = torch.tensor([12, 4, 7, 9, 5, 11, 6, 10][:b]).clamp(max=m)
    box_mask = torch.arange(m)[None, :] < num_boxes[:, None]
    corner = torch.rand(b, m, 2, generator=g) * 0.6
    boxes = torch.cat([corner, corner + 0.1 + 0.3 * torch.rand(b, m, 2, generator=g)], dim=2)
    concept_mask = torch.arange(m)[None, :] < (m - torch.arange(b) % 3)[:, None]
    return {"questions": questions, "features": torch.randn(b, m, C, generator=g) * box_mask[..., None],
            "feature_mask": box_mask, "boxes": boxes * box_mask[..., None],
            "concepts": torch.randint(0, CONCEPTS, (b, m), generator=g) * concept_mask,
            "concept_mask": concept_mask,
            "target": (torch.rand(b, ANSWERS, generator=g) > 0.8).float() * 0.6}


def _repad(batch: dict[str, torch.Tensor], seed: int = 9) -> dict[str, torch.Tensor]:
    """The same items with different garbage in every padded slot."""
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    pad = ~batch["feature_mask"]
    out["features"] = torch.where(pad[..., None], 5 * torch.randn(batch["features"].shape,
                                                                generator=g), batch["features"])
    out["boxes"] = torch.where(pad[..., None], torch.rand(batch["boxes"].shape, generator=g),
                               batch["boxes"])
    out["concepts"] = torch.where(batch["concept_mask"], batch["concepts"],
                                  torch.randint(0, CONCEPTS, batch["concepts"].shape, generator=g))
    return out


# ---------------------------------------------------------------------- configuration


def test_config_defaults_are_the_paper_sizes_and_unknown_keys_are_refused():
    assert VQAModelConfig(baseline="updown").hidden == 1024
    ban = VQAModelConfig(baseline="ban")
    assert (ban.hidden, ban.glimpses, ban.ban_rank, ban.counter_objects) == (1280, 8, 3, 10)
    assert (ban.mia_d_model, ban.mia_heads, ban.mia_d_ff, ban.mia_iterations) == (512, 8, 2048, 2)
    assert set(MODELS) == {"updown", "ban"}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['glimpse'\]"):
        VQAModelConfig.from_dict({"baseline": "ban", "glimpse": 4})
    with pytest.raises(ValueError, match="unknown variant 'mia_both'"):
        VQAModelConfig(variant="mia_both")
    with pytest.raises(ValueError, match="unknown baseline 'mcb'"):
        VQAModelConfig(baseline="mcb")
    assert VQAModelConfig.from_dict({"variant": "mia_n3"}).iterations == 3


# ---------------------------------------------------------------------- building blocks


def test_weight_norm_linear_is_torch_weight_norm_with_dim_none():
    torch.manual_seed(3)
    plain = torch.nn.Linear(7, 5)
    torch.manual_seed(3)
    ours = WeightNormLinear(7, 5)
    torch.testing.assert_close(ours.weight, plain.weight)  # initial W = nn.Linear's default
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(7, 5), dim=None)
    with torch.no_grad():
        ref.parametrizations.weight.original0.fill_(2.5)  # g != ||v||
    sd = ref.state_dict()
    ours.load_state_dict({"weight_g": sd["parametrizations.weight.original0"],
                          "weight_v": sd["parametrizations.weight.original1"],
                          "bias": sd["bias"]})
    x = torch.randn(4, 7)
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_g.grad, ref.parametrizations.weight.original0.grad)
    torch.testing.assert_close(ours.weight_v.grad, ref.parametrizations.weight.original1.grad)


def test_loss_is_bce_with_logits_times_number_of_answers():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.9, 0.6]], dtype=torch.float64)
    # Hand-written: sum over answers of -(t log s + (1 - t) log(1 - s)), mean over questions.
    s = [[1 / (1 + math.exp(-v)) for v in row] for row in logits.tolist()]
    per_q = [-sum(t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(tr, sr,
                                                                            strict=True))
             for tr, sr in zip(target.tolist(), s, strict=True)]
    assert abs(float(vqa_loss(logits, target)) - sum(per_q) / 2) < 1e-6
    # soft accuracy: the target score of each argmax (answers 0 and 1 -> 1.0 and 0.9)
    torch.testing.assert_close(soft_accuracy(logits, target),
                               torch.tensor([1.0, 0.9], dtype=torch.float64))
    with pytest.raises(ValueError, match="both be"):
        vqa_loss(logits, target[:, :2])


def test_glove_reader_and_embedding_initialisation(tmp_path):
    path = tmp_path / "glove.txt"
    lines = ["the 0.1 0.2 0.3", "cat 1 2 3", "'s -1 -2 -3", "cat 9 9 9", "dog 4 5 6"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    match = read_glove(path, ["<pad>", "<unk>", "cat", "'s", "zebra"], dim=3)
    assert match.n_found == 2 and match.found.tolist() == [False, False, True, True, False]
    torch.testing.assert_close(match.vectors[2], torch.tensor([1.0, 2.0, 3.0]))  # first "cat"
    emb = torch.nn.Embedding(5, 3, padding_idx=0)
    before = emb.weight.detach().clone()
    assert init_embedding(emb, match) == 2
    torch.testing.assert_close(emb.weight[3], torch.tensor([-1.0, -2.0, -3.0]))
    torch.testing.assert_close(emb.weight[[0, 1, 4]], before[[0, 1, 4]])  # kept, pad still 0
    path.write_text("cat 1 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"glove.txt, line 1 \(word 'cat'\): 2 values, expected 3"):
        read_glove(path, ["cat"], dim=3)


def test_model_initialises_question_and_concept_words_from_one_glove_read(tmp_path):
    model = _model("updown", "mia", embed_dim=4, concept_embed_dim=4)
    vocab = ["<pad>", "<unk>", "what", "color"] + [f"q{i}" for i in range(WORDS - 4)]
    concepts = ["red", "color", "zebra"] + [f"c{i}" for i in range(CONCEPTS - 3)]
    path = tmp_path / "glove.6B.4d.txt"
    path.write_text("what 1 1 1 1\ncolor 2 2 2 2\nred 3 3 3 3\n", encoding="utf-8")
    found = model.init_word_vectors(path, vocab, concepts)
    assert found == {"question_words": 2, "question_vocab": WORDS, "concept_words": 2,
                     "concept_vocab": CONCEPTS}
    torch.testing.assert_close(model.question.embedding.weight[3], torch.full((4,), 2.0))
    torch.testing.assert_close(model.image.concept_embedding.weight[1], torch.full((4,), 2.0))


# ---------------------------------------------------------------------- the reference models

# Logits of the references' build_baseline0_newatt (hengyuan-hu/bottom-up-attention-vqa) and
# build_ban (jnhwkim/ban-vqa, op='', gamma=2) run in float64, in eval mode, in a scratch
# directory outside the project, with every parameter mapped one to one from ours after
# _fill_deterministically, on _reference_inputs (every box and word real, so that the explicit
# masks, which the references do not have, change nothing). Ours must give the same numbers.
REFERENCE_LOGITS = {
    "updown": [[0.02917265088292223, -0.016023845879426846, -0.02851241032631368,
                0.038840458988093296, -0.019882993917334016],
               [-0.03610200186249189, -0.06984016552273459, -0.060764928636207714,
                0.027036009173115272, -0.01839303420756476],
               [-0.020639936781806603, -0.05916314903314823, -0.057153188559281,
                0.02632087332868964, -0.01907261390780103]],
    "ban": [[1.385585364338371, 4.522808352053886, 6.986957668667913, 8.536574525925603,
             8.88176345614751],
            [-1.0937926830921008, 0.6683628729200906, 2.5271221784824496, 4.366160962561199,
             5.607795719056809],
            [2.6941600278890228, 3.7718370750179564, 4.662525930791194, 5.258165909311765,
             5.02217468204045]],
}
REFERENCE_BAN_ATTENTION_00 = [[0.006303688202579292, 0.005642251804654706],
                              [0.005880818638274438, 0.006079110901922686],
                              [0.005926952818062725, 0.0060863946477424675]]  # att[:, :, 0, 0]


def _fill_deterministically(model: torch.nn.Module) -> None:
    """Every parameter from a formula of its name, scaled so that no layer saturates or dies."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            k = zlib.crc32(name.encode()) % 997
            idx = torch.arange(p.numel(), dtype=torch.float64)
            values = 0.4 * torch.sin(0.37 * idx + k) + 0.2 * torch.cos(1.9 * idx + 0.5 * k)
            if p.dim() >= 2:
                values = values * 2 / math.sqrt(p.shape[-1])
            if name.endswith("bias"):
                values = values * 0.25
            if name.endswith("_g"):  # weight-norm scales ~ sqrt(rows): O(1) outputs
                rows = model.get_parameter(name[:-1] + "v").shape[0]
                scale = (1.0 + 0.3 * math.sin(k)) * math.sqrt(rows)
                values = torch.full((1,), scale, dtype=torch.float64)
            p.copy_(values.view_as(p))


def _reference_inputs() -> dict[str, torch.Tensor]:
    b, m, c, n_words = 3, 12, 6, 10
    i = torch.arange(b * m * c, dtype=torch.float64)
    a = torch.arange(b * m, dtype=torch.float64).view(b, m)
    x1, y1 = 0.35 * (1 + torch.sin(1.7 * a)), 0.35 * (1 + torch.cos(2.3 * a))
    boxes = torch.stack([x1, y1, x1 + 0.1 + 0.15 * (1 + torch.cos(0.9 * a)),
                         y1 + 0.1 + 0.15 * (1 + torch.sin(1.1 * a))], dim=2)
    questions = 1 + (torch.arange(b)[:, None] * 7 + torch.arange(14)[None, :] * 3) % (n_words - 1)
    return {"questions": questions, "features": (0.5 * torch.sin(0.11 * i) + 0.2).view(b, m, c),
            "feature_mask": torch.ones(b, m, dtype=torch.bool), "boxes": boxes}


@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_forward_equals_the_reference_model(baseline):
    cfg = VQAModelConfig(baseline=baseline, feature_dim=6, hidden=8, embed_dim=300, glimpses=2)
    model = build_vqa_model(cfg, 10, 5).double().eval()
    _fill_deterministically(model)
    with torch.no_grad():
        out = model.run(_reference_inputs())
    expected = torch.tensor(REFERENCE_LOGITS[baseline], dtype=torch.float64)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-12)
    if baseline == "ban":
        torch.testing.assert_close(out.attention[:, :, 0, 0], torch.tensor(
            REFERENCE_BAN_ATTENTION_00, dtype=torch.float64), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------- shapes and variants


@pytest.mark.parametrize("baseline", ["updown", "ban"])
@pytest.mark.parametrize("variant", ["base", "mia"])
def test_shapes_and_every_used_parameter_gets_a_gradient(baseline, variant):
    model = _model(baseline, variant).train()
    batch = _batch()
    out = model.run(batch)
    assert out.logits.shape == (5, ANSWERS)
    expected = (5, 12) if baseline == "updown" else (5, 3, 12, 14)
    assert out.attention.shape == expected
    assert out.image.features.shape == (5, 12, 16 if variant == "mia" else C)
    assert (out.image.mia is None) == (variant == "base")
    model.loss(out.logits, batch["target"]).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:  # the counter's eight unused functions only (kept for the reference's layout)
            assert name in {f"answerer.counter.f.{i}.weight" for i in range(8, 16)}, name


@pytest.mark.parametrize("variant", ["mia_visual", "mia_concepts", "self_attention", "mia_n3"])
def test_other_mia_variants_replace_the_image_side_as_named(variant):
    model = _model("ban", variant)
    out = model.run(_batch(), need_weights=True)
    mia = out.image.mia
    mask = _batch()["feature_mask"][..., None]
    expected = {"mia_visual": mia.visual, "mia_concepts": mia.concepts}.get(variant, mia.fused)
    torch.testing.assert_close(out.image.features, expected * mask)
    assert len(mia.steps) == (3 if variant == "mia_n3" else 2)
    assert model.image.mia.mode == ("self" if variant == "self_attention" else "mutual")


def test_mia_variants_refuse_batches_without_concepts_and_ban_without_boxes():
    batch = _batch()
    with pytest.raises(ValueError, match="needs 'concepts' in the batch"):
        _model("updown", "mia")({k: v for k, v in batch.items() if k != "concepts"})
    with pytest.raises(ValueError, match="extract at least k=12 concepts"):
        _model("updown", "mia")({**batch, "concepts": batch["concepts"][:, :10],
                                 "concept_mask": batch["concept_mask"][:, :10]})
    with pytest.raises(ValueError, match="needs 'boxes'"):
        _model("ban")({k: v for k, v in batch.items() if k != "boxes"})
    with pytest.raises(ValueError, match="needs the concept vocabulary size"):
        build_vqa_model(_cfg("ban", "mia"), WORDS, ANSWERS)


# ---------------------------------------------------------------------- masks


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_updown_attention_is_a_distribution_over_the_real_boxes(variant):
    model, batch = _model("updown", variant), _batch()
    with torch.no_grad():
        out = model.run(batch)
        alpha = out.attention
        torch.testing.assert_close(alpha.sum(dim=1), torch.ones(5))
        assert alpha[~batch["feature_mask"]].abs().max() == 0
        assert alpha[batch["feature_mask"]].min() > 0
        torch.testing.assert_close(model(_repad(batch)), out.logits)  # padding is invisible


@pytest.mark.parametrize("variant", ["base", "mia"])
def test_ban_attention_sums_to_one_per_glimpse_over_real_box_word_pairs(variant):
    model, batch = _model("ban", variant), _batch()
    with torch.no_grad():
        out = model.run(batch)
    att = out.attention  # (B, G, m, L)
    torch.testing.assert_close(att.sum(dim=(2, 3)), torch.ones(5, 3))
    real = batch["feature_mask"][:, None, :, None] & (batch["questions"] != 0)[:, None, None, :]
    assert att.masked_select(~real.expand_as(att)).abs().max() == 0
    assert att.masked_select(real.expand_as(att)).min() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(_repad(batch)), out.logits)


@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_answers_do_not_depend_on_question_padding_length(baseline):
    """End-padding to 14 or only to the longest question: the same answers (masks, last state)."""
    model, batch = _model(baseline, "mia"), _batch()
    with torch.no_grad():
        full = model(batch)
        trimmed = model({**batch, "questions": batch["questions"][:, :11]})
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_a_fully_padded_item_stays_finite():
    batch = _batch()
    batch["feature_mask"][0] = False
    batch["concept_mask"][0] = False
    batch["questions"][1] = 0
    for baseline in ("updown", "ban"):
        out = _model(baseline, "mia").train().run(batch)
        assert torch.isfinite(out.logits).all()
        vqa_loss(out.logits, batch["target"]).backward()


# ---------------------------------------------------------------------- MIA touches the image only


@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_mia_changes_only_the_image_side(baseline):
    base, mia = _model(baseline, "base", seed=1), _model(baseline, "mia", seed=2)
    mia.question.load_state_dict(base.question.state_dict())
    batch = _batch()
    other_concepts = {**batch, "concepts": (batch["concepts"] + 7) % CONCEPTS}
    with torch.no_grad():
        q_base, out, out2 = base.run(batch).question, mia.run(batch), mia.run(other_concepts)
    for q in (out.question, out2.question):
        torch.testing.assert_close(q.states, q_base.states, rtol=0, atol=0)
        torch.testing.assert_close(q.last, q_base.last, rtol=0, atol=0)
    assert not torch.allclose(out.logits, out2.logits)  # concepts reach the answer
    assert not torch.allclose(out.image.features, out2.image.features)  # ... via the image side
    names = {n.split(".")[0] for n, _ in mia.named_parameters()}
    assert names == {"question", "image", "answerer"}
    assert not any("concept" in n for n, _ in mia.question.named_parameters())


# ---------------------------------------------------------------------- overfit demo questions


def _demo_stores(root: Path) -> tuple[Path, Path, Path, list[str]]:
    """A 16-image demo world; its VQA store; regions at the real instance boxes (+ 1-3
    background boxes, zero-padded to 12) with features = shape one-hot + noise; concepts = the
    image's caption words by count (padded with -1)."""
    generate_demo_world(root, DemoConfig(num_images=16, image_size=48, seed=3))
    vqa = build_vqa_store(
        {s: root / f"vqa/v2_OpenEnded_mscoco_{s}2014_questions.json" for s in ("train", "val")},
        {s: root / f"vqa/v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")},
        root / "vqa.h5", VQAPreprocessConfig(min_answer_count=1))
    images, objects, captions = {}, {}, {}
    for s in ("train", "val"):
        inst = json.loads((root / f"annotations/instances_{s}2014.json").read_text())
        for im in inst["images"]:
            images[im["id"]] = (im["width"], im["height"])
        for a in inst["annotations"]:
            objects.setdefault(a["image_id"], []).append((a["bbox"], a["category_id"]))
        caps = json.loads((root / f"annotations/captions_{s}2014.json").read_text())
        for c in caps["annotations"]:
            captions.setdefault(c["image_id"], Tally()).update(c["caption"].lower().split())
    ids = np.array(sorted(images), dtype=np.int64)
    n, rng = 12, np.random.default_rng(0)
    boxes = np.zeros((len(ids), n, 4), np.float32)
    feats = np.zeros((len(ids), n, C), np.float16)
    num = np.zeros(len(ids), np.int32)
    for r, image_id in enumerate(ids):
        w, h = images[image_id]
        rows = [([x, y, x + bw, y + bh], cat) for (x, y, bw, bh), cat in
                objects.get(image_id, [])]
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            rows.append(([x, y, x + w / 3, y + h / 3], 0))
        num[r] = len(rows)
        for j, (box, cat) in enumerate(rows):
            boxes[r, j] = box
            feats[r, j] = rng.standard_normal(C) * 0.5 + np.eye(C)[cat]
    write_store(root / "regions.h5", kind="region_features", image_ids=ids,
                datasets={"features": feats, "boxes": boxes, "num_boxes": num,
                          "image_w": np.array([images[i][0] for i in ids], np.int32),
                          "image_h": np.array([images[i][1] for i in ids], np.int32)},
                attrs={"padding": "zeros", "max_boxes": n})
    words = sorted({w for t in captions.values() for w in t})
    concept_ids = np.full((len(ids), n), -1, np.int32)
    for r, image_id in enumerate(ids):
        top = [words.index(w) for w, _ in captions[image_id].most_common(n)]
        concept_ids[r, :len(top)] = top
    write_store(root / "concepts.h5", kind="concepts", image_ids=ids,
                datasets={"concept_ids": concept_ids,
                          "concept_probs": np.where(concept_ids >= 0, 0.5, 0).astype(np.float32)},
                attrs={"concept_words": words, "k": n})
    return vqa, root / "regions.h5", root / "concepts.h5", words


@pytest.fixture(scope="module")
def demo_batch(tmp_path_factory):
    vqa, regions, concepts, _ = _demo_stores(tmp_path_factory.mktemp("vqa_demo"))
    data = VQAData.from_stores(vqa, regions, concepts_h5=concepts)
    batch = data.question_batch(np.arange(64))
    assert float(batch["target"].max(dim=1).values.min()) == 1.0  # every majority answer kept
    return batch, data


@pytest.mark.parametrize("baseline", ["updown", "ban"])
@pytest.mark.parametrize("variant", ["base", "mia"])
def test_overfits_64_demo_questions(demo_batch, baseline, variant):
    """Training accuracy = mean VQA soft score (0/.3/.6/.9/1) of the argmax answer, the
    references' train score, in eval mode; every question here has a reachable score of 1."""
    batch, data = demo_batch
    torch.manual_seed(0)
    cfg = _cfg(baseline, variant, hidden=64, glimpses=2, mia_d_model=32, mia_d_ff=64)
    model = build_vqa_model(cfg, len(data.question_vocab), data.n_answers,
                            len(data.concept_words))
    optim = torch.optim.Adamax(model.parameters(), lr=0.02)
    accuracy = 0.0
    for step in range(1, 301):
        model.train()
        loss = model.loss(model(batch), batch["target"])
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)  # the references' clip
        optim.step()
        if step % 10 == 0:
            with torch.no_grad():
                accuracy = float(soft_accuracy(model.eval()(batch), batch["target"]).mean())
            if accuracy > 0.95:
                break
    print(f"{baseline}/{variant}: training accuracy {accuracy:.3f} after {step} steps")
    assert accuracy > 0.95, f"{baseline}/{variant} reached only {accuracy:.3f}"


def test_demo_batch_feeds_both_models_with_real_boxes(demo_batch):
    batch, data = demo_batch
    assert batch["boxes"].shape == (64, 12, 4)
    real = batch["boxes"][batch["feature_mask"]]
    assert real.min() >= 0 and real.max() <= 1 and (real[:, 2:] > real[:, :2]).all()
    assert F.one_hot(batch["concepts"], len(data.concept_words)).shape[:2] == (64, 12)
