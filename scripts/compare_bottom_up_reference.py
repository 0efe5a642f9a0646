"""Our bottom-up extractor against its references, on real images with the same random weights.

The references are run from local copies that this repository never contains:

* ``--lxmert DIR``: huggingface's LXMERT demo (``modeling_frcnn.py``, ``processing_image.py``,
  ``utils.py``; last in huggingface/transformers-research-projects, ``lxmert/``), the PyTorch
  port of the Caffe model: preprocessing, backbone, RPN proposals, RoI features, class and
  attribute scores;
* ``--generate-tsv DIR``: ``generate_tsv.py`` and ``py_cpu_nms.py`` of
  peteanderson80/bottom-up-attention (``tools/``, ``lib/nms/``): the selection rule. Its
  ``get_detections_from_im`` runs unchanged on the LXMERT model's outputs, with a stand-in for
  the Caffe net and py-faster-rcnn's pure-Python NMS.

Both models get one checkpoint in the public names and shapes with seeded random values (a small
architecture by default, ``--model full`` for the paper's); everything runs in float64. The
script prints the largest difference at every stage and exits 1 if one is above tolerance.
``--record FILE`` saves the references' outputs (tests/test_bottom_up_reference.py pins our
extractor to them). What the reference needs beyond torch/numpy is stubbed: the hub download
helpers (``wget``, ``huggingface_hub``, ``transformers.image_utils``) and, where torchvision's
compiled ops are missing, its ``roi_pool`` op (a cell-by-cell port of the C++ kernel, independent
of ours). Example::

    python scripts/compare_bottom_up_reference.py --lxmert /tmp/ref/lxmert \\
        --generate-tsv /tmp/ref/bottom-up --images 4 --record tests/data/bottom_up/x.npz
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import math
import sys
import tempfile
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mia.features.bottom_up.config import BottomUpConfig, FasterRCNNConfig  # noqa: E402
from mia.features.bottom_up.extract import select_regions  # noqa: E402
from mia.features.bottom_up.preprocess import prepare, read_bgr  # noqa: E402
from mia.features.bottom_up.weights import (  # noqa: E402
    build_model,
    random_state_dict,
    save_hub_checkpoint,
)
from mia.vision import USING_FALLBACK  # noqa: E402  (before the reference's import)

IMAGES = REPO / "tests" / "data" / "coco-mini" / "images"
#: The small architecture of the tests: ResNet-50's block counts (the reference builds only
#: depths 50/101/152), 8-channel stem, 20 classes, 10 attributes.
TINY = FasterRCNNConfig(blocks=(3, 4, 6), stem_channels=8, res2_channels=32,
                        bottleneck_channels=8, rpn_channels=16, num_classes=20, num_attributes=10)
SEED = 0
TOLERANCE = 1e-9  # float64: the same operations in the same order, up to summation order


# --------------------------------------------------------------------------- reference set-up


def _stub_modules() -> None:
    """What utils.py / processing_image.py import for downloads and PIL constants only."""
    from PIL import Image

    image_utils = types.ModuleType("transformers.image_utils")
    image_utils.PILImageResampling = Image.Resampling
    transformers = types.ModuleType("transformers")
    transformers.image_utils = image_utils
    hub_utils = types.ModuleType("huggingface_hub.utils")
    hub_utils.insecure_hashlib = hashlib
    hub = types.ModuleType("huggingface_hub")
    hub.utils = hub_utils
    for name, module in (("transformers", transformers),
                         ("transformers.image_utils", image_utils), ("wget", types.ModuleType(
                             "wget")), ("huggingface_hub", hub),
                         ("huggingface_hub.utils", hub_utils)):
        sys.modules.setdefault(name, module)
    try:
        importlib.import_module("cv2")
    except ImportError:  # utils.py imports it at the top; we never let it decode
        sys.modules["cv2"] = types.ModuleType("cv2")


def _c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _kernel_roi_pool(inp: torch.Tensor, rois: torch.Tensor, scale: float, ph_: int, pw_: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision/csrc/ops/cpu/roi_pool_kernel.cpp, line for line (channels vectorised)."""
    t = inp.dtype
    _, channels, height, width = inp.shape
    out = torch.zeros(len(rois), channels, ph_, pw_, dtype=t)
    sc = torch.tensor(scale, dtype=t)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        sw, sh = _c_round(float(roi[1] * sc)), _c_round(float(roi[2] * sc))
        ew, eh = _c_round(float(roi[3] * sc)), _c_round(float(roi[4] * sc))
        bin_h = torch.tensor(max(eh - sh + 1, 1), dtype=t) / torch.tensor(ph_, dtype=t)
        bin_w = torch.tensor(max(ew - sw + 1, 1), dtype=t) / torch.tensor(pw_, dtype=t)
        for ph in range(ph_):
            hs = min(max(int(torch.floor(torch.tensor(ph, dtype=t) * bin_h)) + sh, 0), height)
            he = min(max(int(torch.ceil(torch.tensor(ph + 1, dtype=t) * bin_h)) + sh, 0), height)
            for pw in range(pw_):
                ws = min(max(int(torch.floor(torch.tensor(pw, dtype=t) * bin_w)) + sw, 0), width)
                we = min(max(int(torch.ceil(torch.tensor(pw + 1, dtype=t) * bin_w)) + sw, 0),
                         width)
                if he > hs and we > ws:
                    out[n, :, ph, pw] = inp[b, :, hs:he, ws:we].amax(dim=(1, 2))
    return out, torch.zeros(out.shape, dtype=torch.int32)


