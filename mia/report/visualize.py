"""Figure 5 for a trained run and any image of its stores: ``mia visualize attention``.

A run folder holds ``run.json``, written by the training rule, and the trained ``model.pt``
(read with :func:`mia.captioning.decode.load_captioner`), either beside it or in the folder of
its last training stage (``scst/model.pt``, else ``xe/model.pt``); ``--run`` may also name that
stage folder::

    {"inputs": {"captions": path, "features": path, "concepts": path},
     "images_root": path,        # {root}/images (or {root}): images/{train,val}2014/...
     "run": "captioning/visual_attention/mia_n3", "seed": 123}

Relative paths in ``run.json`` are taken relative to the current directory first (Snakemake runs
from the workflow's working directory), then to the run folder. Explicit paths (``features``,
``concepts``, ``images``, ``image_file``) override it, so a researcher can point a trained model
at features extracted from their own images.

Only one image's row is read from each store (the feature store stays on disk), so this works on
the full COCO stores on a laptop.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mia.data.errors import load_json
from mia.data.loaders import ConceptTable, FeatureTable, align_rows
from mia.data.store import open_store, read_attrs
from mia.data.vocab import Vocabulary
from mia.features.region_store import box_names
from mia.report.attention_maps import (
    BoxLayout,
    DrawnFigure,
    GridLayout,
    Layout,
    Panel,
    accumulated_attention,
    choose_positions,
    draw_attention,
    panel_weights,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """Where one trained run's model and inputs are."""

    run_dir: Path
    model: Path
    features: Path
    concepts: Path
    images_root: Path | None
    run: str
    seed: int | None

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike, features: str | os.PathLike | None = None,
                     concepts: str | os.PathLike | None = None,
                     images: str | os.PathLike | None = None) -> RunSpec:
        """Read ``run_dir/run.json``; explicit arguments override its paths."""
        run_dir = Path(run_dir)
        model = next((run_dir / m for m in ("model.pt", "scst/model.pt", "xe/model.pt")
                      if (run_dir / m).is_file()), None)
        if model is None:
            raise FileNotFoundError(f"{run_dir}: no model.pt here or in scst/ or xe/; pass the "
                                    "run folder that holds run.json and the trained model")
        info: dict[str, Any] = {}
        meta = next((m for m in (run_dir / "run.json", run_dir.parent / "run.json")
                     if m.is_file()), run_dir / "run.json")
        if meta.exists():
            info = load_json(meta)
        elif features is None or concepts is None:
            raise FileNotFoundError(f"{meta}: missing; write it or pass --features and "
                                    "--concepts explicitly")
        inputs = info.get("inputs") or {}

        def path(explicit: Any, value: Any, key: str) -> Path | None:
            if explicit is not None:
                return Path(explicit)
            if value in (None, ""):
                return None
            p = Path(value)
            if p.is_absolute() or p.exists():
                return p
            return meta.parent / p if (meta.parent / p).exists() else p

        feats = path(features, inputs.get("features"), "features")
        concs = path(concepts, inputs.get("concepts"), "concepts")
        for name, p in (("features", feats), ("concepts", concs)):
            if p is None:
                raise ValueError(f"{meta}: inputs.{name} is missing; pass --{name}")
            if not p.exists():
                raise FileNotFoundError(f"{p}: {name} store of run {run_dir} not found; pass "
                                        f"--{name} with the store the model was trained on")
        seed = info.get("seed")
        return cls(run_dir=run_dir, model=model, features=feats, concepts=concs,
                   images_root=path(images, info.get("images_root"), "images_root"),
                   run=str(info.get("run", run_dir.name)),
                   seed=None if seed is None else int(seed))


@dataclass(frozen=True)
class ImageInputs:
    """One image's batch (B = 1), what its positions are, and its concept words."""

    batch: dict[str, torch.Tensor]
    layout: Layout
    concept_words: list[str]  # (n,) original concept at each position
    mask: np.ndarray  # (n,) real positions (visual or concept)
    size: tuple[int, int] | None  # (width, height) the boxes refer to, regions only


def _row(store_ids: np.ndarray, image_id: int, path: Path) -> int:
    """The store row of ``image_id``; an image the store lacks is the user's choice, not a
    damaged store: say which images there are."""
    ids = np.asarray(store_ids)
    if not (ids == image_id).any():
        sample = ", ".join(str(int(i)) for i in ids[:5])
        raise ValueError(f"image {image_id} is not in {path} (the run's store: {len(ids)} "
                         f"images, e.g. {sample}); choose one of its images with --image, or "
                         "pass --features/--concepts stores that hold it")
    return int(align_rows(ids, np.array([image_id]), path, f"image {image_id}")[0])


