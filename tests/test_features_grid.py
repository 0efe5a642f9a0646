"""Grid features (mia.features.grid) on real COCO JPEGs and the demo world.

References: torchvision's ResNet run by hand on a PIL-resized, ImageNet-normalised image; the
store layout of docs/CONTRACTS.md (``grid_*``).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from mia.data.store import load_store
from mia.features import backbone as backbone_module
from mia.features.backbone import WeightsUnavailableError
from mia.features.grid import (
    GridFeatureConfig,
    extract_grid_features,
    extract_grid_features_from_karpathy,
)
from mia.features.images import BadImagesError, images_from_karpathy
from mia.vision import torchvision


@pytest.fixture(scope="module")
def coco_mini(data_dir: Path) -> Path:
    path = data_dir / "coco-mini"
    if not (path / "instances.json").exists():
        pytest.fail(f"{path}: the coco-mini fixture (33 real COCO images) is missing from "
                    "the checkout; restore tests/data/coco-mini from git")
    return path


@pytest.fixture(scope="module")
def coco_images(coco_mini: Path) -> list[tuple[int, Path]]:
    images = json.loads((coco_mini / "instances.json").read_text())["images"]
    return [(im["id"], coco_mini / "images" / im["file_name"]) for im in images]


def small_cfg(**kw) -> GridFeatureConfig:
    base = dict(backbone="resnet18", pretrained=False, image_size=112, batch_size=8,
                num_workers=0, device="cpu", seed=7, progress=False)
    return GridFeatureConfig(**{**base, **kw})


def reference_grid(path: Path, size: int, seed: int) -> np.ndarray:
    """Independent re-derivation: PIL resize, ImageNet normalisation, resnet18 minus avgpool/fc,
    7 x 7 adaptive average pooling, cells in row-major order."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None).eval()
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.tensor(np.asarray(img), dtype=torch.float64).permute(2, 0, 1) / 255
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
    x = ((x - mean) / std).float()[None]
    with torch.no_grad():
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(net, name)(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (7, 7))[0]  # (C, 7, 7)
    return pooled.permute(1, 2, 0).reshape(49, -1).numpy()


def test_grid_store_on_coco_mini_matches_reference(tmp_path, coco_images):
    out = extract_grid_features(coco_images, tmp_path / "grid_resnet18.h5", small_cfg())
    store = load_store(out, "grid_features")
    assert store["features"].shape == (len(coco_images), 49, 512)
    assert store["features"].dtype == np.float16
    assert store["image_ids"].dtype == np.int64
    assert list(store["image_ids"]) == [i for i, _ in coco_images]
    attrs = store["attrs"]
    assert (attrs["backbone"], attrs["pretrained"], attrs["image_size"]) == ("resnet18", False, 112)
    assert attrs["skipped_images"] == []
    for row in (0, 17):
        expected = reference_grid(coco_images[row][1], 112, seed=7)
        got = store["features"][row].astype(np.float32)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_grid_is_deterministic_and_worker_order_is_kept(tmp_path, coco_images):
    images = coco_images[:6]
    a = extract_grid_features(images, tmp_path / "a.h5", small_cfg(batch_size=2))
    b = extract_grid_features(images, tmp_path / "b.h5", small_cfg(batch_size=2, num_workers=2))
    c = extract_grid_features(images, tmp_path / "c.h5", small_cfg(batch_size=2, seed=8))
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert fa["features"][()].tobytes() == fb["features"][()].tobytes()
        assert (fa["image_ids"][()] == fb["image_ids"][()]).all()
        assert fa["features"][()].tobytes() != fc["features"][()].tobytes()


@pytest.fixture()
def with_bad_image(tmp_path, coco_images) -> tuple[list[tuple[int, Path]], Path]:
    bad = tmp_path / "broken_000000999999.jpg"
    good = Path(coco_images[1][1]).read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # a truncated JPEG, as a failed download leaves it
    return [coco_images[0], (999999, bad), coco_images[2]], bad


def test_bad_image_fails_naming_the_file(tmp_path, with_bad_image):
    images, bad = with_bad_image
    out = tmp_path / "grid.h5"
    with pytest.raises(BadImagesError) as err:
        extract_grid_features(images, out, small_cfg())
    assert bad.name in str(err.value) and "999999" in str(err.value)
    assert "skip_bad_images" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("grid.h5.tmp-*"))