_LIBRARIES = []


def _register_roi_pool() -> None:
    if not USING_FALLBACK:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
               "SymInt pooled_width) -> (Tensor, Tensor)")
    lib.impl("roi_pool", _kernel_roi_pool, "CPU")
    _LIBRARIES.append(lib)
    # (``torchvision.ops.roi_pool`` the attribute is the function; the module is in sys.modules)
    sys.modules["torchvision.ops.roi_pool"]._assert_has_ops = lambda: None


def reference_config(model: FasterRCNNConfig, min_size: int, max_size: int) -> dict:
    """The LXMERT demo's config (the layout of unc-nlp/frcnn-vg-finetuned's config.yaml) for
    ``model``: the keys its code reads, values of the public model unless ``model`` differs."""
    depth = {(3, 4, 6): 50, (3, 4, 23): 101, (3, 8, 36): 152}[tuple(model.blocks)]
    return {
        "MODEL": {"DEVICE": "cpu", "PIXEL_MEAN": list(model.pixel_mean),
                  "PIXEL_STD": [1.0, 1.0, 1.0], "MAX_POOL": True, "LOAD_PROPOSALS": False,
                  "CHKPOINT": ""},
        "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": min_size, "MAX_SIZE_TEST": max_size},
        "SIZE_DIVISIBILITY": 0, "PAD_VALUE": 0.0,
        "MIN_DETECTIONS": 10, "MAX_DETECTIONS": 36,
        "BACKBONE": {"FREEZE_AT": 2},
        "RESNETS": {"DEPTH": depth, "NORM": "BN", "NUM_GROUPS": 1,
                    "WIDTH_PER_GROUP": model.bottleneck_channels,
                    "STEM_OUT_CHANNELS": model.stem_channels,
                    "RES2_OUT_CHANNELS": model.res2_channels, "STRIDE_IN_1X1": True,
                    "RES5_DILATION": 1, "OUT_FEATURES": ["res4"]},
        "PROPOSAL_GENERATOR": {"HIDDEN_CHANNELS": model.rpn_channels,
                               "MIN_SIZE": model.rpn_min_size},
        "ANCHOR_GENERATOR": {"SIZES": [list(model.anchor_sizes)],
                             "ASPECT_RATIOS": [list(model.aspect_ratios)],
                             "OFFSET": model.anchor_offset},
        "RPN": {"IN_FEATURES": ["res4"], "NMS_THRESH": model.rpn_nms_threshold,
                "PRE_NMS_TOPK_TEST": model.rpn_pre_nms_topk,
                "POST_NMS_TOPK_TEST": model.rpn_post_nms_topk, "PRE_NMS_TOPK_TRAIN": 12000,
                "POST_NMS_TOPK_TRAIN": 2000, "BATCH_SIZE_PER_IMAGE": 256,
                "POSITIVE_FRACTION": 0.5, "SMOOTH_L1_BETA": 0.0, "LOSS_WEIGHT": 1.0,
                "BOUNDARY_THRESH": -1, "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
                "IOU_THRESHOLDS": [0.3, 0.7], "IOU_LABELS": [0, -1, 1]},
        "ROI_HEADS": {"IN_FEATURES": ["res4"], "NUM_CLASSES": model.num_classes,
                      "POSITIVE_FRACTION": 0.25, "PROPOSAL_APPEND_GT": True,
                      "SCORE_THRESH_TEST": 0.2, "NMS_THRESH_TEST": [0.5, 0.6, 0.7],
                      "IOU_THRESHOLDS": [0.5], "IOU_LABELS": [0, 1]},
        "ROI_BOX_HEAD": {"CLS_AGNOSTIC_BBOX_REG": False,
                         "POOLER_RESOLUTION": model.pooler_resolution,
                         "POOLER_SAMPLING_RATIO": 0, "RES5HALVE": False, "ATTR": True,
                         "NUM_ATTRS": model.num_attributes, "SMOOTH_L1_BETA": 0.0,
                         "BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0]},
    }


