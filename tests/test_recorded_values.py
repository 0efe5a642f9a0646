"""What is recorded, pinned: the tests that would have caught seven single-line bugs that slipped
through (issue 20). The algorithms had tests; what they record (history fields, multi-seed
estimates, ties) and parameters left at their defaults did not. Each test below failed with its
bug planted:

1. the sampling temperature applied as a product (``logp * temperature``);
2. the VQA training soft score counted per batch instead of per question;
3. ``>=`` instead of ``>`` in best-epoch selection (a tie replaced the XE weights in SCST);
4. the input stamp without the modification time;
5. the report's gain estimate from the first seed only;
6. the val soft score without its x100;
7. the epoch's train loss divided by all steps when one was skipped as non-finite.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_run_publishing import ScriptedTask, scripted_fit
from vqa_fixtures import FEATURE_DIM, build_vqa_world

import mia.vqa.train as vqa_train
from mia.captioning.sampling import multinomial_chooser
from mia.data.loaders import VQAData
from mia.report.stats import bootstrap_gain
from mia.training import LoopSettings, fingerprint, fit, load_checkpoint
from mia.vqa.config import VQAModelConfig
from mia.vqa.models import build_vqa_model
from mia.vqa.train import VQATrainConfig, train_vqa

pytestmark = pytest.mark.usefixtures("one_thread")  # the same float sums in the same order


# ---------------------------------------------------------------- 1. sampling temperature


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_samples_follow_softmax_of_logp_over_temperature(temperature: float) -> None:
    """The reference's sample_next_word: softmax(logp / T). At T = 1 (every other test) a
    product and a division agree; at 0.5 and 2 they do not."""
    logp = torch.log_softmax(torch.tensor([2.0, 0.5, 0.0, -1.0]), dim=0)
    n = 40_000
    generator = torch.Generator().manual_seed(0)
    draws = multinomial_chooser(temperature, generator)(logp.expand(n, -1))
    freq = torch.bincount(draws, minlength=4).double() / n
    expected = torch.softmax(logp.double() / temperature, dim=0)
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    product = torch.softmax(logp.double() * temperature, dim=0)
    assert (freq - product).abs().max() > 0.05  # the planted bug is far outside the tolerance


# ---------------------------------------------------------------- VQA: 2. train and 6. val scores


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_vqa_world(tmp_path_factory.mktemp("vqa_world"))


def _tiny(**train) -> VQATrainConfig:
    model = {"baseline": "updown", "variant": "base", "feature_dim": FEATURE_DIM, "hidden": 16,
             "embed_dim": 8}
    return VQATrainConfig.from_dict({"model": model, "epochs": 1, "batch_size": 7, "lr": 2e-2,
                                     "seed": 3, "val_batch_size": 5, "log_every": 0,
                                     "progress": False, "device": "cpu", **train})


def test_vqa_scores_in_history_are_per_question_percentages(world, tmp_path, monkeypatch
                                                            ) -> None:
    """train_soft_score: 100 x the mean soft score of the argmax answers over every training
    QUESTION of the epoch (batches of 7, the last one shorter); val_soft_score: the same over
    val, recomputed here from best.pt's weights, on the scale of val_accuracy (percent)."""
    data = VQAData.from_stores(world.vqa, world.regions, concepts_h5=world.concepts)
    n_train = len(data.split_rows(["train"]))
    assert n_train % 7, "the test needs a short last batch"
    seen: list[torch.Tensor] = []
    real = vqa_train.soft_accuracy

    def spy(logits, target):
        score = real(logits, target)
        seen.append(score.detach().clone())
        return score

    monkeypatch.setattr(vqa_train, "soft_accuracy", spy)
    result = train_vqa(_tiny(), data, tmp_path, val_questions=world.questions["val"],
                       val_annotations=world.annotations["val"])
    row = result.history[0]
    scores = torch.cat(seen)
    assert len(scores) == n_train
    assert row["train_soft_score"] == pytest.approx(100.0 * float(scores.double().mean()),
                                                    rel=1e-6)

    # Val, from scratch: best.pt's model on every val question, soft target of its argmax.
    ck = load_checkpoint(tmp_path / "best.pt")
    model = build_vqa_model(VQAModelConfig.from_dict(ck["vqa_model"]), len(data.question_vocab),
                            data.n_answers)
    model.load_state_dict(ck["model"])
    model.eval()
    soft = []
    with torch.no_grad():
        for batch in data.eval_batches("val", 11):
            best = model(batch).argmax(dim=1, keepdim=True)
            soft.append(batch["target"].gather(1, best).squeeze(1))
    expected = 100.0 * float(torch.cat(soft).double().mean())
    assert row["val_soft_score"] == pytest.approx(expected, rel=1e-6)
    assert 0.0 <= row["val_soft_score"] <= 100.0 and expected > 1.0  # percent, like accuracy


