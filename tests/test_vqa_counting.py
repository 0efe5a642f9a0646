"""The counting module against the reference (Cyanogenoid/vqa-counting vqa-v2/counting.py) and
against the counting paper's properties (Zhang et al., ICLR 2018).

Expected values below were produced by running the reference ``Counter`` (the copy in
jnhwkim/ban-vqa ``counting.py``, which differs from the original only in dropping ``Variable``)
in float64 on exactly these inputs and state dicts, in a scratch directory outside the project;
the reference code is not part of this repository.
"""

from __future__ import annotations

import pytest
import torch

from mia.vqa.counting import Counter, PiecewiseLinear

BOXES = [  # (B=2, m=6, 4) x1, y1, x2, y2, normalised
    [[0.0, 0.0, 0.3, 0.3], [0.05, 0.02, 0.33, 0.31], [0.5, 0.5, 0.9, 0.8],
     [0.6, 0.1, 0.95, 0.4], [0.1, 0.6, 0.3, 0.95], [0.52, 0.48, 0.88, 0.83]],
    [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0],
     [0.7, 0.7, 0.9, 0.9], [0.31, 0.29, 0.5, 0.52], [0.0, 0.0, 0.0, 0.0]],
]
LOGITS = [[2.0, 1.5, 0.7, -0.4, 3.1, 0.2], [-1.0, 2.5, 0.1, 1.7, 2.2, -3.0]]

# Reference outputs, (B, objects + 1), with the state dict of _reference_weights().
EXPECTED_TRAINED = {
    4: [[0.0, 0.0, 0.34376396271228465, 0.44242897598966574, 0.0],
        [0.0, 0.0, 0.6231547258626925, 0.15491788059466274, 0.0]],
    6: [[0.0, 0.0, 0.09533362550906384, 0.6476008050150419, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.6121510509281782, 0.1705899874393293, 0.0, 0.0, 0.0]],
}
# Reference outputs with the reference's own initialisation (every function the identity).
EXPECTED_INIT = {
    4: [[0.0, 0.0, 0.3873888406029586, 0.404936627835846, 0.0],
        [0.0, 0.0, 0.6229945847723508, 0.13920795938778327, 0.0]],
    6: [[0.0, 0.0, 0.11115024908689333, 0.6049736112920847, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.5966737846786738, 0.19962753325704144, 0.0, 0.0, 0.0]],
}
# Reference gradient of sum(output * [1..7]) w.r.t. the logits, objects = 6, trained weights.
EXPECTED_LOGIT_GRAD = [
    [0.3023568480288641, 0.08464167078368202, 0.4956400017055534, 0.026509983315056954,
     0.11673562609624269, 0.38215137933826315],
    [-0.020492995322144495, 0.10837059455836583, 0.14997053021882997, 0.15075806563168406,
     0.018146082182244814, 0.0037175536702804624],
]
# ... and the summed |gradient| of each function's weight (f[8:] are never used: no gradient).
EXPECTED_WEIGHT_GRAD = [1.106312544334, 0.065879697035, 2.18551942577, 1.078884355339,
                        0.065458467025, 0.975760025064, 0.235385001675, 2.330196381056]


def _reference_weights() -> dict[str, torch.Tensor]:
    """A reference-shaped state dict (16 functions x 17 values) with varied, non-trivial rises."""
    w = torch.tensor([[((7 * i + 3 * j) % 11 + 1) / 6.0 for j in range(17)] for i in range(16)],
                     dtype=torch.float64)
    w[:, 0] = 0
    w[2, 0] = 0.25  # a non-zero first rise
    w[5, 3] = -0.5  # abs() makes a negative value a rise too
    return {f"f.{i}.weight": w[i] for i in range(16)}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(BOXES, dtype=torch.float64).transpose(1, 2),
            torch.tensor(LOGITS, dtype=torch.float64))


def test_state_dict_has_the_reference_layout():
    keys = Counter(10).state_dict()
    assert list(keys) == [f"f.{i}.weight" for i in range(16)]
    assert all(v.shape == (17,) for v in keys.values())
    assert all(float(v[0]) == 0 and bool((v[1:] == 1).all()) for v in keys.values())


