"""The weight loader on checkpoint files in the public formats (names and shapes of the public
weights, random values, a small architecture): unc-nlp/frcnn-vg-finetuned's torch.save state dict
and py-bottom-up-attention's detectron2 pickle. Nothing in a file may run code; whatever is
missing, misshapen or left over is named.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from mia.features.bottom_up.config import FasterRCNNConfig
from mia.features.bottom_up.model import BottomUpFasterRCNN
from mia.features.bottom_up.weights import (
    ANCHORS_KEY,
    WeightsError,
    build_model,
    load_weights,
    random_state_dict,
    read_weights,
    save_detectron2_checkpoint,
    save_hub_checkpoint,
)

TINY = FasterRCNNConfig(blocks=(1, 1, 1), stem_channels=4, res2_channels=8,
                        bottleneck_channels=4, rpn_channels=8, num_classes=5, num_attributes=3)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(TINY, seed=3)


def test_both_public_formats_load_the_same_values(tmp_path, state):
    hub = save_hub_checkpoint(state, tmp_path / "pytorch_model.bin")
    d2 = save_detectron2_checkpoint(state, tmp_path / "faster_rcnn_from_caffe_attr.pkl")
    from_hub = build_model(TINY, hub)
    from_d2 = build_model(TINY, d2, dtype=torch.float64)
    for name, value in from_hub.state_dict().items():
        assert torch.equal(value, state[name]), name
        assert torch.equal(from_d2.state_dict()[name], state[name].double()), name
    # the file holds BatchNorm's batch counters and the anchors, as the public one does
    assert any(k.endswith("num_batches_tracked") for k in read_weights(hub))
    assert ANCHORS_KEY in read_weights(hub)


def test_random_checkpoints_are_the_same_everywhere(state):
    again = random_state_dict(TINY, seed=3)
    assert all(torch.equal(again[k], v) for k, v in state.items())
    # numpy's PCG64 stream: the first stem weight of seed 3 (pins the recorded reference fixture)
    first = float(state["backbone.stem.conv1.weight"].flatten()[0])
    expected = np.random.default_rng(3).normal(0.0, np.sqrt(2.0) / np.sqrt(3 * 7 * 7))
    assert first == pytest.approx(float(np.float32(expected)))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, state, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays = {k: v.numpy() for k, v in state.items()}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": _Payload()}, protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to load posix\.system|refusing to load "
                                           r"os\.system|refusing to load nt\.system"):
        read_weights(path)
    assert not (tmp_path / "pwned").exists()
    torch.save({"model": _Payload()}, tmp_path / "evil.bin")  # torch.load(weights_only) too
    with pytest.raises(WeightsError, match="re-download"):
        read_weights(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()


def test_missing_misshapen_and_unexpected_tensors_are_named(tmp_path, state):
    broken = dict(state)
    del broken["roi_heads.res5.2.conv3.norm.running_var"]
    broken["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(7, 64)
    broken["roi_heads.box_predictor.extra.weight"] = torch.zeros(2)
    path = save_hub_checkpoint(broken, tmp_path / "broken.bin")
    with pytest.raises(WeightsError) as err:
        build_model(TINY, path)
    message = str(err.value)
    assert "missing 1 tensor(s): roi_heads.res5.2.conv3.norm.running_var" in message
    assert "roi_heads.box_predictor.cls_score.weight (7, 64) (model: (6, 64))" in message
    assert "unexpected tensor(s): roi_heads.box_predictor.extra.weight" in message
    assert str(path) in message


def test_a_checkpoint_of_the_public_model_does_not_fit_a_smaller_config(tmp_path, state):
    bigger = FasterRCNNConfig(**{**TINY.__dict__, "blocks": (1, 1, 2)})
    path = save_hub_checkpoint(state, tmp_path / "small.bin")
    with pytest.raises(WeightsError, match=r"missing \d+ tensor\(s\): backbone\.res4\.1\."):
        build_model(bigger, path)


def test_other_anchors_are_refused(tmp_path, state):
    moved = dict(state)
    moved[ANCHORS_KEY] = state[ANCHORS_KEY] * 2
    with pytest.raises(WeightsError, match="anchors differ"):
        build_model(TINY, save_hub_checkpoint(moved, tmp_path / "anchors.bin"))


def test_gamma_beta_names_and_counters_are_accepted(tmp_path, state):
    renamed = {}
    for name, value in state.items():
        if name.endswith("norm.weight"):
            name = name[: -len("weight")] + "gamma"
        elif name.endswith("norm.bias"):
            name = name[: -len("bias")] + "beta"
        renamed[name] = value
    renamed = {k: v for k, v in renamed.items() if not k.endswith("num_batches_tracked")}
    model = BottomUpFasterRCNN(TINY)
    load_weights(model, save_hub_checkpoint(renamed, tmp_path / "old_names.bin"))
    assert torch.equal(model.backbone.stem.conv1.norm.weight,
                       state["backbone.stem.conv1.norm.weight"])


def test_a_truncated_download_says_so(tmp_path, state):
    path = save_hub_checkpoint(state, tmp_path / "full.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="re-download"):
        read_weights(cut)
    with pytest.raises(WeightsError, match="no such weights file"):
        read_weights(tmp_path / "absent.bin")
    pkl = save_detectron2_checkpoint(state, tmp_path / "full.pkl")
    (tmp_path / "cut.pkl").write_bytes(pkl.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="detectron2 weights pickle"):
        read_weights(tmp_path / "cut.pkl")


def test_the_format_comes_from_the_name_or_the_config(tmp_path, state):
    odd = tmp_path / "weights.data"
    buffer = io.BytesIO()
    pickle.dump({"model": {k: v.numpy() for k, v in state.items()}}, buffer, protocol=2)
    odd.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="weights_format"):
        read_weights(odd)
    assert set(read_weights(odd, "detectron2")) >= set(BottomUpFasterRCNN(TINY).state_dict())
