"""ResNet trunks (conv1..layer4) for grid and box features, with explicit weight sources.

torchvision downloads ImageNet weights on first use, which cannot happen on an offline cluster
node (or here). So the weights come, in order, from ``weights_path`` (a local ``state_dict`` file),
else torchvision's cache (``$TORCH_HOME``) or download; when neither works the error names the
config key to set instead of surfacing a bare ``URLError`` from deep inside torch.hub.
Random initialisation (``pretrained: false``) is seeded, for the demo world and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mia.vision import torchvision

#: depth -> (torchvision builder name, ImageNet weights enum name, output channels)
RESNETS: dict[str, tuple[str, str, int]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet34": ("resnet34", "ResNet34_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "resnet101": ("resnet101", "ResNet101_Weights", 2048),
    "resnet152": ("resnet152", "ResNet152_Weights", 2048),
}
#: Total stride of layer4: a 224 x 224 input gives a 7 x 7 map.
STRIDE = 32


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but could be neither read nor downloaded."""


def _load_state_dict(backbone: str, weights: str, weights_path: str | os.PathLike | None,
                     config_prefix: str) -> dict[str, torch.Tensor]:
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"{config_prefix}.weights_path: {path} does not exist; point it at a {backbone} "
                f"ImageNet state_dict (e.g. torchvision's {RESNETS[backbone][1]}.{weights} file)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    enum = getattr(torchvision.models, RESNETS[backbone][1])
    try:
        entry = enum[weights]
    except KeyError as err:
        raise WeightsUnavailableError(
            f"{config_prefix}.weights: {weights!r} is not one of "
            f"{[w.name for w in enum]}") from err
    try:
        return entry.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # urllib, hash and IO errors all mean "not available"
        raise WeightsUnavailableError(
            f"{config_prefix}.pretrained is true but the ImageNet weights of {backbone} could "
            f"not be loaded from torchvision ({entry.url}): {type(err).__name__}: {err}. "
            f"Fix: download that file on a machine with internet and set "
            f"{config_prefix}.weights_path to it (or put it in $TORCH_HOME/hub/checkpoints/), "
            f"or set {config_prefix}.pretrained: false for random weights.") from err


def build_resnet_trunk(backbone: str, pretrained: bool, seed: int, *,
                       weights: str = "IMAGENET1K_V1", weights_path: str | None = None,
                       config_prefix: str = "features.grid") -> tuple[nn.Sequential, int]:
    """``(trunk, channels)``: ResNet up to layer4 (no pooling/fc), in eval mode, on CPU.

    Random weights are drawn inside a forked RNG seeded with ``seed``, so building a model never
    changes the caller's global random state and the same seed gives the same weights.
    """
    if backbone not in RESNETS:
        raise ValueError(f"{config_prefix}.backbone: {backbone!r} is not one of {sorted(RESNETS)}")
    builder, _, channels = RESNETS[backbone]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, builder)(weights=None)
    if pretrained:
        state = _load_state_dict(backbone, weights, weights_path, config_prefix)
        missing, unexpected = model.load_state_dict(state, strict=False)
        trunk_missing = [k for k in missing if not k.startswith("fc.")]
        if trunk_missing or unexpected:
            raise WeightsUnavailableError(
                f"{config_prefix}.weights_path: {weights_path} does not fit {backbone} "
                f"(missing {trunk_missing[:5]}, unexpected {list(unexpected)[:5]})")
    trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3, model.layer4)
    return trunk.eval(), channels
