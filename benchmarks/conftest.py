"""Sizes shared by every operator benchmark (issue: CPU kernel; Triton and CUDA reuse them)."""

import pytest

# name: (B, L, da, dv, k, T)
SIZES = {
    "paper": (64, 16, 512, 512, 32, 2),
    "jca-small": (64, 16, 128, 128, 32, 2),
    "long": (8, 64, 512, 512, 64, 3),
}


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def size(request) -> tuple[str, tuple[int, ...]]:
    return request.param, SIZES[request.param]
