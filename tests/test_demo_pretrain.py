"""The demo world's pre-training: labelled scenes disjoint from the world, the demo trunk, its
training through the region extractor's RoIAlign, and loading its checkpoint into the
extractors (weights_only, by name, errors that name the config key)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mia.data.demo import SCENES_FILE, DemoConfig, generate_demo_world
from mia.data.demo_pretrain import (
    LABEL_SPACE,
    PRETRAIN_IMAGE_IDS_FROM,
    PretrainScenesConfig,
    generate_pretrain_scenes,
    scenes_config_for,
)
from mia.data.demo_scene import COLORS
from mia.features.backbone import (
    DEMO_TRUNKS,
    WeightsUnavailableError,
    backbone_channels,
    build_resnet_trunk,
)
from mia.features.demo_pretrain import (
    PretrainConfig,
    cell_targets,
    load_pretrain_set,
    pretrain_demo_backbone,
)
from mia.features.regions import pool_boxes
from mia.features.roi_align import roi_mean, roi_mean_batch

SMALL = PretrainScenesConfig(num_images=240, image_size=64, seed=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    generate_pretrain_scenes(root, SMALL)
    return root


def test_scenes_are_labelled_deterministic_and_disjoint_from_the_world(scenes: Path,
                                                                       tmp_path: Path) -> None:
    labels = json.loads((scenes / "labels.json").read_text())
    assert labels["label_space"] == LABEL_SPACE and len(labels["images"]) == 240
    ids = [r["image_id"] for r in labels["images"]]
    assert min(ids) >= PRETRAIN_IMAGE_IDS_FROM == 1_000_000
    # The world's ids (< 600,000) and its server test set (< 1,000,000) never meet these.
    world = generate_demo_world(tmp_path / "world", DemoConfig(num_images=20, image_size=64))
    world_ids = {r["image_id"] for r in json.loads((world.root / SCENES_FILE).read_text())[
        "images"]}
    assert world_ids and max(world_ids) < 600_000 and not world_ids & set(ids)
    for rec in labels["images"]:
        assert "caption" not in json.dumps(rec) and rec["objects"]
        for obj in rec["objects"]:
            assert set(obj) == {"shape", "color", "size", "cell", "position", "bbox"}
    # Same config, same bytes; a larger set starts with the same scenes.
    again = generate_pretrain_scenes(tmp_path / "again", SMALL)
    assert again.read_bytes() == (scenes / "labels.json").read_bytes()
    bigger = generate_pretrain_scenes(tmp_path / "bigger", PretrainScenesConfig(
        num_images=250, image_size=64, seed=3))
    assert json.loads(bigger.read_text())["images"][:240] == labels["images"]


def test_labels_are_true_of_the_pixels(scenes: Path) -> None:
    """The pixel at each object's box centre (inside every shape of the world) has the colour
    its label names, up to JPEG noise."""
    labels = json.loads((scenes / "labels.json").read_text())
    for rec in labels["images"][:20]:
        pixels = np.asarray(Image.open(scenes / "images" / rec["file_name"]).convert("RGB"))
        assert pixels.shape == (64, 64, 3)
        for obj in rec["objects"]:
            x, y, w, h = obj["bbox"]
            got = pixels[int(y + h / 2), int(x + w / 2)].astype(int)
            assert np.abs(got - np.array(COLORS[obj["color"]])).max() < 40, (rec, obj, got)


def test_scene_settings_follow_the_world() -> None:
    world = DemoConfig(num_images=50, image_size=96, max_objects=3, jpeg_quality=80)
    cfg = scenes_config_for(world, {"num_images": 100})
    assert (cfg.image_size, cfg.max_objects, cfg.jpeg_quality, cfg.num_images) == (96, 3, 80, 100)


def test_cell_targets_by_hand() -> None:
    """A 64 px image, a 2 x 2 map (32 px cells). Box A (0..20, 0..20) lies in cell (0, 0) only;
    box B (24..44, 40..60) has 8/20 of its width in column 0 and 12/20 in column 1 (row 1):
    with threshold 0.25 it is in both bottom cells; with 0.5 only in (1, 1)."""
    boxes = torch.tensor([[0, 0, 20, 20], [24, 40, 44, 60.0]])
    labels = torch.tensor([[0, 2, 0, 0], [3, 6, 1, 8]])  # (shape, colour, size, position)
    image = torch.tensor([0, 0])
    out = cell_targets(boxes, image, labels, 1, (64, 64), (2, 2), 0.25)[0]
    assert out.shape == (12, 2, 2)
    on = {(int(c), int(i), int(j)) for c, i, j in out.nonzero()}
    assert on == {(0, 0, 0), (5 + 2, 0, 0), (3, 1, 0), (3, 1, 1), (5 + 6, 1, 0), (5 + 6, 1, 1)}
    half = cell_targets(boxes, image, labels, 1, (64, 64), (2, 2), 0.5)[0]
    assert {(int(c), int(i), int(j)) for c, i, j in half.nonzero()} == {
        (0, 0, 0), (7, 0, 0), (3, 1, 1), (11, 1, 1)}


def test_batched_box_pooling_equals_the_extractors_per_image_pooling() -> None:
    torch.manual_seed(0)
    fmap = torch.randn(3, 8, 4, 4)
    boxes = torch.tensor([[0, 0, 60, 50], [10, 20, 120, 128], [40, 40, 80, 90.0],
                          [0, 0, 128, 128]])
    index = torch.tensor([0, 2, 2, 1])
    batched = roi_mean_batch(fmap, boxes, index, 7, 1 / 32, 2)
    for i, b in enumerate(index):
        single = roi_mean(fmap[b:b + 1], boxes[i:i + 1], 7, 1 / 32, 2)
        torch.testing.assert_close(batched[i:i + 1], single)
        torch.testing.assert_close(pool_boxes(fmap[b:b + 1], boxes[i:i + 1], 7, 2), single)
    torch.testing.assert_close(pool_boxes(fmap, boxes, 7, 2, image_index=index), batched)


def test_demo_trunk_has_resnet_shape_and_stride_32() -> None:
    trunk, channels = build_resnet_trunk("demo_resnet", False, seed=1)
    assert channels == backbone_channels("demo_resnet") == DEMO_TRUNKS["demo_resnet"][0][-1]
    assert len(list(trunk.children())) == 8  # conv1 bn1 relu maxpool layer1..4
    assert trunk(torch.zeros(1, 3, 128, 96)).shape == (1, channels, 4, 3)
    again, _ = build_resnet_trunk("demo_resnet", False, seed=1)
    for a, b in zip(trunk.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def trained(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("backbone")
    cfg = PretrainConfig(epochs=6, batch_size=16, lr=3e-3, held_out_fraction=0.25, log_every=0)
    torch.set_num_threads(1)
    result = pretrain_demo_backbone(scenes, cfg, out / "backbone.pt", out / "metrics.json")
    return out, result.metrics


def test_pretraining_learns_colours_and_reports_held_out_accuracy(trained) -> None:
    """180 training scenes at 64 px (a 2 x 2 map), 6 epochs (seconds): on the 60 scenes it
    never saw, background and box position are near perfect and colour is far above the
    majority class; every accuracy comes with its chance. (The demo's 4,000 scenes at 128 px
    reach 98% on shape and colour.)"""
    out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["backbone"] == "demo_resnet" and saved["held_out_images"] == 60
    assert saved["train_images"] == 180
    for key in ("box_shape", "box_color", "box_size", "box_position", "box_object",
                "background", "cell_exact", "cell_occupied"):
        assert 0 <= saved[f"{key}_accuracy"] <= 1 and 0 <= saved[f"{key}_chance"] <= 1
    assert metrics["background_accuracy"] >= 0.9, metrics
    assert metrics["box_position_accuracy"] >= metrics["box_position_chance"] + 0.5, metrics
    assert metrics["box_color_accuracy"] >= 2 * metrics["box_color_chance"] + 0.05, metrics


def test_pretraining_is_deterministic(scenes: Path, trained, tmp_path: Path) -> None:
    out, _ = trained
    cfg = PretrainConfig(epochs=6, batch_size=16, lr=3e-3, held_out_fraction=0.25, log_every=0)
    pretrain_demo_backbone(scenes, cfg, tmp_path / "b.pt", tmp_path / "m.json")
    first = torch.load(out / "backbone.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_extractors_load_the_checkpoint_by_name(scenes: Path, trained) -> None:
    out, _ = trained
    checkpoint = torch.load(out / "backbone.pt", weights_only=True)
    trunk, _ = build_resnet_trunk("demo_resnet", True, seed=99, weights_path=str(
        out / "backbone.pt"))
    loaded = dict(trunk.state_dict())
    saved = checkpoint["state_dict"]
    assert len(loaded) == len(saved)
    for key, value in saved.items():  # Sequential indices 0..7 <- conv1, bn1, ..., layer4
        assert any(torch.equal(value, v) for v in loaded.values()), key
    random_trunk, _ = build_resnet_trunk("demo_resnet", False, seed=99)
    data = load_pretrain_set(scenes)
    from mia.features.demo_pretrain import normalise

    x = normalise(data.images[:2])
    with torch.no_grad():
        assert not torch.allclose(trunk(x), random_trunk(x))


def test_loading_errors_name_the_key(trained, tmp_path: Path) -> None:
    out, _ = trained
    with pytest.raises(WeightsUnavailableError, match=r"features\.grid\.weights_path.*does not "
                                                      r"exist.*pretrain_demo_backbone"):
        build_resnet_trunk("demo_resnet", True, 0, weights_path=str(tmp_path / "none.pt"))
    with pytest.raises(WeightsUnavailableError, match=r"features\.regions\.pretrained.*no "
                                                      r"published weights.*weights_path"):
        build_resnet_trunk("demo_resnet", True, 0, config_prefix="features.regions")
    with pytest.raises(WeightsUnavailableError, match=r"holds a 'demo_resnet' trunk but "
                                                      r"captioner\.cnn\.backbone is 'resnet18'"):
        build_resnet_trunk("resnet18", True, 0, weights_path=str(out / "backbone.pt"),
                           config_prefix="captioner.cnn")
    state = torch.load(out / "backbone.pt", weights_only=True)["state_dict"]
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    del state["layer4.0.bn2.bias"]
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(WeightsUnavailableError, match=r"does not fit features\.grid\.backbone "
                                                      r"demo_resnet.*layer4\.0\.bn2\.bias.*"
                                                      r"conv1\.weight \(8, 3, 3, 3\)"):
        build_resnet_trunk("demo_resnet", True, 0, weights_path=str(tmp_path / "wrong.pt"))
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(WeightsUnavailableError, match="not a torch state_dict file"):
        build_resnet_trunk("demo_resnet", True, 0, weights_path=str(tmp_path / "text.pt"))
    with pytest.raises(ValueError, match=r"features\.grid\.backbone: 'resnet9'"):
        build_resnet_trunk("resnet9", False, 0)
