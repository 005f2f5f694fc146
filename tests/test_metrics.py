"""CCC as the ABAW challenges define it, the 1 - CCC loss, and the streaming accumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rja_models.metrics import INVALID_LABEL, CCCAccumulator, ccc, ccc_loss, valid_mask


def ccc_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """The ABAW evaluation script's formula (population moments)."""
    x_mean, y_mean = np.mean(x), np.mean(y)
    covariance = np.mean((x - x_mean) * (y - y_mean))
    return 2 * covariance / (np.var(x) + np.var(y) + (x_mean - y_mean) ** 2)


def test_hand_computed_values():
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([1.0, 2.0, 4.0])
    # means 2 and 7/3; var_p = 2/3, var_t = 14/9, cov = 1, (mean diff)^2 = 1/9: CCC = 2 / (2/3 + 14/9 + 1/9) = 6/7
    assert ccc(pred, target).item() == pytest.approx(6 / 7)
    assert ccc(target, target).item() == pytest.approx(1.0)
    # Negated: -1 for a zero-mean series; otherwise the mean gap (14/3)^2 pulls it to -28/224.
    assert ccc(-target, target).item() == pytest.approx(-28 / 224)
    x = torch.tensor([-1.0, 0.0, 1.0, 0.0])  # mean 0, population variance 0.5
    assert ccc(-x, x).item() == pytest.approx(-1.0)
    # Constant offset c: CCC = 2 var / (2 var + c^2).
    assert ccc(x + 0.5, x).item() == pytest.approx(1.0 / (1.0 + 0.25))
    assert ccc(2 * x, x).item() == pytest.approx(2 * 1.0 / (2.0 + 0.5))  # scale: cov 1, vars 2 and 0.5


def test_matches_numpy_per_column():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(500, 2, generator=gen, dtype=torch.float64) * 2 - 1
    pred = 0.6 * target + 0.3 * torch.randn(500, 2, generator=gen, dtype=torch.float64) + 0.1
    got = ccc(pred, target)
    assert got.shape == (2,)
    for c in range(2):
        assert got[c].item() == pytest.approx(ccc_numpy(pred[:, c].numpy(), target[:, c].numpy()), rel=1e-12)


def test_invalid_labels_and_mask_are_excluded():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(4, 50, 2, generator=gen, dtype=torch.float64)
    target = torch.rand(4, 50, 2, generator=gen, dtype=torch.float64)
    target[0, :10, 0] = INVALID_LABEL  # one column only
    target[1, 5:8] = INVALID_LABEL
    mask = torch.ones(4, 50, dtype=torch.bool)
    mask[3, 40:] = False  # e.g. padding past the end of a video
    keep = valid_mask(target) & mask.unsqueeze(-1)
    got = ccc(pred, target, mask)
    for c in range(2):
        m = keep[..., c]
        assert got[c].item() == pytest.approx(ccc_numpy(pred[..., c][m].numpy(), target[..., c][m].numpy()))
    assert torch.equal(ccc(pred, target, mask.unsqueeze(-1).expand(-1, -1, 2)), got)
    assert torch.isnan(ccc(pred, torch.full_like(target, INVALID_LABEL))).all()
    with pytest.raises(ValueError, match="mask must have shape"):
        ccc(pred, target, mask[:, :10])


def test_loss_is_mean_of_one_minus_ccc_and_differentiable():
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(64, 2, generator=gen)
    pred = torch.rand(64, 2, generator=gen, requires_grad=True)
    loss = ccc_loss(pred, target)
    assert loss.item() == pytest.approx((1 - ccc(pred, target)).mean().item(), rel=1e-5)
    loss.backward()
    assert pred.grad.abs().sum() > 0
    # A target without any valid frame is left out; none valid gives a zero loss with a graph.
    target[:, 1] = INVALID_LABEL
    assert ccc_loss(pred, target).item() == pytest.approx(1 - ccc(pred[:, 0], target[:, 0]).item(), rel=1e-5)
    empty = ccc_loss(pred, torch.full_like(target, INVALID_LABEL))
    empty.backward()
    assert empty.item() == 0
    # Constant prediction equal to a constant target is 0/0; the loss's eps keeps it finite.
    assert torch.isfinite(ccc_loss(torch.ones(8, 1), torch.ones(8, 1)))


def test_accumulator_equals_ccc_over_the_whole_split():
    gen = torch.Generator().manual_seed(3)
    batches = []
    for size in (5, 1, 7, 3):
        target = torch.rand(size, 16, 2, generator=gen) * 2 - 1
        target[torch.rand(size, 16, 2, generator=gen) < 0.1] = INVALID_LABEL
        pred = target.clamp(-1, 1) * 0.5 + 0.2 + 0.1 * torch.randn(size, 16, 2, generator=gen)
        mask = torch.rand(size, 16, generator=gen) > 0.1
        videos = [f"v{(i + size) % 3}" for i in range(size)]
        batches.append((pred, target, mask, videos))
    acc = CCCAccumulator(("valence", "arousal"))
    for pred, target, mask, videos in batches:
        acc.update(pred, target, mask, videos)
    pred, target, mask = (torch.cat([b[i] for b in batches]) for i in range(3))
    videos = [v for b in batches for v in b[3]]
    whole = ccc(pred.double(), target.double(), mask)
    result = acc.compute()
    assert result["valence"] == pytest.approx(whole[0].item(), abs=1e-12)
    assert result["arousal"] == pytest.approx(whole[1].item(), abs=1e-12)
    assert result["mean"] == pytest.approx(whole.mean().item(), abs=1e-12)
    # Not the mean of per-batch values.
    per_batch = torch.stack([ccc(p.double(), t.double(), m) for p, t, m, _ in batches]).mean(0)
    assert abs(per_batch[0].item() - result["valence"]) > 1e-4
    assert acc.frames == int((valid_mask(target)[..., 0] & mask).sum())

    per_video = acc.compute_per_video()
    assert sorted(per_video) == ["v0", "v1", "v2"]
    rows = torch.tensor([v == "v1" for v in videos])
    want = ccc(pred[rows].double(), target[rows].double(), mask[rows])
    assert per_video["v1"]["arousal"] == pytest.approx(want[1].item(), abs=1e-12)

    acc.reset()
    assert acc.frames == 0 and acc.compute_per_video() == {}


def test_accumulator_is_stable_far_from_zero():
    # Raw sums of squares would cancel catastrophically at an offset of 1e4 in float32 inputs.
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(10_000, 1, generator=gen, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(10_000, 1, generator=gen, dtype=torch.float64)
    acc = CCCAccumulator(("fatigue",))
    for p, t in zip((pred + 1e4).split(999), (target + 1e4).split(999)):
        acc.update(p.float(), t.float())
    expected = ccc_numpy((pred + 1e4).float().double().numpy()[:, 0], (target + 1e4).float().double().numpy()[:, 0])
    assert acc.compute()["fatigue"] == pytest.approx(expected, rel=1e-9)