@pytest.mark.parametrize("objects", [4, 6])
def test_reference_state_dict_gives_reference_counts(objects):
    boxes, logits = _inputs()
    counter = Counter(objects).double()
    counter.load_state_dict(_reference_weights(), strict=True)
    out = counter(boxes, logits)
    torch.testing.assert_close(out, torch.tensor(EXPECTED_TRAINED[objects], dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("objects", [4, 6])
def test_initial_counter_equals_reference_initial_counter(objects):
    boxes, logits = _inputs()
    out = Counter(objects).double()(boxes, logits)
    torch.testing.assert_close(out, torch.tensor(EXPECTED_INIT[objects], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_gradients_equal_the_reference():
    boxes, logits = _inputs()
    counter = Counter(6).double()
    counter.load_state_dict(_reference_weights())
    logits.requires_grad_(True)
    (counter(boxes, logits) * torch.arange(1, 8, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor(EXPECTED_LOGIT_GRAD, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    grads = [f.weight.grad for f in counter.f]
    assert all(g is None for g in grads[8:])  # created for the state dict, never used ...
    assert [f.weight.requires_grad for f in counter.f] == [True] * 8 + [False] * 8  # ... frozen
    torch.testing.assert_close(torch.stack([g.abs().sum() for g in grads[:8]]),
                               torch.tensor(EXPECTED_WEIGHT_GRAD, dtype=torch.float64),
                               rtol=0, atol=1e-11)


# ------------------------------------------------------------------ the paper's properties


def _grid_boxes(m: int) -> torch.Tensor:
    """``m`` <= 36 disjoint boxes (4, m), one per cell of a 6x6 grid."""
    cells = torch.arange(m)
    x, y = (cells % 6).double() / 6, (cells // 6).double() / 6
    return torch.stack([x + 0.01, y + 0.01, x + 0.15, y + 0.15])


def _one_hot(k: int, objects: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(k), objects + 1).double()


@pytest.mark.parametrize("k", range(0, 11))
def test_separate_fully_attended_boxes_count_exactly(k):
    """Untrained (identity functions): k disjoint boxes of attention 1 among 36 -> one-hot at k."""
    m, objects = 36, 10
    attention = torch.zeros(1, m, dtype=torch.float64)
    attention[0, :k] = 1
    counter = Counter(objects, already_sigmoided=True).double()
    out = counter(_grid_boxes(m)[None], attention)
    torch.testing.assert_close(out[0], _one_hot(k, objects), rtol=0, atol=1e-9)
    # The same through the sigmoid of BAN's logits (+-30: sigmoid within 1e-13 of 1 and 0).
    logits = torch.where(attention > 0, 30.0, -30.0).double()
    torch.testing.assert_close(Counter(objects).double()(_grid_boxes(m)[None], logits)[0],
                               _one_hot(k, objects), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("k", "copies"), [(1, 1), (3, 1), (3, 2), (5, 4)])
def test_duplicate_boxes_do_not_add(k, copies):
    """k objects, the first one proposed ``1 + copies`` times (identical boxes): still k."""
    objects = 10
    distinct = _grid_boxes(k)
    boxes = torch.cat([distinct, distinct[:, :1].expand(4, copies)], dim=1)[None]
    attention = torch.ones(1, k + copies, dtype=torch.float64)
    out = Counter(objects, already_sigmoided=True).double()(boxes, attention)
    torch.testing.assert_close(out[0], _one_hot(k, objects), rtol=0, atol=1e-9)


def test_output_does_not_depend_on_box_order():
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(3, 2, 20, generator=gen, dtype=torch.float64) * 0.7
    boxes = torch.cat([corner, corner + 0.05 + 0.25 * torch.rand(3, 2, 20, generator=gen,
                                                                dtype=torch.float64)], dim=1)
    logits = torch.randn(3, 20, generator=gen, dtype=torch.float64) * 2
    counter = Counter(10).double()
    counter.load_state_dict(_reference_weights())
    out = counter(boxes, logits)
    assert out.sum(dim=1).gt(0).all()
    for _ in range(3):
        perm = torch.randperm(20, generator=gen)
        torch.testing.assert_close(counter(boxes[:, :, perm], logits[:, perm]), out,
                                   rtol=0, atol=1e-12)


def test_fewer_boxes_than_objects_are_counted():
    """The reference's topk needs m >= objects; ours builds the graph over all m boxes."""
    out = Counter(10, already_sigmoided=True).double()(
        _grid_boxes(3)[None], torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(out[0], _one_hot(3, 10), rtol=0, atol=1e-9)


def test_masked_boxes_with_minus_infinity_logits_count_as_absent():
    """BAN gives padded boxes logit -inf: they must not count, and gradients stay finite."""
    m = 12
    logits = torch.full((1, m), float("-inf"), dtype=torch.float64)
    logits[0, :4] = 30.0
    logits.requires_grad_(True)
    out = Counter(10).double()(_grid_boxes(m)[None], logits)
    torch.testing.assert_close(out[0].detach(), _one_hot(4, 10), rtol=0, atol=1e-9)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_piecewise_linear_is_monotone_from_zero_to_one():
    f = PiecewiseLinear(16).double()
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(f(x), x, rtol=0, atol=1e-12)  # identity at initialisation
    with torch.no_grad():
        f.weight.copy_(torch.rand(17, generator=torch.Generator().manual_seed(1)) - 0.3)
        f.weight[0] = 0
    y = f(x).detach()
    assert float(y[0]) == 0 and abs(float(y[-1]) - 1) < 1e-12
    assert (y[1:] - y[:-1]).ge(0).all()
    # Knot k/16 sits at the cumulative sum of the normalised |weights|.
    w = f.weight.detach().abs() / f.weight.detach().abs().sum()
    torch.testing.assert_close(f(torch.tensor([5 / 16], dtype=torch.float64)),
                               w[:6].sum()[None], rtol=0, atol=1e-12)
