"""Demo-world language: captions, VQA questions and human-like answers, all derived from a scene.

Captions vary in template and vocabulary (synonyms, casing, full stops) so a captioner has real
but learnable language to model; questions cover VQA's three answer types, with counting
questions for the "number" type; the ten answers per question carry the noise of real
annotators (number words, articles, capitals, synonyms, a minority of wrong answers).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from mia.data.demo_scene import BACKGROUNDS, COLORS, POSITIONS, SHAPES, DemoObject, Scene

_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circle", "disc"), "square": ("square", "square", "block"),
    "triangle": ("triangle",), "diamond": ("diamond", "diamond", "rhombus"), "star": ("star",)}
_PLURAL = {"rhombus": "rhombuses"}
_COLOR_WORDS = {"gray": ("gray", "grey")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_POSITION_PHRASES = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left", "at the left side"), "right": ("on the right", "at the right side"),
    "top": ("at the top", "near the top"), "bottom": ("at the bottom", "near the bottom"),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _color_word(rng: random.Random, color: str) -> str:
    return rng.choice(_COLOR_WORDS.get(color, (color,)))


def _shape_word(rng: random.Random, shape: str, plural: bool = False) -> str:
    word = rng.choice(_SHAPE_WORDS[shape])
    return _PLURAL.get(word, word + "s") if plural else word


def _object_phrase(rng: random.Random, obj: DemoObject, with_size: bool) -> str:
    words = [_color_word(rng, obj.color), _shape_word(rng, obj.shape)]
    if with_size:
        words.insert(0, rng.choice(_SIZE_WORDS[obj.size]))
    return f"{_article(words[0])} {' '.join(words)}"


def _position_phrase(rng: random.Random, position: str) -> str:
    if " " in position:  # a corner
        vertical, horizontal = position.split()
        return rng.choice((f"in the {position} corner", f"at the {vertical} {horizontal}",
                           f"in the {'upper' if vertical == 'top' else 'lower'} {horizontal}"))
    return rng.choice(_POSITION_PHRASES[position])


def _groups(scene: Scene) -> list[tuple[str, str, int]]:
    """(colour, shape, count) in order of first appearance."""
    counts = Counter((o.color, o.shape) for o in scene.objects)
    order = list(dict.fromkeys((o.color, o.shape) for o in scene.objects))
    return [(c, s, counts[(c, s)]) for c, s in order]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _enumeration(rng: random.Random, scene: Scene) -> str:
    """"two red circles and a blue square"."""
    parts = []
    for color, shape, count in _groups(scene):
        if count == 1:
            cw = _color_word(rng, color)
            parts.append(f"{_article(cw)} {cw} {_shape_word(rng, shape)}")
        else:
            parts.append(f"{_NUMBER_WORDS[count]} {_color_word(rng, color)} "
                         f"{_shape_word(rng, shape, plural=True)}")
    return _join(parts)


def _caption_enumerate(rng: random.Random, scene: Scene) -> str:
    opener = rng.choice(("", "a picture of ", "an image of ", "an image with ", "there is "))
    return opener + _enumeration(rng, scene)


def _caption_focus(rng: random.Random, scene: Scene) -> str:
    """"there is a small yellow star near the top" (+ how many others)."""
    obj = rng.choice(scene.objects)
    text = f"{_object_phrase(rng, obj, with_size=True)} {_position_phrase(rng, obj.position)}"
    others = len(scene.objects) - 1
    if others == 1:
        text += rng.choice((" and another shape", " and one other shape"))
    elif others > 1:
        text += f" and {_NUMBER_WORDS[others]} other shapes"
    return rng.choice(("", "there is ", "you can see ")) + text


def _caption_count(rng: random.Random, scene: Scene) -> str:
    n = len(scene.objects)
    background = f"on a {scene.background} background"
    if n == 1:
        obj = scene.objects[0]
        return rng.choice((f"a single {_color_word(rng, obj.color)} {_shape_word(rng, obj.shape)} "
                           f"{background}", f"one shape {background}",
                           f"{_object_phrase(rng, obj, with_size=True)} alone {background}"))
    return rng.choice((f"{_NUMBER_WORDS[n]} shapes {background}",
                       f"{_NUMBER_WORDS[n]} colorful shapes {background}",
                       f"{_NUMBER_WORDS[n]} objects of different shapes {background}"
                       if len({o.shape for o in scene.objects}) == n else
                       f"a group of {_NUMBER_WORDS[n]} shapes {background}"))


def _caption_relation(rng: random.Random, scene: Scene) -> str | None:
    """"a red circle to the left of a blue square": only between objects in different cells."""
    pairs = [(a, b) for a in scene.objects for b in scene.objects
             if a is not b and (a.cell[0] < b.cell[0] or a.cell[1] < b.cell[1])]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    relations = []
    if a.cell[0] < b.cell[0]:
        relations.append("to the left of")
    if a.cell[1] < b.cell[1]:
        relations.append(rng.choice(("above", "over")))
    return (f"{_object_phrase(rng, a, with_size=False)} {rng.choice(relations)} "
            f"{_object_phrase(rng, b, with_size=False)}")


def _caption_background(rng: random.Random, scene: Scene) -> str:
    return rng.choice((f"{_enumeration(rng, scene)} on a {scene.background} background",
                       f"a {scene.background} background with {_enumeration(rng, scene)}"))


_CAPTION_TEMPLATES = (_caption_enumerate, _caption_focus, _caption_count, _caption_relation,
                      _caption_background)


def _surface(rng: random.Random, text: str) -> str:
    """COCO-like surface variation: capitalised or not, a full stop, a stray trailing space."""
    if rng.random() < 0.6:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4:
        text += "."
    if rng.random() < 0.1:
        text += " "
    return text


def make_captions(rng: random.Random, scene: Scene, n: int) -> list[str]:
    """``n`` captions, distinct where the templates allow, each true of the scene."""
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        text = rng.choice(_CAPTION_TEMPLATES)(rng, scene)
        if text is not None and text not in out:
            out.append(text)
    while len(out) < n:  # tiny scenes: repeat rather than fail
        out.append(_caption_enumerate(rng, scene))
    return [_surface(rng, t) for t in out]


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    text: str
    question_type: str
    answer_type: str  # yes/no, number, other
    answer: str  # canonical
    wrong: tuple[str, ...]  # plausible wrong answers


def _count_question(rng: random.Random, scene: Scene) -> Question:
    objs = scene.objects
    kind = rng.choice(("all", "color", "shape", "color_shape"))
    # Ask about absent attributes 25% of the time: "0" is a real VQA answer.
    color = (rng.choice(objs).color if rng.random() < 0.75 else rng.choice(list(COLORS)))
    shape = (rng.choice(objs).shape if rng.random() < 0.75 else rng.choice(list(SHAPES)))
    if kind == "all":
        text = rng.choice(("how many shapes are there?", "how many objects are in the image?",
                           "how many shapes are in the picture?"))
        count = len(objs)
    elif kind == "color":
        text = rng.choice((f"how many {color} shapes are there?",
                           f"how many {color} objects are in the picture?"))
        count = sum(o.color == color for o in objs)
    elif kind == "shape":
        text = rng.choice((f"how many {_PLURAL.get(shape, shape + 's')} are there?",
                           f"how many {_PLURAL.get(shape, shape + 's')} can you see?"))
        count = sum(o.shape == shape for o in objs)
    else:
        text = f"how many {color} {_PLURAL.get(shape, shape + 's')} are there?"
        count = sum(o.color == color and o.shape == shape for o in objs)
    wrong = tuple(str(c) for c in (count - 1, count + 1) if c >= 0)
    return Question(text, "how many", "number", str(count), wrong)


def _unique(scene: Scene, key) -> list[DemoObject]:
    counts = Counter(key(o) for o in scene.objects)
    return [o for o in scene.objects if counts[key(o)] == 1]


def _other_question(rng: random.Random, scene: Scene) -> Question:
    kind = rng.choice(("color", "shape", "where", "background"))
    by_shape = _unique(scene, lambda o: o.shape)
    by_color = _unique(scene, lambda o: o.color)
    by_both = _unique(scene, lambda o: (o.color, o.shape))
    if kind == "color" and by_shape:
        obj = rng.choice(by_shape)
        return Question(f"what color is the {obj.shape}?", "what color is the", "other",
                         obj.color, tuple(c for c in COLORS if c != obj.color))
    if kind == "shape" and by_color:
        obj = rng.choice(by_color)
        text = rng.choice((f"what shape is the {obj.color} object?",
                           f"what is the shape of the {obj.color} object?"))
        qtype = "what shape is the" if text.startswith("what shape") else "what is the"
        return Question(text, qtype, "other", obj.shape, tuple(s for s in SHAPES
                                                                 if s != obj.shape))
    if kind == "where" and by_both:
        obj = rng.choice(by_both)
        return Question(f"where is the {obj.color} {obj.shape}?", "where is the", "other",
                         obj.position, tuple(p for p in POSITIONS.values() if p != obj.position))
    return Question("what color is the background?", "what color is the", "other",
                     scene.background, tuple(b for b in BACKGROUNDS if b != scene.background))


def _yes_no_question(rng: random.Random, scene: Scene) -> Question:
    objs = scene.objects
    want_yes = rng.random() < 0.5
    kind = rng.choice(("exists_both", "exists_shape", "exists_color", "side"))
    by_both = _unique(scene, lambda o: (o.color, o.shape))
    if kind == "side" and by_both:
        obj = rng.choice(by_both)
        side = rng.choice(("left", "right", "top", "bottom"))
        yes = side in obj.position.split()
        phrase = f"on the {side}" if side in ("left", "right") else f"at the {side}"
        text, qtype = f"is the {obj.color} {obj.shape} {phrase}?", "is the"
    elif kind == "exists_shape":
        shape = rng.choice(objs).shape if want_yes else rng.choice(list(SHAPES))
        yes = any(o.shape == shape for o in objs)
        text, qtype = f"is there {_article(shape)} {shape} in the image?", "is there a"
    elif kind == "exists_color":
        color = rng.choice(objs).color if want_yes else rng.choice(list(COLORS))
        yes = any(o.color == color for o in objs)
        text, qtype = f"are there any {color} shapes?", "are there any"
    else:
        if want_yes:
            obj = rng.choice(objs)
            color, shape = obj.color, obj.shape
        else:
            color, shape = rng.choice(list(COLORS)), rng.choice(list(SHAPES))
        yes = any(o.color == color and o.shape == shape for o in objs)
        text, qtype = f"is there {_article(color)} {color} {shape}?", "is there a"
    answer = "yes" if yes else "no"
    return Question(text, qtype, "yes/no", answer, ("no" if yes else "yes",))


def make_questions(rng: random.Random, scene: Scene, n: int) -> list[Question]:
    """``n`` distinct questions mixing the three VQA answer types (number ~35%)."""
    makers = (_count_question, _other_question, _yes_no_question)
    out: list[Question] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        q = rng.choices(makers, weights=(0.35, 0.35, 0.30))[0](rng, scene)
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out


def question_surface(rng: random.Random, text: str) -> str:
    """VQA questions are capitalised; a few lack the question mark, as typed by people."""
    text = text[0].upper() + text[1:]
    return text[:-1] if rng.random() < 0.03 else text


def _typed_variant(rng: random.Random, answer: str, answer_type: str) -> str:
    """How a person might type ``answer`` in ways the official VQA normalisation undoes:
    number words, an article, capitals, a full stop."""
    u = rng.random()
    if answer_type == "number" and u < 0.25:
        return _NUMBER_WORDS[int(answer)]
    if answer in SHAPES and u > 0.85:
        return f"{_article(answer)} {answer}"
    v = rng.random()
    if v < 0.15:
        return answer.capitalize()
    return answer + "." if v < 0.22 else answer


def _synonym(rng: random.Random, answer: str) -> str | None:
    """A right answer in words the normalisation does NOT map to the canonical one."""
    if answer == "gray":
        return "grey"
    if answer == "center":
        return "in the middle"
    if answer in POSITIONS.values():
        return f"on the {answer}" if " " not in answer else f"{answer} corner"
    return None


def make_answers(rng: random.Random, q: Question, noise: float) -> list[dict]:
    """Ten VQA v2 answer records, at most 3 of them dissenting (a wrong answer, or a synonym such
    as "grey"), so the majority normalised answer, the ``multiple_choice_answer``, is
    ``q.answer``. Question difficulty varies: the dissent rate is uniform in [0, 2 * noise]."""
    difficulty = rng.uniform(0, 2 * noise)
    n_dissent = min(3, sum(rng.random() < difficulty for _ in range(10)))
    dissent = set(rng.sample(range(10), n_dissent))
    records = []
    for k in range(10):
        synonym = _synonym(rng, q.answer) if k in dissent else None
        if k in dissent and synonym is not None and rng.random() < 0.5:
            text, weights = synonym, (0.7, 0.25, 0.05)
        elif k in dissent:
            text, weights = _typed_variant(rng, rng.choice(q.wrong), q.answer_type), (0.3, 0.5, 0.2)
        else:
            text, weights = _typed_variant(rng, q.answer, q.answer_type), (0.85, 0.13, 0.02)
        confidence = rng.choices(("yes", "maybe", "no"), weights=weights)[0]
        records.append({"answer": text, "answer_confidence": confidence, "answer_id": k + 1})
    return records


# --------------------------------------------------------------------------- ground-truth words


def object_words() -> dict[str, tuple[str, ...]]:
    """Every word the captions use to name WHAT is in a picture, by the fact it names:
    ``shape:<s>`` (singular forms and synonyms), ``shapes:<s>`` (their plurals), ``color:<c>``,
    ``size:<z>`` and ``background:<b>``. Position, number and function words are not here."""
    out: dict[str, tuple[str, ...]] = {}
    for shape, words in _SHAPE_WORDS.items():
        forms = tuple(dict.fromkeys(words))
        out[f"shape:{shape}"] = forms
        out[f"shapes:{shape}"] = tuple(_PLURAL.get(w, w + "s") for w in forms)
    for color in COLORS:
        out[f"color:{color}"] = _COLOR_WORDS.get(color, (color,))
    for size, words in _SIZE_WORDS.items():
        out[f"size:{size}"] = words
    for background in BACKGROUNDS:
        out[f"background:{background}"] = (background,)
    return out


def true_words(background: str, objects: list[dict] | tuple[DemoObject, ...]) -> set[str]:
    """The object words (:func:`object_words`) true of a picture: the singular shape words of
    each shape in it, the plural ones of each shape it holds two or more of, the colour and size
    words of its objects, and its background's word. ``objects`` are :class:`DemoObject` or the
    records of the world's ``annotations/demo_scenes.json``."""
    table = object_words()
    facts = {f"background:{background}"}
    shapes = Counter(o["shape"] if isinstance(o, dict) else o.shape for o in objects)
    for o in objects:
        get = o.get if isinstance(o, dict) else lambda key, o=o: getattr(o, key)
        facts |= {f"shape:{get('shape')}", f"color:{get('color')}", f"size:{get('size')}"}
    facts |= {f"shapes:{s}" for s, n in shapes.items() if n >= 2}
    return {w for fact in facts for w in table[fact]}


def word_names_object(word: str, obj: dict | DemoObject) -> bool | None:
    """Whether ``word`` names ``obj`` (a shape word of its shape, singular or plural, a colour
    or size word of it); ``None`` when ``word`` names no object at all (function, number,
    position and background words)."""
    get = obj.get if isinstance(obj, dict) else lambda key: getattr(obj, key)
    for fact, words in object_words().items():
        if word in words:
            kind, value = fact.split(":")
            if kind == "background":
                return None
            return get("shape" if kind == "shapes" else kind) == value
    return None
