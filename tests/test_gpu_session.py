"""benchmarks/gpu_session.sh, the one call a lent GPU gets, run here against stand-ins for the
machine's python and nvidia-smi that record what they are asked to do: a mistake in the script
would otherwise cost a device session to find."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
# The variables whose value at each python call the stand-in records.
RECORDED = ("RJA_CUDA_ARCHS", "RJA_EXTENSIONS", "RJA_CUDA_SPLIT", "RJA_TRITON_SPLIT", "RJA_CUDA_TENSOR_CORES")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a bash script")


def _session(tmp_path: Path, fail_on: str | None = None, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    """Runs the script with a python that logs each call (argv and RECORDED) and exits 0, or 1 for a
    call whose arguments contain `fail_on`; returns the run and the calls."""
    bin_dir, out, log = tmp_path / "bin", tmp_path / "out", tmp_path / "calls.log"
    bin_dir.mkdir()
    record = " ".join(f'{name}=${{{name}-unset}}' for name in RECORDED)
    fail = f'case "$*" in *{shlex.quote(fail_on)}*) exit 1;; esac' if fail_on else ""
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "{record} :: $*" >> {shlex.quote(str(log))}\n{fail}\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'name\nNVIDIA H100'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RJA_")}
    environ.update(PATH=f"{bin_dir}:{environ['PATH']}", PYTHON=str(bin_dir / "python"), OUT=str(out), **env)
    run = subprocess.run(["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=120)
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        variables, argv = line.split(" :: ", 1)
        calls.append((dict(v.split("=", 1) for v in variables.split()), argv.split()))
    return run, calls


def test_session_builds_tests_and_benchmarks_in_order(tmp_path):
    run, calls = _session(tmp_path, RJA_GPU_SPLIT_AB="1", RJA_GPU_CORES_AB="1")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    version, build, extensions, tests, bench, split1, cores = calls
    assert version[1][0] == "-c"
    env, argv = build
    assert argv[:6] == ["-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v"]
    assert (env["RJA_CUDA_ARCHS"], env["RJA_EXTENSIONS"]) == ("9.0", "cpu,cuda")
    assert extensions[1] == ["-P", "-m", "rja_kernels.ext_info", "--require-cuda"]
    test_files = [a for a in tests[1] if a.startswith("tests/")]
    assert test_files and all((ROOT / f).is_file() for f in test_files), test_files
    assert "tests/test_cuda_gpu.py" in test_files
    for _, argv in (bench, split1, cores):
        assert "benchmarks/test_bench_gpu.py" in argv and "--benchmark-only" in argv
    assert f"--benchmark-json={out}/bench_gpu.json" in bench[1]
    assert (bench[0]["RJA_CUDA_SPLIT"], bench[0]["RJA_CUDA_TENSOR_CORES"]) == ("unset", "unset")
    # the A/B stages: one program per sample, and the CUDA C++ kernels on CUDA cores
    assert f"--benchmark-json={out}/bench_gpu_split1.json" in split1[1]
    assert (split1[0]["RJA_CUDA_SPLIT"], split1[0]["RJA_TRITON_SPLIT"]) == ("1", "1")
    assert f"--benchmark-json={out}/bench_gpu_cuda_cores.json" in cores[1]
    assert (cores[0]["RJA_CUDA_TENSOR_CORES"], cores[0]["RJA_CUDA_SPLIT"]) == ("0", "unset")
    selection = cores[1][cores[1].index("-k") + 1:]
    assert "cuda" in selection and "triton" not in " ".join(selection)
    summary = (out / "summary.txt").read_text()
    for stage in ("build", "extensions", "tests", "benchmark", "benchmark-split1", "benchmark-cuda-cores"):
        assert f"{stage}: rc=0" in summary
        assert (out / f"{stage}.log").is_file()


def test_session_without_the_options_runs_no_ab_stage(tmp_path):
    run, calls = _session(tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(calls) == 5
    assert not (tmp_path / "out" / "benchmark-cuda-cores.log").exists()
    assert not (tmp_path / "out" / "benchmark-split1.log").exists()


def test_a_failed_build_ends_the_session(tmp_path):
    # Nothing is timed against a stale or missing build.
    run, calls = _session(tmp_path, fail_on="pip")
    assert run.returncode != 0
    assert [c[1][1] for c in calls[1:]] == ["pip"]
    assert "build: rc=1" in (tmp_path / "out" / "summary.txt").read_text()
    assert not (tmp_path / "out" / "benchmark.log").exists()
