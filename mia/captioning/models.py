"""Captioning models and the registry that builds them by baseline name.

A captioner is an :class:`~mia.captioning.encoder.ImageEncoder` (which carries MIA for the MIA
variants) plus a decoder with the small interface beam search needs:
``prepare(encoded) -> ctx`` (ctx has ``memory`` and ``repeat_interleave``), ``init_state(ctx)``
(a tuple of batch-first tensors), ``step(words, state, ctx)``, and teacher-forced
``forward(encoded, inputs)``. Every baseline registers a builder with :func:`register_baseline`.

Table 1's five (docs/RECIPE.md has the released recipe they follow):

* ``visual_attention``: attention over the 49 grid features (``decoder.AttentionDecoder``);
* ``concept_attention``: attention over the top-49 concepts;
* ``visual_condition`` / ``concept_condition``: no attention (``condition.ConditionDecoder``);
* ``visual_regional_attention``: Visual Attention over the 36 bottom-up region features (the run's
  ``features: regions``), with the top-36 concepts for MIA.

When ``fine_tune_cnn_after_epoch`` is set, the captioner also owns the ResNet
(:mod:`mia.captioning.finetune`) and reads ``images`` instead of precomputed ``features``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from mia.attention import MIAOutput, MutualIterativeAttention
from mia.captioning.condition import ConditionDecoder
from mia.captioning.config import CaptionerConfig
from mia.captioning.decoder import AttentionDecoder
from mia.captioning.encoder import EncodedImage, ImageEncoder, Source
from mia.training.sync_count import host_value

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
    """Encoder + decoder (+ the CNN when it is fine-tuned); ``forward`` returns teacher-forced
    logits for a caption batch."""

    def __init__(self, cfg: CaptionerConfig, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder
        self.cnn: nn.Module | None = None  # mia.captioning.finetune.GridCNN when fine-tuned

    def encode(self, batch: dict[str, Tensor], need_weights: bool = False) -> EncodedImage:
        if self.cnn is not None:
            batch = self.cnn.featurize(batch)
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


def trim_captions(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch with ``captions`` cut to its longest caption (``caption_lengths.max()``).

    A captions store that keeps every word (``preprocess.captions.max_length: null``) is as wide
    as the longest caption of COCO (~50 words); without this a batch would run the LSTM and the
    vocabulary layer over padding. Targets must be taken from the returned batch. Call it on
    the host batch, before moving it to the GPU: reading the lengths there is no device sync.
    """
    longest = int(host_value(batch["caption_lengths"].max()))
    return {**batch, "captions": batch["captions"][:, :longest]}


# ----------------------------------------------------------------------------- initialisation


def _released_mia_init_(mia: MutualIterativeAttention) -> None:
    """``Models/SubLayers.py``: W^Q, W^K, W^V ~ N(0, 2 / (d + d_k)); W^O Xavier-normal."""
    for layer in (mia.visual_layer, mia.textual_layer):
        att = layer.attention
        d = att.w_q.in_features
        std = math.sqrt(2.0 / (d + att.d_k))
        nn.init.normal_(att.w_q.weight, mean=0.0, std=std)
        nn.init.normal_(att.w_kv.weight, mean=0.0, std=std)  # K and V: d_k == d_v
        nn.init.xavier_normal_(att.w_o.weight)


def released_init_(model: Captioner) -> None:
    """Re-initialise as the authors' code does (``init_weights`` of Models/Main.py, SubLayers.py):
    the visual projection Kaiming-uniform with zero bias, the attention Xavier-uniform, the word
    classifier Kaiming-normal with zero bias, v_a Kaiming-uniform with zero bias, MIA's
    projections as :func:`_released_mia_init_`. Embeddings, LSTM and LayerNorms keep PyTorch's
    defaults, as there."""
    encoder = model.encoder
    proj = getattr(encoder, "visual_proj", None)
    if proj is not None:
        nn.init.kaiming_uniform_(proj[1].weight, mode="fan_in")
        nn.init.zeros_(proj[1].bias)
    mia = getattr(encoder, "mia", None)
    if isinstance(mia, MutualIterativeAttention):
        _released_mia_init_(mia)
    init = getattr(model.decoder, "released_init_", None)
    if callable(init):
        init()


def _finish(cfg: CaptionerConfig, encoder: ImageEncoder, decoder: nn.Module) -> Captioner:
    model = Captioner(cfg, encoder, decoder)
    if cfg.init == "released":
        released_init_(model)
    if cfg.fine_tunes_cnn and encoder.needs_visual:
        from mia.captioning.finetune import attach_cnn  # torchvision only when asked for

        attach_cnn(model)
    return model


# ----------------------------------------------------------------------------- Table 1 models


def _attention_captioner(cfg: CaptionerConfig, vocab_size: int, source: Source) -> Captioner:
    decoder = AttentionDecoder(cfg, vocab_size, source)
    encoder = ImageEncoder(cfg, decoder.embedding, source)
    return _finish(cfg, encoder, decoder)


def _condition_captioner(cfg: CaptionerConfig, vocab_size: int, first: str) -> Captioner:
    decoder = ConditionDecoder(cfg, vocab_size, first)  # type: ignore[arg-type]
    encoder = ImageEncoder(cfg, decoder.embedding, "both")
    return _finish(cfg, encoder, decoder)


@register_baseline("visual_attention")
def _visual_attention(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Grid visual features as the attention source at every step (section 3.1, baseline 1)."""
    return _attention_captioner(cfg, vocab_size, "visual")


@register_baseline("concept_attention")
def _concept_attention(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Textual concepts as the attention source at every step (section 3.1, baseline 2)."""
    return _attention_captioner(cfg, vocab_size, "concepts")


@register_baseline("visual_condition")
def _visual_condition(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Concepts at the first decoding step, grid features at the following ones (baseline 3)."""
    return _condition_captioner(cfg, vocab_size, "concepts")


@register_baseline("concept_condition")
def _concept_condition(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Grid features at the first decoding step, concepts at the following ones (baseline 4)."""
    return _condition_captioner(cfg, vocab_size, "visual")


@register_baseline("visual_regional_attention")
def _visual_regional_attention(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Region-based visual features as the attention source (section 3.1, baseline 5).

    The authors never released this model (their README says "coming soon"); it is built from
    the paper's one-line description: Visual Attention's decoder, unchanged, over the 36
    bottom-up region features (the run's ``features: regions``), and, with MIA, aligned with the
    top-36 concepts (the encoder keeps as many concepts as there are visual features).
    """
    if cfg.fine_tunes_cnn:
        raise ValueError(
            "captioner.fine_tune_cnn_after_epoch: visual_regional_attention reads bottom-up "
            "region features from a detector, not ResNet grid features; set it to null for "
            "this baseline")
    return _attention_captioner(cfg, vocab_size, "visual")


def build_captioner(cfg: CaptionerConfig, vocab_size: int) -> Captioner:
    """Build the model named by ``cfg.baseline`` (a key of :data:`BASELINES`)."""
    if cfg.baseline not in BASELINES:
        raise ValueError(f"captioner.baseline: unknown baseline {cfg.baseline!r}; registered: "
                         f"{sorted(BASELINES)}")
    return BASELINES[cfg.baseline](cfg, vocab_size)


#: Modules that register further baselines (Table 2); imported here so that building by name
#: works without the caller importing them. A missing module is skipped; a broken one raises.
OPTIONAL_BASELINE_MODULES = ("mia.captioning.updown", "mia.captioning.transformer")


def _register_optional_baselines() -> None:
    import importlib

    for module in OPTIONAL_BASELINE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


_register_optional_baselines()
