"""The "triton" backend at the shared benchmark sizes (benchmarks/conftest.py): forward, and
forward + backward, on a CUDA device (skipped without one: the CPU interpreter is a correctness
tool, not something to time).

    pytest benchmarks/test_bench_triton.py --benchmark-only
"""

import pytest
import torch

import rja_kernels
from rja_kernels.backends import why_unavailable
from rja_kernels.testing import make_inputs

_reason = why_unavailable("triton", torch.device("cuda"), torch.float32)
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or _reason is not None,
    reason=f"needs a CUDA device and the triton backend ({_reason or 'no CUDA device'})")


def _inputs(size, dtype, requires_grad):
    _, (b, seq, da, dv, k, iterations) = size
    inputs = make_inputs(b, seq, da, dv, k, iterations, dtype=dtype, device="cuda", requires_grad=requires_grad)
    return inputs, iterations


def _bench(benchmark, fn):
    def timed():
        fn()
        torch.cuda.synchronize()

    timed()  # warm-up: compilation and autotuning of this shape
    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_forward(benchmark, size, dtype):
    inputs, iterations = _inputs(size, dtype, requires_grad=False)
    with torch.no_grad():
        _bench(benchmark, lambda: rja_kernels.recursive_joint_attention(**inputs, iterations=iterations,
                                                                          backend="triton"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_forward_backward(benchmark, size, dtype):
    inputs, iterations = _inputs(size, dtype, requires_grad=True)

    def step():
        xa, xv = rja_kernels.recursive_joint_attention(**inputs, iterations=iterations, backend="triton")
        torch.autograd.backward((xa, xv), (torch.ones_like(xa), torch.ones_like(xv)))

    _bench(benchmark, step)
