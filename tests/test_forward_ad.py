"""Forward-mode AD (`torch.func.jvp`, `torch.autograd.forward_ad`) through both operators: the
kernels have no forward-mode formula, so the op runs the reference's math; the tangent must equal
central finite differences in float64 (it once came out as silent zeros)."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from rja_kernels import available_backends
from rja_kernels.testing import call_operator, make_inputs

OPERATORS = {"recursive_joint_attention": {"h_tanh": True, "out_relu": True}, "joint_cross_attention": {}}
CASES = [(op, backend) for op in OPERATORS
         for backend in available_backends(torch.device("cpu"), torch.float64, operator=op)]


def _setup(operator):
    inp = make_inputs(operator, 2, 3, 5, 4, 2, k=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    tangents = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in inp.items()}
    return inp, tangents


def _finite_difference(operator, inp, tangents, eps=1e-6):
    def at(sign):
        moved = {n: t + sign * eps * tangents[n] for n, t in inp.items()}
        return call_operator(operator, moved, 2, "reference", **OPERATORS[operator])
    return [(p - m) / (2 * eps) for p, m in zip(at(1), at(-1))]


@pytest.mark.parametrize(("operator", "backend"), CASES)
def test_func_jvp_matches_finite_differences(operator, backend):
    inp, tangents = _setup(operator)
    names = list(inp)

    def f(*tensors):
        return call_operator(operator, dict(zip(names, tensors)), 2, backend, **OPERATORS[operator])

    _, jvp = torch.func.jvp(f, tuple(inp.values()), tuple(tangents[n] for n in names))
    for got, expected in zip(jvp, _finite_difference(operator, inp, tangents)):
        assert got.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("operator", "backend"), CASES)
def test_dual_tensors_match_finite_differences(operator, backend):
    inp, tangents = _setup(operator)
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(t, tangents[n]) for n, t in inp.items()}
        outputs = call_operator(operator, duals, 2, backend, **OPERATORS[operator])
        jvp = [fwAD.unpack_dual(o).tangent for o in outputs]
    for got, expected in zip(jvp, _finite_difference(operator, inp, tangents)):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
