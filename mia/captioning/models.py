"""Captioning models and the registry that builds them by baseline name.

A captioner is an :class:`~mia.captioning.encoder.ImageEncoder` (which carries MIA for the MIA
variants) plus a decoder with the small interface beam search needs:
``prepare(encoded) -> ctx``, ``init_state(ctx)``, ``step(words, state, ctx)``, and teacher-forced
``forward(encoded, inputs)``. Later baselines (visual_condition, concept_condition,
visual_regional_attention, updown, transformer) add a builder with :func:`register_baseline`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mia.attention import MIAOutput
from mia.captioning.config import CaptionerConfig
from mia.captioning.decoder import AttentionDecoder
from mia.captioning.encoder import EncodedImage, ImageEncoder, Source

Builder = Callable[[CaptionerConfig, int], "Captioner"]
BASELINES: dict[str, Builder] = {}


def register_baseline(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder ``(cfg, vocab_size) -> Captioner`` under ``name``."""
    def add(builder: Builder) -> Builder:
        if name in BASELINES:
            raise ValueError(f"captioning baseline {name!r} is registered twice")
        BASELINES[name] = builder
        return builder
    return add


class Captioner(nn.Module):
    """Encoder + decoder; ``forward`` returns teacher-forced logits for a caption batch."""

    def __init__(self, cfg: CaptionerConfig, encoder: ImageEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, batch: dict[str, Tensor], need_weights: bool = False) -> EncodedImage:
        return self.encoder(batch, need_weights=need_weights)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, L-1, V) predicting ``captions[:, 1:]`` from ``captions[:, :-1]``."""
        return self.decoder(self.encode(batch), batch["captions"][:, :-1].long())

    def mia_attention(self, batch: dict[str, Tensor]) -> MIAOutput:
        """MIA's output with its attention weights for every iteration (Figure 5).

        ``out.attention[k]`` is (visual-refining, concept-refining) weights, each
        (B, heads, n, n); call in ``eval()`` mode for dropout-free maps.
        """
        enc = self.encode(batch, need_weights=True)
        if enc.mia is None:
            raise ValueError(f"variant {self.cfg.variant!r} has no MIA module; attention maps "
                             "exist only for the MIA variants")
        return enc.mia


def _attention_captioner(cfg: CaptionerConfig, vocab_size: int, source: Source) -> Captioner:
    decoder = AttentionDecoder(cfg, vocab_size)
    encoder = ImageEncoder(cfg, decoder.embedding, source)
    return Captioner(cfg, encoder, decoder)


@register_baseline("visual_attention")
def _visual_attention(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Grid visual features as the attention source at every step (section 3.1, baseline 1)."""
    return _attention_captioner(cfg, vocab_size, "visual")


@register_baseline("concept_attention")
def _concept_attention(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Textual concepts as the attention source at every step (section 3.1, baseline 2)."""
    return _attention_captioner(cfg, vocab_size, "concepts")


def build_captioner(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Build the model named by ``cfg.baseline`` (a key of :data:`BASELINES`)."""
    if cfg.baseline not in BASELINES:
        raise ValueError(f"captioner.baseline: unknown baseline {cfg.baseline!r}; registered: "
                         f"{sorted(BASELINES)}")
    return BASELINES[cfg.baseline](cfg, vocab_size)
