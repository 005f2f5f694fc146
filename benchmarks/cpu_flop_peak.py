"""The machine's float32 FLOP peak, measured: every core runs independent chains of fused
multiply-adds on the widest vectors the compiler targets (-march=native, as the CPU kernel is
built), enough chains to cover the FMA latency, nothing else. This is the denominator of the CPU
kernel's share of peak (benchmarks/test_bench_cpu.py): a nominal clock times a data-sheet width
misses turbo and how the core splits wide vectors.

    python benchmarks/cpu_flop_peak.py            # all cores (torch's intra-op thread count)
    python benchmarks/cpu_flop_peak.py --threads 1

Prints GFLOP/s (best of --repeats runs of about 0.5 s) and, for the record, the instruction set.
Needs a C++ compiler (g++, as the extension build does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
using V = __m512;
static const char* kIsa = "AVX-512F";
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#elif defined(__FMA__)
using V = __m256;
static const char* kIsa = "AVX2+FMA";
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (float x : t) s += x; return s; }
#else
#error "needs FMA"
#endif
constexpr int kChains = 16;  // independent accumulators: latency x FMA pipes, with room to spare
constexpr int kLanes = sizeof(V) / sizeof(float);

static float run(long iters) {
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = SET1(1.0f + i * 1e-3f);
  const V a = SET1(0.999999f), b = SET1(1e-7f);
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 16  // unrolled, the accumulators live in registers
    for (int i = 0; i < kChains; ++i) acc[i] = FMA(acc[i], a, b);
  }
  V s = acc[0];
  for (int i = 1; i < kChains; ++i) s = ADD(s, acc[i]);
  return SUM(s);  // keeps the loop alive
}

int main(int argc, char** argv) {
  const int threads = std::atoi(argv[1]);
  const long iters = std::atol(argv[2]);
  std::vector<std::thread> pool;
  std::vector<float> sink(threads);
  const auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sink[t] = run(iters); });
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flop = 2.0 * kLanes * kChains * double(iters) * threads;
  std::printf("%s %.3f %g\n", kIsa, flop / s / 1e9, double(sink[0]));
}
"""


def build(directory: Path) -> Path:
    src, exe = directory / "peak.cpp", directory / "peak"
    src.write_text(SOURCE)
    subprocess.run(["g++", "-O3", "-march=native", "-std=c++17", "-pthread", str(src), "-o", str(exe)],
                   check=True)
    return exe


def measure(exe: Path, threads: int, repeats: int, iters: int = 20_000_000) -> tuple[str, float]:
    best, isa = 0.0, ""
    for _ in range(repeats):
        isa, gflops, _ = subprocess.run([str(exe), str(threads), str(iters)], capture_output=True, text=True,
                                        check=True).stdout.split()
        best = max(best, float(gflops))
    return isa, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python benchmarks/cpu_flop_peak.py --threads 2",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quiet", action="store_true", help="print the GFLOP/s figure only")
    args = parser.parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.threads < 1 or args.repeats < 1:
        print("error: --threads and --repeats must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        isa, gflops = measure(build(Path(tmp)), args.threads, args.repeats)
    if args.quiet:
        print(f"{gflops:.1f}")
    else:
        print(f"float32 FMA peak: {gflops:.1f} GFLOP/s on {args.threads} thread(s), {isa}, "
              f"{os.cpu_count()} logical CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
