"""The fused CPU kernel against the reference, eager and torch.compile'd, at the shared sizes
(benchmarks/conftest.py): forward, forward+backward, and peak memory of forward+backward.

    pytest benchmarks/test_bench_cpu.py --benchmark-only -s

Benchmarks are grouped per size and pass, so pytest-benchmark's table shows the three
implementations side by side with their ratios; extra_info holds GFLOP/s and the memory figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rja_kernels
from rja_kernels.backends import why_unavailable
from rja_kernels.testing import make_inputs

HERE = Path(__file__).resolve().parent
IMPLS = ("eager", "compile", "cpu")
_cpu_missing = why_unavailable("cpu", torch.device("cpu"), torch.float32)


def forward_flops(b: int, seq: int, da: int, dv: int, k: int, iterations: int) -> float:
    """FLOPs of the forward's two tile GEMMs per modality, P @ J (inner size L) and
    tanh(S) @ w_c^T (inner size k), over [da + dv, d] tiles; the L x L, k x L, L x k
    contractions per row add under 3 % at the benchmark sizes and are not counted."""
    d = da + dv
    return 2.0 * b * iterations * d * d * (seq + k)


def _fn(impl: str, iterations: int):
    if impl == "cpu":
        if _cpu_missing:
            pytest.skip(f"cpu backend unavailable: {_cpu_missing}")
        return lambda inp: rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend="cpu")
    ref = rja_kernels.recursive_joint_attention_reference
    if impl == "compile":
        torch._dynamo.reset()
        ref = torch.compile(ref)
    return lambda inp: ref(**inp, iterations=iterations)


def _rounds(name: str) -> int:
    return 5 if name == "jca-small" else 3


def _skip_slow_smoke(benchmark, name: str, impl: str) -> None:
    # --benchmark-disable (CI smoke) runs each benchmark once; compiling the reference at every
    # size would dominate that run, so the smoke run compiles it at the small size only.
    if benchmark.disabled and impl == "compile" and name != "jca-small":
        pytest.skip("smoke run: torch.compile is exercised at jca-small only")


@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, size, impl):
    name, (b, seq, da, dv, k, iterations) = size
    _skip_slow_smoke(benchmark, name, impl)
    benchmark.group = f"{name} forward"
    inp = make_inputs(b, seq, da, dv, k, iterations)
    fn = _fn(impl, iterations)
    with torch.no_grad():
        benchmark.pedantic(fn, args=(inp,), rounds=_rounds(name), iterations=1, warmup_rounds=1)
    if benchmark.stats:
        benchmark.extra_info["gflops"] = forward_flops(*size[1]) / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, size, impl):
    name, (b, seq, da, dv, k, iterations) = size
    _skip_slow_smoke(benchmark, name, impl)
    benchmark.group = f"{name} forward+backward"
    inp = make_inputs(b, seq, da, dv, k, iterations, requires_grad=True)
    fn = _fn(impl, iterations)

    def step():
        xa, xv = fn(inp)
        return torch.autograd.grad((xa, xv), list(inp.values()), (torch.ones_like(xa), torch.ones_like(xv)))

    benchmark.pedantic(step, rounds=_rounds(name), iterations=1, warmup_rounds=1)
    if benchmark.stats:
        # Useful work: the backward's GEMMs are twice the forward's (grad Ca and grad w_c with
        # inner size k, grad P and grad J with inner size L). The fused kernel also recomputes
        # the forward tiles in the backward (4x executed); that is not counted.
        benchmark.extra_info["gflops"] = 3 * forward_flops(*size[1]) / benchmark.stats.stats.median / 1e9


def peak_memory_mib(name: str, impl: str) -> float:
    """benchmarks/peak_memory.py in a fresh process: extra peak RSS of one forward+backward."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, str(HERE / "peak_memory.py"), "--size", name, "--impl", impl],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mib"]


def test_peak_memory(benchmark, size):
    """Peak extra memory of forward+backward per implementation (MiB, in extra_info and printed).
    The fused kernel keeps O(B L d T) activations; eager keeps Ca/Cv per iteration."""
    name = size[0]
    if _cpu_missing:
        pytest.skip(f"cpu backend unavailable: {_cpu_missing}")
    if benchmark.disabled and name != "jca-small":
        pytest.skip("smoke run: peak memory is measured at jca-small only")
    benchmark.group = f"{name} peak memory (runs the 3 measuring processes)"
    mib = benchmark.pedantic(lambda: {impl: peak_memory_mib(name, impl) for impl in IMPLS},
                             rounds=1, iterations=1)
    benchmark.extra_info.update({f"{impl}_extra_mib": round(v, 1) for impl, v in mib.items()})
    print(f"\npeak extra memory of forward+backward, {name}: "
          + ", ".join(f"{impl} {v:.1f} MiB" for impl, v in mib.items())
          + f"; cpu / eager = {mib['cpu'] / mib['eager']:.3f}")
    # The target, at the paper's size: at most 1/10 of eager's extra memory. At d = 256
    # (jca-small) Ca/Cv are 4x smaller relative to the O(B L d T) buffers both keep.
    assert mib["cpu"] <= mib["eager"] / (10 if name == "paper" else 4)
