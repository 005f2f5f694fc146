"""Registers and local-memory stack per thread of every Triton kernel's autotune candidates,
compiled ahead of time for a GPU target (default sm_90, Hopper) on any machine: Triton's compiler
and its bundled ptxas and cuobjdump need no GPU. A candidate with stack is spilling (or indexing a
tile dynamically): on the GPU it runs from local memory, many times slower. Also counted: the
GPU-scope release adds in the PTX, the arrivals of the barriers between the programs of a sample
(`--split S`; none for one program per sample).

    python benchmarks/triton_registers.py                       # every kernel, size and dtype
    python benchmarks/triton_registers.py --kernel jca-forward --size long --dtype float32
    python benchmarks/triton_registers.py --kernel paper-forward --split 2

Sizes and dtypes are the GPU benchmark's (benchmarks/conftest.py, benchmarks/test_bench_gpu.py).
Integer arguments are compiled as the launch specialises them (multiples of 16 marked so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Compiling needs the real Triton frontend, not the interpreter the CPU test setup turns on.
os.environ["TRITON_INTERPRET"] = "0"

import torch
import triton
from tqdm import tqdm
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SIZES

from rja_kernels import _triton_jca, _triton_paper
from rja_kernels._triton_common import dot_precision, grad_precision, pad16

# kernel name: (autotuned kernel, pointer arguments that are float32 whatever the input dtype)
KERNELS = {
    "paper-forward": (_triton_paper._paper_fwd_kernel, set()),
    "paper-backward": (_triton_paper._paper_bwd_kernel,
                       {"fs", "h_sa", "h_sv", "gu_sa", "gu_sv", "gq_sa", "gq_sv", "gp_sa", "gp_sv"}),
    "jca-forward": (_triton_jca._jca_fwd_kernel, set()),
    "jca-backward": (_triton_jca._jca_bwd_kernel,
                     {"g_scratch", "p_ja", "p_jv", "p_a", "p_v", "p_ca", "p_cv", "p_ha", "p_hv"}),
}
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}
INTS = ("B", "T", "W_PER_ITER", "TW", "L", "DA", "DV", "K")


def compile_candidate(kernel_name: str, size: str, dtype: str, config: triton.Config, arch: int,
                      split: int = 1) -> dict:
    """ptxas's resource usage of one autotune candidate at one size and dtype, and its barrier
    arrivals (`split` programs per sample)."""
    autotuned, fp32_pointers = KERNELS[kernel_name]
    fn = autotuned.fn
    b, seq, da, dv, k, iterations = SIZES[size]
    ints = {"B": b, "T": iterations, "W_PER_ITER": 1, "TW": iterations, "L": seq, "DA": da, "DV": dv, "K": k}
    torch_dtype = getattr(torch, dtype)  # the precisions the launch takes for this dtype
    constexprs = {"BL": pad16(seq), "BK": pad16(k), "PREC": dot_precision(torch_dtype),
                  "GRAD_PREC": grad_precision(torch_dtype), "H_TANH": False, "OUT_RELU": False,
                  "SPLIT": split, **config.kwargs}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "scale":
            signature[name] = "fp32"
        elif name == "counter":
            signature[name] = "*i32"
        elif name in INTS:
            signature[name] = "i32"
            if ints[name] % 16 == 0 and name not in fn.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "*fp32" if name in fp32_pointers else "*" + DTYPES[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
    index = {name: (i,) for i, name in enumerate(fn.arg_names)}
    src = ASTSource(fn=fn, signature=signature, attrs=attrs,
                    constexprs={index[n]: v for n, v in constexprs.items() if n in index})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split()
                  if ":" in item and item.split(":")[1].isdigit())
    return {"registers": int(fields["REG"]), "stack": int(fields["STACK"]),
            "arrivals": compiled.asm["ptx"].count("atom.global.gpu.release.add")}


def candidates(kernel_name: str) -> list[triton.Config]:
    """Every autotune candidate, the long-sequence ones included (_triton_common.prune_by_length)."""
    return list(KERNELS[kernel_name][0].configs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/triton_registers.py --kernel jca-forward --size long",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=sorted(KERNELS), action="append", help="default: all")
    parser.add_argument("--size", choices=sorted(SIZES), action="append", help="default: all")
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="default: all")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90)")
    parser.add_argument("--split", type=int, default=1, help="programs per sample (default 1)")
    parser.add_argument("--candidates", type=int, help="the first N autotune candidates of each kernel (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON list of rows instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.split < 1:
        parser.error(f"--split must be at least 1, got {args.split}")
    jobs = [(kn, s, dt, c) for kn in args.kernel or KERNELS for s in args.size or SIZES
            for dt in args.dtype or DTYPES for c in candidates(kn)[:args.candidates]]
    if not args.json:
        print("| kernel | size | dtype | BM | BD | warps | long only | registers | stack (B/thread) | arrivals |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for kn, s, dt, c in tqdm(jobs, disable=args.quiet, leave=False):
        row = {"kernel": kn, "size": s, "dtype": dt, "BM": c.kwargs["BM"], "BD": c.kwargs["BD"],
               "warps": c.num_warps, "long_only": getattr(c, "long_only", False),
               **compile_candidate(kn, s, dt, c, args.arch, args.split)}
        rows.append(row)
        if not args.json:
            tqdm.write("| " + " | ".join(str(v) for v in row.values()) + " |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