def test_skip_mode_lists_bad_image(tmp_path, with_bad_image):
    images, bad = with_bad_image
    out = extract_grid_features(images, tmp_path / "grid.h5", small_cfg(skip_bad_images=True))
    store = load_store(out)
    assert list(store["image_ids"]) == [images[0][0], images[2][0]]
    assert store["features"].shape == (2, 49, 512)
    skipped = store["attrs"]["skipped_images"]
    assert [s["image_id"] for s in skipped] == [999999]
    assert skipped[0]["file"] == str(bad)


def test_pretrained_weights_from_local_path_and_clear_error(tmp_path, coco_images, monkeypatch):
    torch.manual_seed(3)
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    a = extract_grid_features(coco_images[:2], tmp_path / "a.h5",
                              small_cfg(pretrained=True, weights_path=str(weights)))
    b = extract_grid_features(coco_images[:2], tmp_path / "b.h5", small_cfg(seed=3))
    assert load_store(a)["features"].tobytes() == load_store(b)["features"].tobytes()

    with pytest.raises(WeightsUnavailableError, match="features.grid.weights_path"):
        extract_grid_features(coco_images[:1], tmp_path / "c.h5",
                              small_cfg(pretrained=True, weights_path=str(tmp_path / "no.pth")))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(backbone_module.torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                        "get_state_dict", offline, raising=False)
    with pytest.raises(WeightsUnavailableError, match="features.grid.weights_path") as err:
        extract_grid_features(coco_images[:1], tmp_path / "d.h5", small_cfg(pretrained=True))
    assert "pretrained" in str(err.value) and "no network" in str(err.value)


def test_demo_world_through_karpathy_layout(tmp_path):
    demo = pytest.importorskip("mia.data.demo", reason="mia.data.demo not written yet")
    demo.generate_demo_world(tmp_path / "demo", demo.DemoConfig(num_images=8, image_size=64))
    karpathy = tmp_path / "demo" / "karpathy" / "dataset_coco.json"
    listed = images_from_karpathy(karpathy, tmp_path / "demo")
    expected = [(im["cocoid"], tmp_path / "demo" / "images" / im["filepath"] / im["filename"])
                for im in json.loads(karpathy.read_text())["images"]]
    assert listed == expected and all(p.exists() for _, p in listed)
    out = extract_grid_features_from_karpathy(karpathy, tmp_path / "demo", tmp_path / "g.h5",
                                              small_cfg(image_size=64))
    store = load_store(out)
    assert store["features"].shape == (8, 49, 512)
    assert list(store["image_ids"]) == [i for i, _ in expected]
    assert np.isfinite(store["features"].astype(np.float32)).all()


def test_images_from_karpathy_coco_layout(tmp_path, coco_images):
    (tmp_path / "images" / "val2014").mkdir(parents=True)
    entries = []
    for image_id, path in coco_images[:3]:
        shutil.copy(path, tmp_path / "images" / "val2014" / Path(path).name)
        entries.append({"cocoid": image_id, "filepath": "val2014", "filename": Path(path).name,
                        "split": "val", "sentences": [{"tokens": ["a"], "raw": "A", "sentid": 0}]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    listed = images_from_karpathy(tmp_path / "dataset_coco.json", tmp_path)
    assert listed == [(i, tmp_path / "images" / "val2014" / Path(p).name)
                      for i, p in coco_images[:3]]


@pytest.mark.gpu
def test_cuda_bf16_channels_last_close_to_cpu(tmp_path, coco_images):
    cpu = load_store(extract_grid_features(coco_images[:4], tmp_path / "cpu.h5", small_cfg()))
    gpu = load_store(extract_grid_features(coco_images[:4], tmp_path / "gpu.h5",
                                           small_cfg(device="cuda")))
    a, b = cpu["features"].astype(np.float32), gpu["features"].astype(np.float32)
    assert a.shape == b.shape
    rel = np.abs(a - b).mean() / np.abs(a).mean()
    assert rel < 0.05, f"bf16 features differ from fp32 by {rel:.3%} on average"
