"""ResNet trunks (conv1..layer4) for grid and box features, with explicit weight sources.

torchvision downloads ImageNet weights on first use, which cannot happen on an offline cluster
node (or here). So the weights come, in order, from ``weights_path`` (a local ``state_dict`` file),
else torchvision's cache (``$TORCH_HOME``) or download; when neither works the error names the
config key to set instead of surfacing a bare ``URLError`` from deep inside torch.hub.
Random initialisation (``pretrained: false``) is seeded, for the tests.

Beside torchvision's ResNets sits :data:`DEMO_TRUNKS`: small ResNets of the same shape (conv1,
bn1, relu, maxpool, layer1..layer4 of BasicBlocks, total stride 32) for the demo world, which
has no ImageNet. They have no published weights: ``weights_path`` must name a checkpoint of
``pretrain_demo_backbone`` (mia.features.demo_pretrain), trained on the demo world's own
pre-training scenes. Because they are built like torchvision's, the grid extractor, RoIAlign
(stride 32) and the fine-tuned CNN of the grid captioners use them unchanged.
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
#: name -> (widths of layer1..layer4, BasicBlocks per layer, conv1 kernel): the demo trunks.
#: ``demo_resnet``: 0.31 M parameters, 128 channels, about 1/20 of resnet18's multiply-adds at
#: 128 px (conv1 3x3: a 7x7 stem is most of a small trunk's CPU time and sees nothing more in
#: flat-coloured shapes). Measured choice, see mia.features.demo_pretrain.
DEMO_TRUNKS: dict[str, tuple[tuple[int, int, int, int], int, int]] = {
    "demo_resnet": ((16, 32, 64, 128), 1, 3),
}
#: Total stride of layer4: a 224 x 224 input gives a 7 x 7 map.
STRIDE = 32


def backbone_names() -> list[str]:
    """Every backbone a config may name: torchvision's ResNets and the demo trunks."""
    return sorted(RESNETS) + sorted(DEMO_TRUNKS)


def backbone_channels(backbone: str) -> int:
    """Channels of ``backbone``'s layer4 (its grid and region feature width)."""
    if backbone in DEMO_TRUNKS:
        return DEMO_TRUNKS[backbone][0][-1]
    return RESNETS[backbone][2]


