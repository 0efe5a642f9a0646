"""Typed configurations of the captioning models and their training, built from the YAML config.

``from_dict`` refuses unknown keys and names them, because a misspelt key in ``config.yaml``
(``lr_decay_strat``) would otherwise silently train with the default and waste a GPU-day.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from mia import variants
from mia.captioning.step_capture import check_step_mode
from mia.config import from_dict
from mia.training.precision import check_precision

T = TypeVar("T")

#: Encoder variants (mia.variants: the one definition shared with the workflow and schema;
#: ``mia_n{k}`` is MIA with k iterations).
VARIANTS = variants.VARIANTS

#: MIA settings where the authors' released code and the paper's text differ (docs/RECIPE.md).
#: ``released`` is the default of the captioners: the paper's numbers come from that code.
MIA_MODES: dict[str, dict[str, Any]] = {
    "released": {"mia_attention_bias": True, "mia_textual_layer_shortcut": False,
                 "mia_attention_dropout": 0.1, "mia_layer_dropout": False},
    "paper": {"mia_attention_bias": False, "mia_textual_layer_shortcut": True,
              "mia_attention_dropout": 0.0, "mia_layer_dropout": True},
}


@dataclass
class CNNConfig:
    """The ResNet that computes grid features on the fly when the CNN is fine-tuned.

    Defaults are the released recipe (fenglinliu98/MIA ``Train.py``): ResNet-152 from ImageNet,
    ``children()[5:]`` (layer2..layer4) trained with Adam lr 1e-5, betas (0.8, 0.999); images
    resized to 256 x 256 (``resize_images.py``), then a random 224 crop and a horizontal flip for
    training, a plain 224 x 224 resize for evaluation (``Test.py``). ``workers`` decode images in
    DataLoader processes. ``weights_path`` is a local ImageNet ``state_dict`` for offline nodes.

    ``batchnorm``: ``train`` (released: ``Model.train()`` puts the whole ResNet in training mode
    from epoch 1, so every BatchNorm normalises with batch statistics and updates its running
    ones, also in layers no optimiser trains and before fine-tuning starts) or ``eval`` (the
    untrained layers, and all of them until fine-tuning starts, keep their ImageNet statistics).
    """

    backbone: str = "resnet152"
    pretrained: bool = True
    weights: str = "IMAGENET1K_V1"
    weights_path: str | None = None
    first_trained_child: int = 5  # children()[5:] = layer2, layer3, layer4
    lr: float = 1e-5
    betas: tuple[float, float] = (0.8, 0.999)
    resize: int = 256
    crop: int = 224
    flip: bool = True
    workers: int = 4
    seed: int = 0  # random weights only (pretrained: false)
    batchnorm: Literal["train", "eval"] = "train"  # released

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if not 0 <= self.first_trained_child <= 8:
            raise ValueError(f"captioner.cnn.first_trained_child: {self.first_trained_child} is "
                             "not in 0..8 (children of the trunk: conv1 bn1 relu maxpool layer1 "
                             "layer2 layer3 layer4)")
        if self.crop > self.resize:
            raise ValueError(f"captioner.cnn.crop ({self.crop}) exceeds resize ({self.resize})")
        if self.workers < 0:
            raise ValueError(f"captioner.cnn.workers must be >= 0, got {self.workers}")
        if self.batchnorm not in ("eval", "train"):
            raise ValueError(f"captioner.cnn.batchnorm: {self.batchnorm!r} is not 'train' "
                             "(released: every BatchNorm in training mode) or 'eval'")


@dataclass
class CaptionerConfig:
    """One captioning model: which baseline decoder, which encoder variant, and sizes.

    Defaults follow the authors' released code (Models/Main.py, MIA.py; docs/RECIPE.md): d=512
    everywhere, dropout 0.5 in the decoder, additive attention of hidden size 49, the pooled
    concepts added to the word inputs without a linear map, the released initialisation, and MIA
    with 8 heads, FFN 2048, dropout 0.1, N=2 in its released form (``mia_mode``).

    ``mia_mode`` presets the four MIA settings where code and paper differ (:data:`MIA_MODES`);
    each ``mia_*`` field left at None takes the preset's value, a value given wins. After
    construction every one of them holds a concrete value.

    ``concept_pooling``: what the Concept models add to every word input: ``mean`` (released:
    mean(T), no linear, no dropout) or ``linear`` (Linear(dropout(mean T)), like the Visual
    models' v_a). ``init``: ``released`` (the authors' initialisers) or ``pytorch`` (defaults).

    ``fine_tune_cnn_after_epoch``: None keeps the precomputed (frozen) grid features; an integer
    e makes the ResNet part of the model, fed with images, and trains its ``cnn`` layers from
    epoch e + 1 on (released: 8). Only for grid-feature baselines.
    """

    baseline: str = "visual_attention"
    variant: str = "base"
    feature_dim: int = 2048  # C of the visual feature store
    d_model: int = 512  # memory size, MIA size and LSTM hidden size
    embed_dim: int = 512  # caption word embedding (tied to the concept embedding)
    attention_dim: int = 49  # hidden size of the decoder's additive attention (released: 49)
    dropout: float = 0.5
    decoder_style: Literal["released", "show_attend_tell"] = "released"
    concept_pooling: Literal["mean", "linear"] = "mean"
    init: Literal["released", "pytorch"] = "released"
    mia_heads: int = 8
    mia_d_ff: int = 2048
    mia_iterations: int = 2
    mia_dropout: float = 0.1
    mia_order: Literal["visual_first", "concepts_first"] = "visual_first"
    mia_mode: Literal["released", "paper"] = "released"
    mia_attention_bias: bool | None = None
    mia_textual_layer_shortcut: bool | None = None
    mia_attention_dropout: float | None = None
    mia_layer_dropout: bool | None = None
    fine_tune_cnn_after_epoch: int | None = None
    cnn: dict[str, Any] = field(default_factory=dict)  # CNNConfig fields
    # Settings only one baseline reads (Up-Down's rnn size, the Transformer's layers, ...): the
    # baseline's builder parses them into its own dataclass, which refuses unknown keys.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        variants.check_variant(self.variant, "captioner.variant")
        choices = {"decoder_style": ("released", "show_attend_tell"),
                   "concept_pooling": ("mean", "linear"), "init": ("released", "pytorch"),
                   "mia_mode": tuple(MIA_MODES)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"captioner.{key}: {getattr(self, key)!r} is not one of "
                                 f"{list(allowed)}")
        for key, value in MIA_MODES[self.mia_mode].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.uses_mia and (self.mia_heads < 1 or self.d_model % self.mia_heads):
            raise ValueError(f"captioner.mia_heads: MIA's {self.mia_heads} heads must divide its "
                             f"width captioner.d_model={self.d_model}")
        if self.fine_tune_cnn_after_epoch is not None and self.fine_tune_cnn_after_epoch < 0:
            raise ValueError("captioner.fine_tune_cnn_after_epoch: must be >= 0 or null, got "
                             f"{self.fine_tune_cnn_after_epoch}")
        if isinstance(self.cnn, CNNConfig):
            self.cnn = dataclasses.asdict(self.cnn)
        self.cnn_config()  # refuse unknown or bad keys now, not when training starts

    @property
    def uses_mia(self) -> bool:
        return self.variant != "base"

    @property
    def iterations(self) -> int:
        """MIA's N for this variant (``mia_n3`` -> 3, otherwise ``mia_iterations``)."""
        return variants.iterations(self.variant, self.mia_iterations)

    @property
    def fine_tunes_cnn(self) -> bool:
        return self.fine_tune_cnn_after_epoch is not None

    def cnn_config(self) -> CNNConfig:
        return from_dict(CNNConfig, self.cnn, "captioner.cnn")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "captioner") -> CaptionerConfig:
        return from_dict(cls, values, where)