class _TieOrderedArray(np.ndarray):
    """An array whose ``argsort`` is stable with equal values by DESCENDING index, so that
    py_cpu_nms's ``scores.argsort()[::-1]`` puts equal scores earlier-index first (our order;
    the published code leaves it to numpy's unstable default sort)."""

    def argsort(self, *args, **kwargs):  # noqa: ARG002 - numpy's signature, default axis
        return np.lexsort((-np.arange(len(self)), np.asarray(self)))


def load_generate_tsv(folder: Path, nms_threshold: float, stable_ties: bool = False):
    """``get_detections_from_im`` of generate_tsv.py (Python 2 elsewhere in the file, so the
    function alone is cut out and run), with py-faster-rcnn's ``py_cpu_nms`` as its ``nms``.

    ``stable_ties``: py_cpu_nms orders equal float32 scores by index (earlier first) instead of
    by numpy's unstable sort; everything else is the published code."""
    text = (folder / "generate_tsv.py").read_text()
    start = text.index("def get_detections_from_im")
    end = text.index("\ndef ", start + 1)
    nms_ns: dict = {"np": np}
    exec((folder / "py_cpu_nms.py").read_text(), nms_ns)  # noqa: S102 - the reference itself
    nms = nms_ns["py_cpu_nms"]
    if stable_ties:
        published = nms

        def nms(dets, thresh):  # the same loop; equal scores in a defined order
            return published(np.asarray(dets).view(_TieOrderedArray), thresh)
    namespace = {"np": np, "base64": base64, "nms": nms,
                 "cfg": types.SimpleNamespace(TEST=types.SimpleNamespace(NMS=nms_threshold))}
    exec(text[start:end], namespace)  # noqa: S102
    return namespace


