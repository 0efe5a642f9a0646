"""Image representations, computed once and shared by every run (docs/CONTRACTS.md stores).

* :mod:`mia.features.grid`: ResNet grid features, 49 x C per image (``grid_*.h5``);
* :mod:`mia.features.regions`: 36 region features per image from the bottom-up TSVs, given boxes
  (RoIAlign) or detectron2 (``regions_*.h5``);
* :mod:`mia.features.concepts`: the MIL concept detector of Fang et al., top-k words per image
  (``concepts_*.h5``).
"""
