"""Sizes shared by every operator benchmark (CPU kernel; Triton and CUDA reuse them)."""

import pytest

# name: (B, L, da, dv, k, T); k is the JCA form's attention size, unused by the paper's form.
SIZES = {
    "paper": (64, 16, 512, 512, 32, 2),
    "jca-small": (64, 16, 128, 128, 32, 2),
    "long": (8, 64, 512, 512, 64, 3),
}
OPERATORS = ("recursive_joint_attention", "joint_cross_attention")
SHORT = {"recursive_joint_attention": "paper-form", "joint_cross_attention": "jca-form"}


def inputs_kwargs(operator: str, size: tuple[int, ...]) -> tuple[tuple[int, ...], dict]:
    """(positional sizes, keyword sizes) of rja_kernels.testing.make_inputs for `operator`."""
    b, seq, da, dv, k, iterations = size
    return (b, seq, da, dv, iterations), ({"k": k} if operator == "joint_cross_attention" else {})


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def size(request) -> tuple[str, tuple[int, ...]]:
    return request.param, SIZES[request.param]


@pytest.fixture(params=OPERATORS, ids=[SHORT[o] for o in OPERATORS])
def operator(request) -> str:
    return request.param
