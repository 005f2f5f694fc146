"""What is particular to the Triton backend (the sweep against the reference for both operators is
in operator_checks.py): the clear error without the interpreter, torch.compile(fullgraph=True)
through it, and run-to-run identical bits (no atomics)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rja_kernels.backends import why_unavailable
from rja_kernels.testing import call_operator, compile_matches_eager, make_inputs

OPERATORS = {"recursive_joint_attention": {"h_tanh": True, "out_relu": True}, "joint_cross_attention": {}}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _triton_runs_here():
    reason = why_unavailable("triton", torch.device(DEVICE), torch.float32)
    if reason is not None:
        pytest.skip(reason)


def test_clear_error_without_interpreter():
    if DEVICE == "cuda":
        pytest.skip("on a GPU the kernels run compiled")
    code = textwrap.dedent("""
        import rja_kernels
        from rja_kernels.testing import call_operator, make_inputs
        assert "triton" not in rja_kernels.available_backends("cpu")
        try:
            call_operator("recursive_joint_attention", make_inputs("recursive_joint_attention", 1, 2, 3, 4, 1), 1,
                          "triton")
        except rja_kernels.BackendUnavailableError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "set TRITON_INTERPRET=1 to run the Triton kernels on CPU via the interpreter" in res.stdout


@pytest.mark.parametrize("operator", OPERATORS)
def test_compile_fullgraph(operator):
    # The op is opaque to dynamo (custom op + fake kernel), so this works with interpreted kernels too.
    compile_matches_eager(operator, "triton", device=DEVICE, **OPERATORS[operator])


@pytest.mark.parametrize("operator", OPERATORS)
def test_same_bits_every_run(operator):
    inp = make_inputs(operator, 2, 5, 6, 7, 2, k=3, device=DEVICE, requires_grad=True)
    runs = []
    for _ in range(2):
        xa, xv = call_operator(operator, inp, 2, "triton", **OPERATORS[operator])
        runs.append((xa, xv, *torch.autograd.grad((xa.sin().sum() + xv.cos().sum()), list(inp.values()))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
