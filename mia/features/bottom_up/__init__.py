"""Bottom-up region features from the images: the Visual Genome Faster R-CNN of Anderson et al.

``features.regions.source: bottom_up``. The model (:mod:`.model`) is the ResNet-101 C4 Faster
R-CNN with 1,600 object classes and 400 attributes, in plain PyTorch with torchvision's ops, and
loads the public converted weights by name (:mod:`.weights`). The selection rule is
``generate_tsv.py``'s (:mod:`.selection`); :mod:`.extract` runs it over an image list into the
``region_features`` store the captioning and VQA models read, resumable chunk by chunk.
detectron2 is not needed (it is not on PyPI): see README, "Region features without the TSVs".
"""

from mia.features.bottom_up.config import BottomUpConfig, FasterRCNNConfig, bottom_up_config
from mia.features.bottom_up.extract import BottomUpExtractor, extract_bottom_up_features
from mia.features.bottom_up.model import BottomUpFasterRCNN, Detections
from mia.features.bottom_up.selection import select_boxes
from mia.features.bottom_up.weights import WeightsError, build_model, load_weights

__all__ = ["BottomUpConfig", "BottomUpExtractor", "BottomUpFasterRCNN", "Detections",
           "FasterRCNNConfig", "WeightsError", "bottom_up_config", "build_model",
           "extract_bottom_up_features", "load_weights", "select_boxes"]
