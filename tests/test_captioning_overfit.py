"""Every Table 1 baseline, base and w/ MIA, can memorise the captions of 8 demo images.

A model that cannot fit 8 captions has a wiring bug (an image signal that never reaches the
words, a mask that hides everything, a detached tied embedding); fitting them says the pieces
connect. The images are demo-world scenes (mia.data.demo_scene) drawn at 32 px, one caption each
(mia.data.demo_language); "grid features" are the 16 pixel patches of 8 x 8, "regions" the 9
cells of a 3 x 3 grid described by their mean and spread of colour (what Visual Regional
Attention reads in place of detector boxes), and the concepts are each image's own caption words.
Label smoothing off, dropout off, tiny sizes: seconds per model on one core.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mia.captioning.beam import BOS, EOS, PAD
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import build_captioner
from mia.data.demo_language import make_captions
from mia.data.demo_scene import render_scene, sample_scene
from mia.data.karpathy import tokenize_caption

IMAGES, SIZE = 8, 32


def demo_batch(regions: bool) -> tuple[dict[str, torch.Tensor], int]:
    """8 demo images with one caption each, in the loader contract's layout; and the vocab size."""
    rng = random.Random(7)
    scenes = [sample_scene(rng, i, "train2014", "train", SIZE, 4) for i in range(IMAGES)]
    captions = [tokenize_caption(make_captions(rng, s, 1)[0]) for s in scenes]
    words = sorted({w for c in captions for w in c})
    index = {w: i + 4 for i, w in enumerate(words)}  # 0-3: <pad> <bos> <eos> <unk>
    pixels = torch.stack([torch.from_numpy(np.asarray(render_scene(s, SIZE), np.float32) / 255)
                          for s in scenes]).permute(0, 3, 1, 2)  # (8, 3, 32, 32)
    if regions:  # 9 cells: mean and std of each colour channel
        cells = pixels.unfold(2, 10, 11).unfold(3, 10, 11).flatten(-2)  # (8, 3, 3, 3, 100)
        feats = torch.cat([cells.mean(-1), cells.std(-1)], 1).flatten(2).transpose(1, 2)
    else:  # 16 patches of 8 x 8 x 3
        feats = F.unfold(pixels, 8, stride=8).transpose(1, 2)  # (8, 16, 192)
    n = feats.shape[1]
    length = max(map(len, captions)) + 2
    ids = torch.full((IMAGES, length), PAD)
    concepts = torch.zeros(IMAGES, n, dtype=torch.long)
    concept_mask = torch.zeros(IMAGES, n, dtype=torch.bool)
    for i, cap in enumerate(captions):
        ids[i, :len(cap) + 2] = torch.tensor([BOS, *[index[w] for w in cap], EOS])
        own = list(dict.fromkeys(index[w] for w in cap))[:n]
        concepts[i, :len(own)] = torch.tensor(own)
        concept_mask[i, :len(own)] = True
    batch = {"image_ids": torch.arange(IMAGES), "features": feats,
             "feature_mask": torch.ones(IMAGES, n, dtype=torch.bool), "concepts": concepts,
             "concept_mask": concept_mask, "captions": ids,
             "caption_lengths": (ids != PAD).sum(1)}
    return batch, len(words) + 4


def next_word_accuracy(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(batch).argmax(-1)
    targets = batch["captions"][:, 1:]
    real = targets != PAD
    model.train()
    return float((predicted == targets)[real].float().mean())


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster than two fighting over a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("variant", ["base", "mia"])
@pytest.mark.parametrize("baseline", ["visual_attention", "concept_attention", "visual_condition",
                                      "concept_condition", "visual_regional_attention"])
def test_each_baseline_memorises_eight_demo_images(baseline, variant):
    torch.manual_seed(0)
    batch, vocab = demo_batch(regions=baseline == "visual_regional_attention")
    cfg = CaptionerConfig(baseline=baseline, variant=variant,
                          feature_dim=batch["features"].shape[-1], d_model=32, embed_dim=32,
                          attention_dim=16, dropout=0.0, mia_heads=2, mia_d_ff=64,
                          mia_dropout=0.0, mia_attention_dropout=0.0)
    model = build_captioner(cfg, vocab).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    targets = batch["captions"][:, 1:]
    accuracy = 0.0
    for step in range(1, 401):
        loss = F.cross_entropy(model(batch).transpose(1, 2), targets, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            accuracy = next_word_accuracy(model, batch)
            if accuracy > 0.95:
                break
    assert accuracy > 0.95, f"{baseline}/{variant}: {accuracy:.3f} after {step} steps"
