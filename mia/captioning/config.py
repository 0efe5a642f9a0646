"""Typed configurations of the captioning models and their training, built from the YAML config.

``from_dict`` refuses unknown keys and names them, because a misspelt key in ``config.yaml``
(``lr_decay_strat``) would otherwise silently train with the default and waste a GPU-day.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

#: Encoder variants of DESIGN.md section 2 (``mia_n{k}`` is MIA with k iterations).
VARIANTS = ("base", "mia", "mia_visual", "mia_concepts", "self_attention")
_ITERATION_VARIANT = re.compile(r"^mia_n([1-9][0-9]*)$")


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys raise a ValueError naming them."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(values)}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; "
                         f"expected some of {sorted(names)}")
    return cls(**values)  # type: ignore[call-arg]


@dataclass
class CaptionerConfig:
    """One captioning model: which baseline decoder, which encoder variant, and sizes.

    Defaults follow the authors' released code (d=512 everywhere, dropout 0.5 in the decoder,
    MIA with 8 heads, FFN 2048, dropout 0.1, N=2).
    """

    baseline: str = "visual_attention"
    variant: str = "base"
    feature_dim: int = 2048  # C of the visual feature store
    d_model: int = 512  # memory size, MIA size and LSTM hidden size
    embed_dim: int = 512  # caption word embedding (tied to the concept embedding)
    attention_dim: int = 512  # hidden size of the decoder's additive attention
    dropout: float = 0.5
    decoder_style: Literal["released", "show_attend_tell"] = "released"
    mia_heads: int = 8
    mia_d_ff: int = 2048
    mia_iterations: int = 2
    mia_dropout: float = 0.1
    mia_order: Literal["visual_first", "concepts_first"] = "visual_first"
    mia_textual_layer_shortcut: bool = True
    # Settings only one baseline reads (Up-Down's rnn size, the Transformer's layers, ...): the
    # baseline's builder parses them into its own dataclass, which refuses unknown keys.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS and not _ITERATION_VARIANT.match(self.variant):
            raise ValueError(f"captioner.variant: unknown variant {self.variant!r}; expected one "
                             f"of {list(VARIANTS)} or mia_n<k> (k >= 1)")
        if self.decoder_style not in ("released", "show_attend_tell"):
            raise ValueError(f"captioner.decoder_style: {self.decoder_style!r} is not "
                             "'released' or 'show_attend_tell'")

    @property
    def uses_mia(self) -> bool:
        return self.variant != "base"

    @property
    def iterations(self) -> int:
        """MIA's N for this variant (``mia_n3`` -> 3, otherwise ``mia_iterations``)."""
        match = _ITERATION_VARIANT.match(self.variant)
        return int(match.group(1)) if match else self.mia_iterations

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "captioner") -> CaptionerConfig:
        return from_dict(cls, values, where)


@dataclass
class TrainConfig:
    """Cross-entropy training of one captioner (DESIGN.md section 3, without the released quirks).

    Learning rate: ``lr`` (optionally warmed up linearly over ``warmup_steps``), then after epoch
    ``lr_decay_start`` (1-based epochs) multiplied by
    ``lr_decay_factor ** ((epoch - lr_decay_start) / lr_decay_every)``, floored to whole periods
    when ``lr_decay_staircase``. The released code is start 20, factor 0.5, every 50, continuous.
    """

    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    epochs: int = 30
    batch_size: int = 80
    lr: float = 5e-4
    betas: tuple[float, float] = (0.8, 0.999)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    grad_clip_norm: float = 2.0  # 0 disables clipping
    warmup_steps: int = 0
    lr_decay_start: int = 20
    lr_decay_every: float = 50.0
    lr_decay_factor: float = 0.5
    lr_decay_staircase: bool = False
    seed: int = 123
    val_beam_size: int = 1  # 1 = greedy; validation only picks the checkpoint
    val_batch_size: int = 100
    max_length: int = 20  # most words a decoded caption may have
    checkpoint_every: int = 1000  # steps between last.pt snapshots (0: only at epoch ends)
    log_every: int = 100  # steps between progress lines in the log (0: none)
    max_nonfinite_steps: int = 5  # non-finite loss/gradient steps skipped before training fails
    device: str = "auto"  # "auto" = cuda when available
    progress: bool | Literal["auto"] = "auto"  # progress bars: on a terminal only by default

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # YAML gives a list
        if len(self.betas) != 2:
            raise ValueError(f"train.betas: expected two numbers, got {self.betas}")
        for name in ("epochs", "batch_size", "val_beam_size", "val_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "train") -> TrainConfig:
        values = dict(values)
        captioner = values.pop("captioner", {})
        if not isinstance(captioner, CaptionerConfig):
            captioner = CaptionerConfig.from_dict(captioner, f"{where}.captioner")
        return from_dict(cls, {**values, "captioner": captioner}, where)
