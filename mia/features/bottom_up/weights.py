"""The public weights of the bottom-up Faster R-CNN, loaded by name, never by running their code.

Two published files hold the Caffe model of Anderson et al. converted for PyTorch, both under
detectron2's names (``backbone.res2.0.conv1.weight``, ``roi_heads.box_predictor.cls_score.bias``,
...), the names of :class:`~mia.features.bottom_up.model.BottomUpFasterRCNN`:

* ``hub``: ``pytorch_model.bin`` of ``unc-nlp/frcnn-vg-finetuned`` (the LXMERT demo), a
  ``torch.save`` state dict. Read with ``torch.load(weights_only=True)``, PyTorch's restricted
  unpickler: tensors and plain containers only, no code runs.
* ``detectron2``: ``faster_rcnn_from_caffe_attr.pkl`` of airsplay/py-bottom-up-attention, a
  Python pickle ``{"model": {name: numpy array}, ...}``. Read with :class:`_ArrayUnpickler`,
  which reconstructs numpy arrays and refuses every other global (a pickle could otherwise
  execute anything).

Then every tensor the model expects must be there with its shape; what is missing, misshapen or
left over is named in the error (a checkpoint of another architecture, a truncated download).
``gamma``/``beta`` are read as ``weight``/``bias`` (the LXMERT loader does the same); BatchNorm's
``num_batches_tracked`` is ignored; stored anchors
(``proposal_generator.anchor_generator.cell_anchors.0``) must equal the model's.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mia.features.bottom_up.config import FasterRCNNConfig
from mia.features.bottom_up.model import BottomUpFasterRCNN

ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
FORMATS = ("hub", "detectron2")
_SHOWN = 12  # names listed per problem in an error message


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the model; the message says what and why."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and plain containers; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how Python 3 pickles the bytes inside an array
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a weights pickle should hold only numpy arrays "
            f"(loading arbitrary objects would run code from the file)")


def detect_format(path: str | os.PathLike) -> str:
    """``hub`` for torch.save files (zip archives, or .bin/.pt/.pth), ``detectron2`` for .pkl."""
    path = Path(path)
    if path.suffix == ".pkl":
        return "detectron2"
    if path.suffix in (".bin", ".pt", ".pth") or zipfile.is_zipfile(path):
        return "hub"
    raise WeightsError(f"{path}: cannot tell the weights format from the name; set "
                       f"features.regions.bottom_up.weights_format to hub (pytorch_model.bin) "
                       f"or detectron2 (faster_rcnn_from_caffe_attr.pkl)")


def read_weights(path: str | os.PathLike, fmt: str = "auto") -> dict[str, Tensor]:
    """``{name: tensor}`` from a weights file of format ``hub`` or ``detectron2`` (or ``auto``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hub":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
            raise WeightsError(f"{path}: not a readable torch.save state dict ({err}); "
                               f"re-download it (a truncated file fails here)") from err
    elif fmt == "detectron2":
        try:
            with open(path, "rb") as f:
                obj = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise WeightsError(f"{path}: not a readable detectron2 weights pickle ({err})"
                               ) from err
    else:
        raise WeightsError(f"weights format {fmt!r} is not one of {FORMATS}")
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a mapping of names to tensors, got "
                           f"{type(state).__name__}")
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            continue  # detectron2 pickles carry a few non-tensor entries ("__author__", ...)
        out[_canonical(str(name))] = value
    return out