# ---------------------------------------------------------------- 3. ties in selection


def test_a_tie_keeps_the_earlier_epoch_and_the_starting_weights(tmp_path: Path) -> None:
    """SCST's XE starting point (epoch 0) scores 5; an epoch that only ties it must not replace
    the XE weights; among trained epochs a tie keeps the earlier one."""
    result = scripted_fit(tmp_path / "scst", [5.0, 4.0, 5.0], start=5.0)
    assert (result.best_epoch, result.best_score) == (0, 5.0)
    assert load_checkpoint(tmp_path / "scst" / "best.pt")["epoch"] == 0
    result = scripted_fit(tmp_path / "xe", [3.0, 3.0, 2.0])
    assert result.best_epoch == 1 and load_checkpoint(tmp_path / "xe" / "best.pt")["epoch"] == 1


# ---------------------------------------------------------------- 4. the input stamp


def test_a_rebuilt_large_input_of_the_same_size_changes_the_fingerprint(tmp_path: Path) -> None:
    """Inputs too large to hash (the feature stores) are stamped by size and mtime: a store
    rebuilt with the same size must still be noticed, by its new modification time."""
    store = tmp_path / "features.h5"
    store.write_bytes(b"a" * 64)
    before = fingerprint({}, {"features": store}, digest_max_bytes=0)
    store.write_bytes(b"b" * 64)
    st = store.stat()
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = fingerprint({}, {"features": store}, digest_max_bytes=0)
    assert before["inputs"]["features"]["size"] == after["inputs"]["features"]["size"]
    assert before["inputs"] != after["inputs"]


# ---------------------------------------------------------------- 5. multi-seed gain estimate


def test_gain_estimate_is_the_mean_over_every_seed_and_item() -> None:
    """Three seeds per run whose means differ: the estimate (and the sentence the report
    prints) is mean(MIA) - mean(base) over all seeds and items, not the first seed's gain."""
    rng = np.random.default_rng(0)
    base = 50 + rng.normal(0, 1, (3, 200)) + np.array([[0.0], [2.0], [1.0]])
    mia = 52 + rng.normal(0, 1, (3, 200)) + np.array([[0.0], [3.0], [6.0]])
    interval = bootstrap_gain(base, mia, n_resamples=200, seed=0)
    assert interval.estimate == pytest.approx(mia.mean() - base.mean(), abs=1e-12)
    first_seed = mia[0].mean() - base[0].mean()
    assert abs(interval.estimate - first_seed) > 0.5
    assert interval.sentence("CIDEr", digits=2).startswith(f"MIA {mia.mean() - base.mean():+.2f}")
    assert (interval.n_base_seeds, interval.n_mia_seeds) == (3, 3)


# ---------------------------------------------------------------- 7. train loss with a skipped step


def test_train_loss_averages_the_steps_that_were_applied(tmp_path: Path) -> None:
    """Step losses 1, NaN (skipped), 2: the epoch's train loss is 1.5, over the 2 applied
    steps; the skipped one is counted in nonfinite_steps."""
    task = ScriptedTask([1.0], losses=[1.0, math.nan, 2.0])
    settings = LoopSettings(epochs=1, checkpoint_every=0, log_every=0, progress=False,
                            max_nonfinite_steps=3)
    row = fit(task, settings, tmp_path).history[0]
    assert (row["steps"], row["nonfinite_steps"]) == (3, 1)
    assert row["train_loss"] == pytest.approx(1.5, rel=1e-6)
    assert json.loads((tmp_path / "history.json").read_text())[0]["train_loss"] == \
        row["train_loss"]
