"""Both operators on a CUDA device at the shared benchmark sizes (benchmarks/conftest.py): the
eager reference, torch.compile of it (default and max-autotune without CUDA graphs) and the fused
"triton" and "cuda" backends, in one run; forward, forward+backward, float32 and bfloat16, and
peak GPU memory of forward+backward. Skipped without a CUDA device (the Triton interpreter and the
CUDA emulator are correctness tools, not something to time).

    pytest benchmarks/test_bench_gpu.py --benchmark-only -s

Grouped per operator, size, dtype and pass, so pytest-benchmark's table shows the five side by
side; extra_info holds GFLOP/s (test_bench_cpu.forward_flops), the peak memory and the Triton
kernels' programs per sample.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SHORT, inputs_kwargs
from test_bench_cpu import forward_flops

from rja_kernels.backends import why_unavailable
from rja_kernels.testing import OPERATORS as SPECS
from rja_kernels.testing import call_operator, make_inputs

IMPLS = ("eager", "compile", "compile-max-autotune", "triton", "cuda")
COMPILE_MODES = {"compile": None, "compile-max-autotune": "max-autotune-no-cudagraphs"}
DTYPES = [torch.float32, torch.bfloat16]

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _fn(operator: str, impl: str, iterations: int, dtype: torch.dtype):
    if impl in ("triton", "cuda"):
        reason = why_unavailable(impl, torch.device("cuda"), dtype, operator)
        if reason is not None:
            pytest.skip(f"{impl} backend unavailable: {reason}")
        return lambda inp: call_operator(operator, inp, iterations, impl)
    ref = SPECS[operator].reference
    if impl in COMPILE_MODES:
        torch._dynamo.reset()
        ref = torch.compile(ref, mode=COMPILE_MODES[impl])
    return lambda inp: ref(*inp.values(), iterations)


def _setup(operator, size, impl, dtype, requires_grad):
    name, dims = size
    args, kwargs = inputs_kwargs(operator, dims)
    inp = make_inputs(operator, *args, **kwargs, dtype=dtype, device="cuda", requires_grad=requires_grad)
    return name, dims, inp, _fn(operator, impl, args[-1], dtype)


def _step(fn, inp):
    """One forward+backward: gradients of every input for all-ones output gradients."""
    xa, xv = fn(inp)
    return torch.autograd.grad((xa, xv), list(inp.values()), (torch.ones_like(xa), torch.ones_like(xv)))


def _record_split(benchmark, impl, dims):
    """The Triton kernels' programs per sample at this size (RJA_TRITON_SPLIT or the heuristic)."""
    if impl == "triton":
        from rja_kernels._triton_common import split_for

        benchmark.extra_info["programs_per_sample"] = split_for(dims[0], min(dims[2], dims[3]), torch.device("cuda"))


def _bench(benchmark, fn, *args):
    def timed():
        fn(*args)
        torch.cuda.synchronize()

    timed()  # warm-up: extension load, Triton compilation and autotuning, torch.compile of this shape
    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, operator, size, impl, dtype):
    name, dims, inp, fn = _setup(operator, size, impl, dtype, requires_grad=False)
    benchmark.group = f"{SHORT[operator]} {name} {dtype} forward"
    with torch.no_grad():
        _bench(benchmark, fn, inp)
    _record_split(benchmark, impl, dims)
    if benchmark.stats:
        benchmark.extra_info["gflops"] = forward_flops(operator, *dims) / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, operator, size, impl, dtype):
    name, dims, inp, fn = _setup(operator, size, impl, dtype, requires_grad=True)
    benchmark.group = f"{SHORT[operator]} {name} {dtype} forward+backward"
    _bench(benchmark, _step, fn, inp)
    _record_split(benchmark, impl, dims)
    if benchmark.stats:  # useful work as in test_bench_cpu: three times the forward's products
        benchmark.extra_info["gflops"] = 3 * forward_flops(operator, *dims) / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_peak_memory(benchmark, operator, size, impl, dtype):
    """Peak GPU memory of one forward+backward beyond the inputs (MiB, extra_info and printed)."""
    name, _, inp, fn = _setup(operator, size, impl, dtype, requires_grad=True)
    benchmark.group = f"{SHORT[operator]} {name} {dtype} peak memory"
    _step(fn, inp)  # compile and autotune outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(_step, args=(fn, inp), rounds=1, iterations=1)
    torch.cuda.synchronize()
    mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    benchmark.extra_info["peak_extra_mib"] = round(mib, 1)
    print(f"\npeak extra GPU memory of forward+backward, {SHORT[operator]} {name} {dtype} {impl}: {mib:.1f} MiB")
