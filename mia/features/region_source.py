"""Where the 36 region features come from when the config says ``features.regions.source: auto``.

The paper reads the bottom-up features Anderson et al. released (``trainval_36.zip``,
``test2015_36.zip``). Their hosts are gone and no publisher checksum exists, so they can only be
used where a lab has a copy: pinned in config.yaml, pinned by the user in the local lock file
(``mia data register KEY FILE --trust``), or registered. Without such a copy the regions come
from a bottom-up Faster R-CNN run on the COCO images (``bottom_up``): the same kind of features,
computed here, at the cost of a detector pass over every image.

One source serves all images: when the VQA evaluation-server runs are on, the test2015 TSVs must
be usable too, or the server model would answer from other features than it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mia.data.pins import effective_pin

AUTO = "auto"
#: The released TSVs, read as they are.
TSV = "bottom_up_tsv"
#: The bottom-up Faster R-CNN run on the COCO images (the extractor of features.regions).
EXTRACTOR = "bottom_up"
TRAINVAL_KEY = "bottom_up_features"
TEST2015_KEY = "bottom_up_test2015_features"


def tsv_keys(server_enabled: bool) -> tuple[str, ...]:
    """The downloads ``bottom_up_tsv`` reads: trainval, plus test2015 for the server runs."""
    return (TRAINVAL_KEY, TEST2015_KEY) if server_enabled else (TRAINVAL_KEY,)


def resolve_region_source(configured: str, downloads: Mapping[str, Mapping[str, Any]],
                          lock: Mapping[str, Mapping[str, Any]], server_enabled: bool) -> str:
    """The region source to build: ``configured`` unless it is ``auto``; then ``bottom_up_tsv``
    when every TSV download it needs is usable (a pin in config.yaml or in the lock file; a
    registration of an unpinned file always records one) and ``bottom_up`` otherwise."""
    if configured != AUTO:
        return configured
    usable = all(key in downloads and effective_pin(key, downloads[key], lock) is not None
                 for key in tsv_keys(server_enabled))
    return TSV if usable else EXTRACTOR
