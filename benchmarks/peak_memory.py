"""Extra peak memory of one forward+backward of an operator, in a fresh process.

    python benchmarks/peak_memory.py --operator recursive_joint_attention --size paper --impl cpu
    # prints {"extra_mib": ...}

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
from conftest import OPERATORS, SIZES, inputs_kwargs

from rja_kernels.testing import OPERATORS as SPECS
from rja_kernels.testing import call_operator, make_inputs

IMPLS = ("eager", "compile", "cpu")


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def step_fn(operator: str, impl: str, iterations: int):
    """One forward+backward of `impl` on a dict of inputs that require grad."""
    if impl == "cpu":
        def fwd(inp):
            return call_operator(operator, inp, iterations, "cpu")
    else:
        ref = SPECS[operator].reference
        ref = torch.compile(ref) if impl == "compile" else ref

        def fwd(inp):
            return ref(*inp.values(), iterations)

    def step(inp):
        xa, xv = fwd(inp)
        return torch.autograd.grad((xa, xv), list(inp.values()), (torch.ones_like(xa), torch.ones_like(xv)))

    return step


def measure(operator: str, size: str, impl: str) -> float:
    """Peak extra resident memory (MiB) of one forward+backward step."""
    args, kwargs = inputs_kwargs(operator, SIZES[size])
    inp = make_inputs(operator, *args, **kwargs, requires_grad=True)
    step = step_fn(operator, impl, args[-1])
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
    parser.add_argument("--operator", choices=OPERATORS, default="recursive_joint_attention")
    parser.add_argument("--size", choices=list(SIZES), required=True)
    parser.add_argument("--impl", choices=IMPLS, required=True)
    args = parser.parse_args()
    print(json.dumps({"extra_mib": measure(args.operator, args.size, args.impl)}))


if __name__ == "__main__":
    main()
