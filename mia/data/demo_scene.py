"""Demo-world scenes: coloured shapes in a 3x3 layout, and their rendering.

A scene is the single source of truth of one demo image: the pixels are drawn from it, and
every caption, box and VQA answer (mia.data.demo_language) is derived from it, so the text is
true of the image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Shape colours (RGB), far apart so a JPEG-compressed pixel still maps to its colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 190),
    "orange": (250, 140, 20),
    "gray": (128, 128, 128),
}
#: Backgrounds: not shape colours, so a colour word in a caption names one thing only.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (15, 15, 15), "white": (245, 245, 245)}
#: Shape -> COCO category id (supercategory "shape").
SHAPES: dict[str, int] = {"circle": 1, "square": 2, "triangle": 3, "diamond": 4, "star": 5}
#: 3x3 layout cells (col, row) -> position name used in captions and "where" answers.
POSITIONS = {(0, 0): "top left", (1, 0): "top", (2, 0): "top right",
             (0, 1): "left", (1, 1): "center", (2, 1): "right",
             (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right"}


@dataclass(frozen=True)
class DemoObject:
    shape: str
    color: str
    size: str  # small or large
    cell: tuple[int, int]  # (col, row) of the 3x3 layout
    polygon: tuple[tuple[float, float], ...]  # outline (a 24-gon for circles), pixels

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """COCO ``[x, y, w, h]`` of the outline."""
        xs, ys = [p[0] for p in self.polygon], [p[1] for p in self.polygon]
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))

    @property
    def area(self) -> float:
        """Shoelace area of the outline, as COCO's ``area`` is the segmentation's."""
        pts = self.polygon
        return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1)
                       in zip(pts, pts[1:] + pts[:1], strict=True))) / 2


@dataclass(frozen=True)
class Scene:
    image_id: int
    subset: str  # train2014 or val2014
    split: str  # Karpathy split: train, restval, val, test
    background: str
    objects: tuple[DemoObject, ...]

    @property
    def file_name(self) -> str:
        return f"COCO_{self.subset}_{self.image_id:012d}.jpg"



def _outline(shape: str, cx: float, cy: float, r: float) -> tuple[tuple[float, float], ...]:
    if shape == "circle":
        pts = [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
               for k in range(24)]
    elif shape == "square":
        s = 0.85 * r
        pts = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    else:  # star: 5 outer points, inner radius 0.45 r, first point up
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        pts = [(cx + rad * math.sin(math.pi * k / 5), cy - rad * math.cos(math.pi * k / 5))
               for k, rad in enumerate(radii)]
    return tuple((round(x, 2), round(y, 2)) for x, y in pts)


def sample_scene(rng: random.Random, image_id: int, subset: str, split: str, image_size: int,
                 max_objects: int) -> Scene:
    """Objects in distinct cells of a 3x3 grid, so none overlap and each has one position word.

    Colours and shapes repeat within an image on purpose (35% each), so counting questions have
    answers above one.
    """
    cell = image_size / 3
    n = rng.randint(1, max_objects)
    cells = rng.sample(sorted(POSITIONS), n)
    objects: list[DemoObject] = []
    for col, row in cells:
        color = (rng.choice(objects).color if objects and rng.random() < 0.35
                 else rng.choice(list(COLORS)))
        shape = (rng.choice(objects).shape if objects and rng.random() < 0.35
                 else rng.choice(list(SHAPES)))
        size = rng.choice(("small", "large"))
        r = cell * (0.40 if size == "large" else 0.22)
        slack = cell / 2 - r - 1
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append(DemoObject(shape, color, size, (col, row), _outline(shape, cx, cy, r)))
    return Scene(image_id, subset, split, rng.choice(list(BACKGROUNDS)), tuple(objects))


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw the scene: flat background, solid shapes (no anti-aliasing, so colours stay pure)."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw.polygon(list(obj.polygon), fill=COLORS[obj.color])
    return img
