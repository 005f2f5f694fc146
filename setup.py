"""Build of the compiled extensions of rja_kernels.

Environment switches:
  RJA_BUILD_CUDA   auto (default) | 1 | 0. auto builds the CUDA extension when a CUDA toolkit
                   is found and torch is a CUDA build; 1 fails loudly when that is not possible.
  RJA_CUDA_ARCHS   semicolon list of compute capabilities, default "8.0;9.0" (A100, H100).
  RJA_CPU_NATIVE   1 (default) compiles the CPU kernel with -march=native for the building
                   machine; 0 for a portable binary.
  RJA_EXTENSIONS   comma list of extensions to build (cpu,cuda,cuda_emu; default all): lets a
                   developer rebuild one extension in place without touching the others.
  MAX_JOBS         parallel compile jobs (ninja), as in torch.utils.cpp_extension.
"""

import glob
import os
import shutil

from setuptools import setup

# torch's CUDA_HOME detection takes the prefix of the first nvcc on PATH; a wrapper script in
# /usr/local/bin then yields CUDA_HOME=/usr/local, which has no lib64/libcudart. Prefer the
# conventional toolkit location before cpp_extension is imported (it reads CUDA_HOME at import).
if "CUDA_HOME" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _cuda_build_wanted() -> bool:
    mode = os.environ.get("RJA_BUILD_CUDA", "auto").lower()
    if mode not in {"auto", "1", "0"}:
        raise ValueError(f"RJA_BUILD_CUDA must be auto, 1 or 0, got {mode!r}")
    why_not = None
    if torch.version.cuda is None:
        why_not = f"torch {torch.__version__} is not a CUDA build"
    elif CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        why_not = "no CUDA toolkit found (set CUDA_HOME)"
    if mode == "1" and why_not:
        raise RuntimeError(f"RJA_BUILD_CUDA=1 but {why_not}")
    if why_not and mode == "auto":
        print(f"rja: skipping the CUDA extension: {why_not}")
    return mode != "0" and why_not is None


def _sources(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern, recursive=True))


cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wextra", "-Werror"]
if os.environ.get("RJA_CPU_NATIVE", "1") == "1":
    cxx_flags.append("-march=native")

wanted = set(os.environ.get("RJA_EXTENSIONS", "cpu,cuda,cuda_emu").split(","))
extensions = []
if "cpu" in wanted:
    extensions.append(CppExtension(
        "rja_kernels._C",
        _sources("csrc/cpu/*.cpp"),
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    ))

if "cuda" in wanted and _cuda_build_wanted():
    archs = os.environ.get("RJA_CUDA_ARCHS", "8.0;9.0")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    print(f"rja: building the CUDA extension for compute capabilities {archs} with {CUDA_HOME}")
    extensions.append(
        CUDAExtension(
            "rja_kernels._C_cuda",
            _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
            extra_compile_args={
                "cxx": ["-O3", "-std=c++20", "-Wall", "-Werror"],
                # -Werror=all-warnings: nvcc's own warnings and the host compiler's for our sources.
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Werror=all-warnings",
                         "-Xcompiler=-Wall,-Werror", "-lineinfo"],
            },
        )
    )

# The CUDA kernel source compiled a second time by the host compiler against the CUDA emulator of
# csrc/emu: the CPU-only CI executes the kernels (bounds- and barrier-checked) through it. It needs
# no CUDA toolkit, so it is always built.
if "cuda_emu" in wanted:
    extensions.append(CppExtension(
        "rja_kernels._C_cuda_emu",
        _sources("csrc/emu/*.cpp"),
        extra_compile_args={"cxx": ["-O2", "-std=c++20", "-Wall", "-Werror"]},
    ))

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
