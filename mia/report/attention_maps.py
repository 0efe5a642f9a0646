"""Figure 5: where each fused position of MIA's output comes from, in the ORIGINAL inputs.

Iteration k refines the visual features with ``I_k = f(A_k I_{k-1})``, where ``A_k`` (n, n) is
the visual-refining attention (queries: the concepts, keys: the previous visual features), and the
concepts with ``T_k = g(B_k T_{k-1})``. Unrolled, fused position i after k iterations draws on
original grid cell / region m with weight ``(A_k ... A_2 A_1)[i, m]``, and on original concept m
with ``(B_k ... B_1)[i, m]``: the accumulated attention the paper colours in Figure 5. Heads are
averaged per iteration first (each head's weights are a distribution, so their mean is one too),
and a product of row-stochastic matrices is row-stochastic, so every accumulated row sums to one.
The shortcuts and feed-forward sub-layers are position-wise and leave this bookkeeping alone
(the shortcut adds position i's own source feature; it is not drawn).

Drawing: for one image and three fused positions (each its own colour), the accumulated visual
attention over the image (a 7 x 7 heat map for grid features, weighted boxes for regions) and the
top concept words with their accumulated weights, one panel per N. The image is lightened under
the heat map (:func:`background`) so the colours read on dark photos and on the demo's black
scenes alike, and a colour scale beside the panels says what the opacity means.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mia.attention import MIAOutput  # noqa: E402
from mia.io import write_json  # noqa: E402

#: Colours of the three highlighted positions (red, green, blue, as in the paper's figure).
COLOURS = ((0.89, 0.10, 0.11), (0.30, 0.69, 0.29), (0.22, 0.49, 0.72))
#: Opacity of the heat map where a position's weight is largest.
ALPHA = 0.75
#: How far the image is blended towards white under the heat map (0: not at all).
LIGHTEN = 0.55


#: File suffixes the figure can be written as, and the format each names.
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def image_format(path: str | os.PathLike) -> str:
    """The format ``path``'s suffix asks for (``fig.jpg`` is written as JPEG, not PNG bytes
    under a .jpg name); an unknown suffix is refused before anything is computed."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot write a figure as {suffix or 'a file without a suffix'}"
                         f"; name it with one of {sorted(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def background(image: np.ndarray) -> np.ndarray:
    """The image as drawn under the heat map: blended towards white by ``LIGHTEN``, so a heat
    map over a dark image is not drawn on black (where every colour looks black)."""
    lifted = np.asarray(image, dtype=np.float64) * (1 - LIGHTEN) + 255.0 * LIGHTEN
    return np.clip(np.rint(lifted), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class AccumulatedAttention:
    """Per iteration k = 1..N: ``visual[k-1]`` and ``concepts[k-1]``, each (B, n, n) float64;
    row i is fused position i's weights over the original visual positions / concepts."""

    visual: list[torch.Tensor]
    concepts: list[torch.Tensor]


def accumulated_attention(out: MIAOutput) -> AccumulatedAttention:
    """Accumulate ``out.attention`` (from ``need_weights=True``) over iterations; see the module
    docstring for the formula."""
    if not out.attention:
        raise ValueError("MIAOutput.attention is empty: run MIA with need_weights=True (e.g. "
                         "Captioner.mia_attention) to get the attention weights")
    visual: list[torch.Tensor] = []
    concepts: list[torch.Tensor] = []
    for k, (w_visual, w_concepts) in enumerate(out.attention):
        for name, w in (("visual", w_visual), ("concepts", w_concepts)):
            if w is None or w.dim() != 4 or w.shape[-1] != w.shape[-2]:
                raise ValueError(f"attention[{k}] {name}: expected (B, heads, n, n) weights, got "
                                 f"{None if w is None else tuple(w.shape)}")
        a = w_visual.detach().double().mean(1)  # (B, n, n): heads averaged
        b = w_concepts.detach().double().mean(1)
        visual.append(a if not visual else a @ visual[-1])
        concepts.append(b if not concepts else b @ concepts[-1])
    return AccumulatedAttention(visual, concepts)


def row_entropy(rows: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of weights: low = concentrated on few positions."""
    p = np.clip(np.asarray(rows, dtype=np.float64), 1e-12, None)
    p = p / p.sum(-1, keepdims=True)
    return -(p * np.log(p)).sum(-1)


def choose_positions(visual: Sequence[np.ndarray], mask: np.ndarray | None = None,
                     count: int = 3) -> list[int]:
    """The ``count`` most concentrated fused positions (lowest mean entropy of their accumulated
    visual rows over the given panels), preferring positions that peak on different cells so
    the three colours show three places. Padded positions (``mask`` False) are never chosen."""
    entropy = np.mean([row_entropy(v) for v in visual], axis=0)  # (n,)
    peaks = np.asarray(visual[-1]).argmax(-1)
    order = [int(i) for i in np.argsort(entropy, kind="stable")
             if mask is None or bool(mask[i])]
    chosen: list[int] = []
    for i in order:
        if len(chosen) == count:
            break
        if peaks[i] not in {peaks[c] for c in chosen}:
            chosen.append(i)
    for i in order:  # fewer distinct peaks than positions wanted: fill up by concentration
        if len(chosen) == count:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


@dataclass(frozen=True)
class GridLayout:
    """Grid features: the image split into ``rows`` x ``cols`` equal cells, row-major (the grid
    extractor resizes the whole image to a square, so cells partition the original image)."""

    rows: int
    cols: int

    @property
    def n(self) -> int:
        return self.rows * self.cols

    def pixel_maps(self, weights: np.ndarray, height: int, width: int) -> np.ndarray:
        """(P, n) weights -> (P, H, W) weight of each pixel's cell."""
        r = np.minimum(np.arange(height) * self.rows // height, self.rows - 1)
        c = np.minimum(np.arange(width) * self.cols // width, self.cols - 1)
        cells = r[:, None] * self.cols + c[None, :]  # (H, W) cell index
        return np.asarray(weights)[:, cells]


@dataclass(frozen=True)
class BoxLayout:
    """Region features: one box (x1, y1, x2, y2, in image pixels) per position, and what a
    detector saw in each when the store says (``names``, e.g. "white dog")."""

    boxes: np.ndarray  # (n, 4)
    names: tuple[str, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.boxes)

    def pixel_maps(self, weights: np.ndarray, height: int, width: int) -> np.ndarray:
        """(P, n) weights -> (P, H, W): the sum of the weights of the boxes covering a pixel."""
        ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
        inside_y = ((ys[None, :] >= self.boxes[:, 1:2]) & (ys[None, :] <= self.boxes[:, 3:4]))
        inside_x = ((xs[None, :] >= self.boxes[:, 0:1]) & (xs[None, :] <= self.boxes[:, 2:3]))
        # (P, n) x (n, H) x (n, W) -> (P, H, W)
        return np.einsum("pn,nh,nw->phw", np.asarray(weights, dtype=np.float64),
                         inside_y.astype(np.float64), inside_x.astype(np.float64))


Layout = GridLayout | BoxLayout


def overlay_rgba(weights: np.ndarray, layout: Layout, height: int, width: int,
                 colours: Sequence[tuple[float, float, float]] = COLOURS) -> np.ndarray:
    """The heat map drawn over the image: (H, W, 4) RGBA in [0, 1].

    Each position's pixel map is scaled to its own maximum; every pixel takes the colour of the
    position with the largest scaled weight there, with opacity ``ALPHA`` times that weight.
    """
    maps = layout.pixel_maps(weights, height, width)  # (P, H, W)
    peak = maps.reshape(len(maps), -1).max(1)
    maps = maps / np.where(peak > 0, peak, 1.0)[:, None, None]
    winner = maps.argmax(0)  # (H, W)
    strength = maps.max(0)
    rgba = np.zeros((height, width, 4))
    rgba[..., :3] = np.asarray(colours)[winner]
    rgba[..., 3] = ALPHA * strength
    return rgba


@dataclass(frozen=True)
class Panel:
    """One N: accumulated (n, n) weights of one image, visual and textual."""

    label: str  # "N = 3"
    visual: np.ndarray
    concepts: np.ndarray
    run: str = ""


@dataclass(frozen=True)
class DrawnFigure:
    png: Path
    json: Path
    overlays: list[np.ndarray]  # per panel, the (H, W, 4) array drawn over the image
    image_boxes: list[tuple[int, int, int, int]]  # per panel, the image's pixels in the PNG
    numbers: dict[str, Any]


def top_concepts(weights: np.ndarray, words: Sequence[str], count: int) -> list[tuple[str, float]]:
    """The ``count`` heaviest concept words of one accumulated row (weights of a word that
    appears at several positions are added; padding is skipped)."""
    by_word: dict[str, float] = {}
    for word, weight in zip(words, np.asarray(weights, dtype=np.float64), strict=True):
        if word in ("<pad>", ""):
            continue
        by_word[word] = by_word.get(word, 0.0) + float(weight)
    return sorted(by_word.items(), key=lambda kv: (-kv[1], kv[0]))[:count]


def _cell_name(layout: Layout, index: int) -> str:
    if isinstance(layout, GridLayout):
        return f"cell (row {index // layout.cols + 1}, col {index % layout.cols + 1})"
    name = layout.names[index] if layout.names and index < len(layout.names) else ""
    return f"region {index} ({name})" if name else f"region {index}"


def draw_attention(image: np.ndarray, layout: Layout, panels: Sequence[Panel],
                   concept_words: Sequence[str], positions: Sequence[int],
                   out_png: str | os.PathLike, out_json: str | os.PathLike | None = None,
                   top_words: int = 5, title: str = "", image_id: int | None = None,
                   extra: dict[str, Any] | None = None) -> DrawnFigure:
    """Draw one panel per N for ``positions`` of one image; write the PNG and a JSON of the
    numbers drawn. ``image`` is (H, W, 3) uint8; boxes of a :class:`BoxLayout` are in its pixels."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if not 1 <= len(positions) <= len(COLOURS):
        raise ValueError(f"draw 1 to {len(COLOURS)} positions, got {list(positions)}")
    if not panels:
        raise ValueError("draw_attention needs at least one panel")
    n = layout.n
    for panel in panels:
        if panel.visual.shape != (n, n) or panel.concepts.shape[0] != n:
            raise ValueError(f"panel {panel.label}: expected ({n}, {n}) accumulated weights for "
                             f"{n} positions, got {panel.visual.shape} / {panel.concepts.shape}")
    if len(concept_words) != panels[0].concepts.shape[1]:
        raise ValueError(f"{len(concept_words)} concept words for "
                         f"{panels[0].concepts.shape[1]} concepts")
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise ValueError(f"positions {bad} out of range 0..{n - 1}")
    if top_words < 1:
        raise ValueError(f"top_words must be >= 1 (concept words listed per position), got "
                         f"{top_words}")
    image_format(out_png)
    height, width = image.shape[:2]
    cols = len(panels)
    text_lines = 3 * len(positions)  # per position: its name and two lines of words
    text_height = 0.2 * text_lines + 0.1
    image_height = 4.0 * min(1.5, max(0.5, height / width))
    fig_height = image_height + text_height + 0.6
    fig = plt.figure(figsize=(4.2 * cols + 0.9, fig_height))
    grid = fig.add_gridspec(2, cols + 1, height_ratios=[image_height, text_height],
                            width_ratios=[4.2] * cols + [0.55], hspace=0.04, wspace=0.06,
                            left=0.02, right=0.93, top=1 - 0.45 / fig_height, bottom=0.02)
    shown = background(image)
    overlays, image_axes, numbers = [], [], []
    for j, panel in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        weights = panel.visual[list(positions)]  # (P, n)
        overlay = overlay_rgba(weights, layout, height, width)
        ax.imshow(shown, extent=(0, width, height, 0))
        ax.imshow(overlay, extent=(0, width, height, 0))
        if isinstance(layout, BoxLayout):
            for p, row in enumerate(weights):
                for b in np.argsort(-row)[:3]:
                    x1, y1, x2, y2 = layout.boxes[b]
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                           edgecolor=COLOURS[p], linewidth=1 + 3 * row[b] /
                                           max(row.max(), 1e-12)))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel.label, fontsize="large")
        text_ax = fig.add_subplot(grid[1, j])
        text_ax.axis("off")
        entries = []
        for p, position in enumerate(positions):
            words = top_concepts(panel.concepts[position], concept_words, top_words)
            peak = int(np.argmax(panel.visual[position]))
            lines = textwrap.wrap("  ".join(f"{w}\u00a0{v:.2f}" for w, v in words), 46)[:2]
            text = "\n".join([f"\u25a0 position {position}: peak {_cell_name(layout, peak)}, "
                              f"w {panel.visual[position][peak]:.2f}",
                              *(f"    {line}" for line in lines)])
            text_ax.text(0.0, 1.0 - p / len(positions), text, color=COLOURS[p], fontsize=10,
                         va="top", ha="left", transform=text_ax.transAxes, linespacing=1.3)
            top_visual = np.argsort(-panel.visual[position])[:5]
            entries.append({
                "position": int(position), "colour": "rgb({:.0f},{:.0f},{:.0f})".format(
                    *(255 * np.asarray(COLOURS[p]))),
                "peak": _cell_name(layout, peak),
                "peak_weight": round(float(panel.visual[position][peak]), 6),
                "visual": [round(float(v), 6) for v in panel.visual[position]],
                "top_visual": [[int(i), round(float(panel.visual[position][i]), 6)]
                               for i in top_visual],
                "concepts": [{"word": w, "weight": round(v, 6)} for w, v in words]})
        overlays.append(overlay)
        image_axes.append(ax)
        numbers.append({"label": panel.label, "run": panel.run, "positions": entries})
    _colour_scale(fig.add_subplot(grid[0, cols]), len(positions))
    if title:
        fig.suptitle(title, fontsize="medium")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format=image_format(out_png), dpi=100)
    fig_height = fig.get_size_inches()[1] * 100
    boxes = []
    for ax in image_axes:
        x0, y0, x1, y1 = ax.get_window_extent().extents  # display pixels, origin bottom-left
        boxes.append((int(round(x0)), int(round(fig_height - y1)), int(round(x1)),
                      int(round(fig_height - y0))))
    plt.close(fig)
    result = {"image_id": image_id, "layout": (
        f"grid {layout.rows}x{layout.cols}" if isinstance(layout, GridLayout) else
        f"{layout.n} regions"), "positions": [int(p) for p in positions],
        "top_words": top_words, "panels": numbers, **(extra or {})}
    out_json = Path(out_json) if out_json is not None else out_png.with_suffix(".json")
    write_json(out_json, result, indent=1)
    return DrawnFigure(out_png, out_json, overlays, boxes, result)


def _colour_scale(ax: Any, count: int) -> None:
    """One vertical bar per position colour, transparent to full: the heat map's opacity is a
    pixel's weight as a share of that position's peak weight in the panel (given in the text)."""
    ramp = np.linspace(0.0, 1.0, 64)[:, None]  # (64, 1), bottom = 0
    image = np.ones((64, count, 4))
    for p in range(count):
        image[:, p, :3] = COLOURS[p]
        image[:, p, 3] = ALPHA * ramp[:, 0]
    ax.imshow(np.ones((64, count, 3)), origin="lower", aspect="auto", extent=(0, count, 0, 1))
    ax.imshow(image, origin="lower", aspect="auto", extent=(0, count, 0, 1))
    ax.set_xticks([])
    ax.yaxis.tick_right()
    ax.set_yticks([0, 0.5, 1.0])
    ax.set_yticklabels(["0", "0.5", "peak"], fontsize=9)
    ax.set_title("weight /\npeak", fontsize=9)


def panel_weights(acc: AccumulatedAttention, item: int = 0, iteration: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(visual, concepts) accumulated (n, n) numpy arrays of batch item ``item`` after
    ``iteration`` (1-based; default: the last)."""
    k = len(acc.visual) if iteration is None else iteration
    if not 1 <= k <= len(acc.visual):
        raise ValueError(f"iteration {k} out of range 1..{len(acc.visual)}")
    return acc.visual[k - 1][item].cpu().numpy(), acc.concepts[k - 1][item].cpu().numpy()