def _canonical(name: str) -> str:
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def load_weights(model: BottomUpFasterRCNN, path: str | os.PathLike, fmt: str = "auto") -> None:
    """Copy the weights file into ``model`` (each tensor cast to the model's dtype), after
    checking every expected name and shape; raise :class:`WeightsError` naming what is wrong."""
    tensors = read_weights(path, fmt)
    expected = model.state_dict()
    anchors = tensors.pop(ANCHORS_KEY, None)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tuple(tensors[k].shape)} (model: {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_listed(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of another shape: {_listed(wrong)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listed(unexpected)}")
    if anchors is not None:
        mine = model.proposal_generator.cell_anchors.cpu()
        if anchors.shape != mine.shape or not torch.allclose(anchors.float(), mine.float(),
                                                             atol=1e-3):
            problems.append(f"{ANCHORS_KEY}: the file's anchors differ from the model's "
                            f"(anchor_sizes/aspect_ratios)")
    if problems:
        raise WeightsError(
            f"{path}: does not fit the bottom-up Faster R-CNN of this config: "
            + "; ".join(problems) + ". The public checkpoint fits the default "
            "features.regions.bottom_up.model; a file of another model (or a truncated "
            "download) does not.")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(target.dtype))


def build_model(cfg: FasterRCNNConfig, weights: str | os.PathLike | None, fmt: str = "auto",
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                ) -> BottomUpFasterRCNN:
    """The detector with ``weights`` loaded (None: random values, for shape tests only), in
    eval mode on ``device`` in ``dtype``."""
    model = BottomUpFasterRCNN(cfg).to(dtype=dtype)
    if weights is not None:
        load_weights(model, weights, fmt)
    return model.eval().to(device)


# --------------------------------------------------------------------------- random checkpoints


def random_state_dict(cfg: FasterRCNNConfig, seed: int = 0) -> dict[str, Tensor]:
    """A state dict in the public checkpoint's names and shapes with seeded random values (the
    format of ``pytorch_model.bin``, ``num_batches_tracked`` and the anchors included).

    For tests and benchmarks only: a detector with these weights detects nothing meaningful.
    The scales keep activations of order one through every block (He-initialised convolutions,
    batch-norm statistics near the pixel scale at the stem, damped residual branches) and give
    the class scores a spread, so that the selection rule meets all its cases. Values come from
    numpy's PCG64 generator: the same on every machine and torch version.
    """
    rng = np.random.default_rng(seed)
    model = BottomUpFasterRCNN(cfg)
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        out[name] = torch.from_numpy(_random_values(name, shape, rng, cfg).astype(np.float32))
        if name.endswith(".running_var"):
            out[name[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    out[ANCHORS_KEY] = model.proposal_generator.cell_anchors.clone()
    return out


def _random_values(name: str, shape: tuple[int, ...], rng: np.random.Generator,
                   cfg: FasterRCNNConfig) -> np.ndarray:
    stem = name.startswith("backbone.stem.")
    if name.endswith("norm.running_mean"):
        return rng.normal(0.0, 20.0 if stem else 0.1, shape)
    if name.endswith("norm.running_var"):
        return rng.uniform(4000.0, 6000.0, shape) if stem else rng.uniform(0.5, 1.5, shape)
    if name.endswith("norm.weight"):
        damp = 0.3 if ".conv3." in name else 1.0
        return damp * rng.uniform(0.5, 1.0, shape)
    if name.endswith("norm.bias"):
        return rng.normal(0.0, 0.1, shape)
    if name.endswith(".bias"):
        return rng.normal(0.0, 0.5 if "objectness" in name else 0.01, shape)
    if "cls_embedding" in name:
        return rng.normal(0.0, 1.0, shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    gain = {"cls_score": 5.0, "attr_score": 5.0, "objectness_logits": 2.0,
            "anchor_deltas": 0.1, "bbox_pred": 0.1}
    scale = next((g for key, g in gain.items() if key in name), np.sqrt(2.0))
    values = rng.normal(0.0, scale / np.sqrt(fan_in), shape)
    if "cls_score" in name or "attr_score" in name:
        # Region features share a large positive mean; rows that sum to zero ignore most of it,
        # so the proposals' differences (not one common bias) decide their classes.
        values -= values.mean(axis=1, keepdims=True)
    return values


def save_hub_checkpoint(state: Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` as ``torch.save`` does for ``pytorch_model.bin``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    return path


def save_detectron2_checkpoint(state: Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` as py-bottom-up-attention's pickle: ``{"model": {name: ndarray}}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    buffer = io.BytesIO()
    pickle.dump({"model": arrays, "__author__": "mia-repro test"}, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    return path


def expected_shapes(cfg: FasterRCNNConfig) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` the model expects (on the meta device: no memory for the values)."""
    with torch.device("meta"):
        model = BottomUpFasterRCNN(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


__all__ = ["WeightsError", "build_model", "expected_shapes", "load_weights",
           "random_state_dict", "read_weights", "save_detectron2_checkpoint",
           "save_hub_checkpoint"]
