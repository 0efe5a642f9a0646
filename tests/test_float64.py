"""Every captioner and VQA model runs in float64 (issue 21, item 1).

The reference tests compare our models with the reference code in float64; that is only possible
when no module casts its inputs to a fixed dtype. Each model is built, converted with
``.double()`` and fed a batch the loaders' way (float16 features, float32 images), and a full
training step is run: forward, the trainer's own loss, backward, an optimiser step, and for the
captioners sampling and beam search too. Every floating tensor on the way must stay float64
(a ``.float()`` anywhere rounds to float32 and shows up as a float32 loss or log-probability).
"""

from __future__ import annotations

import pytest
import torch

from mia.captioning.beam import beam_search
from mia.captioning.config import CaptionerConfig
from mia.captioning.models import build_captioner
from mia.captioning.sampling import sample_captions
from mia.captioning.train import caption_loss
from mia.vqa.config import VQAModelConfig
from mia.vqa.models import build_vqa_model

VOCAB = 20
CAPTIONERS = ["visual_attention", "concept_attention", "visual_condition", "concept_condition",
              "visual_regional_attention", "updown", "transformer"]


def caption_batch(b: int = 3, n: int = 4, k: int = 5, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    captions = torch.randint(4, VOCAB, (b, length), generator=g)
    captions[:, 0], captions[:, -1] = 1, 2
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -1] = False
    return {"image_ids": torch.arange(b), "features": torch.randn(b, n, 8, generator=g).half(),
            "feature_mask": mask, "concepts": torch.randint(4, VOCAB, (b, k), generator=g),
            "concept_mask": torch.ones(b, k, dtype=torch.bool), "captions": captions,
            "caption_lengths": torch.full((b,), length)}


def captioner(baseline: str, variant: str, **extra) -> torch.nn.Module:
    options = {"updown": {"rnn_size": 16},
               "transformer": {"encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                               "d_ff": 32}}.get(baseline, {})
    values = {"feature_dim": 8, "d_model": 16, "embed_dim": 16, "attention_dim": 16,
              "mia_heads": 2, "mia_d_ff": 32, "options": options, **extra}
    cfg = CaptionerConfig(baseline=baseline, variant=variant, **values)
    torch.manual_seed(0)
    return build_captioner(cfg, VOCAB).double()


def _all_float64(module: torch.nn.Module) -> bool:
    return all(p.dtype == torch.float64 for p in module.parameters())


@pytest.mark.parametrize("variant", ["base", "mia"])
@pytest.mark.parametrize("baseline", CAPTIONERS)
def test_captioner_trains_and_decodes_in_float64(baseline: str, variant: str) -> None:
    model = captioner(baseline, variant)
    batch = caption_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits = model(batch)
    assert logits.dtype == torch.float64
    loss = caption_loss(logits, batch["captions"][:, 1:], label_smoothing=0.1)
    assert loss.dtype == torch.float64
    loss.backward()
    optimizer.step()
    assert _all_float64(model)
    samples = sample_captions(model, batch, 2, 5, 1.0, torch.Generator().manual_seed(0))
    assert samples.log_probs.dtype == torch.float64
    model.eval()
    with torch.no_grad():
        decoded = beam_search(model, batch, beam_size=2, max_length=5)
    assert decoded.scores.dtype == torch.float64


def test_fine_tuned_cnn_captioner_runs_in_float64() -> None:
    """The grid captioner with its ResNet inside reads float32 images from the loader."""
    model = captioner("visual_attention", "mia", fine_tune_cnn_after_epoch=0, feature_dim=512,
                      cnn={"backbone": "resnet18", "pretrained": False, "crop": 64,
                           "resize": 64})
    model.cnn.set_trainable(True)  # type: ignore[union-attr]
    batch = caption_batch(k=4)
    del batch["features"], batch["feature_mask"]
    batch["images"] = torch.randn(3, 3, 64, 64)  # float32, as the image loader gives them
    loss = caption_loss(model(batch), batch["captions"][:, 1:], 0.1)
    assert loss.dtype == torch.float64
    loss.backward()
    grads = [p.grad for p in model.cnn.tuned.parameters() if p.grad is not None]  # type: ignore
    assert grads and all(g.dtype == torch.float64 for g in grads)


@pytest.mark.parametrize("variant", ["base", "mia"])
@pytest.mark.parametrize("baseline", ["updown", "ban"])
def test_vqa_model_trains_in_float64(baseline: str, variant: str) -> None:
    cfg = VQAModelConfig(baseline=baseline, variant=variant, feature_dim=8, embed_dim=8, hidden=16,
                         glimpses=2, concept_embed_dim=8, mia_d_model=16, mia_heads=2,
                         mia_d_ff=16)
    torch.manual_seed(0)
    model = build_vqa_model(cfg, 10, 5, 12).double()
    g = torch.Generator().manual_seed(0)
    questions = torch.randint(2, 10, (3, 6), generator=g)
    questions[0, 4:] = 0
    batch = {"questions": questions, "features": torch.randn(3, 4, 8, generator=g).half(),
             "feature_mask": torch.ones(3, 4, dtype=torch.bool),
             "boxes": torch.rand(3, 4, 4, generator=g),
             "concepts": torch.randint(0, 12, (3, 5), generator=g),
             "concept_mask": torch.ones(3, 5, dtype=torch.bool),
             "target": torch.rand(3, 5, generator=g)}
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    logits = model(batch)
    assert logits.dtype == torch.float64
    loss = model.loss(logits, batch["target"])
    assert loss.dtype == torch.float64
    loss.backward()
    optimizer.step()
    assert _all_float64(model)
