"""CNN fine-tuning of the grid captioners (released Train.py): ResNet children()[5:] (layer2-4)
train with Adam lr 1e-5 after ``fine_tune_cnn_after_epoch``; stem and layer1 never change.

Tiny images (80 x 60 PNGs), resnet18 with random weights, resized to 40 x 40 and cropped to
32 x 32 (one grid cell: 32 / 32): enough to see which parameters a step moves, in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_captioning_model import tiny_batch

from mia.captioning.beam import PAD
from mia.captioning.config import CaptionerConfig, CNNConfig
from mia.captioning.decode import caption_split
from mia.captioning.finetune import (
    CNN_GROUP,
    CaptionImages,
    GridCNN,
    cnn_epoch_start,
    grid_cells,
    load_imagenet_weights,
    parameter_groups,
    set_captioner_lr,
    with_images,
)
from mia.captioning.models import build_captioner

VOCAB = 12
CNN = {"backbone": "resnet18", "pretrained": False, "resize": 40, "crop": 32, "workers": 0}


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions: one thread is faster than two fighting over a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> dict[int, str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for image_id in range(100, 106):
        path = root / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
        paths[image_id] = str(path)
    return paths


def _cfg(after: int | None = 1, **cnn) -> CaptionerConfig:
    return CaptionerConfig(baseline="visual_attention", variant="mia", feature_dim=512,
                           d_model=16, embed_dim=16, attention_dim=16, dropout=0.1,
                           mia_heads=2, mia_d_ff=32, fine_tune_cnn_after_epoch=after,
                           cnn={**CNN, **cnn})


def _batches(n: int = 2, b: int = 3) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        batch = tiny_batch(b=b, n=4, k=5, seed=i)
        batch["image_ids"] = torch.tensor([100 + (i + j) % 6 for j in range(b)])
        del batch["features"], batch["feature_mask"]  # a fine-tuning run reads images instead
        out.append(batch)
    return out


def _step(model, optimizer, batch) -> None:
    logits = model(batch)
    loss = F.cross_entropy(logits.transpose(1, 2), batch["captions"][:, 1:], ignore_index=PAD)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def test_frozen_precomputed_features_stay_the_default():
    torch.manual_seed(0)
    model = build_captioner(CaptionerConfig(baseline="visual_attention", feature_dim=8,
                                            d_model=16, embed_dim=16, mia_heads=2), VOCAB)
    assert model.cnn is None and not model.cfg.fine_tunes_cnn
    groups = parameter_groups(model, 5e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 5e-4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert cnn_epoch_start(model, 20) is False
    model(tiny_batch())  # reads precomputed "features"


def test_grid_cnn_is_the_trunk_children_5_on(image_paths):
    """children()[:5] = conv1 bn1 relu maxpool layer1 (frozen); [5:] = layer2 layer3 layer4."""
    cnn = GridCNN(_cfg().cnn_config())
    assert len(cnn.frozen) == 5 and len(cnn.tuned) == 3
    assert [type(m).__name__ for m in cnn.frozen] == ["Conv2d", "BatchNorm2d", "ReLU",
                                                      "MaxPool2d", "Sequential"]
    assert grid_cells(_cfg().cnn_config()) == 1 and grid_cells(_cfg(crop=224, resize=256)
                                                                .cnn_config()) == 49
    images = torch.randn(2, 3, 64, 64)
    feats = cnn(images)
    assert feats.shape == (2, 4, 512)
    fmap = cnn.tuned(cnn.frozen(images))  # (2, 512, 2, 2): row-major cells
    torch.testing.assert_close(feats[:, 1], fmap[:, :, 0, 1])
    assert not any(p.requires_grad for p in cnn.parameters())


def test_one_image_through_training_batchnorm_names_the_keys_to_change():
    """A last batch of one 32-pixel image leaves one value per channel at layer4: torch's own
    error names no key; ours names crop, batchnorm and batch_size (the paper-path miniature
    hit it at the end of an epoch)."""
    cnn = GridCNN(_cfg(batchnorm="train").cnn_config()).train()
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 1, 512)  # two images: statistics exist
    with pytest.raises(ValueError, match=r"captioner\.cnn\.crop >= 64.*batchnorm: eval"):
        cnn(torch.randn(1, 3, 32, 32))
    assert cnn(torch.randn(1, 3, 64, 64)).shape == (1, 4, 512)  # 2 x 2 cells: fine
    assert GridCNN(_cfg(batchnorm="eval").cnn_config()).train()(
        torch.randn(1, 3, 32, 32)).shape == (1, 1, 512)


def test_cnn_trains_layers_2_to_4_only_after_the_epoch(image_paths):
    torch.manual_seed(0)
    model = build_captioner(_cfg(after=1, batchnorm="eval"), VOCAB)
    assert model.cnn is not None
    groups = parameter_groups(model, 5e-4)
    cnn_group = next(g for g in groups if g["name"] == CNN_GROUP)
    assert cnn_group["lr"] == 1e-5 and tuple(cnn_group["betas"]) == (0.8, 0.999)
    tuned = {id(p) for p in model.cnn.tuned.parameters()}
    assert {id(p) for p in cnn_group["params"]} == tuned
    frozen_ids = {id(p) for p in model.cnn.frozen.parameters()}
    assert not frozen_ids & {id(p) for g in groups for p in g["params"]}
    optimizer = torch.optim.Adam(groups, betas=(0.8, 0.999))
    set_captioner_lr(optimizer, 2e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-4, 1e-5]
    images = CaptionImages(image_paths, model.cfg.cnn_config(), train=True)

    # Epoch 1 (<= fine_tune_cnn_after_epoch): the whole CNN, BatchNorm statistics included, stays.
    assert cnn_epoch_start(model, 1) is False
    model.train()
    cnn_before, decoder_before = _snapshot(model.cnn), _snapshot(model.decoder)
    for batch in with_images(iter(_batches()), images, workers=0, seed=1, epoch=1):
        _step(model, optimizer, batch)
    assert _changed(cnn_before, model.cnn) == set()
    assert _changed(decoder_before, model.decoder)

    # Epoch 2: layer2-4 (children 5..7) change; conv1/bn1/layer1, parameters and buffers, do not.
    assert cnn_epoch_start(model, 2) is True
    model.train()
    assert model.cnn.tuned.training and not model.cnn.frozen.training
    before = _snapshot(model.cnn)
    for batch in with_images(iter(_batches()), images, workers=0, seed=1, epoch=2):
        _step(model, optimizer, batch)
    changed = _changed(before, model.cnn)
    assert not any(k.startswith("frozen.") for k in changed), sorted(changed)
    for child in ("tuned.0.", "tuned.1.", "tuned.2."):  # layer2, layer3, layer4
        assert any(k.startswith(child) and k.endswith("conv1.weight") for k in changed), child
    assert optimizer.param_groups[1]["lr"] == 1e-5


def test_released_batchnorm_trains_in_every_layer_from_epoch_1(image_paths):
    """``cnn.batchnorm: train`` (Train.py's ``Model.train()``): from epoch 1, before any CNN
    weight trains, every BatchNorm of the ResNet (conv1's and layer1's too) normalises with batch
    statistics and updates its running ones; no weight moves until fine-tuning starts; eval
    mode uses the running statistics again."""
    assert CNNConfig().batchnorm == "train"  # the released default of the CNN's config
    torch.manual_seed(0)
    model = build_captioner(_cfg(after=1, batchnorm="train"), VOCAB)
    optimizer = torch.optim.Adam(parameter_groups(model, 5e-4), betas=(0.8, 0.999))
    images = CaptionImages(image_paths, model.cfg.cnn_config(), train=True)
    assert cnn_epoch_start(model, 1) is False
    model.train()
    assert all(m.training for m in model.cnn.modules())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        batch_stats = model.cnn(pixels)
    before = _snapshot(model.cnn)
    for batch in with_images(iter(_batches()), images, workers=0, seed=1, epoch=1):
        _step(model, optimizer, batch)
    changed = _changed(before, model.cnn)
    assert any(k.startswith("frozen.1.running_") for k in changed)  # bn1, never trained
    assert any(k.startswith("tuned.") and "running_" in k for k in changed)
    assert all("running_" in k or k.endswith("num_batches_tracked") for k in changed), changed
    model.eval()
    assert not any(m.training for m in model.cnn.modules())
    with torch.no_grad():
        assert not torch.allclose(model.cnn(pixels), batch_stats, atol=1e-3)
    # The alternative keeps the untrained layers' statistics fixed: nothing changes in epoch 1.
    torch.manual_seed(0)
    kept = build_captioner(_cfg(after=1, batchnorm="eval"), VOCAB)
    cnn_epoch_start(kept, 1)
    kept.train()
    assert not any(m.training for m in kept.cnn.modules() if m is not kept.cnn)
    with pytest.raises(ValueError, match="batchnorm"):
        CNNConfig(batchnorm="frozen")


def test_checkpoint_round_trip_keeps_the_cnn():
    torch.manual_seed(0)
    model = build_captioner(_cfg(), VOCAB)
    state = model.state_dict()
    assert any(k.startswith("cnn.tuned.") for k in state)
    torch.manual_seed(1)
    again = build_captioner(_cfg(), VOCAB)
    again.load_state_dict(state)  # strict: same architecture from the config alone


def test_images_are_required_and_decoded_deterministically(image_paths):
    torch.manual_seed(0)
    model = build_captioner(_cfg(), VOCAB).eval()
    with pytest.raises(ValueError, match="with_images"):
        model(tiny_batch())  # precomputed features cannot feed a fine-tuned CNN
    cfg = model.cfg.cnn_config()
    train = CaptionImages(image_paths, cfg, train=True)

    def pixels(epoch: int, start: int = 0) -> list[torch.Tensor]:
        batches = _batches(3)[start:]
        return [b["images"] for b in with_images(iter(batches), train, 0, seed=5, epoch=epoch,
                                                 start=start)]

    first = pixels(1)
    assert first[0].shape == (3, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, pixels(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, pixels(2), strict=True))
    resumed = pixels(1, start=1)  # a resumed epoch sees the pixels of the uninterrupted one
    assert all(torch.equal(a, b) for a, b in zip(first[1:], resumed, strict=True))
    # Worker processes decode the same pixels as the main process.
    workers = [b["images"] for b in with_images(iter(_batches(3)), train, 2, seed=5, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, workers, strict=True))


def test_train_and_eval_transforms(image_paths):
    """Training: a random 32 px window of the 40 x 40 resize, mirrored half the time (the
    released RandomCrop(224) + RandomHorizontalFlip of the 256 x 256 copies); evaluation: the
    original resized to 32 x 32, nothing random (Test.py)."""
    from mia.features.images import to_normalised_tensor

    image_id, path = next(iter(image_paths.items()))
    with Image.open(path) as img:
        full = to_normalised_tensor(img.convert("RGB").resize((40, 40), Image.BILINEAR))
        direct = to_normalised_tensor(img.convert("RGB").resize((32, 32), Image.BILINEAR))
    windows = [full[:, t:t + 32, le:le + 32] for t in range(9) for le in range(9)]
    images = CaptionImages(image_paths, _cfg(flip=True).cnn_config(), train=True)
    kinds = []
    for seed in range(24):
        crop = images[(image_id, seed)]
        plain = sum(torch.equal(crop, w) for w in windows)
        mirrored = sum(torch.equal(crop, w.flip(-1)) for w in windows)
        assert plain + mirrored == 1, seed
        kinds.append(mirrored)
    assert 0 < sum(kinds) < len(kinds)  # both kinds occur
    no_flip = CaptionImages(image_paths, _cfg(flip=False).cnn_config(), train=True)
    assert all(any(torch.equal(no_flip[(image_id, s)], w) for w in windows) for s in range(8))
    evaluated = CaptionImages(image_paths, _cfg().cnn_config(), train=False)[(image_id, 0)]
    assert torch.equal(evaluated, direct)


def test_decoding_a_fine_tuned_model_reads_images(image_paths):
    torch.manual_seed(0)
    model = build_captioner(_cfg(), VOCAB)

    class Data:
        vocab = [f"w{i}" for i in range(VOCAB)]

        def eval_batches(self, split, batch_size):
            for batch in _batches(2):
                yield {k: batch[k] for k in ("image_ids", "concepts", "concept_mask")}

    with pytest.raises(ValueError, match="images="):
        caption_split(model, Data(), "val", 2, 5)
    images = CaptionImages(image_paths, model.cfg.cnn_config(), train=False)
    captions = caption_split(model, Data(), "val", 2, 5, images=images)
    assert sorted(captions) == [100, 101, 102, 103]


def test_imagenet_weights_load_into_the_cnn(tmp_path):
    from mia.vision import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_captioner(_cfg(pretrained=True, weights_path=str(path)), VOCAB)
    load_imagenet_weights(model)
    torch.testing.assert_close(model.cnn.frozen[0].weight, reference.conv1.weight)
    torch.testing.assert_close(model.cnn.tuned[2][1].conv2.weight, reference.layer4[1].conv2.weight)
    # Random-weight configs load nothing (and need no file).
    plain = build_captioner(_cfg(), VOCAB)
    before = _snapshot(plain.cnn)
    load_imagenet_weights(plain)
    assert _changed(before, plain.cnn) == set()


# ----------------------------------------------------------------------------- the image store

def _stores(image_paths, tmp_path, cfg):
    from mia.captioning.image_store import ImageStore, build_image_store

    items = sorted(image_paths.items())
    train = build_image_store(items, tmp_path / "images_train_40px.h5", cfg.resize)
    evaluation = build_image_store(items, tmp_path / "images_eval_32px.h5", cfg.crop,
                                   purpose="eval")
    return ImageStore(train), ImageStore(evaluation)


def test_store_crops_equal_the_per_item_jpeg_path_bit_for_bit(image_paths, tmp_path):
    """Decoded once into uint8, cropped and flipped by one gather, normalised in float32: the
    same pixels as decoding each item (same windows: same seeds, resumed epochs included)."""
    from mia.captioning.finetune import device_crops, with_store_images

    cfg = _cfg().cnn_config()
    train_store, eval_store = _stores(image_paths, tmp_path, cfg)
    per_item = CaptionImages(image_paths, cfg, train=True)
    for start in (0, 1):
        batches = _batches(3)[start:]
        old = [b["images"] for b in with_images(iter(batches), per_item, 0, seed=5, epoch=2,
                                                start=start)]
        new = [device_crops(b["images"], b["crop_windows"], cfg.crop)
               for b in with_store_images(iter(batches), train_store, cfg, True, seed=5,
                                          epoch=2, start=start)]
        assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
    flips = [int(w[2]) for b in with_store_images(iter(_batches(3)), train_store, cfg, True, 5, 2)
             for w in b["crop_windows"]]
    assert 0 < sum(flips) < len(flips)  # both mirrored and plain windows were compared
    plain = CaptionImages(image_paths, cfg, train=False)
    for b in with_store_images(iter(_batches(2)), eval_store, cfg, False):
        expected = torch.stack([plain[(int(i), 0)] for i in b["image_ids"]])
        assert "crop_windows" not in b
        assert torch.equal(device_crops(b["images"], None, cfg.crop), expected)
    with pytest.raises(ValueError, match="captioner.cnn.resize is 48"):
        next(with_store_images(iter(_batches(1)), train_store, _cfg(resize=48).cnn_config(),
                               True))


def test_store_refuses_missing_images_by_id(image_paths, tmp_path):
    from mia.data.store import StoreError

    cfg = _cfg().cnn_config()
    train_store, _ = _stores({k: v for k, v in image_paths.items() if k != 103}, tmp_path, cfg)
    from mia.captioning.finetune import with_store_images

    with pytest.raises(StoreError, match="image id 103"):
        list(with_store_images(iter(_batches(2)), train_store, cfg, True))


def test_a_batch_by_image_runs_the_cnn_once_per_image(image_paths, tmp_path):
    """16 images x 5 captions = 80 rows cost 16 CNN passes, not 80; every caption of an image
    gets that image's features (one crop per image and step)."""
    from mia.captioning.finetune import with_store_images

    torch.manual_seed(0)
    model = build_captioner(_cfg(after=0), VOCAB).train()
    cnn_config = model.cfg.cnn_config()
    train_store, _ = _stores(image_paths, tmp_path, cnn_config)
    seen = []
    model.cnn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    batch = tiny_batch(b=10, n=4, k=5, seed=0)
    del batch["features"], batch["feature_mask"]
    batch["caption_image"] = torch.arange(10) // 5  # captions 0-4: image 0, 5-9: image 1
    batch["batch_image_ids"] = torch.tensor([101, 104])
    batch["image_ids"] = torch.tensor([101] * 5 + [104] * 5)
    batch = next(with_store_images(iter([batch]), train_store, cnn_config, True, seed=1))
    assert batch["images"].shape[0] == 2 and batch["crop_windows"].shape == (2, 3)
    encoded = model.cnn.featurize(batch)
    assert seen == [2]  # two images through the CNN for ten caption rows
    assert torch.equal(encoded["features"][0], encoded["features"][4])
    assert torch.equal(encoded["features"][5], encoded["features"][9])
    assert not torch.equal(encoded["features"][0], encoded["features"][5])
    logits = model(batch)
    assert logits.shape[0] == 10


def test_training_with_image_stores_by_image(tmp_path):
    """The workflow's path end to end on the toy world: image stores, batches by image, the
    CNN trained from epoch 2 on, resumed exactly."""
    import sys
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from test_captioning_train import ToyCaptionData, toy_config

    from mia.captioning.image_store import build_image_store
    from mia.captioning.train import train_captioner
    from mia.training.checkpoint import load_checkpoint

    data = ToyCaptionData()
    rng = np.random.default_rng(0)
    items = []
    for image_id in data.image_ids.tolist():
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        items.append((image_id, str(path)))
    stores = (build_image_store(items, tmp_path / "train.h5", 40),
              build_image_store(items, tmp_path / "eval.h5", 32, purpose="eval"))
    captioner = {**toy_config().captioner.__dict__, "feature_dim": 512, "variant": "base",
                 "fine_tune_cnn_after_epoch": 1,
                 "cnn": {"backbone": "resnet18", "pretrained": False, "resize": 40, "crop": 32,
                         "workers": 0}}
    cfg = toy_config(captioner=captioner, epochs=2, batch_size=4, checkpoint_every=2)
    assert cfg.batches_by_image  # auto: by image when the CNN is fine-tuned
    result = train_captioner(cfg, data, tmp_path / "run", image_stores=stores)
    assert [row["steps"] for row in result.history] == [4, 4]  # 8 images, 2 a batch
    straight = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    one = train_captioner(toy_config(captioner=captioner, epochs=1, batch_size=4,
                                     checkpoint_every=2), data, tmp_path / "resumed",
                          image_stores=stores)
    assert len(one.history) == 1
    train_captioner(cfg, data, tmp_path / "resumed", image_stores=stores)  # resumes epoch 2
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
