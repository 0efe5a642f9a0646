"""The building blocks both VQA baselines share: weight-normed linear layers, FC nets, classifier.

Both references (hengyuan-hu/bottom-up-attention-vqa and jnhwkim/ban-vqa) wrap every linear
layer in ``weight_norm(..., dim=None)``: ``W = g * V / ||V||`` with ONE scalar ``g`` per layer,
which decouples the scale of a layer from its direction and lets Adamax train without
batch-norm. :class:`WeightNormLinear` is that reparametrisation written out (parameters
``weight_g`` (scalar), ``weight_v``, ``bias``, the names the references' state dicts use), so
``torch.load(weights_only=True)`` checkpoints hold plain tensors and no deprecated hook is needed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """``y = x W^T + b`` with ``W = weight_g * weight_v / ||weight_v||_F`` (``dim=None``).

    Initialised as ``nn.Linear`` and with ``g = ||V||``, so the initial ``W`` is exactly the
    default ``nn.Linear`` weight, as ``weight_norm`` applied to a fresh layer gives.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        plain = nn.Linear(in_features, out_features, bias=bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(plain.weight.detach().clone())
        self.weight_g = nn.Parameter(plain.weight.detach().norm())  # 0-dim, as dim=None makes it
        self.bias = None if plain.bias is None else nn.Parameter(plain.bias.detach().clone())

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def fc(in_dim: int, out_dim: int, relu: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """The references' one-layer ``FCNet``: [Dropout] -> weight-normed Linear -> [ReLU].

    Up-Down's FCNet has no dropout; BAN's puts it before the linear layer.
    """
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    layers.append(WeightNormLinear(in_dim, out_dim))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def classifier(in_dim: int, hid_dim: int, n_answers: int, dropout: float) -> nn.Sequential:
    """``SimpleClassifier``: Linear -> ReLU -> Dropout -> Linear, weight-normed; logits out."""
    return nn.Sequential(WeightNormLinear(in_dim, hid_dim), nn.ReLU(), nn.Dropout(dropout),
                         WeightNormLinear(hid_dim, n_answers))
