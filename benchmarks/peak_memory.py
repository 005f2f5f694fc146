"""Extra peak memory of one forward+backward of the operator, in a fresh process.

    python benchmarks/peak_memory.py --size paper --impl cpu    # prints {"extra_mib": ...}

The process builds the inputs and runs one warm-up step (extension load, torch.compile, thread
pools), then resets the kernel's peak-RSS counter (/proc/self/clear_refs, "5") and reports the
peak resident memory of a second step above the resident memory just before it: the activations
and workspaces of the step, not the inputs, the interpreter or the compiler. Run it with
MALLOC_MMAP_THRESHOLD_ set (benchmarks/test_bench_cpu.py does) so that large buffers freed by the
warm-up go back to the OS instead of being reused unseen by the measured step.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SIZES

import rja_kernels
from rja_kernels.testing import make_inputs

IMPLS = ("eager", "compile", "cpu")


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def step_fn(impl: str, iterations: int):
    """One forward+backward of `impl` on a dict of inputs that require grad."""
    if impl == "cpu":
        def fwd(inp):
            return rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend="cpu")
    else:
        ref = rja_kernels.recursive_joint_attention_reference
        ref = torch.compile(ref) if impl == "compile" else ref

        def fwd(inp):
            return ref(**inp, iterations=iterations)

    def step(inp):
        xa, xv = fwd(inp)
        return torch.autograd.grad((xa, xv), list(inp.values()), (torch.ones_like(xa), torch.ones_like(xv)))

    return step


def measure(size: str, impl: str) -> float:
    """Peak extra resident memory (MiB) of one forward+backward step."""
    b, seq, da, dv, k, iterations = SIZES[size]
    inp = make_inputs(b, seq, da, dv, k, iterations, requires_grad=True)
    step = step_fn(impl, iterations)
    step(inp)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    grads = step(inp)
    peak = _kib("VmHWM")
    del grads
    return (peak - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), required=True)
    parser.add_argument("--impl", choices=IMPLS, required=True)
    args = parser.parse_args()
    print(json.dumps({"extra_mib": measure(args.size, args.impl)}))


if __name__ == "__main__":
    main()
