"""The Triton kernels compiled ahead of time for sm_90 (Triton's compiler with its bundled ptxas and
cuobjdump; no GPU needed), through benchmarks/triton_registers.py in a fresh process (this one runs
Triton's interpreter). At the "long" benchmark size (L = 64) every float32 candidate of the usual
tile sizes keeps 1-10 KB per thread on the stack, which on the GPU runs from local memory (the JCA
form's 115.7 ms float32 forward on an H100); the long-sequence candidates must keep the kernels in
registers. And the barrier between the programs of a sample: compiled, it must publish with a
GPU-scope release at every barrier (per iteration, paper form: 3 forward, 6 backward; JCA form: 1
and 3), and be gone for one program per sample."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_registers.py"
KERNELS = ["paper-forward", "paper-backward", "jca-forward", "jca-backward"]


@pytest.fixture(scope="module")
def long_float32():
    args = [sys.executable, str(TOOL), "--size", "long", "--dtype", "float32", "--json", "--quiet"]
    for kernel in KERNELS:
        args += ["--kernel", kernel]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("kernel", KERNELS)
def test_long_sequences_have_a_candidate_that_stays_in_registers(long_float32, kernel):
    rows = [r for r in long_float32 if r["kernel"] == kernel]
    usual = min(r["stack"] for r in rows if not r["long_only"])
    best = min(r["stack"] for r in rows if r["long_only"])
    assert usual >= 1024, "the usual candidates no longer spill here: the long-only ones may be unneeded"
    assert best <= 1024, f"{kernel}: every long-sequence candidate keeps over 1 KB per thread on the stack"


@pytest.mark.parametrize(("seq", "kept"), [(16, 1), (32, 1), (33, 2), (64, 2)])
def test_long_only_candidates_are_pruned_below_64(seq, kept):
    import triton

    from rja_kernels._triton_common import prune_by_length

    usual, long_only = triton.Config({"BM": 64, "BD": 64}), triton.Config({"BM": 16, "BD": 32})
    long_only.long_only = True
    assert len(prune_by_length([usual, long_only], {"L": seq})) == kept


@pytest.mark.parametrize(("split", "arrivals"), [
    (1, {"paper-forward": 0, "paper-backward": 0, "jca-forward": 0, "jca-backward": 0}),
    (2, {"paper-forward": 3, "paper-backward": 6, "jca-forward": 1, "jca-backward": 3})])
def test_compiled_barriers_publish_at_gpu_scope(split, arrivals):
    args = [sys.executable, str(TOOL), "--size", "paper", "--dtype", "bfloat16", "--split", str(split),
            "--candidates", "1", "--json", "--quiet"]
    for kernel in arrivals:
        args += ["--kernel", kernel]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    assert {r["kernel"]: r["arrivals"] for r in rows} == arrivals
