"""The reference backend against an independent per-sample loop written from SPEC.md."""

import math

import pytest
import torch

import rja_kernels
from rja_kernels.op import WEIGHT_NAMES
from rja_kernels.testing import make_inputs


def spec_loop(inp: dict, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC.md's iteration, one batch element at a time, in float64."""
    inp = {n: t.detach().double() for n, t in inp.items()}
    outs_a, outs_v = [], []
    for b in range(inp["xa"].shape[0]):
        xa, xv = inp["xa"][b], inp["xv"][b]
        for i in range(iterations):
            w = {n: inp[n][i if inp[n].shape[0] > 1 else 0] for n in WEIGHT_NAMES}
            j = torch.cat([xa, xv], dim=-1)
            d = j.shape[1]
            ca = torch.tanh((xa.T @ w["w_ja"]) @ j / math.sqrt(d))
            cv = torch.tanh((xv.T @ w["w_jv"]) @ j / math.sqrt(d))
            ha = torch.relu(ca @ w["w_ca"].T + xa.T @ w["w_a"].T)
            hv = torch.relu(cv @ w["w_cv"].T + xv.T @ w["w_v"].T)
            xa, xv = (ha @ w["w_ha"].T).T + xa, (hv @ w["w_hv"].T).T + xv
        outs_a.append(xa)
        outs_v.append(xv)
    return torch.stack(outs_a), torch.stack(outs_v)


SHAPES = [  # B, L, da, dv, k
    (3, 4, 6, 5, 7),
    (2, 1, 3, 8, 2),
    (1, 5, 24, 40, 12),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_matches_spec_loop(shape, iterations, shared, backend):
    b, seq, da, dv, k = shape
    inp = make_inputs(b, seq, da, dv, k, iterations, tw=1 if shared else None, dtype=torch.float64)
    xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend=backend)
    ea, ev = spec_loop(inp, iterations)
    torch.testing.assert_close(xa, ea, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xv, ev, rtol=1e-10, atol=1e-10)


def test_plain_reference_matches_op():
    inp = make_inputs(2, 4, 6, 5, 3, 2, dtype=torch.float64)
    expect = rja_kernels.recursive_joint_attention_reference(**inp, iterations=2)
    got = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="reference")
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 3, 4, 3, 2), (1, 1, 2, 3, 2), (2, 4, 3, 5, 3)])
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_through_op(shape, iterations, shared):
    b, seq, da, dv, k = shape
    inp = make_inputs(b, seq, da, dv, k, iterations, tw=1 if shared else None, dtype=torch.float64,
                      requires_grad=True)
    names = list(inp)

    def fn(*tensors):
        return rja_kernels.recursive_joint_attention(
            **dict(zip(names, tensors)), iterations=iterations, backend="reference")

    assert torch.autograd.gradcheck(fn, tuple(inp.values()), eps=1e-6, atol=1e-7)


def test_gradient_of_one_output_only():
    # The loss uses xv only: xa's output gradient arrives as None and must count as zero.
    inp = make_inputs(2, 3, 4, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    _, xv = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="reference")
    got = torch.autograd.grad(xv.sum(), list(inp.values()))
    _, xv_ref = rja_kernels.recursive_joint_attention_reference(**inp, iterations=2)
    expect = torch.autograd.grad(xv_ref.sum(), list(inp.values()))
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e)


def test_empty_batch():
    inp = make_inputs(0, 4, 6, 5, 3, 2, requires_grad=True)
    xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=2, backend="reference")
    assert xa.shape == (0, 4, 6) and xv.shape == (0, 4, 5)
    (xa.sum() + xv.sum()).backward()
    for name, t in inp.items():
        assert t.grad is not None and t.grad.shape == t.shape, name
        assert not t.grad.any(), name