def image_inputs(spec: RunSpec, image_id: int, vocab: Sequence[str]) -> ImageInputs:
    """Read one image's features and concepts (caption-vocabulary ids, as training fed them)."""
    features = FeatureTable(spec.features, in_memory=False)
    feature_row = _row(features.image_ids, image_id, spec.features)
    feats, feature_mask = features.gather(np.array([feature_row]))
    concepts = ConceptTable(spec.concepts, Vocabulary(tuple(vocab)))
    concept_row = _row(concepts.image_ids, image_id, spec.concepts)
    ids, concept_mask = concepts.gather(np.array([concept_row]))
    n = feats.shape[1]
    with open_store(spec.features) as f:
        kind = f.attrs.get("kind")
        boxes = f["boxes"][feature_row] if "boxes" in f else None
        names = box_names(f, feature_row)  # a detector's store: what it saw in each box
        size = ((int(f["image_w"][feature_row]), int(f["image_h"][feature_row]))
                if "image_w" in f else None)
    with open_store(spec.concepts, "concepts") as f:
        words = read_attrs(f)["concept_words"]
        raw_ids = f["concept_ids"][concept_row][:n]
    concept_words = [words[i] if i >= 0 else "<pad>" for i in raw_ids.tolist()]
    concept_words += ["<pad>"] * (n - len(concept_words))
    if kind == "region_features":
        if boxes is None:
            raise ValueError(f"{spec.features}: region store without 'boxes'")
        layout: Layout = BoxLayout(np.asarray(boxes, dtype=np.float64),
                                   tuple(names) if names is not None else None)
    else:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{spec.features}: {n} grid cells is not a square grid")
        layout = GridLayout(side, side)
    batch = {"image_ids": torch.tensor([image_id]), "features": feats,
             "feature_mask": feature_mask, "concepts": ids, "concept_mask": concept_mask}
    mask = feature_mask[0].numpy().copy()
    mask[:min(n, concept_mask.shape[1])] |= concept_mask[0, :n].numpy()
    return ImageInputs(batch, layout, concept_words, mask, size)


def _with_cnn_features(model: torch.nn.Module, inputs: ImageInputs, path: Path) -> ImageInputs:
    from mia.captioning.finetune import CaptionImages, grid_cells

    cfg = model.cfg.cnn_config()
    pixels = CaptionImages({0: str(path)}, cfg, train=False)[0, 0].unsqueeze(0)  # (1, 3, S, S)
    n = grid_cells(cfg)
    side = math.isqrt(n)
    concepts, concept_mask = inputs.batch["concepts"][:, :n], inputs.batch["concept_mask"][:, :n]
    # The model computes its features from ``images`` itself (finetune.GridCNN.featurize).
    batch = {**inputs.batch, "images": pixels, "concepts": concepts, "concept_mask": concept_mask,
             "features": torch.zeros(1, n, model.cfg.feature_dim),
             "feature_mask": torch.ones(1, n, dtype=torch.bool)}
    words = (inputs.concept_words + ["<pad>"] * n)[:n]
    return ImageInputs(batch, GridLayout(side, side), words, np.ones(n, dtype=bool), None)


def draw_figure5(run_dirs: Sequence[str | os.PathLike], captions_store: str | os.PathLike,
                 out_dir: str | os.PathLike, images: int | Sequence[int] = 2,
                 device: str = "cpu") -> list[Path]:
    """Figure 5 of the paper for the workflow: ``visualize_attention`` of the runs (VA w/ MIA at
    N = 1, 3, 5) on ``images`` test images (a list of ids, or how many of the test split to take,
    in store order), one PNG + JSON per image in ``out_dir``."""
    if isinstance(images, int):
        with open_store(captions_store, "captions") as f:
            ids = f["image_ids"][()][f["split"][()] == 2]
        if len(ids) < images:
            raise ValueError(f"{captions_store}: {len(ids)} test images, Figure 5 wants {images}")
        chosen = [int(i) for i in ids[:images]]
    else:
        chosen = [int(i) for i in images]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = []
    for image_id in chosen:
        drawn = visualize_attention(run_dirs, image_id, out_dir / f"image_{image_id}.png",
                                    out_json=out_dir / f"image_{image_id}.json", device=device)
        pngs.append(Path(drawn.png))
    return pngs


def find_image(images_root: Path | None, image_id: int) -> Path:
    """The image file of ``image_id`` under the raw-data root (docs/CONTRACTS.md layout)."""
    if images_root is None:
        raise FileNotFoundError(f"image {image_id}: no images root (run.json images_root); pass "
                                "--images ROOT or --image-file PATH")
    images = images_root / "images" if (images_root / "images").is_dir() else images_root
    for subset in ("val2014", "train2014", "test2014", ""):
        for name in (f"COCO_{subset}_{image_id:012d}.jpg", f"{image_id:012d}.jpg",
                     f"{image_id}.jpg", f"{image_id}.png"):
            candidate = images / subset / name
            if candidate.is_file():
                return candidate
    karpathy = next((k for k in (images_root / "karpathy" / "dataset_coco.json",
                                 images_root.parent / "karpathy" / "dataset_coco.json")
                     if k.is_file()), images_root / "karpathy" / "dataset_coco.json")
    if karpathy.is_file():
        for img in load_json(karpathy).get("images", []):
            if img.get("cocoid") == image_id:
                candidate = images / img.get("filepath", "") / img["filename"]
                if candidate.is_file():
                    return candidate
    for pattern in (f"*_{image_id:012d}.*", f"{image_id}.*"):
        found = sorted(images.rglob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"image {image_id}: no file under {images} (tried COCO names, "
                            f"{karpathy.name} and a search); pass --image-file PATH")


