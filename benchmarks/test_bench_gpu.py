"""The GPU backends ("triton", "cuda") at the shared benchmark sizes (benchmarks/conftest.py):
forward, and forward + backward, on a CUDA device (skipped without one: the Triton interpreter
and the CUDA emulator are correctness tools, not something to time).

    pytest benchmarks/test_bench_gpu.py --benchmark-only
"""

import pytest
import torch

import rja_kernels
from rja_kernels.backends import why_unavailable
from rja_kernels.testing import make_inputs

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(params=["triton", "cuda"])
def backend(request) -> str:
    reason = "no CUDA device" if not torch.cuda.is_available() else why_unavailable(
        request.param, torch.device("cuda"), torch.float32)
    if reason is not None:
        pytest.skip(f"needs a CUDA device and the {request.param} backend ({reason})")
    return request.param


def _inputs(size, dtype, requires_grad):
    _, (b, seq, da, dv, k, iterations) = size
    inputs = make_inputs(b, seq, da, dv, k, iterations, dtype=dtype, device="cuda", requires_grad=requires_grad)
    return inputs, iterations


def _bench(benchmark, fn):
    def timed():
        fn()
        torch.cuda.synchronize()

    timed()  # warm-up: extension load, Triton compilation and autotuning of this shape
    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward(benchmark, size, backend, dtype):
    inputs, iterations = _inputs(size, dtype, requires_grad=False)
    with torch.no_grad():
        _bench(benchmark, lambda: rja_kernels.recursive_joint_attention(**inputs, iterations=iterations,
                                                                          backend=backend))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_backward(benchmark, size, backend, dtype):
    inputs, iterations = _inputs(size, dtype, requires_grad=True)

    def step():
        xa, xv = rja_kernels.recursive_joint_attention(**inputs, iterations=iterations, backend=backend)
        torch.autograd.backward((xa, xv), (torch.ones_like(xa), torch.ones_like(xv)))

    _bench(benchmark, step)
