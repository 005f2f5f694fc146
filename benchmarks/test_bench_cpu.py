"""The fused CPU kernels of both operators against the reference, eager and torch.compile'd, at
the shared sizes (benchmarks/conftest.py): forward, forward+backward, and peak memory of
forward+backward.

    pytest benchmarks/test_bench_cpu.py --benchmark-only -s

Benchmarks are grouped per operator, size and pass, so pytest-benchmark's table shows the three
implementations side by side with their ratios; extra_info holds GFLOP/s and the memory figures,
and the fused forward's share of the machine's measured float32 peak (benchmarks/cpu_flop_peak.py),
which is also printed.
The smoke run (--benchmark-disable, CI) runs each body once and the slow references at the small
size only.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cpu_flop_peak
import pytest
import torch
from conftest import SHORT, inputs_kwargs

from rja_kernels.backends import why_unavailable
from rja_kernels.testing import OPERATORS as SPECS
from rja_kernels.testing import call_operator, make_inputs

HERE = Path(__file__).resolve().parent
IMPLS = ("eager", "compile", "cpu")
PAPER = "recursive_joint_attention"


def forward_flops(operator: str, b: int, seq: int, da: int, dv: int, k: int, iterations: int) -> float:
    """Multiply-add FLOPs of the forward. Paper form (docs/SPEC.md section 1), per sample,
    iteration and modality: x^T w_j, C, x w_c, G, U. JCA form: its two tile GEMMs per modality,
    P @ J (inner size L) and tanh(S) @ w_c^T (inner size k), over [da + dv, d] tiles (the L x L,
    k x L, L x k contractions add under 3 % at the benchmark sizes and are not counted)."""
    d = da + dv
    if operator == PAPER:
        per = sum(2 * dm * seq * seq + 2 * dm * d * seq + 2 * seq * dm * dm + 4 * seq * dm * d for dm in (da, dv))
        return float(b * iterations * per)
    return 2.0 * b * iterations * d * d * (seq + k)


@functools.cache
def measured_peak_gflops() -> float:
    """The machine's float32 FMA peak on torch's thread count, measured (benchmarks/cpu_flop_peak.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        return cpu_flop_peak.measure(cpu_flop_peak.build(Path(tmp)), torch.get_num_threads(), repeats=5)[1]


def _missing(operator: str) -> str | None:
    return why_unavailable("cpu", torch.device("cpu"), torch.float32, operator)


def _fn(operator: str, impl: str, iterations: int):
    if impl == "cpu":
        if _missing(operator):
            pytest.skip(f"cpu backend unavailable: {_missing(operator)}")
        return lambda inp: call_operator(operator, inp, iterations, "cpu")
    ref = SPECS[operator].reference
    if impl == "compile":
        torch._dynamo.reset()
        ref = torch.compile(ref)
    return lambda inp: ref(*inp.values(), iterations)


def _rounds(name: str, impl: str) -> int:
    # The fused kernel is fast enough for 11 rounds everywhere: a median of 3 (and the share of
    # peak taken from it) follows the 2-core VM's slow phases too closely.
    return 11 if impl == "cpu" else 5 if name == "jca-small" else 3


def _skip_slow_smoke(benchmark, name: str, impl: str) -> None:
    # --benchmark-disable (CI smoke) runs each benchmark once; the references take seconds at the
    # large sizes (and compiling them longer), so the smoke run exercises them at jca-small only.
    if benchmark.disabled and impl != "cpu" and name != "jca-small":
        pytest.skip("smoke run: the references run at jca-small only")


def _inputs(operator: str, size: tuple[int, ...], requires_grad: bool) -> tuple[dict, int]:
    args, kwargs = inputs_kwargs(operator, size)
    return make_inputs(operator, *args, **kwargs, requires_grad=requires_grad), args[-1]


@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, operator, size, impl):
    name, dims = size
    _skip_slow_smoke(benchmark, name, impl)
    benchmark.group = f"{SHORT[operator]} {name} forward"
    inp, iterations = _inputs(operator, dims, requires_grad=False)
    fn = _fn(operator, impl, iterations)
    with torch.no_grad():
        benchmark.pedantic(fn, args=(inp,), rounds=_rounds(name, impl), iterations=1, warmup_rounds=1)
    if benchmark.stats:
        gflops = forward_flops(operator, *dims) / benchmark.stats.stats.median / 1e9
        benchmark.extra_info["gflops"] = gflops
        if impl == "cpu":
            share = gflops / measured_peak_gflops()
            benchmark.extra_info["share_of_peak"] = share
            print(f"\n{SHORT[operator]} {name} forward, cpu: {gflops:.1f} GFLOP/s, {share:.0%} of the measured "
                  f"float32 peak ({measured_peak_gflops():.1f} GFLOP/s, benchmarks/cpu_flop_peak.py)")


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, operator, size, impl):
    name, dims = size
    _skip_slow_smoke(benchmark, name, impl)
    benchmark.group = f"{SHORT[operator]} {name} forward+backward"
    inp, iterations = _inputs(operator, dims, requires_grad=True)
    fn = _fn(operator, impl, iterations)

    def step():
        xa, xv = fn(inp)
        return torch.autograd.grad((xa, xv), list(inp.values()), (torch.ones_like(xa), torch.ones_like(xv)))

    benchmark.pedantic(step, rounds=_rounds(name, impl), iterations=1, warmup_rounds=1)
    if benchmark.stats:
        # Useful work: every forward product has two backward products of its size. The fused
        # kernels also recompute the forward in the backward; that is not counted.
        benchmark.extra_info["gflops"] = 3 * forward_flops(operator, *dims) / benchmark.stats.stats.median / 1e9


def peak_memory_mib(operator: str, name: str, impl: str) -> float:
    """benchmarks/peak_memory.py in a fresh process: extra peak RSS of one forward+backward."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, str(HERE / "peak_memory.py"), "--operator", operator, "--size", name,
                          "--impl", impl], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mib"]


def test_peak_memory(benchmark, operator, size):
    """Peak extra memory of forward+backward per implementation (MiB, in extra_info and printed).
    The fused kernels keep O(B L d T) activations and workspaces; eager keeps C_a/C_v per iteration."""
    name = size[0]
    if _missing(operator):
        pytest.skip(f"cpu backend unavailable: {_missing(operator)}")
    if benchmark.disabled and name != "jca-small":
        pytest.skip("smoke run: peak memory is measured at jca-small only")
    benchmark.group = f"{SHORT[operator]} {name} peak memory (runs the 3 measuring processes)"
    # The smoke run leaves out the compiled reference (a process that compiles for ~20 s).
    impls = [impl for impl in IMPLS if not (benchmark.disabled and impl == "compile")]
    mib = benchmark.pedantic(lambda: {impl: peak_memory_mib(operator, name, impl) for impl in impls},
                             rounds=1, iterations=1)
    benchmark.extra_info.update({f"{impl}_extra_mib": round(v, 1) for impl, v in mib.items()})
    print(f"\npeak extra memory of forward+backward, {SHORT[operator]} {name}: "
          + ", ".join(f"{impl} {v:.1f} MiB" for impl, v in mib.items())
          + f"; cpu / eager = {mib['cpu'] / mib['eager']:.3f}")
    # The target, at the paper's size: at most 1/10 of eager's extra memory. Elsewhere C_a/C_v are
    # small next to the O(B L d T) buffers both keep (d = 256 at jca-small; B = 8 with L = 64 at
    # long, where the paper form's per-thread weight-gradient partials weigh most): at most 1/2.
    assert mib["cpu"] <= mib["eager"] / (10 if name == "paper" else 2)