class DemoResNet(nn.Module):
    """A torchvision-shaped ResNet trunk of :data:`DEMO_TRUNKS` (no pooling, no classifier).

    Same attribute names and strides as ``torchvision.models.ResNet`` (conv1 stride 2, maxpool
    stride 2, layer2..layer4 stride 2), so its ``state_dict`` keys read like a ResNet's and
    ``children()`` index the same 8 parts (the fine-tuned CNN's ``first_trained_child``).
    """

    def __init__(self, widths: tuple[int, int, int, int], blocks: int, stem_kernel: int) -> None:
        super().__init__()
        BasicBlock = torchvision.models.resnet.BasicBlock  # noqa: N806 (a class)
        self.conv1 = nn.Conv2d(3, widths[0], stem_kernel, stride=2, padding=stem_kernel // 2,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers = []
        inplanes = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = (nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                                  nn.BatchNorm2d(width))
                    if stride != 1 or inplanes != width else None)
            layer = [BasicBlock(inplanes, width, stride, down)]
            layer += [BasicBlock(width, width) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*layer))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trunk(self) -> nn.Sequential:
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool,
                             self.layer1, self.layer2, self.layer3, self.layer4)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but could be neither read nor downloaded."""


def _read_weights_file(backbone: str, weights: str, path: Path, config_prefix: str
                       ) -> dict[str, torch.Tensor]:
    """A local ``state_dict`` (bare, or under ``"state_dict"`` as the demo checkpoints keep it),
    read with ``weights_only=True``: a weights file is data, never code to run."""
    if not path.is_file():
        what = (f"the checkpoint of rule pretrain_demo_backbone ({backbone}), which the demo "
                f"workflow builds before its features" if backbone in DEMO_TRUNKS else
                f"a {backbone} ImageNet state_dict (e.g. torchvision's "
                f"{RESNETS[backbone][1]}.{weights} file)")
        raise WeightsUnavailableError(
            f"{config_prefix}.weights_path: {path} does not exist; point it at {what}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors: not a weights file
        raise WeightsUnavailableError(
            f"{config_prefix}.weights_path: {path} is not a torch state_dict file "
            f"({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        saved_for = state.get("backbone")
        if saved_for is not None and saved_for != backbone:
            raise WeightsUnavailableError(
                f"{config_prefix}.weights_path: {path} holds a {saved_for!r} trunk but "
                f"{config_prefix}.backbone is {backbone!r}; set {config_prefix}.backbone: "
                f"{saved_for}")
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(
            f"{config_prefix}.weights_path: {path} holds a {type(state).__name__}, not a "
            f"state_dict (a mapping of parameter names to tensors)")
    return state


def _load_state_dict(backbone: str, weights: str, weights_path: str | os.PathLike | None,
                     config_prefix: str) -> dict[str, torch.Tensor]:
    if weights_path:
        return _read_weights_file(backbone, weights, Path(weights_path), config_prefix)
    if backbone in DEMO_TRUNKS:
        raise WeightsUnavailableError(
            f"{config_prefix}.pretrained is true but {backbone} has no published weights: set "
            f"{config_prefix}.weights_path to the checkpoint of rule pretrain_demo_backbone "
            f"(results/<name>/pretrain/backbone.pt), or pretrained: false for random weights")
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


def build_backbone_model(backbone: str, seed: int, config_prefix: str = "features.grid"
                         ) -> nn.Module:
    """The whole randomly initialised network of ``backbone`` (a torchvision ResNet with its
    fc, or a :class:`DemoResNet`), drawn in a forked RNG seeded with ``seed``."""
    if backbone not in RESNETS and backbone not in DEMO_TRUNKS:
        raise ValueError(f"{config_prefix}.backbone: {backbone!r} is not one of "
                         f"{backbone_names()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone in DEMO_TRUNKS:
            return DemoResNet(*DEMO_TRUNKS[backbone])
        return getattr(torchvision.models, RESNETS[backbone][0])(weights=None)


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], backbone: str,
                          weights_path: str | os.PathLike | None, config_prefix: str) -> None:
    """Load ``state`` into ``model`` by parameter name; every trunk tensor must be there with
    its shape (only a torchvision ResNet's ``fc`` may be missing), else an error naming the
    config key and the first names that do not fit."""
    source = weights_path or "torchvision's weights"
    own = model.state_dict()
    wrong_shape = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
                   for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or unexpected:
        raise WeightsUnavailableError(
            f"{config_prefix}.weights_path: {source} does not fit {config_prefix}.backbone "
            f"{backbone} (missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape "
            f"{wrong_shape[:3]}); use weights saved for {backbone}")
    model.load_state_dict(state, strict=False)


def build_resnet_trunk(backbone: str, pretrained: bool, seed: int, *,
                       weights: str = "IMAGENET1K_V1", weights_path: str | None = None,
                       config_prefix: str = "features.grid") -> tuple[nn.Sequential, int]:
    """``(trunk, channels)``: ResNet up to layer4 (no pooling/fc), in eval mode, on CPU.

    ``backbone`` is a torchvision ResNet (:data:`RESNETS`) or a demo trunk (:data:`DEMO_TRUNKS`).
    Random weights are drawn inside a forked RNG seeded with ``seed``, so building a model never
    changes the caller's global random state and the same seed gives the same weights.
    """
    model = build_backbone_model(backbone, seed, config_prefix)
    if pretrained:
        state = _load_state_dict(backbone, weights, weights_path, config_prefix)
        load_backbone_weights(model, state, backbone, weights_path, config_prefix)
    trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3, model.layer4)
    return trunk.eval(), backbone_channels(backbone)
