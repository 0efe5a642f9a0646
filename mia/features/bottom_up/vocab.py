"""Names of the Visual Genome classes and attributes the detector predicts (1,600 and 400).

``vg_vocab.json`` holds bottom-up-attention's ``data/genome/1600-400-20/objects_vocab.txt`` and
``attributes_vocab.txt`` (MIT licence; Visual Genome's labels, CC BY 4.0; provenance in the
file), one entry per output column; a line may list aliases (``stop sign,stopsign``) and the
first is the name, lower-cased, as the LXMERT and py-bottom-up-attention demos read them.
A model with other class counts (the tests' small detectors) gets generic names.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("vg_vocab.json")


@lru_cache(maxsize=1)
def _vocab() -> dict[str, list[str]]:
    data = json.loads(VOCAB_FILE.read_text(encoding="utf-8"))
    return {key: [entry.split(",")[0].lower().strip() for entry in data[key]]
            for key in ("objects", "attributes")}


def class_names(num_classes: int) -> list[str]:
    """The name of each object class (column order of the detector's foreground scores)."""
    names = _vocab()["objects"]
    return list(names) if num_classes == len(names) else [f"class_{i}" for i in
                                                           range(num_classes)]


def attribute_names(num_attributes: int) -> list[str]:
    """The name of each attribute (column order of the attribute scores, "none" excluded)."""
    names = _vocab()["attributes"]
    return list(names) if num_attributes == len(names) else [f"attribute_{i}" for i in
                                                             range(num_attributes)]
