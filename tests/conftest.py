import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. TRITON_INTERPRET must be set before
# triton is first imported anywhere in the process (triton.language's own @jit helpers read it when
# they are defined, and torch.compile or a test module may import triton first), so it is set here,
# before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("RJA_CUDA_EMULATE", "1")  # the "cuda" backend runs CPU tensors in the CUDA emulator


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def tf32_allowed():
    """TF32 allowed for the test (rja_kernels.testing.allow_tf32): the CUDA kernels' float32 passes on
    3xTF32 (csrc/cuda/host.h, with_tensor_cores), where by default they stay on CUDA cores."""
    from rja_kernels.testing import allow_tf32  # not at the top: TRITON_INTERPRET is set before triton loads

    with allow_tf32():
        yield