def run_generate_tsv(namespace: dict, bgr: np.ndarray, proposals: np.ndarray,
                     probs: np.ndarray, pooled: np.ndarray, min_boxes: int, max_boxes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept indices, boxes and features of generate_tsv.py on the LXMERT model's outputs.

    The stand-in Caffe net hands over the proposals already in original pixels (the PyTorch
    port scales per axis) with ``im_scale = 1``, and the class probabilities in Caffe's column
    order (background first; the converted weights put it last)."""
    caffe_probs = np.concatenate([probs[:, -1:], probs[:, :-1]], axis=1)
    rois = np.concatenate([np.zeros((len(proposals), 1)), proposals], axis=1)
    net = types.SimpleNamespace(blobs={
        "rois": types.SimpleNamespace(data=rois), "cls_prob": types.SimpleNamespace(
            data=caffe_probs), "pool5_flat": types.SimpleNamespace(data=pooled)})
    namespace.update(
        MIN_BOXES=min_boxes, MAX_BOXES=max_boxes,
        cv2=types.SimpleNamespace(imread=lambda _: bgr),
        im_detect=lambda _net, _im: (caffe_probs, None, None, None),
        _get_blobs=lambda _im, _rois: (None, np.array([1.0])))
    out = namespace["get_detections_from_im"](net, "image.jpg", 0, conf_thresh=0.2)
    n = out["num_boxes"]
    boxes = np.frombuffer(base64.b64decode(out["boxes"]), dtype=np.float64).reshape(n, 4)
    feats = np.frombuffer(base64.b64decode(out["features"]), dtype=np.float64).reshape(n, -1)
    index = {tuple(b): i for i, b in enumerate(proposals)}
    return np.array([index[tuple(b)] for b in boxes], dtype=np.int64), boxes, feats


# --------------------------------------------------------------------------- the comparison


def _diff(a, b) -> float:
    a, b = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def compare(args: argparse.Namespace) -> int:
    _stub_modules()
    _register_roi_pool()
    sys.path.insert(0, str(args.lxmert))
    frcnn = importlib.import_module("modeling_frcnn")
    processing = importlib.import_module("processing_image")
    utils = importlib.import_module("utils")
    model_cfg = FasterRCNNConfig() if args.model == "full" else TINY
    if args.pre_nms_topk:
        model_cfg = FasterRCNNConfig(**{**model_cfg.__dict__, "rpn_pre_nms_topk":
                                        args.pre_nms_topk})
    ref_cfg = utils.Config(reference_config(model_cfg, args.min_size, args.max_size))
    tsv = load_generate_tsv(args.generate_tsv, 0.3)
    tsv_ties = load_generate_tsv(args.generate_tsv, 0.3, stable_ties=True)

    with tempfile.TemporaryDirectory() as tmp:
        weights = save_hub_checkpoint(random_state_dict(model_cfg, SEED),
                                      Path(tmp) / "pytorch_model.bin")
        # The reference's own loader (strict load_state_dict): our names are its names.
        reference = frcnn.GeneralizedRCNN.from_pretrained(tmp, config=ref_cfg).double().eval()
        ours = build_model(model_cfg, weights, "hub", dtype=torch.float64)
    preprocess = processing.Preprocess(ref_cfg)

    worst: dict[str, float] = {}
    ties: dict[str, int] = {}
    record: dict[str, np.ndarray] = {}
    paths = ([IMAGES / name for name in args.image] if args.image
             else sorted(IMAGES.glob("*.jpg"))[: args.images])
    for k, path in enumerate(paths):
        bgr = read_bgr(str(path))
        images, sizes, scales_yx = preprocess([torch.from_numpy(bgr.copy())])
        mine = prepare(bgr, args.min_size, args.max_size, model_cfg.pixel_mean)
        stage = {"preprocess": _diff(images[0], mine)}
        x = images.double()
        with torch.no_grad():
            ref_feats = reference.backbone(x)
            ref_props, _ = reference.proposal_generator(x, sizes, ref_feats)
            obj_logits, attr_logits, _, ref_pooled = reference.roi_heads(ref_feats, ref_props)
        size = (int(sizes[0, 0]), int(sizes[0, 1]))
        with torch.no_grad():
            our_feats = ours.backbone(mine[None].double())
        det = ours(mine[None].double(), [size])[0]
        ref_probs = torch.softmax(obj_logits, dim=-1)
        stage["res4"] = _diff(ref_feats["res4"], our_feats)
        stage["proposals"] = _diff(ref_props[0], det.boxes)
        stage["region features"] = _diff(ref_pooled, det.features)
        stage["class probabilities"] = _diff(ref_probs, det.class_probs)
        stage["attribute logits"] = _diff(attr_logits, det.attribute_logits)
        scale = scales_yx[0].double()  # the reference's per-axis scale to the original image
        ref_boxes = (ref_props[0] * scale[[1, 0, 1, 0]]).numpy()
        original = (bgr.shape[0], bgr.shape[1])
        for lo, hi in ((36, 36), (10, 100)):
            published, _, _ = run_generate_tsv(tsv, bgr, ref_boxes, ref_probs.numpy(),
                                               ref_pooled.numpy(), lo, hi)
            keep, boxes, feats = run_generate_tsv(tsv_ties, bgr, ref_boxes, ref_probs.numpy(),
                                                  ref_pooled.numpy(), lo, hi)
            cfg = BottomUpConfig(min_boxes=lo, max_boxes=hi, model=model_cfg)
            our_keep, our_boxes, labels = select_regions([det], [size], [original], cfg)[0]
            same = np.array_equal(our_keep.numpy(), keep)
            as_published = np.array_equal(our_keep.numpy(), published)
            stage[f"kept boxes {lo}/{hi}"] = 0.0 if same else float("inf")
            ties[f"{lo}/{hi}"] = ties.get(f"{lo}/{hi}", 0) + (not as_published)
            if same:
                stage[f"kept box coordinates {lo}/{hi}"] = _diff(our_boxes[our_keep], boxes)
                stage[f"kept features {lo}/{hi}"] = _diff(det.features[our_keep], feats)
            ref_attr = attr_logits[keep][:, :-1].argmax(dim=1).numpy()
            stage[f"attribute ids {lo}/{hi}"] = 0.0 if np.array_equal(
                labels.attribute_ids, ref_attr) else float("inf")
            record[f"img{k}_keep_{lo}_{hi}"] = keep
            print(f"{path.name} {lo}/{hi}: reference keeps {len(keep)}, we keep "
                  f"{len(our_keep)}; same indices in the same order: {same} (with numpy's own "
                  f"order of tied float32 scores: {as_published})")
            if lo == 36:
                record[f"img{k}_features_36"] = feats.astype(np.float32)
                record[f"img{k}_class_probs_36"] = ref_probs.numpy()[keep].astype(np.float32)
                record[f"img{k}_attribute_logits_36"] = attr_logits.numpy()[keep].astype(
                    np.float32)
        record[f"img{k}_file"] = np.array(path.name)
        record[f"img{k}_input_sha256"] = np.array(hashlib.sha256(
            images[0].numpy().tobytes()).hexdigest())
        record[f"img{k}_proposals"] = ref_props[0].numpy()
        record[f"img{k}_original_boxes"] = ref_boxes
        for name, value in stage.items():
            worst[name] = max(worst.get(name, 0.0), value)
        # The LXMERT demo's own end-to-end call (its selection differs: see the README).
        with torch.no_grad():
            out = reference(x, sizes, scales_yx=scales_yx, return_tensors="pt",
                            padding="max_detections", max_detections=36)
        print(f"{path.name}: input {tuple(images.shape[2:])}, {len(det.boxes)} proposals; the "
              f"LXMERT demo's own selection returns {int(out['preds_per_image'][0])} boxes")

    print(f"\n| stage ({args.model} model, float64, {len(paths)} coco-mini images) | largest "
          f"difference |\n|---|---|")
    for name, value in worst.items():
        print(f"| {name} | {value:.3g} |")
    for setting, count in ties.items():
        print(f"{setting}: {count} of {len(paths)} images keep other boxes when py_cpu_nms orders "
              f"equal float32 scores by numpy's unstable sort instead of by index")
    failed = [n for n, v in worst.items() if not v <= TOLERANCE]
    if args.record:
        record.update(seed=np.array(SEED), min_size=np.array(args.min_size),
                      max_size=np.array(args.max_size), images=np.array(len(paths)),
                      model=np.array(json.dumps(asdict(model_cfg))))
        args.record.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.record, **record)
        print(f"recorded the references' outputs in {args.record} "
              f"({args.record.stat().st_size // 1024} KB)")
    if failed:
        print(f"ABOVE TOLERANCE ({TOLERANCE}): {failed}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lxmert", type=Path, required=True,
                        help="folder with the LXMERT demo's modeling_frcnn.py etc.")
    parser.add_argument("--generate-tsv", type=Path, required=True,
                        help="folder with generate_tsv.py and py_cpu_nms.py")
    parser.add_argument("--images", type=int, default=4, help="coco-mini images (sorted)")
    parser.add_argument("--image", action="append", default=[],
                        help="a coco-mini image by file name (repeatable; instead of --images)")
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--pre-nms-topk", type=int, default=0,
                        help="RPN candidates before NMS (default: the model's 6000)")
    parser.add_argument("--record", type=Path, help="save the references' outputs (.npz)")
    parser.add_argument("--record-names", type=Path,
                        help="only write the names and shapes of the reference's state dict "
                             "for the public (full-size) model to this JSON file")
    args = parser.parse_args()
    return record_names(args) if args.record_names else compare(args)


def record_names(args: argparse.Namespace) -> int:
    """The tensor names and shapes the LXMERT demo's model has at the public checkpoint's size:
    the names ``pytorch_model.bin`` must hold (its loader is a strict ``load_state_dict``)."""
    _stub_modules()
    sys.path.insert(0, str(args.lxmert))
    frcnn = importlib.import_module("modeling_frcnn")
    utils = importlib.import_module("utils")
    cfg = utils.Config(reference_config(FasterRCNNConfig(), 600, 1000))
    state = frcnn.GeneralizedRCNN(cfg).state_dict()
    shapes = {name: list(t.shape) for name, t in state.items()}
    args.record_names.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"  {json.dumps(name)}: {json.dumps(shape)}" for name, shape in shapes.items()]
    source = ("huggingface/transformers-research-projects lxmert/modeling_frcnn.py "
              "GeneralizedRCNN at the unc-nlp/frcnn-vg-finetuned config "
              "(scripts/compare_bottom_up_reference.py --record-names)")
    args.record_names.write_text(
        f'{{"source": {json.dumps(source)},\n "numel": {sum(t.numel() for t in state.values())},'
        f'\n "shapes": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"{len(shapes)} tensors, {sum(t.numel() for t in state.values())} numbers -> "
          f"{args.record_names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