def load_image(path: Path) -> np.ndarray:
    """The image as (H, W, 3) uint8; a file PIL cannot read is bad input naming the file."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (FileNotFoundError, IsADirectoryError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: not an image that can be read ({type(err).__name__}: "
                         f"{err}); pass a JPEG or PNG with --image-file") from err


def visualize_attention(run_dirs: Sequence[str | os.PathLike], image_id: int,
                        out_png: str | os.PathLike, *, out_json: str | os.PathLike | None = None,
                        features: str | os.PathLike | None = None,
                        concepts: str | os.PathLike | None = None,
                        images: str | os.PathLike | None = None,
                        image_file: str | os.PathLike | None = None,
                        positions: Sequence[int] | None = None,
                        iterations: Sequence[int] | None = None, top_words: int = 5,
                        device: str = "cpu") -> DrawnFigure:
    """Draw Figure 5 for ``image_id``: one panel per run (its final N), or, with
    ``iterations``, one panel per iteration k of a single run. Positions: the three most
    concentrated (see :func:`choose_positions`) unless given."""
    from mia.captioning.decode import load_captioner
    from mia.report.attention_maps import image_format

    if not run_dirs:
        raise ValueError("give at least one run folder")
    image_format(out_png)  # before any model is loaded: a bad --out fails at once
    if top_words < 1:
        raise ValueError(f"--top-words must be >= 1 (concept words listed per position), got "
                         f"{top_words}")
    if iterations and len(run_dirs) != 1:
        raise ValueError("--iterations draws the iterations of ONE run; give a single --run")
    panels: list[Panel] = []
    first: ImageInputs | None = None
    first_spec: RunSpec | None = None
    for run_dir in run_dirs:
        spec = RunSpec.from_run_dir(run_dir, features, concepts, images)
        model, vocab = load_captioner(spec.model, device)
        if not hasattr(model, "mia_attention"):
            raise ValueError(f"{spec.model}: this model has no MIA attention to draw")
        inputs = image_inputs(spec, image_id, vocab)
        if getattr(model, "cnn", None) is not None:
            # A captioner that fine-tuned its CNN saw features of its own CNN, not the stored
            # ones: compute them from the image as its evaluation transform does.
            path = Path(image_file) if image_file is not None else find_image(
                spec.images_root, image_id)
            inputs = _with_cnn_features(model, inputs, path)
        if first is not None and inputs.layout.n != first.layout.n:
            raise ValueError(f"{run_dir}: {inputs.layout.n} positions, but {run_dirs[0]} has "
                             f"{first.layout.n}; compare runs on the same features")
        batch = {k: v.to(next(model.parameters()).device) for k, v in inputs.batch.items()}
        with torch.no_grad():
            out = model.mia_attention(batch)
        acc = accumulated_attention(out)
        n_total = len(acc.visual)
        for k in (iterations or [n_total]):
            if not 1 <= k <= n_total:
                raise ValueError(f"{run_dir}: iteration {k} out of range 1..{n_total}")
            visual, textual = panel_weights(acc, 0, k)
            label = f"N = {k}" if k == n_total else f"N = {n_total}, iteration {k}"
            panels.append(Panel(label, visual, textual, spec.run))
        if first is None:
            first, first_spec = inputs, spec
    assert first is not None and first_spec is not None
    if positions is None:
        positions = choose_positions([p.visual for p in panels], first.mask)
    path = Path(image_file) if image_file is not None else find_image(first_spec.images_root,
                                                                      image_id)
    image = load_image(path)
    layout = first.layout
    if isinstance(layout, BoxLayout) and first.size is not None:
        sx, sy = image.shape[1] / first.size[0], image.shape[0] / first.size[1]
        layout = BoxLayout(layout.boxes * np.array([sx, sy, sx, sy]), layout.names)
    title = f"image {image_id}: accumulated attention of fused positions {list(positions)}"
    drawn = draw_attention(image, layout, panels, first.concept_words, list(positions), out_png,
                           out_json, top_words=top_words, title=title, image_id=image_id,
                           extra={"image_file": str(path)})
    log.info("wrote %s and %s", drawn.png, drawn.json)
    return drawn
