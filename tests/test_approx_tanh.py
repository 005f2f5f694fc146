"""The hardware tanh (tanh.approx.f32) of the Triton and CUDA kernels for 16-bit inputs: the exact
path wherever no PTX runs (interpreter, emulator), and the tolerance rule on the GPU with the
approximate path (rja_kernels/_triton_common.py `tanh`, csrc/cuda/common.cuh `tanh_of`)."""

import pytest
import torch
from operator_checks import low_precision_check

from rja_kernels.backends import why_unavailable
from rja_kernels.testing import make_inputs

PAPER, JCA = "recursive_joint_attention", "joint_cross_attention"


def _triton_common():
    if why_unavailable("triton", torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float16):
        pytest.skip("triton backend unavailable")
    from rja_kernels import _triton_common

    return _triton_common


@pytest.mark.parametrize(("interpreted", "capability", "approx"), [
    (True, None, False), (True, (9, 0), False), (False, None, False), (False, (7, 0), False),
    (False, (7, 5), True), (False, (9, 0), True)])
def test_triton_selection_rule(interpreted, capability, approx):
    assert _triton_common().use_approx_tanh(interpreted, capability) is approx


def test_triton_interpreter_runs_the_exact_tanh():
    common = _triton_common()
    if not common.INTERPRETED:
        pytest.skip("compiled for the GPU in this process")
    assert not common._APPROX_TANH


GPU_CASES = [(PAPER, {}), (PAPER, {"h_tanh": True, "out_relu": True}), (JCA, {})]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("operator", "options"), GPU_CASES, ids=["paper", "paper-switches", "jca"])
@pytest.mark.parametrize("shape", [(3, 5, 24, 40, 12), (2, 16, 256, 192, 32), (2, 1, 3, 8, 2)], ids=str)
def test_rule_holds_with_the_approximate_tanh(backend, dtype, operator, options, shape):
    if why_unavailable(backend, torch.device("cuda"), dtype, operator):
        pytest.skip(f"{backend} unavailable on this GPU for {dtype}")
    b, seq, da, dv, k = shape
    inp = make_inputs(operator, b, seq, da, dv, 2, k=k, dtype=dtype, device="cuda")
    for name, err, tol in low_precision_check(operator, inp, 2, backend, options):
        assert err <= tol, f"{name}: error {err:.3g} > tolerance {tol:.3g}"
