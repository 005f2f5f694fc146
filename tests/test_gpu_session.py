"""benchmarks/gpu_session.sh, the one call a lent GPU gets, run here against stand-ins for the
machine's python, nvidia-smi and timeout that record what they are asked to do: a mistake in the
script would otherwise cost a device session to find."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
# The variables whose value at each python call the stand-in records.
RECORDED = ("RJA_CUDA_ARCHS", "RJA_EXTENSIONS", "RJA_CUDA_SPLIT", "RJA_TRITON_SPLIT", "RJA_CUDA_TENSOR_CORES")
PASSES = ("forward", "forward_backward", "peak_memory")


def _session(tmp_path: Path, fail_on: str | None = None, **env: str):
    """Runs the script with a python that logs each call (argv and RECORDED) and exits 0, or 1 for a
    call whose arguments contain `fail_on`, and a timeout that logs its deadline; returns the run,
    the python calls and the deadlines."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    calls_log, deadlines_log = tmp_path / "calls.log", tmp_path / "deadlines.log"
    bin_dir.mkdir(parents=True)
    record = " ".join(f'{name}=${{{name}-unset}}' for name in RECORDED)
    fail = f'case "$*" in *{shlex.quote(fail_on)}*) exit 1;; esac' if fail_on else ""
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "{record} :: $*" >> {shlex.quote(str(calls_log))}\n{fail}\n')
    (bin_dir / "timeout").write_text(f'#!/bin/sh\necho "$1" >> {shlex.quote(str(deadlines_log))}\nshift\nexec "$@"\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RJA_")}
    environ.update(PATH=f"{bin_dir}:{environ['PATH']}", PYTHON=str(bin_dir / "python"), OUT=str(out), **env)
    run = subprocess.run(["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=120)
    calls = []
    for line in calls_log.read_text().splitlines() if calls_log.exists() else []:
        variables, argv = line.split(" :: ", 1)
        calls.append((dict(v.split("=", 1) for v in variables.split()), argv.split()))
    deadlines = [int(v) for v in deadlines_log.read_text().split()] if deadlines_log.exists() else []
    return run, calls, deadlines


def test_session_builds_tests_and_benchmarks_each_pass(tmp_path):
    run, calls, _ = _session(tmp_path, RJA_GPU_SPLIT_AB="1", RJA_GPU_CORES_AB="1")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    assert len(calls) == 4 + 3 * len(PASSES)
    version, build, extensions, tests = calls[:4]
    assert version[1][0] == "-c"
    env, argv = build
    assert argv[:6] == ["-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v"]
    assert (env["RJA_CUDA_ARCHS"], env["RJA_EXTENSIONS"]) == ("9.0", "cpu,cuda")
    assert extensions[1] == ["-P", "-m", "rja_kernels.ext_info", "--require-cuda"]
    test_files = [a for a in tests[1] if a.startswith("tests/")]
    assert test_files and all((ROOT / f).is_file() for f in test_files), test_files
    assert "tests/test_cuda_gpu.py" in test_files
    # the benchmark, then the A/B stages: one program per sample, and the CUDA C++ kernels on CUDA cores
    expected_env = {"bench_gpu": ("unset", "unset", "unset"), "bench_gpu_split1": ("1", "1", "unset"),
                    "bench_gpu_cuda_cores": ("unset", "unset", "0")}
    benchmarks = iter(calls[4:])
    for name, (cuda_split, triton_split, tensor_cores) in expected_env.items():
        for pass_ in PASSES:
            env, argv = next(benchmarks)
            assert f"benchmarks/test_bench_gpu.py::test_{pass_}" in argv and "--benchmark-only" in argv
            assert f"--benchmark-json={out}/{name}-{pass_}.json" in argv
            recorded = env["RJA_CUDA_SPLIT"], env["RJA_TRITON_SPLIT"], env["RJA_CUDA_TENSOR_CORES"]
            assert recorded == (cuda_split, triton_split, tensor_cores), (name, pass_)
            selection = argv[argv.index("-k") + 1:]
            assert "paper-form-paper" in selection
            if name == "bench_gpu_cuda_cores":
                assert "cuda" in selection and "triton" not in " ".join(selection)
            assert (out / f"{name}-{pass_}.log").is_file()
    summary = (out / "summary.txt").read_text()
    for stage in ("build", "extensions", "tests", *(f"bench_gpu-{p}" for p in PASSES)):
        assert f"{stage}: rc=0" in summary


def test_session_without_the_options_runs_no_ab_stage(tmp_path):
    run, calls, _ = _session(tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(calls) == 4 + len(PASSES)
    assert not list((tmp_path / "out").glob("bench_gpu_*"))


def test_an_empty_selection_benchmarks_everything(tmp_path):
    run, calls, _ = _session(tmp_path, RJA_GPU_BENCH_K="", RJA_GPU_SKIP_TESTS="1")
    assert run.returncode == 0, run.stderr
    assert [("-k" in argv) for _, argv in calls[3:]] == [False] * len(PASSES)


def test_a_failed_build_ends_the_session(tmp_path):
    # Nothing is timed against a stale or missing build.
    run, calls, _ = _session(tmp_path, fail_on="pip")
    assert run.returncode != 0
    assert [c[1][1] for c in calls[1:]] == ["pip"]
    assert "build: rc=1" in (tmp_path / "out" / "summary.txt").read_text()
    assert not list((tmp_path / "out").glob("bench_gpu*"))


def test_stages_keep_within_the_session(tmp_path):
    # A deadline is the stage's own or what is left of the session, whichever is less (the stand-ins
    # take no time, so nearly the whole budget is left at every stage)...
    run, _, deadlines = _session(tmp_path, RJA_GPU_SESSION_SECONDS="55")  # under every stage's own
    assert run.returncode == 0, run.stderr
    assert len(deadlines) == 3 + len(PASSES)
    assert all(25 <= d <= 55 for d in deadlines), deadlines
    # ...and with under 10 s left nothing starts: not even the build.
    run, calls, deadlines = _session(tmp_path / "spent", RJA_GPU_SESSION_SECONDS="5")
    assert run.returncode != 0 and deadlines == [] and len(calls) == 1
    assert "build: skipped, 5 s of the session left" in (tmp_path / "spent" / "out" / "summary.txt").read_text()