@dataclass
class TrainConfig:
    """Cross-entropy training of one captioner (docs/RECIPE.md, without the released quirks).

    Learning rate (``lr_schedule``):

    * ``step``: ``lr`` (optionally warmed up linearly over ``warmup_steps``), then after epoch
      ``lr_decay_start`` (1-based epochs) multiplied by
      ``lr_decay_factor ** ((epoch - lr_decay_start) / lr_decay_every)``, floored to whole
      periods when ``lr_decay_staircase``. Released MIA code: start 20, factor 0.5, every 50,
      continuous. Up-Down (self-critical.pytorch): lr 5e-4 x 0.8 every 3 epochs = start 1,
      every 3, factor 0.8, staircase.
    * ``noam``: the Transformer's schedule, ``noam_factor * d_model^-0.5 * min(s^-0.5, s *
      warmup_steps^-1.5)`` for optimiser step s (1-based); ``lr`` is ignored.

    Scheduled sampling (Up-Down's recipe; decoders with an ``ss_prob``): from epoch
    ``ss_start + 1`` (1-based; -1 = never) the probability of feeding the model's own sample is
    ``min(ss_increase * ((epoch - 1 - ss_start) // ss_every), ss_max)``.

    Gradients: ``grad_clip_value`` clamps every element (self-critical.pytorch: 0.1), then
    ``grad_clip_norm`` clips the global norm (0 disables either).

    The released MIA recipe (``Train.py``; docs/RECIPE.md), each off by default here and on in
    the paper config for the Table 1/4 captioners:

    * ``weight_clamp``: before every optimiser step, every DECODER parameter (the word embedding
      shared with the concepts included; not the visual projection, MIA or the CNN) is clamped
      to ``[-weight_clamp, weight_clamp]`` (``p.data.clamp_(-0.1, 0.1)``; 0 disables);
    * ``rebuild_optimizer_each_epoch``: the captioner's Adam starts every epoch with zero
      moments and step counts (the released code builds a new ``torch.optim.Adam`` per epoch;
      the CNN's optimiser is built once and kept). Exactly resumable: a resumed epoch does not
      rebuild again.

    ``batch_by``: ``caption`` (``batch_size`` captions drawn freely, the released loader) or
    ``image`` (``batch_size / 5`` images with all their captions, self-critical.pytorch's
    ``seq_per_img``; :mod:`mia.captioning.finetune` says what it changes); ``auto``: ``image``
    when the CNN is fine-tuned (its forward then runs once per image, not once per caption),
    else ``caption``.

    GPU: ``precision`` (:mod:`mia.training.precision`), ``decode_step`` of validation
    (:mod:`mia.captioning.step_capture`), ``prefetch_batches`` gathered by a background thread
    while the GPU trains (CUDA runs only: on a CPU the thread takes the step's own cores).
    """

    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    epochs: int = 30
    batch_size: int = 80
    lr: float = 5e-4
    betas: tuple[float, float] = (0.8, 0.999)
    eps: float = 1e-8  # Adam's epsilon (the Transformer recipe: 1e-9)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    grad_clip_norm: float = 2.0  # 0 disables clipping
    grad_clip_value: float = 0.0  # 0 disables clamping
    lr_schedule: Literal["step", "noam"] = "step"
    noam_factor: float = 1.0
    warmup_steps: int = 0
    lr_decay_start: int = 20
    lr_decay_every: float = 50.0
    lr_decay_factor: float = 0.5
    lr_decay_staircase: bool = False
    ss_start: int = -1  # scheduled sampling from epoch ss_start + 1 (-1: never)
    ss_every: int = 5
    ss_increase: float = 0.05
    ss_max: float = 0.25
    seed: int = 123
    val_beam_size: int = 1  # 1 = greedy; validation only picks the checkpoint
    val_batch_size: int = 100
    max_length: int = 19  # decoding steps, <eos> included (released: range(1, 20) = 19)
    checkpoint_every: int = 1000  # steps between last.pt snapshots (0: only at epoch ends)
    log_every: int = 100  # steps between progress lines in the log (0: none)
    max_nonfinite_steps: int = 5  # non-finite loss/gradient steps skipped before training fails
    device: str = "auto"  # "auto" = cuda when available
    progress: bool | Literal["auto"] = "auto"  # progress bars: on a terminal only by default
    # best.pt also holds the optimiser state of its epoch, which an SCST stage carries over
    # (scst.optimizer_state: carry); the workflow sets it for baselines with an SCST stage.
    keep_optimizer_state: bool = False
    weight_clamp: float = 0.0  # released: 0.1 (decoder parameters, before each step)
    rebuild_optimizer_each_epoch: bool = False  # released: True
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    batch_by: Literal["auto", "caption", "image"] = "auto"
    decode_step: Literal["eager", "fixed", "compiled"] = "eager"  # validation's token loop
    prefetch_batches: int = 2  # CUDA runs: batches gathered ahead by a thread (0: none)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # YAML gives a list
        if len(self.betas) != 2:
            raise ValueError(f"train.betas: expected two numbers, got {self.betas}")
        check_precision(self.precision, "train.precision")
        check_step_mode(self.decode_step, "train.decode_step")
        if self.batch_by not in ("auto", "caption", "image"):
            raise ValueError(f"train.batch_by: {self.batch_by!r} is not auto, caption or image")
        if self.prefetch_batches < 0:
            raise ValueError(f"train.prefetch_batches: must be >= 0, got {self.prefetch_batches}")
        for name in ("epochs", "batch_size", "val_beam_size", "val_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in ("step", "noam"):
            raise ValueError(f"train.lr_schedule: {self.lr_schedule!r} is not 'step' or 'noam'")
        if self.weight_clamp < 0:
            raise ValueError(f"train.weight_clamp: must be >= 0 (0 disables), got "
                             f"{self.weight_clamp}")
        if self.lr_schedule == "noam" and self.warmup_steps < 1:
            raise ValueError("train.warmup_steps: the noam schedule needs warmup_steps >= 1")

    @property
    def batches_by_image(self) -> bool:
        """Whether batches hold whole images' captions (``batch_by``, resolved)."""
        if self.batch_by == "auto":
            return self.captioner.fine_tunes_cnn
        return self.batch_by == "image"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "train") -> TrainConfig:
        values = dict(values)
        captioner = values.pop("captioner", {})
        if not isinstance(captioner, CaptionerConfig):
            captioner = CaptionerConfig.from_dict(captioner, f"{where}.captioner")
        return from_dict(cls, {**values, "captioner": captioner}, where)
