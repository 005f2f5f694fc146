import pytest
import torch

import rja_kernels
from rja_kernels.testing import make_inputs


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def run_op(inputs: dict, iterations: int, backend: str):
    return rja_kernels.recursive_joint_attention(**inputs, iterations=iterations, backend=backend)


__all__ = ["make_inputs", "run_op"]
